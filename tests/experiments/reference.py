"""Readers for the committed reference results (experiments/results/<name>/) that the test_reference_* files pin."""
import csv
import json
import os
import re

import numpy as np
import pytest

from scaling.noise import batch_scan

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def results_dir(name: str) -> str:
    return os.path.join(REPO, "experiments", "results", name)


def read_json(name: str, *parts: str):
    """A JSON file of results ``name``, e.g. read_json("kaplan_cpu_lr_grid", "noise", "bcrit.json")."""
    with open(os.path.join(results_dir(name), *parts)) as f:
        return json.load(f)


def read_runs(name: str) -> list[dict]:
    """The rows of results ``name``'s runs.csv."""
    with open(os.path.join(results_dir(name), "runs.csv")) as f:
        return list(csv.DictReader(f))


# bcrit.json refitted from its smin_cmin.csv: the per-target hyperbola (a fixed 60 Levenberg-Marquardt iterations in
# numpy) settles to ~1e-9 relative, so reruns on another BLAS or CPU differ there (largest measured: 7.4e-9).
REL = 1e-7


def scan_runs_from_csv(noise_dir: str) -> list:
    """The batch-scan runs of a committed noise/smin_cmin.csv (every evaluation of every scan run, in the order the
    scan loaded them; the warmup from each run's name) as batch_scan.ScanRun, to refit bcrit.json from."""
    by_run: dict[str, list[dict]] = {}
    with open(os.path.join(noise_dir, "smin_cmin.csv")) as f:
        for row in csv.DictReader(f):
            by_run.setdefault(row["run"], []).append(row)
    runs = []
    for name, rows in by_run.items():   # dicts keep the file's (= the scan's) run order
        n, batch = float(rows[0]["n_params_nonembedding"]), float(rows[0]["batch_tokens"])
        e_min, c_min = float(rows[0]["E_min"]), float(rows[0]["C_min_pf_days"])
        runs.append(batch_scan.ScanRun(
            name=name, model=name.split("-")[0], n_params_nonembedding=n, batch_tokens=batch,
            flops_per_token=c_min * 8.64e19 / e_min,
            steps=np.array([float(r["step"]) for r in rows]), tokens=np.array([float(r["tokens"]) for r in rows]),
            loss=np.array([float(r["loss"]) for r in rows]), warmup_steps=warmup_steps(name)))
    return runs


def warmup_steps(name: str) -> int:
    """The run's warmup (bcrit.json `warmup`), from its name (the presets sweep it: ``-wu<steps>``)."""
    match = re.search(r"-wu(\d+)(-|$)", name)
    assert match, f"{name}: no -wu<steps> in the run name"
    return int(match.group(1))


def assert_close(got, want, path="bcrit.json"):
    if isinstance(want, dict):
        assert set(got) >= set(want) - {"b_simple_vs_loss"}, (path, sorted(set(want) - set(got)))
        for k in want:
            if k != "b_simple_vs_loss":   # per-run B_simple comes from metrics.jsonl, not kept in the reference
                assert_close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=REL, abs=1e-300), path
    else:
        assert got == want, path
