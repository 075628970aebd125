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
    fit = bcrit.fit_bcrit_scan(target, B, S)
    assert fit.alpha_B == pytest.approx(ALPHA_B, rel=0.1)
    assert fit.B_star == pytest.approx(B_STAR, rel=0.5)
    for L, f in fit.per_target.items():
        assert f.B_crit == pytest.approx(laws.critical_batch(L, B_STAR, ALPHA_B), rel=0.15)


def test_whole_run_bootstrap_covers_truth():
    target, B, S = scan(noise=0.03, seed=2)
    runs = np.arange(len(B))  # one run per cell
    reps = bcrit.bootstrap_bcrit_scan(target, B, S, runs, n_boot=100, seed=0)
    lo, hi = fitting.percentile_ci(reps)
    assert lo[1] < ALPHA_B < hi[1]
    assert np.isfinite(reps).all(axis=1).mean() > 0.9


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
