"""The one B_crit pipeline reproduces the committed reference results: the quick preset's
(experiments/results/kaplan_cpu_quick/noise/) and, kept beside the warmup study, the quick preset's scan before
session 16 (warmup fixed in tokens, targets over the lower half of the span;
experiments/results/kaplan_cpu_scan_warmup/quick_token_warmup/).

smin_cmin.csv holds every evaluation (step, tokens, eval loss) of every batch-scan run, in the order the scan
loaded them, and each run's name its warmup (``-wu<steps>``): enough to rebuild the runs and refit B_crit(L)
with the options `experiments.noise_scale` used (30 targets per model, 500 whole-run bootstrap replicates,
seed 0). Every number of bcrit.json must come back to float rounding: the per-target hyperbola (a fixed 60
Levenberg-Marquardt iterations in numpy) settles to ~1e-9 relative, so reruns on another BLAS or CPU differ
there (largest measured: 7.4e-9, a bootstrap B_crit bound); REL allows 1e-7.
"""
import csv
import json
import os
import re

import numpy as np
import pytest

from scaling.noise import batch_scan

REL = 1e-7
RESULTS = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "results")
REFERENCE = os.path.join(RESULTS, "kaplan_cpu_quick", "noise")
TOKEN_WARMUP = os.path.join(RESULTS, "kaplan_cpu_scan_warmup", "quick_token_warmup")


def reference_runs(reference: str = REFERENCE) -> list:
    by_run: dict[str, list[dict]] = {}
    with open(os.path.join(reference, "smin_cmin.csv")) as f:
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


@pytest.mark.parametrize("reference", [REFERENCE, TOKEN_WARMUP], ids=["quick", "quick_token_warmup"])
def test_fit_scan_reproduces_the_committed_bcrit_json(reference):
    with open(os.path.join(reference, "bcrit.json")) as f:
        want = json.load(f)
    fraction = want.get("target_fraction", 0.5)      # recorded since session 16; the lower half before
    got = json.loads(json.dumps(batch_scan.fit_scan(reference_runs(reference), n_targets=30, n_boot=want["n_boot"],
                                                    seed=0, target_fraction=fraction)))
    assert_close(got, {**want, "target_fraction": fraction})
