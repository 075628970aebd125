"""The committed batch scan with a 12-step warmup at every batch (experiments/results/kaplan_cpu_scan_warmup/,
gin/sweeps/kaplan_cpu_scan_warmup.gin), beside the quick preset's scan until session 16 (warmup fixed in tokens;
its bcrit.json and smin_cmin.csv kept in quick_token_warmup/).

Pins what its README concludes from the files the jobs wrote: the token-fixed warmup moved B_crit (most at the
highest target); without it the preset's two sizes share one power law B_crit(L), over the lower half of the span
(the old targets) and over all of it (the preset's targets since session 16), each size alone has the same
exponent, cpu_98k's B_crit sits above the small sizes' at equal loss, the report's α_B row names the warmup only
where it matters, and the quick preset's scan since session 16 is this scan's two small sizes, run for run.
The cpu_221k scans (cpu_221k/, and full_221k/ and quick_221k_long/ trained down to the ladders' own losses) pin
B_crit's size dependence and what measuring it at the ladders' losses does to their converged L(N).
"""
import csv
import functools
import json
import math
import os
import re

import numpy as np
import pytest

from scaling.analysis import bcrit, learning_curves
from scaling.analysis import report_tables as rt
from scaling.noise import batch_scan
from scaling.core import fileio, formulas
from tests.experiments import reference

RESULTS = "kaplan_cpu_scan_warmup"
QUICK = "kaplan_cpu_quick"
TOKEN_WARMUP = ("kaplan_cpu_scan_warmup", "quick_token_warmup")   # the quick preset's scan until session 16


def token_warmup_scan() -> dict:
    return reference.read_json(*TOKEN_WARMUP, "bcrit.json")


def r2_log(b: dict) -> float:
    """R² (log) of the B_crit(L) law, as the report's flag computes it (report_tables.fit_quality)."""
    L = np.array([p["target_loss"] for p in b["per_target"]])
    B = np.array([p["B_crit"] for p in b["per_target"]])
    return rt.fit_quality(L, B, formulas.critical_batch(L, b["B_star"], b["alpha_B"]))["r2_log"]


def scan_runs_of(csv_path: str) -> set:
    """(model, batch, steps, warmup) of every run in a smin_cmin.csv, from the run names the sweep gave them."""
    with open(csv_path) as f:
        names = {row["run"] for row in csv.DictReader(f)}
    return {tuple(re.fullmatch(r"(cpu_\w+)-Dall-B(\d+)-S(\w+)-ev\d+-wu(\d+)(-K\d+)?", n).group(1, 2, 3, 4))
            for n in names}


def test_the_quick_scan_with_one_short_warmup():
    rows = reference.read_runs(RESULTS)
    assert len(rows) == 18 and all(r["status"] == "finished" for r in rows)
    assert {r["model"] for r in rows} == {"cpu_6k", "cpu_25k", "cpu_98k"}
    assert {r["TrainConfig.warmup_steps"] for r in rows} == {"12"}
    # The quick preset's scan since session 16 is this scan's two small sizes, run for run (the same names, so a
    # sweep into this root would find them finished) ...
    quick = {r["run"] for r in reference.read_runs(QUICK) if r["group"] == "batch_scan"}
    assert quick == {r["run"] for r in rows if r["model"] in ("cpu_6k", "cpu_25k")}
    # ... and the scan before it the same sizes, batches and steps with the warmup fixed in tokens (200 ... 6 steps).
    old = scan_runs_of(os.path.join(reference.results_dir(TOKEN_WARMUP[0]), TOKEN_WARMUP[1], "smin_cmin.csv"))
    assert {o[:3] for o in old} == {(r["model"], r["batch_size"], reference_steps(r)) for r in rows
                                    if r["model"] in ("cpu_6k", "cpu_25k")}
    assert {(o[1], o[3]) for o in old} == {("2", "200"), ("4", "100"), ("8", "50"), ("16", "25"), ("32", "12"),
                                           ("64", "6")}


def reference_steps(row: dict) -> str:
    """The steps part of a run name (2400 -> "2k4", 850 -> "850"), as the sweep names runs."""
    return re.search(r"-S(\w+)-", row["run"]).group(1)


@functools.cache
def two_size_fit(target_fraction: float) -> dict:
    """The preset's two sizes alone, with the noise stage's settings: 0.5 = the targets of the scan before session 16
    (the lower half of the span), 1.0 = the preset's since."""
    root = reference.results_dir(RESULTS)
    runs = [batch_scan.load_scan_run(os.path.join(root, "runs", r["run"]), r["run"], r["model"])
            for r in reference.read_runs(RESULTS) if r["model"] in ("cpu_6k", "cpu_25k")]
    return json.loads(json.dumps(batch_scan.fit_scan(runs, n_targets=30, n_boot=500, seed=0,
                                                     target_fraction=target_fraction)))


def test_the_quick_scans_warmup_moves_b_crit_most_at_high_loss():
    for w in token_warmup_scan()["warmup"]:
        assert w["warmup_steps"]["256"] == 200 and w["warmup_steps"]["8192"] == 6     # fixed in tokens
        assert w["bcrit_ratio_highest_target"] < w["bcrit_ratio_median"] < 1 - bcrit.WARMUP_RATIO_NOTE
    for w in reference.read_json(RESULTS, "noise", "bcrit.json")["warmup"]:
        assert abs(w["bcrit_ratio_highest_target"] - 1) < bcrit.WARMUP_RATIO_NOTE
        assert abs(w["bcrit_ratio_median"] - 1) < bcrit.WARMUP_RATIO_NOTE


def test_without_it_the_preset_sizes_share_one_power_law():
    """On the old targets (the lower half of the span) the short warmup takes the "poor fit" and "wide CI" flags
    off B_crit(L) and steepens it; over every target the runs reach (the preset's since session 16) both flags stay
    off, with a shallower slope than the lower half's (B_crit(L) still steepens as the loss falls)."""
    quick, short = token_warmup_scan(), two_size_fit(0.5)
    assert quick.get("target_fraction", 0.5) == 0.5
    assert r2_log(quick) < rt.R2_MIN <= r2_log(short)                   # flagged "poor fit" / not
    lo, hi = short["ci95"]["alpha_B"]
    assert hi / lo < 3 and lo < short["alpha_B"] < hi
    assert short["alpha_B"] < quick["alpha_B"]                        # B_crit steeper in L once the warmup is out
    assert short["bracketed_fraction"] >= 0.8
    assert bcrit.bcrit_shape(short["per_target"])["collapse"] < 0.10  # still a function of the loss alone
    whole = two_size_fit(1.0)
    lo, hi = whole["ci95"]["alpha_B"]
    assert r2_log(whole) >= rt.R2_MIN and hi / lo < 3 and lo < whole["alpha_B"] < hi
    assert short["alpha_B"] < whole["alpha_B"] < quick["alpha_B"]
    assert whole["bracketed_fraction"] >= 0.8 and bcrit.bcrit_shape(whole["per_target"])["collapse"] < 0.10


def test_the_quick_presets_b_crit_is_this_scans_two_sizes_over_every_target():
    """The quick preset's committed bcrit.json (since session 16) measures what two_size_fit(1.0) does: the same
    settings and run names, trained on another host (the preset's fresh-clone job on an AMD EPYC VM, this scan in
    session 15 on an Intel Xeon one). XLA:CPU's kernels round differently by CPU, and over 424-2,400 noisy steps the
    eval curves drift apart by up to ~0.007 nats; the fit agrees to ~0.2 % in α_B and ~1 % in B_crit at the pivot."""
    quick, whole = reference.read_json(QUICK, "noise", "bcrit.json"), two_size_fit(1.0)
    assert quick["target_fraction"] == 1.0 and quick["bracketed_fraction"] == whole["bracketed_fraction"] == 1.0
    assert quick["alpha_B"] == pytest.approx(whole["alpha_B"], rel=0.01)
    assert np.allclose(quick["ci95"]["alpha_B"], whole["ci95"]["alpha_B"], rtol=0.02)
    assert quick["pivot"]["B_crit"] == pytest.approx(whole["pivot"]["B_crit"], rel=0.03)
    assert r2_log(quick) >= rt.R2_MIN and r2_log(whole) >= rt.R2_MIN


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
    assert "the runs' LR warmup (200 to 6 steps) shapes S" in alpha_b_row("kaplan_cpu_scan_sizes")
    assert "LR warmup" not in alpha_b_row(RESULTS)
    # The quick preset's 12 steps move B_crit ×1.05-1.11 (a warmup fixed in steps reads as S_min): named, with its sign.
    assert "the runs' LR warmup (12 steps) shapes S" in alpha_b_row(QUICK) and "lowers B_crit" in alpha_b_row(QUICK)
    assert "B_crit does not depend on L alone" in alpha_b_row(RESULTS)   # the three sizes, pooled


def test_the_full_study_with_this_scan_is_why_the_full_preset_keeps_its_own():
    """full_12step/: the full preset's two-size scan retrained with the 12-step warmup (10 runs; B = 32 already had
    it) and analysed with every target, the rest of the committed full study reused (its ladder's eval curves).
    B_crit(L) stays flagged there (R² < 0.95) and the converged L(N) bends (eq 1.1's bend p < 0.05), where the
    committed full study (warmup fixed in tokens, lower-half targets) has no bend: so `reproduce --preset=full` keeps
    that design (reproduce.PRESET_NOISE_FLAGS)."""
    full = os.path.join(reference.results_dir(RESULTS), "full_12step")
    with open(os.path.join(full, "bcrit.json")) as f:
        b = json.load(f)
    assert b["target_fraction"] == 1.0 and b["bracketed_fraction"] == 1.0
    assert {re.search(r"-wu(\d+)", p["run"]).group(1) for p in b["b_simple_vs_loss"]} == {"12"}
    got = json.loads(json.dumps(batch_scan.fit_scan(reference.scan_runs_from_csv(full), n_targets=30,
                                                    n_boot=b["n_boot"], seed=0)))
    reference.assert_close(got, b)
    assert r2_log(b) < rt.R2_MIN
    with open(os.path.join(full, "fits", "kaplan_n.json")) as f:
        bent = json.load(f)["quality"]
    assert bent["bend_p"] < 0.05
    assert reference.read_json("kaplan_cpu_full", "fits", "kaplan_n.json")["quality"]["bend_p"] >= 0.05


def _cpu_221k_scan(folder: str) -> tuple[str, dict]:
    """(folder's path, its noise/bcrit.json) for a committed one-size scan at cpu_221k: every target bracketed, over
    every loss each run reaches, and the file refitted from its smin_cmin.csv as the noise stage wrote it (a bound it
    cannot give is null)."""
    d = os.path.join(reference.results_dir(RESULTS), folder)
    b = reference.read_json(RESULTS, folder, "noise", "bcrit.json")
    assert b["models"] == ["cpu_221k"] and b["bracketed_fraction"] == 1.0 and b["target_fraction"] == 1.0
    got = json.loads(json.dumps(fileio.json_safe(batch_scan.fit_scan(
        reference.scan_runs_from_csv(os.path.join(d, "noise")), n_targets=30, n_boot=b["n_boot"], seed=0))))
    reference.assert_close(got, b)
    return d, b


def test_at_cpu_221k_b_crit_sits_above_the_presets_law():
    """cpu_221k/ (gin/sweeps/kaplan_cpu_scan_221k.gin): the preset's scan at 36x cpu_6k's N. Every target bracketed,
    and B_crit a median ~1.6x the quick preset's B_crit(L) at equal loss (cpu_98k: 1.4x): over this range of N, B_crit
    grows with the model at fixed loss, so one B_crit(L) for every rung (the ladder's S_min) is a simplification."""
    _, b = _cpu_221k_scan("cpu_221k")
    quick = reference.read_json(QUICK, "noise", "bcrit.json")
    L = np.array([p["target_loss"] for p in b["per_target"]])
    ratio = np.array([p["B_crit"] for p in b["per_target"]]) / formulas.critical_batch(L, quick["B_star"],
                                                                                       quick["alpha_B"])
    assert 1.3 < float(np.median(ratio)) < 2.2
    assert L.min() < min(p["target_loss"] for p in quick["per_target"])     # it reaches below the preset's scan


def _ladder_curves(study: str) -> list:
    """The committed ladder learning curves of ``study`` (kaplan_cpu_quick or kaplan_cpu_full)."""
    root = reference.results_dir(study)
    return [learning_curves.read_curve(os.path.join(root, "runs", r["run"]), r["run"])
            for r in reference.read_runs(study) if r["group"] == "ladder"]


def _converged_l_of_n(curves: list, law) -> tuple[float, float]:
    """(α_N, eq 1.1's bend p) of a ladder's converged losses with S_min from ``law`` (the report's fit)."""
    sep = learning_curves.fit_separable(curves, b_crit=law)
    assert not sep.at_search_bound
    n = np.array([c.n_params for c in curves])
    l_inf = np.array([sep.l_inf[c.name] for c in curves])
    n_c, alpha_n = learning_curves.power_law_fit(n, l_inf)
    return alpha_n, rt.fit_quality(n, l_inf, (n_c / n) ** alpha_n)["bend_p"]


def _pooled_law(*records):
    """One B_crit(L) = B*/L^(1/α_B) through every bracketed target of ``records`` (least squares in log-log)."""
    pts = [(t["target_loss"], t["B_crit"]) for src in records for t in src["per_target"] if t["bracketed"] and t["B_crit"] > 0]
    slope, intercept = np.polyfit(-np.log([x for x, _ in pts]), np.log([y for _, y in pts]), 1)
    return lambda loss: np.exp(intercept) / np.asarray(loss) ** slope


def test_on_the_full_corpus_b_crit_measured_at_the_ladders_losses():
    """full_221k/ (gin/sweeps/kaplan_cpu_full_scan_221k.gin): the 12-step scan at cpu_221k on the full book corpus,
    trained until every batch (4 ... 128 sequences) reaches ~3.95 nats, 0.75 below the full preset's lowest target and
    within the full ladder's learning curves. Every target bracketed; B_crit a median ~1.85x the full preset's
    B_crit(L) at equal loss. Used for S_min on the committed full ladder (full_ladder/: the report's kaplan_n.json and
    the prediction, made with the held-out rung aside), α_N moves +3 % and the spread from B_crit's slope (its α_B at
    the 95 % ends) narrows ~4x, the prediction stays inside its interval; eq 1.1 then bends marginally (p 0.04).
    Pooling the preset's sizes with this one into one B_crit(L) bends L(N) hard: B_crit depends on N."""
    d, b = _cpu_221k_scan("full_221k")
    preset = reference.read_json("kaplan_cpu_full", "noise", "bcrit.json")
    L = np.array([p["target_loss"] for p in b["per_target"]])
    assert L.min() < 4.0 and L.min() < min(p["target_loss"] for p in preset["per_target"]) - 0.5
    ratio = np.array([p["B_crit"] for p in b["per_target"]]) / formulas.critical_batch(L, preset["B_star"],
                                                                                        preset["alpha_B"])
    assert 1.5 < float(np.median(ratio)) < 2.3
    # The full ladder's converged L(N) with this B_crit(L): recomputed from the committed eval curves.
    curves = _ladder_curves("kaplan_cpu_full")
    assert len(curves) == 12
    alpha_n, bend_p = _converged_l_of_n(curves, learning_curves.bcrit_law(b))
    with open(os.path.join(d, "full_ladder", "kaplan_n.json")) as f:
        kept = json.load(f)
    assert math.isclose(alpha_n, kept["params"]["alpha_N"], rel_tol=2e-3)
    committed = reference.read_json("kaplan_cpu_full", "fits", "kaplan_n.json")
    assert 1.0 < alpha_n / committed["params"]["alpha_N"] < 1.06
    assert 0.01 < bend_p < 0.05 and 0.01 < kept["quality"]["bend_p"] < 0.05
    spread = lambda fit: np.ptp(list(fit["alpha_N_by_bcrit_alpha_B"].values()))   # noqa: E731
    assert spread(kept) < 0.35 * spread(committed)
    with open(os.path.join(d, "full_ladder", "prediction.json")) as f:
        p = json.load(f)
    measured = float(next(r for r in reference.read_runs("kaplan_cpu_full") if r["run"] == p["target_run"])[p["measure"]])
    assert p["loss_pred_lo"] <= measured <= p["loss_pred_hi"] and abs(measured / p["loss_pred"] - 1) < 0.01
    # One B_crit(L) through this size's and the preset's 12-step sizes' points together: L(N) bends (p << 0.05).
    pooled = _pooled_law(b, reference.read_json(RESULTS, "full_12step", "bcrit.json"))
    assert _converged_l_of_n(curves, pooled)[1] < 1e-3


def test_on_the_quick_corpus_b_crit_measured_at_the_ladders_losses():
    """quick_221k_long/ (gin/sweeps/kaplan_cpu_scan_221k_long.gin): cpu_221k/'s scan trained until every batch reaches
    ~4.07 nats (cpu_221k/ stopped at 4.60), where the quick ladder's large rungs end. Every target bracketed; B_crit a
    median ~1.6x the quick preset's B_crit(L) at equal loss. Used for S_min on the committed quick ladder
    (quick_ladder/), α_N 0.0469 -> 0.0505 with no bend (the short cpu_221k/ scan's law bent it, p 0.04), the held-out
    prediction closer (+0.11 % against +0.46 %) and inside; pooling with the preset's sizes bends L(N)."""
    d, b = _cpu_221k_scan("quick_221k_long")
    quick = reference.read_json(QUICK, "noise", "bcrit.json")
    short = reference.read_json(RESULTS, "cpu_221k", "noise", "bcrit.json")
    L = np.array([p["target_loss"] for p in b["per_target"]])
    assert L.min() < 4.1 and L.min() < min(p["target_loss"] for p in short["per_target"]) - 0.4
    ratio = np.array([p["B_crit"] for p in b["per_target"]]) / formulas.critical_batch(L, quick["B_star"],
                                                                                        quick["alpha_B"])
    assert 1.3 < float(np.median(ratio)) < 2.2
    curves = _ladder_curves(QUICK)
    alpha_n, bend_p = _converged_l_of_n(curves, learning_curves.bcrit_law(b))
    with open(os.path.join(d, "quick_ladder", "kaplan_n.json")) as f:
        kept = json.load(f)
    assert math.isclose(alpha_n, kept["params"]["alpha_N"], rel_tol=2e-3) and bend_p >= 0.05
    committed = reference.read_json(QUICK, "fits", "kaplan_n.json")
    assert 1.03 < alpha_n / committed["params"]["alpha_N"] < 1.15
    assert _converged_l_of_n(curves, learning_curves.bcrit_law(short))[1] < 0.05     # the short scan's law bends it
    with open(os.path.join(d, "quick_ladder", "prediction.json")) as f:
        p = json.load(f)
    measured = float(next(r for r in reference.read_runs(QUICK) if r["run"] == p["target_run"])[p["measure"]])
    committed_p = reference.read_json(QUICK, "prediction.json")
    assert p["loss_pred_lo"] <= measured <= p["loss_pred_hi"]
    assert abs(measured / p["loss_pred"] - 1) < abs(measured / committed_p["loss_pred"] - 1) < 0.01
    assert _converged_l_of_n(curves, _pooled_law(b, quick))[1] < 0.05
