"""Closed forms of Kaplan et al. 2020 (eqs 1.x, 5.x, App. B), Chinchilla's frontier and Muennighoff's law
against the published numbers (validation.md §1, §3.4 items 1, 2, 7, 9)."""
import math

import numpy as np
import pytest
import scipy.optimize

from scaling.analysis import laws

T3, T5, T6 = laws.KAPLAN_TABLE3, laws.KAPLAN_TABLE5, laws.KAPLAN_TABLE6


def test_alpha_c_min_from_table5_exponents():
    # B.8: 1/(1/0.76 + 1/0.21 + 1/0.076) = 0.0520, not the 0.054 of eq 6.4.
    assert laws.alpha_c_min() == pytest.approx(0.05199, abs=1e-5)


def test_frontier_exponents_sum_to_one():
    p = laws.frontier_exponents()
    assert (p["p_N"], p["p_B"], p["p_S"]) == pytest.approx((0.684, 0.248, 0.068), abs=1e-3)
    assert p["p_N"] + p["p_B"] + p["p_S"] == pytest.approx(1.0, abs=1e-12)
    p3 = laws.frontier_exponents(alpha_N=T3["alpha_N"])
    assert p3["alpha_C_min"] == pytest.approx(0.0525, abs=1e-4)


def _numeric_n_opt(c_flops, **consts):
    """Brute-force argmin over N of eq B.3 (given constants, else the Appendix B table), the implicit loss
    solved exactly."""
    res = scipy.optimize.minimize_scalar(lambda ln: laws.loss_of_n_at_compute(math.exp(ln), c_flops, **consts),
                                         bounds=(math.log(1e3), math.log(1e15)), method="bounded",
                                         options=dict(xatol=1e-10))
    return math.exp(res.x), res.fun


def test_numeric_minimisation_of_b3_matches_b9():
    consts = dict(N_c=T3["N_c"], S_c=T3["S_c"], alpha_N=T3["alpha_N"], alpha_S=T3["alpha_S"])
    budgets = np.array([1e18, 1e20, 1e22])
    found = [_numeric_n_opt(c, **consts) for c in budgets]
    n_opt = np.array([n for n, _ in found])
    slope = np.polyfit(np.log(budgets), np.log(n_opt), 1)[0]
    assert slope == pytest.approx(0.681, abs=1e-3)  # p_N with Table 3's alpha_N
    np.testing.assert_allclose(n_opt, laws.optimal_n_of_compute(budgets, **consts), rtol=1e-3)
    # B.5: the optimum trains to (1 + alpha_N/alpha_S) times the converged loss.
    for (n, loss) in found:
        assert loss / laws.loss_of_n(n, T3["N_c"], T3["alpha_N"]) == pytest.approx(
            laws.converged_loss_excess(T3["alpha_N"], T3["alpha_S"]), abs=1e-3)
    assert laws.converged_loss_excess(T3["alpha_N"], T3["alpha_S"]) == pytest.approx(1.1013, abs=1e-4)


def test_b10_steps_consistent_with_compute():
    # B.9 and B.10 with B = B_crit(L(C)) spend exactly C = 6 N B S.
    consts = dict(N_c=T3["N_c"], S_c=T3["S_c"], alpha_N=T3["alpha_N"], alpha_S=T3["alpha_S"])
    c = 1e21
    n = laws.optimal_n_of_compute(c, **consts)
    s = laws.optimal_steps_of_compute(c, **consts)
    loss = laws.loss_of_n_at_compute(n, c, **consts)
    assert 6 * n * laws.critical_batch(loss) * s == pytest.approx(c, rel=1e-6)


def test_compute_constant_b8():
    assert laws.compute_constant_c_c() / laws.PF_DAY_FLOPS == pytest.approx(2.2e8, rel=0.02)
    assert laws.compute_constant_c_c(N_c=T3["N_c"], alpha_N=T3["alpha_N"]) / laws.PF_DAY_FLOPS == pytest.approx(
        1.6e8, rel=0.02)


def test_table6_constants_spend_one_pf_day():
    assert 6 * T6["N_e"] * T6["B_e"] * T6["S_e"] / laws.PF_DAY_FLOPS == pytest.approx(1.0, abs=0.03)
    assert T6["p_N"] + T6["p_B"] + T6["p_S"] == pytest.approx(1.0)


def test_bcrit_doubles_per_13_percent_loss_drop():
    assert laws.critical_batch(0.87 * 3.0) / laws.critical_batch(3.0) == pytest.approx(1.94, abs=0.01)
    # noise-scale.md T8 sanity: 2e8/L^4.76 at L = 4 nats is 2.7e5 tokens.
    assert laws.critical_batch(4.0, B_star=2e8) == pytest.approx(2.7e5, rel=0.03)


def test_batch_adjustments_5_4_and_5_5():
    assert laws.min_steps(1000.0, B=5e5, B_crit=5e5) == pytest.approx(500.0)
    assert laws.min_compute(1e20, B=5e5, B_crit=5e5) == pytest.approx(5e19)
    # B ≫ B_crit: steps approach S_min, compute approaches C·B_crit/B.
    assert laws.min_steps(1000.0, B=1e9, B_crit=1e3) == pytest.approx(1000.0, rel=1e-5)


def test_kaplan_single_laws_and_limits():
    assert laws.loss_of_n(T5["N_c"]) == pytest.approx(1.0)
    # L(N, D) tends to L(N) as D -> inf and to L(D) shape as N -> inf.
    assert laws.loss_of_nd(1e9, 1e30) == pytest.approx(laws.loss_of_n(1e9, 6.4e13, 0.076), rel=1e-9)
    assert laws.loss_of_nd(1e30, 1e10) == pytest.approx((1.8e13 / 1e10) ** 0.103, rel=1e-6)
    assert laws.data_for_no_overfitting(1e9) == pytest.approx(5e3 * 1e9 ** 0.74)
    assert laws.early_stopping_step_bound(1e8, 1e9) > 0


def test_chinchilla_frontier_at_5_88e23():
    tex = laws.CHINCHILLA_TEX
    fr = laws.chinchilla_frontier(laws.CHINCHILLA_BUDGET, tex["A"], tex["B"], tex["alpha"], tex["beta"])
    assert fr["D_opt"] / fr["N_opt"] == pytest.approx(59.0, rel=1e-3)
    assert fr["a"] == pytest.approx(0.4565, abs=1e-4)
    assert fr["G"] == pytest.approx(1.300, abs=1e-3)
    r = laws.CHINCHILLA_ROUNDED
    fr = laws.chinchilla_frontier(laws.CHINCHILLA_BUDGET, r["A"], r["B"], r["alpha"], r["beta"])
    assert fr["D_opt"] / fr["N_opt"] == pytest.approx(92.8, rel=1e-3)
    assert 6 * fr["N_opt"] * fr["D_opt"] == pytest.approx(laws.CHINCHILLA_BUDGET, rel=1e-12)


def test_muennighoff_reduces_to_chinchilla_without_repetition():
    m = laws.MUENNIGHOFF
    chin = dict(E=m["E"], A=m["A"], B=m["B"], alpha=m["alpha"], beta=m["beta"])
    U = np.array([1e10, 1e11, 1e12])
    N = 0.5 * laws.chinchilla_n_opt_of_data(U, m["A"], m["B"], m["alpha"], m["beta"])  # N <= N_opt(U)
    got = laws.muennighoff_loss(N, U, U, **m)
    np.testing.assert_allclose(got, laws.chinchilla_loss(N, U, **chin), rtol=1e-12)
    # Repeating data is worth less than fresh data, but more than nothing.
    rep = laws.muennighoff_loss(N, 4 * U, U, **m)
    assert np.all(rep > laws.chinchilla_loss(N, 4 * U, **chin))
    assert np.all(rep < got)
    # Excess parameters beyond N_opt(U) decay the same way.
    big = 10 * laws.chinchilla_n_opt_of_data(U, m["A"], m["B"], m["alpha"], m["beta"])
    assert np.all(laws.effective_params(big, U, m["A"], m["B"], m["alpha"], m["beta"], m["R_N_star"]) < big)


def test_suboptimal_model_sizes_fig12():
    # N_eff is compute-optimal for its loss: the excess-compute curve has its minimum (1) there.
    x = np.linspace(0.3, 4, 2001)
    ratio = laws.suboptimal_compute_ratio(x)
    assert x[np.argmin(ratio)] == pytest.approx(1.0, abs=2e-3)
    assert ratio.min() == pytest.approx(1.0, abs=1e-6)
    # Fig. 12: sizes 0.6x-2.2x the optimum cost at most ~20 % more compute; larger models need fewer steps.
    assert laws.suboptimal_compute_ratio(0.6) < 1.2
    assert laws.suboptimal_compute_ratio(2.2) == pytest.approx(1.2, abs=0.01)
    assert laws.suboptimal_steps_ratio(2.2) < 1 < laws.suboptimal_steps_ratio(0.6)


def test_compute_of_loss_gap_is_6_n_b_s():
    n, L = 1e8, 3.0
    gap = L - laws.loss_of_n(n, T3["N_c"], T3["alpha_N"])
    s_min = laws.steps_of_loss_gap(gap)
    assert laws.loss_of_ns(n, s_min) == pytest.approx(L, rel=1e-12)
    assert laws.compute_of_loss_gap(n, gap, L) == pytest.approx(6 * n * laws.critical_batch(L) * s_min)


# --- issue 21 item 10 ---------------------------------------------------------------------------------

def test_b3_solver_and_b8_b10_defaults_are_one_table():
    """With the defaults, the numeric argmin of eq B.3 is eq B.9's N* (Table 3 in the solver vs Table 5 in
    B.9 had put them 4 % apart at 1e21 FLOP) and B.10's steps spend exactly C."""
    c = 1e21
    n_star, loss = _numeric_n_opt(c)
    assert n_star == pytest.approx(laws.optimal_n_of_compute(c), rel=1e-3)
    s = laws.optimal_steps_of_compute(c)
    assert 6 * n_star * laws.critical_batch(loss) * s == pytest.approx(c, rel=3e-3)
    assert loss / laws.loss_of_n(n_star) == pytest.approx(laws.converged_loss_excess(), abs=1e-3)
    import inspect
    for fn in (laws.loss_of_n_and_compute, laws.compute_constant_c_c, laws.optimal_n_of_compute,
               laws.optimal_steps_of_compute, laws.alpha_c_min, laws.suboptimal_steps_ratio):
        for name, p in inspect.signature(fn).parameters.items():
            if name in laws.KAPLAN_APPENDIX_B:
                assert p.default == laws.KAPLAN_APPENDIX_B[name], (fn.__name__, name)


def test_convergence_factor_comparison_b12_b14():
    a_n, a_s = laws.KAPLAN_APPENDIX_B["alpha_N"], laws.KAPLAN_APPENDIX_B["alpha_S"]
    out = laws.convergence_factor_comparison()
    f, fp = a_n / a_s, 0.02
    assert out["f"] == pytest.approx(0.1) and out["f_prime"] == 0.02
    assert out["n_ratio"] == pytest.approx(((1 + f) / (1 + fp)) ** (1 / a_n), rel=1e-12)    # B.12
    assert out["s_ratio"] == pytest.approx(((1 + 1 / f) / (1 + 1 / fp)) ** (1 / a_s), rel=1e-12)  # B.13
    assert out["c_ratio"] == pytest.approx(out["n_ratio"] * out["s_ratio"], rel=1e-12)      # B.14
    # The paper's numbers: 2.7x the parameters, 7.7x fewer steps (0.13), 65 % less compute (0.35).
    assert out["n_ratio"] == pytest.approx(2.7, abs=0.05)
    assert out["s_ratio"] == pytest.approx(0.13, abs=0.01) and 1 / out["s_ratio"] == pytest.approx(7.7, abs=0.3)
    assert out["c_ratio"] == pytest.approx(0.35, abs=0.02)
    # Derived from L(N, S) = (N_c/N)^a_N + (S_c/S)^a_S directly: at a fixed loss L, L(N, inf) = L/(1+f) and
    # the step term is f L/(1+f); invert both for each f and take the ratios.
    N_c, S_c, L = laws.KAPLAN_APPENDIX_B["N_c"], laws.KAPLAN_APPENDIX_B["S_c"], 2.5
    n = lambda g: N_c * (L / (1 + g)) ** (-1 / a_n)  # noqa: E731
    steps = lambda g: S_c * (g * L / (1 + g)) ** (-1 / a_s)  # noqa: E731
    for g in (0.05, 0.1, 0.3):
        got = laws.convergence_factor_comparison(g, 0.01)
        assert got["n_ratio"] == pytest.approx(n(g) / n(0.01), rel=1e-9)
        assert got["s_ratio"] == pytest.approx(steps(g) / steps(0.01), rel=1e-9)
        assert laws.loss_of_ns(n(g), steps(g), N_c, S_c, a_n, a_s) == pytest.approx(L, rel=1e-12)
    assert laws.convergence_factor_comparison(0.02, 0.02)["c_ratio"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="must be > 0"):
        laws.convergence_factor_comparison(0.0)


def test_suboptimal_ratios_below_the_reachable_size_are_an_error():
    x_min = laws.min_reachable_size_ratio()
    assert x_min == pytest.approx((1 + 0.1) ** (-1 / 0.076), rel=1e-12)
    assert laws.suboptimal_steps_ratio(x_min * 1.01) > 10          # steps diverge at the limit
    for x in (0.2, np.array([0.5, 0.2])):
        with pytest.raises(ValueError, match="cannot reach") as error:
            laws.suboptimal_steps_ratio(x)
        assert "0.285" in str(error.value)
        with pytest.raises(ValueError, match="cannot reach"):
            laws.suboptimal_compute_ratio(x)


def test_effective_data_refuses_more_unique_tokens_than_tokens():
    m = laws.MUENNIGHOFF
    assert laws.effective_data(4e9, 1e9, m["R_D_star"]) > 1e9
    with pytest.raises(ValueError, match="U_D = 2e\\+09 > D = 1e\\+09"):
        laws.effective_data(np.array([4e9, 1e9]), np.array([1e9, 2e9]), m["R_D_star"])
