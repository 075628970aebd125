"""The committed batch scan with a 12-step warmup at every batch (experiments/results/kaplan_cpu_scan_warmup/,
gin/sweeps/kaplan_cpu_scan_warmup.gin), beside the quick preset's scan (warmup fixed in tokens).

Pins what its README concludes from the files the jobs wrote: the quick scan's warmup moves its B_crit (most at the
highest target); without it B_crit(L) is one power law over the report's targets (R² ≥ 0.95, α_B's CI under 3×),
the sizes still collapse, and the report's α_B row names the warmup only where it matters.
"""
import os

import numpy as np

from scaling.analysis import bcrit
from scaling.core import formulas
from tests.experiments import reference

RESULTS = "kaplan_cpu_scan_warmup"
QUICK = "kaplan_cpu_quick"


def r2_log(b: dict) -> float:
    L = np.array([p["target_loss"] for p in b["per_target"]])
    B = np.array([p["B_crit"] for p in b["per_target"]])
    resid = np.log(B) - np.log(formulas.critical_batch(L, b["B_star"], b["alpha_B"]))
    return float(1 - np.sum(resid ** 2) / np.sum((np.log(B) - np.log(B).mean()) ** 2))


def test_the_quick_scan_with_one_short_warmup():
    rows = reference.read_runs(RESULTS)
    quick = {(r["model"], r["batch_size"], r["steps"]) for r in reference.read_runs(QUICK) if r["group"] == "batch_scan"}
    assert len(rows) == 12 and all(r["status"] == "finished" for r in rows)
    assert {(r["model"], r["batch_size"], r["steps"]) for r in rows} == quick     # the same sizes, batches and steps
    assert {r["TrainConfig.warmup_steps"] for r in rows} == {"12"}


def test_the_quick_scans_warmup_moves_b_crit_most_at_high_loss():
    for w in reference.read_json(QUICK, "noise", "bcrit.json")["warmup"]:
        assert w["warmup_steps"]["256"] == 200 and w["warmup_steps"]["8192"] == 6     # fixed in tokens
        assert w["bcrit_ratio_highest_target"] < w["bcrit_ratio_median"] < 1 - bcrit.WARMUP_RATIO_NOTE
    for w in reference.read_json(RESULTS, "noise", "bcrit.json")["warmup"]:
        assert abs(w["bcrit_ratio_highest_target"] - 1) < bcrit.WARMUP_RATIO_NOTE
        assert abs(w["bcrit_ratio_median"] - 1) < bcrit.WARMUP_RATIO_NOTE


def test_without_it_b_crit_is_one_power_law_over_the_targets():
    quick, short = (reference.read_json(name, "noise", "bcrit.json") for name in (QUICK, RESULTS))
    assert r2_log(quick) < 0.95 <= r2_log(short)
    lo, hi = short["ci95"]["alpha_B"]
    assert hi / lo < 3 and lo < short["alpha_B"] < hi
    assert short["alpha_B"] < quick["alpha_B"]                        # B_crit steeper in L once the warmup is out
    assert short["bracketed_fraction"] >= 0.8
    assert bcrit.bcrit_shape(short["per_target"])["collapse"] < 0.10  # still a function of the loss alone


def test_the_report_names_the_warmup_where_it_moves_b_crit():
    def alpha_b_row(name):
        with open(os.path.join(reference.results_dir(name), "report.md")) as f:
            return next(line for line in f if line.startswith("| α_B |"))
    assert "the runs' LR warmup (200 to 6 steps) shapes S" in alpha_b_row(QUICK)
    assert "LR warmup" not in alpha_b_row(RESULTS)
    assert "poor fit" not in alpha_b_row(RESULTS) and "wide CI" not in alpha_b_row(RESULTS)
