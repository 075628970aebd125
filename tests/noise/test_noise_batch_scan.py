"""B_crit from batch-size scans (noise-scale.md §2, §3 T7): bootstrap coverage, the run-dir pipeline on
synthetic scans with a known B_crit(L), and Kaplan's pointwise S_min / E_min / C_min."""
import json
import os

import numpy as np
import pytest
import scipy.optimize

from scaling.analysis import bcrit, fitting
from scaling.noise import batch_scan

B_STAR, ALPHA_B, L_INF = 2e8, 0.21, 2.0


def test_batched_hyperbola_fit_matches_scalar_fit():
    B = 2.0 ** np.arange(10, 18)
    S = 1000 * (1 + 3e4 / B) * np.exp(0.05 * np.random.default_rng(0).standard_normal(len(B)))
    W = fitting.resample_counts(len(B), 20, seed=1)
    s_min, e_min = bcrit.fit_steps_vs_batch_many(B, S, W)
    for w, sm, em in zip(W, s_min, e_min):
        if len(np.unique(B[w > 0])) < 2:
            assert np.isnan(sm)
            continue
        # An independent solver: scipy's Levenberg-Marquardt on the same weighted log residuals.
        resid = lambda th: np.sqrt(w) * (np.log(np.exp(th[0]) + np.exp(th[1]) / B) - np.log(S))  # noqa: E731
        ref = np.exp(scipy.optimize.least_squares(resid, np.log([500.0, 5e6]), method="lm", xtol=1e-14,
                                                  ftol=1e-14, gtol=1e-14).x)
        assert sm == pytest.approx(ref[0], rel=1e-6) and em == pytest.approx(ref[1], rel=1e-6)


def test_bootstrap_ci_coverage_of_b_crit():
    """T7-i: S = S_min(1+B_c/B)·e^noise over 8 batch sizes x 2 seeds; whole-run bootstrap ≈ 95% coverage."""
    rng = np.random.default_rng(2026)
    B = np.repeat(2.0 ** np.arange(13, 21), 2)  # tokens, 2 seeds each
    b_c, s_min, reps, n_boot = 2.0 ** 17, 500.0, 150, 300
    covered = []
    for _ in range(reps):
        S = s_min * (1 + b_c / B) * np.exp(0.08 * rng.standard_normal(len(B)))
        counts = np.vstack([np.ones(len(B)), fitting.resample_counts(len(B), n_boot, int(rng.integers(2 ** 31)))])
        sm, em = bcrit.fit_steps_vs_batch_many(B, S, counts)
        lo, hi = fitting.percentile_ci((em / sm)[1:])
        covered.append(lo <= b_c <= hi)
        assert em[0] / sm[0] == pytest.approx(b_c, rel=0.5)
    print(f"coverage {np.mean(covered):.3f}")
    assert 0.85 <= np.mean(covered) <= 1.0


# --- synthetic run directories ---------------------------------------------------------------------------------
def s_min_of(L, n_params):
    """Steps at B ≫ B_crit: fewer for the bigger model, diverging towards L_INF."""
    return 3e3 * (1e6 / n_params) ** 0.3 * (L - L_INF) ** -1.5


def steps_needed(L, B, n_params):
    return s_min_of(L, n_params) * (1 + batch_scan.critical_batch(L, B_STAR, ALPHA_B) / B)


def write_run(root, name, n_params, batch_tokens, n_ctx=128, evals=120, seed=0, gns=False):
    """A run dir whose eval losses follow S(B, L) = S_min(L)(1 + B_crit(L)/B) exactly (plus noise)."""
    grid = np.linspace(6.0, 3.2, 4000)  # loss falls along training
    s_grid = steps_needed(grid, batch_tokens, n_params)
    steps = np.unique(np.geomspace(s_grid[0] * 1.05, s_grid[-1], evals).astype(int))
    loss = np.interp(np.log(steps), np.log(s_grid), grid)
    rng = np.random.default_rng(seed)
    loss = loss + 0.002 * rng.standard_normal(len(loss))
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    summary = {"n_params_nonembedding": n_params, "batch_tokens": batch_tokens, "batch_size": batch_tokens // n_ctx,
               "flops_per_token": 6.0 * n_params, "n_ctx": n_ctx, "model_family": "transformer", "warmup_steps": 0,
               "status": "finished", "steps": int(steps[-1]), "tokens": int(steps[-1] * batch_tokens)}
    with open(os.path.join(d, "summary.json"), "w") as f:
        json.dump(summary, f)
    with open(os.path.join(d, "eval.jsonl"), "w") as f:
        for s, l in zip(steps, loss):
            f.write(json.dumps({"step": int(s), "tokens": int(s * batch_tokens), "eval_loss": float(l)}) + "\n")
    if gns:  # noise sums consistent with B_simple(L) = B_crit(L)/2 (sequences of n_ctx tokens)
        b = batch_tokens // n_ctx
        with open(os.path.join(d, "metrics.jsonl"), "w") as f:
            for s, l in zip(steps, loss):
                g2 = 1.0
                trace = 0.5 * batch_scan.critical_batch(l, B_STAR, ALPHA_B) / n_ctx * g2
                f.write(json.dumps({"step": int(s), "tokens": int(s * batch_tokens), "loss": float(l),
                                    "loss_avg": float(l), "gns_s_small": g2 + trace / (b // 4),
                                    "gns_s_big": g2 + trace / b, "gns_b_small": b // 4, "gns_b_big": b,
                                    "gns_steps": 10}) + "\n")
    return d


SCAN = [(1e6, 2 ** k) for k in range(14, 22)] + [(4e6, 2 ** k) for k in range(15, 22)]


def make_scan(root, gns=False):
    return [batch_scan.load_scan_run(write_run(root, f"n{int(n)}_b{b}", n, b, seed=i, gns=gns))
            for i, (n, b) in enumerate(SCAN)]


def test_scan_pipeline_recovers_the_b_crit_law(tmp_path):
    runs = make_scan(str(tmp_path))
    assert {r.model for r in runs} == {"transformer_N1000000", "transformer_N4000000"}
    result = batch_scan.fit_scan(runs, n_targets=20, n_boot=60, seed=0)
    assert result["alpha_B"] == pytest.approx(ALPHA_B, rel=0.1)
    assert result["B_star"] == pytest.approx(B_STAR, rel=0.6)
    lo, hi = result["ci95"]["alpha_B"]
    assert lo < result["alpha_B"] < hi
    assert len(result["per_target"]) == 40 and not result["not_reached"] and not result["skipped_models"]
    for p in result["per_target"]:
        truth = batch_scan.critical_batch(p["target_loss"], B_STAR, ALPHA_B)
        assert p["B_crit"] == pytest.approx(truth, rel=0.2)
        assert p["B_crit_lo"] <= p["B_crit"] <= p["B_crit_hi"]
        assert p["bracketed"]  # B_crit(L) runs from 4e4 to 7e5 tokens, inside both grids
        assert p["S_min"] == pytest.approx(s_min_of(p["target_loss"], p["n_params_nonembedding"]), rel=0.2)
    # no warmup in these runs: counting steps at the peak LR changes nothing
    assert [w["model"] for w in result["warmup"]] == result["models"]
    for w in result["warmup"]:
        assert w["bcrit_ratio_median"] == pytest.approx(1.0) and w["bcrit_ratio_highest_target"] == pytest.approx(1.0)
        assert set(w["warmup_steps"].values()) == {0}
    # targets: reached by every run, below every first evaluation
    for model in result["models"]:
        ts = [p["target_loss"] for p in result["per_target"] if p["model"] == model]
        assert max(ts) < min(r.loss[0] for r in runs if r.model == model)


def test_pointwise_s_min_e_min_c_min_on_the_true_law(tmp_path):
    run = make_scan(str(tmp_path))[3]
    rows = batch_scan.pointwise_min(run, B_STAR, ALPHA_B)
    assert len(rows) == len(run.steps)
    for r in rows[5:]:
        L = r["loss"]
        # on the exact hyperbola S/(1+B_crit/B) is S_min(L) and E/(1+B/B_crit) is E_min(L) = B_crit·S_min
        s_min_true = s_min_of(L, run.n_params_nonembedding)
        assert r["S_min"] == pytest.approx(s_min_true, rel=0.05)
        assert r["E_min"] == pytest.approx(s_min_true * batch_scan.critical_batch(L, B_STAR, ALPHA_B), rel=0.05)
        assert r["C_min_pf_days"] == pytest.approx(6 * run.n_params_nonembedding * r["E_min"] / 8.64e19)
        assert r["S_min"] < r["step"] and r["E_min"] < r["tokens"]
    csv = batch_scan.smin_cmin_csv(rows)
    assert csv.splitlines()[0] == ",".join(batch_scan.SMIN_CMIN_COLUMNS)


def test_targets_not_reachable_by_every_run_is_a_clear_error(tmp_path):
    fast = batch_scan.load_scan_run(write_run(str(tmp_path), "fast", 1e6, 2 ** 18))
    stuck = batch_scan.load_scan_run(write_run(str(tmp_path), "stuck", 1e6, 2 ** 16))
    stuck.loss = np.maximum(stuck.loss, fast.loss[0] + 0.1)  # never gets below fast's first evaluation
    with pytest.raises(ValueError, match="run stuck only gets to"):
        batch_scan.choose_targets([fast, stuck])
    with pytest.raises(FileNotFoundError, match="summary.json"):
        batch_scan.load_scan_run(str(tmp_path / "nothing"))


def test_targets_span_the_lower_part_of_the_common_range():
    steps = np.arange(1, 11, dtype=float)
    runs = [batch_scan.ScanRun(f"r{b}", "m", 1e4, b, 6e4, steps, steps * b, 6.0 * steps ** -0.2)
            for b in (256.0, 1024.0)]
    full = batch_scan.choose_targets(runs, 10, target_fraction=1.0)
    half = batch_scan.choose_targets(runs, 10, target_fraction=0.5)
    lo, hi = full.min(), 6.0 * 1 ** -0.2
    assert half.min() == pytest.approx(lo)
    assert half.max() < np.exp(np.log(lo) + 0.5 * (np.log(hi) - np.log(lo))) < full.max()
    with pytest.raises(ValueError, match="target_fraction"):
        batch_scan.choose_targets(runs, 10, target_fraction=0.0)


def test_a_replicate_with_an_extremely_steep_b_crit_has_no_law_instead_of_overflowing():
    L = np.array([4.8, 4.9, 5.0])
    rows = np.array([1e3 * (L / 5.0) ** -500.0, 1e3 * (L / 5.0) ** -5.0])  # B* = 1e3·5^500 overflows; a real law
    b_star, alpha = bcrit.fit_bcrit_law_many(L, rows)
    assert np.isnan(b_star[0]) and np.isnan(alpha[0])
    assert alpha[1] == pytest.approx(0.2) and b_star[1] == pytest.approx(1e3 * 5.0 ** 5.0)


def test_lr_grid_takes_the_fastest_lr_at_each_batch(tmp_path):
    """MKAT18 §2.2: with several LRs per batch size, S(B, L) is the fewest steps any LR needs. A mistuned LR
    (here: twice the steps everywhere, and stuck above the low targets) neither slows B_crit(L) down nor
    narrows the targets; the result says which LR was fastest where."""
    tuned = make_scan(str(tmp_path / "tuned"))
    for r in tuned:
        r.learning_rate = 1e-3
    slow = []
    for i, r in enumerate(tuned):
        s = batch_scan.ScanRun(**{**r.__dict__, "name": r.name + "_slow", "learning_rate": 3e-4})
        s.steps = r.steps * 2.0  # the same losses, reached in twice the steps
        s.tokens = r.tokens * 2.0
        if i % 2 == 0:  # and half of them stop early, well above where the tuned runs end
            keep = s.loss > r.loss[-1] + 0.3
            s.steps, s.tokens, s.loss = s.steps[keep], s.tokens[keep], s.loss[keep]
        slow.append(s)
    alone = batch_scan.fit_scan(tuned, n_targets=20, n_boot=40, seed=0)
    grid = batch_scan.fit_scan(tuned + slow, n_targets=20, n_boot=40, seed=0)
    assert [p["target_loss"] for p in grid["per_target"]] == [p["target_loss"] for p in alone["per_target"]]
    for a, g in zip(alone["per_target"], grid["per_target"]):
        assert g["B_crit"] == pytest.approx(a["B_crit"], rel=1e-9)
    assert grid["alpha_B"] == pytest.approx(alone["alpha_B"], rel=1e-9)
    assert len(grid["lr_grid"]) == len(SCAN) and not alone["lr_grid"]
    for g in grid["lr_grid"]:
        assert g["learning_rates"] == [1e-3, 3e-4] and g["fastest_at_targets"] == [20, 0]
        assert g["runs"] == [g["fastest_run"], g["fastest_run"] + "_slow"]


def test_warmup_check_reads_each_runs_warmup_and_measures_its_effect(tmp_path):
    # The same runs with a warmup fixed in tokens (2^20 tokens: 64 steps at B = 2^14 ... 1 at 2^21), as the quick
    # preset's scan: S counted at the peak LR loses (W-1)/2 steps at small batches, so B_crit moves, most at the
    # highest target (earliest, smallest S).
    runs = make_scan(str(tmp_path))
    for r in runs:
        r.warmup_steps = max(1, int(2 ** 20 // r.batch_tokens))
    result = batch_scan.fit_scan(runs, n_targets=20, n_boot=0, seed=0)
    for w in result["warmup"]:
        assert w["warmup_steps"][f"{2.0 ** 15:g}"] == 32 and w["warmup_steps"][f"{2.0 ** 21:g}"] == 1
        assert w["bcrit_ratio_highest_target"] < w["bcrit_ratio_median"] < 1.0
        assert w["highest_target"] == max(p["target_loss"] for p in result["per_target"] if p["model"] == w["model"])
    loaded = batch_scan.load_scan_run(write_run(str(tmp_path), "w", 1e6, 2 ** 15))
    assert loaded.warmup_steps == 0                                 # summary.json's warmup_steps
