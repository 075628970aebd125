"""The one B_crit pipeline reproduces the committed reference result (experiments/results/kaplan_cpu_quick/noise/).

smin_cmin.csv holds every evaluation (step, tokens, eval loss) of every batch-scan run, in the order the scan
loaded them, and each run's kept summary.json its warmup: enough to rebuild the runs and refit B_crit(L)
with the options `experiments.noise_scale` used (30 targets per model, 500 whole-run bootstrap replicates,
seed 0). Every number of bcrit.json must come back to float rounding: the per-target hyperbola (a fixed 60
Levenberg-Marquardt iterations in numpy) settles to ~1e-9 relative, so reruns on another BLAS or CPU differ
there (largest measured: 7.4e-9, a bootstrap B_crit bound); REL allows 1e-7.
"""
import csv
import json
import os

import numpy as np
import pytest

from scaling.noise import batch_scan

REL = 1e-7
REFERENCE = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "results", "kaplan_cpu_quick", "noise")


def reference_runs() -> list:
    by_run: dict[str, list[dict]] = {}
    with open(os.path.join(REFERENCE, "smin_cmin.csv")) as f:
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
    """The run's warmup (bcrit.json `warmup`), from its kept summary.json."""
    with open(os.path.join(REFERENCE, "..", "runs", name, "summary.json")) as f:
        return int(json.load(f)["warmup_steps"])


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


def test_fit_scan_reproduces_the_committed_bcrit_json():
    with open(os.path.join(REFERENCE, "bcrit.json")) as f:
        want = json.load(f)
    got = json.loads(json.dumps(batch_scan.fit_scan(reference_runs(), n_targets=30, n_boot=want["n_boot"], seed=0)))
    assert_close(got, want)
