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
import json
import os

import pytest

from scaling.noise import batch_scan
from tests.experiments.reference import assert_close, scan_runs_from_csv as reference_runs

RESULTS = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "results")
REFERENCE = os.path.join(RESULTS, "kaplan_cpu_quick", "noise")
TOKEN_WARMUP = os.path.join(RESULTS, "kaplan_cpu_scan_warmup", "quick_token_warmup")


@pytest.mark.parametrize("reference", [REFERENCE, TOKEN_WARMUP], ids=["quick", "quick_token_warmup"])
def test_fit_scan_reproduces_the_committed_bcrit_json(reference):
    with open(os.path.join(reference, "bcrit.json")) as f:
        want = json.load(f)
    fraction = want.get("target_fraction", 0.5)      # recorded since session 16; the lower half before
    got = json.loads(json.dumps(batch_scan.fit_scan(reference_runs(reference), n_targets=30, n_boot=want["n_boot"],
                                                    seed=0, target_fraction=fraction)))
    assert_close(got, {**want, "target_fraction": fraction})
