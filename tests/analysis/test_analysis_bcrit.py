"""B_crit helpers (noise-scale.md §2, T7-i): per-target S = S_min + E_min/B fits, B_crit(L) = B*/L^(1/α_B),
steps-to-target interpolation and the whole-run bootstrap."""
import numpy as np
import pytest

from scaling.analysis import bcrit, fitting, laws

B_STAR, ALPHA_B = 2e8, 0.21
TARGETS = np.array([3.2, 3.5, 3.8, 4.1, 4.4])
BATCHES = 2.0 ** np.arange(12, 23)  # tokens


def scan(noise=0.0, seed=0, s_min_of_target=lambda L: 2e4 * (L - 2.5) ** -1.5):
    """Synthetic scan: each (target, B) cell is one 'run' with S = S_min (1 + B_crit/B) e^noise."""
    rng = np.random.default_rng(seed)
    target, B, S = [], [], []
    for L in TARGETS:
        b_crit = laws.critical_batch(L, B_STAR, ALPHA_B)
        for b in BATCHES:
            target.append(L)
            B.append(b)
            S.append(s_min_of_target(L) * (1 + b_crit / b) * np.exp(noise * rng.standard_normal()))
    return np.array(target), np.array(B), np.array(S)


def test_hyperbola_fit_exact_on_noiseless_scan():
    s_min, b_crit = 1234.0, 3e5
    fit = bcrit.fit_steps_vs_batch(BATCHES, s_min * (1 + b_crit / BATCHES))
    assert fit.S_min == pytest.approx(s_min, rel=1e-6)
    assert fit.B_crit == pytest.approx(b_crit, rel=1e-6)
    assert fit.E_min == pytest.approx(s_min * b_crit, rel=1e-6)
    assert fit.bracketed


def test_unbracketed_scan_is_flagged():
    fit = bcrit.fit_steps_vs_batch(BATCHES[:3], 1000.0 * (1 + 1e7 / BATCHES[:3]))
    assert not fit.bracketed


def test_bcrit_law_recovered_from_noisy_scan():
    target, B, S = scan(noise=0.03, seed=1)
    fit = bcrit.fit_scans([bcrit.scan_from_rows(target, B, S)], n_boot=0)
    assert fit["alpha_B"] == pytest.approx(ALPHA_B, rel=0.1)
    assert fit["B_star"] == pytest.approx(B_STAR, rel=0.5)
    assert len(fit["per_target"]) == len(TARGETS)
    for f in fit["per_target"]:
        assert f["B_crit"] == pytest.approx(laws.critical_batch(f["target_loss"], B_STAR, ALPHA_B), rel=0.15)


def grouped_scan(seed, run_noise=0.15, cell_noise=0.01):
    """Each run (one batch size) reaches every target; its steps share one multiplicative error across the
    targets (a run that is slow is slow at every loss), so the B_crit(L_j) are correlated through the runs."""
    rng = np.random.default_rng(seed)
    target, B, S, runs = [], [], [], []
    for r, b in enumerate(np.repeat(BATCHES, 2)):   # 2 seeds per batch size: 22 runs
        slow = np.exp(run_noise * rng.standard_normal())
        for L in TARGETS:
            s_min = 2e4 * (L - 2.5) ** -1.5
            target.append(L)
            B.append(b)
            S.append(s_min * (1 + laws.critical_batch(L, B_STAR, ALPHA_B) / b) * slow
                     * np.exp(cell_noise * rng.standard_normal()))
            runs.append(f"run{r}")
    return np.array(target), np.array(B), np.array(S), np.array(runs)


def test_grouped_bootstrap_resamples_whole_runs():
    """With run ids, a replicate keeps or drops all of a run's rows together, so every target of a replicate
    is fitted on the same batch sizes. Resampling (run, target) cells instead gives each target its own random
    subset of batch sizes: a much wider, over-covering interval (measured: 3.2x wider in log α_B on these
    scans, 100% coverage of both parameters). The grouped one is narrow and still covers the truth."""
    target, B, S, runs = grouped_scan(seed=3)
    scan = bcrit.scan_from_rows(target, B, S, runs)
    assert scan.S.shape == (22, len(TARGETS)) and np.isfinite(scan.S).all()
    assert sorted(scan.run_names) == sorted(set(runs))
    grouped = bcrit.fit_scans([scan], n_boot=200, seed=0)
    cells = bcrit.fit_scans([bcrit.scan_from_rows(target, B, S)], n_boot=200, seed=0)
    assert grouped["B_star"] == pytest.approx(cells["B_star"], rel=1e-9)   # same point estimate
    assert grouped["n_boot_valid"] == 200
    width = lambda fit: np.log(fit["ci95"]["alpha_B"][1] / fit["ci95"]["alpha_B"][0])  # noqa: E731
    assert width(grouped) < 0.5 * width(cells)
    covered = []
    for seed in range(12):
        t, b, s, r = grouped_scan(seed=100 + seed)
        fit = bcrit.fit_scans([bcrit.scan_from_rows(t, b, s, r)], n_boot=200, seed=seed)
        covered.append(fit["ci95"]["alpha_B"][0] < ALPHA_B < fit["ci95"]["alpha_B"][1]
                       and fit["ci95"]["B_star"][0] < B_STAR < fit["ci95"]["B_star"][1])
    assert sum(covered) >= 10, covered   # measured on 40 scans: 100% (α_B), 97.5% (B*)


def test_pivot_b_crit_is_pinned_where_b_star_is_not():
    """B* is B_crit at L = 1 nat, far below the targets (3.2-4.4): its interval is α_B's, amplified by the
    extrapolation. B_crit at the targets' geometric mean (the pivot) is what the scan measures: the fit's own
    value there, an interval that covers the truth and is much narrower (in hi/lo) than B*'s."""
    covered = []
    for seed in range(8):
        target, B, S, runs = grouped_scan(seed=200 + seed)
        fit = bcrit.fit_scans([bcrit.scan_from_rows(target, B, S, runs)], n_boot=200, seed=seed)
        pivot = fit["pivot"]
        assert pivot["loss"] == pytest.approx(np.exp(np.mean(np.log(TARGETS))), rel=1e-12)
        assert pivot["B_crit"] == pytest.approx(laws.critical_batch(pivot["loss"], fit["B_star"], fit["alpha_B"]),
                                                rel=1e-9)
        lo, hi = pivot["ci95"]
        covered.append(lo < laws.critical_batch(pivot["loss"], B_STAR, ALPHA_B) < hi)
        b_lo, b_hi = fit["ci95"]["B_star"]
        assert np.log(hi / lo) < 0.6 * np.log(b_hi / b_lo)   # measured: 0.35-0.44x on these scans
    assert sum(covered) >= 6, covered


def test_a_run_at_two_batch_sizes_is_refused():
    with pytest.raises(fitting.FitError, match="one run is one batch size"):
        bcrit.scan_from_rows([3.0, 3.5], [1024.0, 2048.0], [10.0, 20.0], ["r0", "r0"])


def test_steps_to_target_interpolates_running_minimum():
    steps = np.array([10, 20, 40, 80])
    losses = np.array([5.0, 4.0, 4.5, 3.0])  # the bump at step 40 must not count: running min
    assert bcrit.steps_to_target(steps, losses, 4.0) == pytest.approx(20.0)
    got = bcrit.steps_to_target(steps, losses, 3.5)
    assert 40 < got < 80
    assert got == pytest.approx(np.exp(np.log(40) + 0.5 * np.log(2)))  # running min is 4.0 at step 40
    assert np.isnan(bcrit.steps_to_target(steps, losses, 2.0))


def test_bcrit_law_refuses_rising_batch():
    with pytest.raises(fitting.FitError, match="does not fall"):
        bcrit.fit_bcrit_law([3.0, 4.0, 5.0], [1e5, 2e5, 3e5])


def test_bcrit_shape_sees_a_collapse_and_a_steepening():
    """Two model sizes on one power law: they collapse (ratio ~0) and both halves give the same α_B. A B_crit
    that steepens towards low loss (B*/(L - 2.7)^(1/α_B)) gives a smaller α_B on the low-loss half; a model whose
    B_crit is 2x the other's at equal L does not collapse."""
    def points(model, losses, fn):
        return [dict(model=model, target_loss=float(l), B_crit=float(fn(l))) for l in losses]
    law = lambda l: laws.critical_batch(l, B_STAR, ALPHA_B)  # noqa: E731
    clean = bcrit.bcrit_shape(points("a", np.linspace(3.5, 4.5, 15), law) + points("b", np.linspace(3.0, 4.0, 15), law))
    assert clean["collapse"] == pytest.approx(0.0, abs=1e-3)
    assert clean["alpha_B_high_L"] == pytest.approx(ALPHA_B, rel=1e-3)
    assert clean["alpha_B_low_L"] == pytest.approx(ALPHA_B, rel=1e-3)
    steep = lambda l: 1e6 / (l - 2.7) ** (1 / ALPHA_B)  # noqa: E731
    bent = bcrit.bcrit_shape(points("a", np.linspace(3.0, 4.5, 20), steep))
    assert bent["collapse"] is None
    assert bent["alpha_B_low_L"] < 0.7 * bent["alpha_B_high_L"]
    apart = bcrit.bcrit_shape(points("a", np.linspace(3.5, 4.5, 15), law)
                              + points("b", np.linspace(3.0, 4.0, 15), lambda l: 2 * law(l)))
    assert apart["collapse"] == pytest.approx(1.0, rel=1e-6)


def test_bcrit_shape_tells_a_law_in_tokens_from_a_law_in_loss():
    """B_crit ∝ E_min^0.6 exactly, with the two sizes needing different tokens for the same loss: the tokens law
    fits (R² 1) and the loss law does not; a clean law in L with E_min unrelated to B_crit is the other way round."""
    rng = np.random.default_rng(0)
    pts = []
    for model, scale in (("a", 1.0), ("b", 3.0)):
        for l in np.linspace(4.0, 5.0, 12):
            e = scale * 1e5 * (5.0 / l) ** 8   # the bigger `b` needs 3x the tokens at every loss
            pts.append(dict(model=model, target_loss=float(l), E_min=float(e), B_crit=float(50 * e ** 0.6)))
    by_tokens = bcrit.bcrit_shape(pts)
    assert by_tokens["tokens_exponent"] == pytest.approx(0.6, rel=1e-9)
    assert by_tokens["r2_vs_tokens"] == pytest.approx(1.0, abs=1e-12)
    assert by_tokens["r2_vs_loss"] < 0.9
    by_loss = bcrit.bcrit_shape([dict(p, B_crit=float(laws.critical_batch(p["target_loss"], B_STAR, ALPHA_B)),
                                      E_min=float(p["E_min"] * np.exp(rng.normal(0, 1.0)))) for p in pts])
    assert by_loss["r2_vs_loss"] == pytest.approx(1.0, abs=1e-12) and by_loss["r2_vs_tokens"] < 0.9
    assert bcrit.bcrit_shape(pts[:2])["r2_vs_tokens"] is None  # too few points: no comparison


def test_peak_lr_steps_sums_the_trainers_warmup_schedule():
    # The trainer's warmup: lr_t / peak = (t + 1) / W for t < W, then 1 (scaling/train/optimizers.py).
    W = 8
    frac = np.minimum(1.0, (np.arange(40) + 1.0) / W)
    cumulative = np.cumsum(frac)                               # after S updates: cumulative[S - 1]
    for S in (1, 3, 7, 8, 9, 20, 40):
        assert bcrit.peak_lr_steps(S, W) == pytest.approx(cumulative[S - 1])
    assert np.array_equal(bcrit.peak_lr_steps([5.0, 50.0], 1), [5.0, 50.0])   # no warmup: the steps themselves
    assert np.array_equal(bcrit.peak_lr_steps([5.0, 50.0], 0), [5.0, 50.0])


def test_warmup_sensitivity_sees_a_warmup_fixed_in_tokens_and_not_a_short_one():
    # True law at each target: S = S_min + E_min/B in steps at the peak LR. A run that warms up over W steps needs
    # (W-1)/2 more optimizer steps (past its warmup). Fixed in tokens, W ∝ 1/B adds ∝ 1/B: it looks like E_min.
    batches = np.array([256.0, 512, 1024, 2048, 4096, 8192])
    s_min = np.array([100.0, 150, 250])
    e_min = s_min * np.array([800.0, 1200, 2000])                  # B_crit 800 ... 2,000 tokens
    true = s_min[None, :] + e_min[None, :] / batches[:, None]
    in_tokens = np.round(51200 / batches)                          # 200 steps at B = 256 ... 6 at 8,192
    S = true + (in_tokens[:, None] - 1) / 2
    assert np.all(S >= in_tokens[:, None])                         # every target is past every warmup: exact
    ratio = bcrit.warmup_sensitivity(batches, S, in_tokens)
    raw = np.array([bcrit.fit_steps_vs_batch(batches, S[:, j]).B_crit for j in range(3)])
    assert np.allclose(raw * ratio, e_min / s_min, rtol=1e-6)      # the peak-LR clock recovers the true B_crit
    assert ratio[0] < 0.85 and ratio[0] < ratio[-1] < 1            # raw B_crit inflated, most at the highest target
    short = true + (12 - 1) / 2                                    # 12 steps at every batch
    assert np.allclose(bcrit.warmup_sensitivity(batches, short, np.full(6, 12.0)), 1.0 + 5.5 / s_min, rtol=1e-6)
