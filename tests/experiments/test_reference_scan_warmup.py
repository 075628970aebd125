"""The committed batch scan with a 12-step warmup at every batch (experiments/results/kaplan_cpu_scan_warmup/,
gin/sweeps/kaplan_cpu_scan_warmup.gin), beside the quick preset's scan (warmup fixed in tokens).

Pins what its README concludes from the files the jobs wrote: the quick scan's warmup moves its B_crit (most at the
highest target); without it the preset's two sizes share one power law B_crit(L) over the report's targets (R² ≥
0.95, α_B's CI under 3×), each size alone has the same exponent, cpu_98k's B_crit sits above the small sizes' at
equal loss, and the report's α_B row names the warmup only where it matters.
"""
import json
import os

import numpy as np

from scaling.analysis import bcrit
from scaling.analysis import report_tables as rt
from scaling.noise import batch_scan
from scaling.core import formulas
from tests.experiments import reference

RESULTS = "kaplan_cpu_scan_warmup"
QUICK = "kaplan_cpu_quick"


def r2_log(b: dict) -> float:
    """R² (log) of the B_crit(L) law, as the report's flag computes it (report_tables.fit_quality)."""
    L = np.array([p["target_loss"] for p in b["per_target"]])
    B = np.array([p["B_crit"] for p in b["per_target"]])
    return rt.fit_quality(L, B, formulas.critical_batch(L, b["B_star"], b["alpha_B"]))["r2_log"]


def test_the_quick_scan_with_one_short_warmup():
    rows = reference.read_runs(RESULTS)
    quick = {(r["model"], r["batch_size"], r["steps"]) for r in reference.read_runs(QUICK) if r["group"] == "batch_scan"}
    assert len(rows) == 18 and all(r["status"] == "finished" for r in rows)
    preset = {(r["model"], r["batch_size"], r["steps"]) for r in rows if r["model"] in ("cpu_6k", "cpu_25k")}
    assert preset == quick                                           # the same sizes, batches and steps
    assert {r["model"] for r in rows} == {"cpu_6k", "cpu_25k", "cpu_98k"}
    assert {r["TrainConfig.warmup_steps"] for r in rows} == {"12"}


def two_size_fit() -> dict:
    """The preset's two sizes alone, with the noise stage's settings (what the preset would measure)."""
    root = reference.results_dir(RESULTS)
    runs = [batch_scan.load_scan_run(os.path.join(root, "runs", r["run"]), r["run"], r["model"])
            for r in reference.read_runs(RESULTS) if r["model"] in ("cpu_6k", "cpu_25k")]
    return json.loads(json.dumps(batch_scan.fit_scan(runs, n_targets=30, n_boot=500, seed=0)))


def test_the_quick_scans_warmup_moves_b_crit_most_at_high_loss():
    for w in reference.read_json(QUICK, "noise", "bcrit.json")["warmup"]:
        assert w["warmup_steps"]["256"] == 200 and w["warmup_steps"]["8192"] == 6     # fixed in tokens
        assert w["bcrit_ratio_highest_target"] < w["bcrit_ratio_median"] < 1 - bcrit.WARMUP_RATIO_NOTE
    for w in reference.read_json(RESULTS, "noise", "bcrit.json")["warmup"]:
        assert abs(w["bcrit_ratio_highest_target"] - 1) < bcrit.WARMUP_RATIO_NOTE
        assert abs(w["bcrit_ratio_median"] - 1) < bcrit.WARMUP_RATIO_NOTE


def test_without_it_the_preset_sizes_share_one_power_law():
    quick, short = reference.read_json(QUICK, "noise", "bcrit.json"), two_size_fit()
    assert r2_log(quick) < rt.R2_MIN <= r2_log(short)                   # flagged "poor fit" / not
    lo, hi = short["ci95"]["alpha_B"]
    assert hi / lo < 3 and lo < short["alpha_B"] < hi
    assert short["alpha_B"] < quick["alpha_B"]                        # B_crit steeper in L once the warmup is out
    assert short["bracketed_fraction"] >= 0.8
    assert bcrit.bcrit_shape(short["per_target"])["collapse"] < 0.10  # still a function of the loss alone


def test_each_size_has_the_same_exponent_and_the_largest_a_higher_b_crit():
    per = reference.read_json(RESULTS, "noise", "bcrit.json")["per_target"]
    at_5 = {}
    for model in ("cpu_6k", "cpu_25k", "cpu_98k"):
        L = np.array([p["target_loss"] for p in per if p["model"] == model])
        B = np.array([p["B_crit"] for p in per if p["model"] == model])
        b_star, alpha_b, _ = bcrit.fit_bcrit_law(L, B)
        assert 0.09 < alpha_b < 0.12, (model, alpha_b)
        at_5[model] = b_star / 5.0 ** (1 / alpha_b)
    assert at_5["cpu_98k"] > 1.25 * max(at_5["cpu_6k"], at_5["cpu_25k"])
    assert abs(np.log(at_5["cpu_6k"] / at_5["cpu_25k"])) < 0.1


def test_the_report_names_the_warmup_where_it_moves_b_crit():
    def alpha_b_row(name):
        with open(os.path.join(reference.results_dir(name), "report.md")) as f:
            return next(line for line in f if line.startswith("| α_B |"))
    assert "the runs' LR warmup (200 to 6 steps) shapes S" in alpha_b_row(QUICK)
    assert "LR warmup" not in alpha_b_row(RESULTS)
    assert "B_crit does not depend on L alone" in alpha_b_row(RESULTS)   # the three sizes, pooled
