"""The committed reference run of the main job (experiments/results/kaplan_cpu_quick/) shows the scaling laws.

These read the files `make reproduce` wrote (fits/, noise/, prediction.json, runs.csv, report.md), so a change of
the study design that loses a law fails CI. Thresholds are the ones the study was designed to meet (README "What
`make reproduce` gives"); where the quick preset does not meet a goal, the test pins what the report must then say.
"""
import csv
import json
import math
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(REPO, "experiments", "results", "kaplan_cpu_quick")


def fit(name):
    with open(os.path.join(RESULTS, "fits", f"{name}.json")) as f:
        return json.load(f)


def rows(group=None):
    with open(os.path.join(RESULTS, "runs.csv")) as f:
        out = list(csv.DictReader(f))
    return [r for r in out if group is None or r["group"] == group]


def report_section(title_start):
    text = open(os.path.join(RESULTS, "report.md")).read()
    start = text.index(f"## {title_start}")
    end = text.find("\n## ", start + 3)
    return text[start:end if end > 0 else None]


def ci_ratio(record, key):
    lo, hi = record["ci95"][key]
    return hi / lo


def test_every_run_finished():
    assert rows() and all(r["status"] == "finished" for r in rows())


def test_converged_l_of_n_is_a_power_law_over_two_decades():
    record = fit("kaplan_n")
    ladder = {r["run"]: float(r["n_params_nonembedding"]) for r in rows("ladder")}
    n = [ladder[name] for name in record["runs"]]
    assert len(n) >= 7 and math.log10(max(n) / min(n)) >= 2.0
    assert record["quality"]["r2_log"] >= 0.99
    assert ci_ratio(record, "alpha_N") <= 1.5
    assert 0 < record["ci95"]["alpha_N"][0] < record["params"]["alpha_N"] < record["ci95"]["alpha_N"][1]
    # Each rung's loss is its S -> infinity value from the learning-curve fit, below its final eval loss.
    curves = record["learning_curve_fit"]
    final = {r["run"]: float(r["final_eval_loss"]) for r in rows("ladder")}
    assert all(curves["L_inf"][name] < final[name] for name in record["runs"])
    # α_S: 1.51 here, 1.84 in the full study (paper 0.76): the step term of tiny models' curves at constant LR.
    assert 0.3 < curves["alpha_S"] < 2.5 and curves["s_min_correction"]
    # Equal steps for every rung (3,000): no residual bend, so no curvature flag (item 1).
    assert record["quality"]["bend_p"] >= 0.05 and record["notes"] == []


def test_equal_steps_leave_no_floor_to_explain():
    """With every rung at 3,000 steps the converged losses need no irreducible loss: E + (N_c/N)^α_N finds E's
    interval reaching 0 (with the earlier 4,000 ... 1,200 steps a "floor" of 3.1 nats removed a bend that the
    unequal extrapolations made), and the report says so in the cross-check table."""
    floor = fit("kaplan_n_floor")
    assert floor["ci95"]["E"][0] <= 1e-6
    table = report_section("Exponents")
    row = next(line for line in table.splitlines() if line.startswith("| α_N (floor) |"))
    assert "no floor detected" in row
    assert table.index("### Cross-checks") < table.index(row)


def test_no_headline_row_is_flagged_poor_fit_or_wide_ci():
    """Item 8. The headline table (one row per quantity) carries no "poor fit" or "wide CI" flag. B_crit(L)'s row
    lost both in session 16 (a 12-step warmup at every batch of the scan, targets over every loss the runs reach);
    it still says how B_crit(L) departs from one power law (the sizes collapse onto one B_crit(L), which steepens as
    the loss falls), how a law in the tokens a target needs compares, and where the LR grid is. N_c and B* are
    judged by the line inside the data, not by their own intervals."""
    table = report_section("Exponents")
    head = table.split("### Cross-checks")[0]
    flagged = [line.split("|")[1].strip() for line in head.splitlines()
               if line.startswith("| ") and ("poor fit" in line or "wide CI" in line)]
    assert flagged == [], flagged
    alpha_b = next(line for line in head.splitlines() if line.startswith("| α_B |"))
    assert "B_crit depends on L alone" in alpha_b and "steepens as the loss falls" in alpha_b
    assert "B_crit ∝ E_min^" in alpha_b and "kaplan_cpu_lr_grid.gin" in alpha_b
    # The 12-step warmup moves B_crit by at most ~11 % (at the highest target), where the token-fixed one moved it
    # ×0.71; the row names it, and which way it moves B_crit.
    with open(os.path.join(RESULTS, "noise", "bcrit.json")) as f:
        warmup = json.load(f)["warmup"]
    assert all(abs(w[k] - 1) < 0.15 for w in warmup for k in ("bcrit_ratio_median", "bcrit_ratio_highest_target"))
    assert "LR warmup (12 steps)" in alpha_b and "lowers B_crit" in alpha_b
    for symbol in ("N_c", "B*"):
        row = next(line for line in head.splitlines() if line.startswith(f"| {symbol} |"))
        assert "inside the data the fit pins" in row and "wide CI" not in row


def test_loss_per_position_follows_a_power_law_for_the_larger_rungs():
    """Fig. 20 on stride-1 windows (DataConfig.position_eval_windows): R² >= 0.9 for the three largest rungs."""
    per_position = fit("per_position")["params"]
    ladder = sorted(rows("ladder"), key=lambda r: float(r["n_params_nonembedding"]))
    for r in ladder[-3:]:
        assert per_position[r["run"]]["r2"] >= 0.9, r["run"]
        assert 0 < per_position[r["run"]]["c"] < 3
    assert "stride-1 windows" in report_section("Loss per token position")


def test_learning_curves_cross_and_the_frontier_is_fitted_with_an_interval():
    """Item 2. The rung between cpu_6k and cpu_14k (cpu_9k6) gives a fourth crossing: enough to test the power-law
    form, so p_N's row carries no note (with 3 it was flagged "only 3 points")."""
    frontier = fit("frontier_n_opt")
    assert len(frontier["transitions"]) >= 4
    lo, hi = frontier["ci95"]["p_N"]
    assert lo < frontier["params"]["p_N"] < hi
    assert frontier["notes"] == [] and frontier["quality"]["r2_log"] >= 0.98
    assert fit("kaplan_c_min")["quality"]["r2_log"] >= 0.98
    derived = fit("frontier_derived")
    assert derived["ci95"]["p_N"][0] < derived["params"]["p_N"] < derived["ci95"]["p_N"][1]


def test_b_crit_targets_are_bracketed_and_follow_eq_5_3():
    with open(os.path.join(RESULTS, "noise", "bcrit.json")) as f:
        b = json.load(f)
    assert b["bracketed_fraction"] >= 0.8
    per = [t for t in b["per_target"] if t["B_crit"] > 0]
    L, B = np.log([t["target_loss"] for t in per]), np.log([t["B_crit"] for t in per])
    pred = np.log(b["B_star"]) - L / b["alpha_B"]
    r2 = 1 - np.sum((B - pred) ** 2) / np.sum((B - B.mean()) ** 2)
    assert r2 >= 0.9
    assert "B_simple at the same loss is a median" in report_section("Critical batch size")


def test_l_of_n_and_d_from_a_three_by_four_grid_of_early_stopped_runs():
    data = rows("data")
    sizes = {r["n_params_nonembedding"] for r in data}
    budgets = {r["data_budget_tokens"] for r in data}
    assert len(sizes) >= 3 and len(budgets) >= 4 and len(data) == len(sizes) * len(budgets)
    assert fit("kaplan_nd")["quality"]["r2_log"] >= 0.98
    assert fit("kaplan_d")["n_points"] >= 4
    # Every run is early-stopped (10 % dropout, steps past the minimum): L(D) is a clean power law, no flag.
    ld = fit("kaplan_d")
    assert ld["quality"]["r2_log"] >= 0.98 and ld["notes"] == []   # no quality flag in the report
    assert all(float(r["best_eval_step"]) < float(r["steps"]) for r in data
               if float(r["n_params_nonembedding"]) == max(float(x) for x in sizes))


def test_lstm_and_recurrent_sections_are_filled():
    for title in ("LSTM", "Recurrent"):
        body = report_section(title)
        assert "Not measured in this sweep" not in body, title
    assert len(rows("lstm")) >= 2 and len(rows("recurrent")) >= 2


def test_the_held_out_rung_was_predicted_within_one_percent_before_it_trained():
    with open(os.path.join(RESULTS, "prediction.json")) as f:
        p = json.load(f)
    holdout = next(r for r in rows("holdout") if r["run"] == p["target_run"])
    measured = float(holdout[p["measure"]])
    assert p["loss_pred_lo"] is not None and p["loss_pred_hi"] is not None
    assert abs(measured / p["loss_pred"] - 1) <= 0.01
    assert p["loss_pred_lo"] <= measured <= p["loss_pred_hi"]
    assert p["n_params_nonembedding"] > max(float(r["n_params_nonembedding"]) for r in rows("ladder"))
