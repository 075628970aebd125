"""The separable learning-curve fit (eq 1.6 with a free L(N) term) recovers known laws from synthetic curves."""
import dataclasses

import numpy as np
import pytest

from scaling.analysis import learning_curves as lc
from scaling.analysis.io import InputError

N_C, ALPHA_N, S_C, ALPHA_S = 3.0e8, 0.12, 60.0, 0.7


def synthetic(ns, steps_of, noise=0.0, seed=0, b_crit=None, batch=1024.0):
    rng = np.random.default_rng(seed)
    curves = []
    for n in ns:
        steps = np.arange(100, steps_of(n) + 1, 100, dtype=float)
        l_inf = (N_C / n) ** ALPHA_N
        loss = l_inf + (S_C / steps) ** ALPHA_S
        if b_crit is not None:   # S_min from the (true) loss: solve L = L∞ + (S_c/S_min(L))^α_S by iteration
            for _ in range(50):
                loss = l_inf + (S_C / lc.s_min(steps, loss, batch, b_crit)) ** ALPHA_S
        loss = loss * (1 + noise * rng.standard_normal(len(steps)))
        curves.append(lc.Curve(f"r{int(n)}", n, steps, loss, batch))
    return curves


NS = [3e3, 6e3, 1.2e4, 2.5e4, 5.5e4, 1e5, 1.9e5, 3.3e5]


def test_recovers_step_law_and_converged_losses_exactly():
    fit = lc.fit_separable(synthetic(NS, lambda n: 2000), start_fraction=0.0)
    assert fit.alpha_s == pytest.approx(ALPHA_S, rel=1e-4)
    assert fit.s_c == pytest.approx(S_C, rel=1e-3)
    for n in NS:
        assert fit.l_inf[f"r{int(n)}"] == pytest.approx((N_C / n) ** ALPHA_N, rel=1e-5)
    n_c, alpha_n = lc.power_law_fit(NS, [fit.l_inf[f"r{int(n)}"] for n in NS])
    assert alpha_n == pytest.approx(ALPHA_N, rel=1e-4) and n_c == pytest.approx(N_C, rel=1e-2)
    assert fit.r2_log > 0.9999 and fit.rms_rel < 1e-6


def test_a_fit_that_runs_to_the_edge_of_its_search_says_so():
    """Curves that are one straight power law in S (no L∞ to separate from the step term) send S_c to the edge of
    its search range: the fit flags it (and the report then measures neither); curves with a constant do not."""
    good = lc.fit_separable(synthetic(NS, lambda n: 2000), start_fraction=0.0)
    assert not good.at_search_bound and good.record()["at_search_bound"] is False
    steps = np.arange(100, 2001, 100, dtype=float)
    straight = [lc.Curve(f"r{i}", n, steps, 6.0 * (n / 1e4) ** -0.02 * steps ** -0.05, 1024.0)
                for i, n in enumerate((1e4, 4e4))]
    fit = lc.fit_separable(straight, start_fraction=0.0)
    assert fit.at_search_bound and fit.record()["at_search_bound"] is True


def test_alpha_n_moves_with_b_crits_slope_around_the_true_one():
    """Curves made with S_min from B_crit(L) = 2e4/L^4 (α_B 0.25): refitted with α_B at 0.2 and 0.3 (B_crit held at
    the pivot loss) α_N comes out on either side of the true one; no interval or no pivot: None."""
    b_crit = lambda loss: 2.0e4 / loss ** 4
    curves = synthetic(NS, lambda n: 2000, b_crit=b_crit)
    pivot = {"loss": 3.0, "B_crit": float(b_crit(3.0))}
    record = {"B_star": 2.0e4, "alpha_B": 0.25, "ci95": {"alpha_B": [0.2, 0.3]}, "pivot": pivot}
    by_slope = lc.alpha_n_by_bcrit_slope(curves, record)
    assert set(by_slope) == {0.2, 0.3}
    assert min(by_slope.values()) < ALPHA_N < max(by_slope.values())
    same = lc.alpha_n_by_bcrit_slope(curves, {**record, "ci95": {"alpha_B": [0.25, 0.25]}})
    assert list(same.values()) == pytest.approx([ALPHA_N], rel=1e-6)      # the true slope: the true α_N
    assert lc.alpha_n_by_bcrit_slope(curves, {**record, "pivot": None}) is None
    assert lc.alpha_n_by_bcrit_slope(curves, {"B_star": 2.0e4, "alpha_B": 0.25, "pivot": pivot}) is None


def test_s_min_correction_is_needed_when_the_data_has_it():
    b_crit = lambda loss: 2.0e4 / loss ** 4   # tokens; comparable to the batch at these losses
    curves = synthetic(NS, lambda n: 2000, b_crit=b_crit)
    with_correction = lc.fit_separable(curves, b_crit=b_crit, start_fraction=0.0)
    without = lc.fit_separable(curves, start_fraction=0.0)
    assert with_correction.alpha_s == pytest.approx(ALPHA_S, rel=1e-3)
    assert with_correction.rms_rel < 1e-5 < without.rms_rel


def test_prediction_of_a_larger_model_with_noise_is_inside_its_interval():
    curves = synthetic(NS, lambda n: 2000, noise=0.002, seed=3)
    target = 7.9e5
    out = lc.predict_final_loss(curves, target, 1200, 1024.0, start_fraction=0.0, n_boot=60, seed=1)
    truth = (N_C / target) ** ALPHA_N + (S_C / 1200) ** ALPHA_S
    assert abs(out["loss_pred"] / truth - 1) < 0.01
    assert out["loss_pred_lo"] < truth < out["loss_pred_hi"]
    assert out["alpha_N"] == pytest.approx(ALPHA_N, rel=0.15)


def test_prediction_with_s_min_solves_the_fixed_point_for_a_steep_step_term():
    """L = L∞ + (S_c/S_min(L))^α_S with S_min = S/(1 + B_crit(L)/B). With the full study's fitted constants
    (α_S 1.84, S_c 216, B_crit = 2.4e7/L^6.2), three passes of the map from L∞ oscillated to 11.05 nats for a
    run measured at 4.13; the root solve returns the fixed point, which the curve it came from satisfies."""
    b_crit = lambda loss: 2.405e7 / np.asarray(loss) ** (1 / 0.1625)   # noqa: E731
    fit = lc.SeparableFit(216.5, 1.8395, {}, 0.0, 0, 1.0, {}, True)
    for steps in (300, 1200, 4000):
        loss = lc.loss_at_steps(3.2279, fit, steps, 1024.0, b_crit)
        assert loss == pytest.approx(3.2279 + float(fit.step_term(lc.s_min([steps], [loss], 1024.0, b_crit))[0]),
                                     abs=1e-8)
    assert lc.loss_at_steps(3.2279, fit, 1200, 1024.0, b_crit) == pytest.approx(4.0819, abs=1e-3)
    # The synthetic ladder of the S_min test: the prediction is the true loss of the larger model.
    b_crit = lambda loss: 2.0e4 / np.asarray(loss) ** 4   # noqa: E731
    curves = synthetic(NS, lambda n: 2000, b_crit=b_crit)
    out = lc.predict_final_loss(curves, 7.9e5, 1200, 1024.0, b_crit=b_crit, start_fraction=0.0, n_boot=0)
    truth = synthetic([7.9e5], lambda n: 1200, b_crit=b_crit)[0].loss[-1]
    assert out["loss_pred"] == pytest.approx(truth, rel=1e-4)


def test_window_drops_the_early_plateau():
    s, l = lc.curve_window([100, 200, 400, 800], [6.0, 5.9, 5.0, 4.5], start_fraction=0.25)
    assert s.tolist() == [200, 400, 800] and l.tolist() == [5.9, 5.0, 4.5]


def test_bad_input_is_named():
    curves = synthetic(NS[:2], lambda n: 300)
    with pytest.raises(InputError, match="needs >= 2 runs"):
        lc.fit_separable(curves[:1])
    with pytest.raises(InputError, match="eval points"):
        lc.fit_separable(curves, start_fraction=0.9)
    with pytest.raises(InputError, match="duplicate"):
        lc.fit_separable([curves[0], dataclasses.replace(curves[1], name=curves[0].name)], start_fraction=0.0)


def test_floor_power_law_fit_recovers_a_floor_and_removes_the_bend():
    from scaling.analysis import report_tables as rt
    n = np.geomspace(3e3, 4e5, 8)
    e, n_c, alpha = 3.1, 4e4, 0.17
    loss = (e + (n_c / n) ** alpha) * np.exp(np.random.default_rng(0).normal(0, 3e-4, n.size))
    fit = lc.floor_power_law_fit(n, loss, n_boot=100, seed=0)
    p = fit["params"]
    assert p["E"] == pytest.approx(e, abs=0.15) and p["alpha_N"] == pytest.approx(alpha, rel=0.15)
    lo, hi = fit["ci95"]["alpha_N"]
    assert lo <= alpha <= hi and lo < p["alpha_N"] < hi
    assert rt.fit_quality(n, loss, fit["predict"](n))["bend_p"] > 0.05     # no bend left
    slope, icpt = np.polyfit(np.log(n), np.log(loss), 1)                    # the pure power law does bend
    assert rt.fit_quality(n, loss, np.exp(icpt + slope * np.log(n)))["bend_p"] < 1e-3


def test_floor_power_law_fit_on_a_pure_power_law_finds_no_floor():
    n = np.geomspace(1e3, 1e9, 10)
    loss = (8.8e13 / n) ** 0.076
    fit = lc.floor_power_law_fit(n, loss, n_boot=20, seed=0)
    assert fit["params"]["E"] < 0.05 * loss.min()
    assert fit["params"]["alpha_N"] == pytest.approx(0.076, rel=0.05)
    with pytest.raises(Exception, match=">= 4 points"):
        lc.floor_power_law_fit(n[:3], loss[:3])


def test_backtests_are_exact_on_an_exact_law_and_catch_a_misspecified_one():
    """On curves that follow eq 1.6 exactly, predicting each of the largest rungs from the smaller ones at the
    target step is exact (the interval is then the bootstrap's). Curves whose L∞ bend away from a power law
    (a floor E) make the method miss one step up in N: the backtests see it, and the widened interval covers a
    larger model that the rung bootstrap's interval misses."""
    curves = synthetic(NS, lambda n: 3000)
    checks = lc.backtests(curves, 1200, start_fraction=0.0)
    assert [c["run"] for c in checks] == ["r100000", "r190000", "r330000"]
    for c in checks:
        assert c["fit_runs"] == NS.index(c["n_params"]) and c["measured"] == pytest.approx(
            (N_C / c["n_params"]) ** ALPHA_N + (S_C / 1200) ** ALPHA_S, rel=1e-12)
        assert abs(c["error"]) < 1e-4

    def floored(ns):   # L∞ = 2.5 + (2e4/N)^0.35: a floor, so a pure power law through the L∞ undershoots larger N
        return [dataclasses.replace(c, loss=c.loss - (N_C / c.n_params) ** ALPHA_N + 2.5 + (2e4 / c.n_params) ** 0.35)
                for c in synthetic(ns, lambda n: 3000, noise=0.001, seed=4)]
    curves = floored(NS)
    target = 7.9e5
    truth = lc.loss_at_step(floored([target])[0], 1200)
    out = lc.predict_final_loss(curves, target, 1200, 1024.0, start_fraction=0.0, n_boot=60, seed=1)
    assert len(out["backtests"]) == 3 and all(c["error"] < -0.05 for c in out["backtests"])   # measured -0.11..-0.15
    assert not out["bootstrap_lo"] < truth < out["bootstrap_hi"]
    assert out["loss_pred_lo"] < truth < out["loss_pred_hi"]
    assert out["loss_pred_lo"] < out["bootstrap_lo"] and out["loss_pred_hi"] > out["bootstrap_hi"]


def test_predictive_interval_adds_the_backtest_error_in_quadrature():
    lo, hi = lc.predictive_interval(4.0, 3.97, 4.04, [0.03, -0.04])
    model = 1.96 * np.sqrt((0.03 ** 2 + 0.04 ** 2) / 2)
    assert lo == pytest.approx(4.0 - np.hypot(0.03, model)) and hi == pytest.approx(4.0 + np.hypot(0.04, model))
    assert lc.predictive_interval(4.0, 3.97, 4.04, []) == (3.97, 4.04)
    assert lc.predictive_interval(4.0, None, None, [0.1]) == (None, None)


def test_loss_at_step_interpolates_and_refuses_outside():
    c = lc.Curve("r", 1e4, np.array([100.0, 200.0, 400.0]), np.array([5.0, 4.0, 3.5]), 1024.0)
    assert lc.loss_at_step(c, 200) == pytest.approx(4.0)
    assert lc.loss_at_step(c, np.sqrt(200 * 400)) == pytest.approx(np.sqrt(4.0 * 3.5))
    assert lc.loss_at_step(c, 50) is None and lc.loss_at_step(c, 500) is None
