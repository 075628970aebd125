"""Scaling-law forms as small pure functions, in the papers' own symbols.

Conventions (Kaplan et al. 2020, arXiv 2001.08361): N = non-embedding parameters, D = tokens,
L = cross-entropy in nats/token, B = batch in tokens, S = optimizer steps, C = 6·N·B·S FLOPs.
Kaplan's compute constants (C_c, C_e, ...) are in PF-days (1 PF-day = 8.64e19 FLOP); functions that take
Kaplan compute say so in their argument names (``c_pf_days``).

Every function works on floats, numpy arrays and jax arrays alike (only ``**``, ``*``, ``/``, ``exp``
through ``_np(x)``), so the fitters can differentiate the same code that the planner evaluates.
"""
from __future__ import annotations

import math

import numpy as np

from scaling.core import formulas
from scaling.core.units import KAPLAN_TABLE5, PF_DAY as PF_DAY_FLOPS  # noqa: F401  (defined once in scaling.core)

# --- published constants ------------------------------------------------------------------------
# Kaplan Table 5 (= eqs 1.1-1.4, 5.3): scaling.core.units.KAPLAN_TABLE5 (C in PF-days, B in tokens).
# Kaplan Table 2: the L(N, D) fit of eq 1.5.
KAPLAN_TABLE2 = dict(alpha_N=0.076, alpha_D=0.103, N_c=6.4e13, D_c=1.8e13)
# Kaplan Table 3: the L(N, S) fit of eq 1.6.
KAPLAN_TABLE3 = dict(alpha_N=0.077, alpha_S=0.76, N_c=6.5e13, S_c=2.1e3)
# Kaplan Appendix B (eqs B.1-B.14): ONE table for the implicit eq B.3 (its solver), the closed forms B.5 and
# B.8-B.10, the suboptimal-size ratios of B.4 and the convergence-factor comparison B.11-B.14. Table 5's
# single-variable constants (α_N, N_c from L(N); α_S, S_c; α_B, B*). Mixing Table 3's L(N, S) constants
# into the solver (as before) put its N* 4 % away from B.9's at 1e21 FLOP; with one table the numeric
# argmin of B.3 is B.9 (tests/analysis/test_analysis_laws.py).
KAPLAN_APPENDIX_B = {k: KAPLAN_TABLE5[k] for k in ("alpha_N", "N_c", "alpha_S", "S_c", "alpha_B", "B_star")}
_B = KAPLAN_APPENDIX_B
# Kaplan Table 6: compute-efficient frontier, X = X_e · C_min^p_X with C_min in PF-days.
KAPLAN_TABLE6 = dict(p_N=0.73, N_e=1.3e9, p_B=0.24, B_e=2.0e6, p_S=0.03, S_e=5.4e3, p_D=0.27, D_e=2e10)

# Hoffmann et al. 2022 eq 10: rounded (paper body) and unrounded (TeX source, as used by Epoch).
CHINCHILLA_ROUNDED = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
CHINCHILLA_TEX = dict(E=math.exp(0.5267228), A=math.exp(6.0073404), B=math.exp(6.0179186),
                      alpha=0.33917084, beta=0.2849083)
CHINCHILLA_BUDGET = 5.88e23  # Chinchilla's own training FLOPs, where the frontier tests are pinned.

# Muennighoff et al. 2023 (huggingface/datablations README): data-constrained law.
MUENNIGHOFF = dict(A=math.exp(6.255414), B=math.exp(7.3049974), E=math.exp(0.6254804),
                   alpha=0.3526596, beta=0.3526596, R_D_star=15.387756, R_N_star=5.309743)


def _exp(x):
    """exp that stays in the array library of its argument (numpy or jax)."""
    if isinstance(x, (float, int, np.ndarray, np.generic)):
        return np.exp(x)
    import jax.numpy as jnp  # only reached when tracing jax values
    return jnp.exp(x)


def _minimum(x, y):
    if isinstance(x, (float, int, np.ndarray, np.generic)) and isinstance(y, (float, int, np.ndarray, np.generic)):
        return np.minimum(x, y)
    import jax.numpy as jnp
    return jnp.minimum(x, y)


# --- Kaplan eqs 1.1-1.6 -------------------------------------------------------------------------
def loss_of_n(N, N_c=KAPLAN_TABLE5["N_c"], alpha_N=KAPLAN_TABLE5["alpha_N"]):
    """Eq 1.1: L(N) = (N_c/N)^α_N, models trained to convergence on enough data."""
    return (N_c / N) ** alpha_N


def loss_of_d(D, D_c=KAPLAN_TABLE5["D_c"], alpha_D=KAPLAN_TABLE5["alpha_D"]):
    """Eq 1.2: L(D) = (D_c/D)^α_D, large models with early stopping."""
    return (D_c / D) ** alpha_D


def loss_of_c(c_pf_days, C_c=KAPLAN_TABLE5["C_c"], alpha_C=KAPLAN_TABLE5["alpha_C"]):
    """Eq 1.3 (and its C_min version with C_c=3.1e8, α=0.050): L(C) = (C_c/C)^α_C, C in PF-days."""
    return (C_c / c_pf_days) ** alpha_C


def loss_of_cmin(cmin_pf_days, C_c_min=KAPLAN_TABLE5["C_c_min"], alpha_C_min=KAPLAN_TABLE5["alpha_C_min"]):
    """Eq 1.3: L(C_min) = (C_c^min/C_min)^α_C^min, C_min in PF-days."""
    return (C_c_min / cmin_pf_days) ** alpha_C_min


def loss_of_nd(N, D, N_c=KAPLAN_TABLE2["N_c"], D_c=KAPLAN_TABLE2["D_c"], alpha_N=KAPLAN_TABLE2["alpha_N"],
               alpha_D=KAPLAN_TABLE2["alpha_D"]):
    """Eq 1.5: L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D."""
    return ((N_c / N) ** (alpha_N / alpha_D) + D_c / D) ** alpha_D


def loss_of_ns(N, S_min, N_c=KAPLAN_TABLE3["N_c"], S_c=KAPLAN_TABLE3["S_c"], alpha_N=KAPLAN_TABLE3["alpha_N"],
               alpha_S=KAPLAN_TABLE3["alpha_S"]):
    """Eq 1.6: L(N, S_min) = (N_c/N)^α_N + (S_c/S_min)^α_S."""
    return (N_c / N) ** alpha_N + (S_c / S_min) ** alpha_S


critical_batch = formulas.critical_batch  # eq 1.4 / 5.3: B_crit(L) = B*/L^(1/α_B), in tokens


def data_for_no_overfitting(N):
    """Eq 4.4: D ≳ 5e3 · N^0.74 tokens keeps the overfitting penalty below ~2 %."""
    return 5e3 * N ** 0.74


def overfitting_ratio(N, D, N_c=KAPLAN_TABLE2["N_c"], D_c=KAPLAN_TABLE2["D_c"], alpha_N=KAPLAN_TABLE2["alpha_N"],
                      alpha_D=KAPLAN_TABLE2["alpha_D"]):
    """Eq 4.3: δL(N, D) = L(N, D)/L(N, ∞) − 1, the relative penalty for finite data."""
    return (1 + (N / N_c) ** (alpha_N / alpha_D) * D_c / D) ** alpha_D - 1


# --- Kaplan §5: batch-size adjustments (eqs 5.4-5.7) --------------------------------------------
def min_steps(S, B, B_crit):
    """Eq 5.4: S_min = S/(1 + B_crit/B), steps had the batch been B ≫ B_crit."""
    return S / (1 + B_crit / B)


def min_examples(E, B, B_crit):
    """MKAT18 eq 2.12: E_min = E/(1 + B/B_crit), tokens had the batch been B ≪ B_crit."""
    return E / (1 + B / B_crit)


def min_compute(C, B, B_crit):
    """Eq 5.5: C_min = C/(1 + B/B_crit), compute had the batch been B ≪ B_crit."""
    return C / (1 + B / B_crit)


def early_stopping_step_bound(N, D, S_c=KAPLAN_TABLE3["S_c"], N_c=KAPLAN_TABLE2["N_c"], D_c=KAPLAN_TABLE2["D_c"],
                              alpha_N=KAPLAN_TABLE2["alpha_N"], alpha_D=KAPLAN_TABLE2["alpha_D"],
                              alpha_S=KAPLAN_TABLE3["alpha_S"]):
    """Eq 5.7: S_stop(N, D) ≳ S_c / [L(N, D) − L(N, ∞)]^(1/α_S), the step where overfitting starts."""
    gap = loss_of_nd(N, D, N_c, D_c, alpha_N, alpha_D) - loss_of_n(N, N_c, alpha_N)
    return S_c / gap ** (1.0 / alpha_S)


# --- Kaplan Appendix B: the compute-efficient frontier in closed form --------------------------
def loss_of_n_and_compute(N, c_flops, L, N_c=_B["N_c"], S_c=_B["S_c"], alpha_N=_B["alpha_N"], alpha_S=_B["alpha_S"],
                          B_star=_B["B_star"], alpha_B=_B["alpha_B"]):
    """Eq B.3 at a given loss L inside B_crit: (N_c/N)^α_N + (6 B* S_c N/(L^(1/α_B) C))^α_S.

    B.3 is implicit in L (the critical batch depends on the loss reached); `loss_of_n_at_compute`
    solves the fixed point.
    """
    return (N_c / N) ** alpha_N + (6 * B_star * S_c * N / (L ** (1 / alpha_B) * c_flops)) ** alpha_S


def loss_of_n_at_compute(N, c_flops, **consts):
    """Solve eq B.3's implicit loss: L = (N_c/N)^α_N + (6 B* S_c N/(L^(1/α_B) C))^α_S, for scalar N and C.

    The right side falls with L while the left rises, so the root is unique; it lies above L(N, ∞).
    (Plain fixed-point iteration diverges: the step term scales as L^(−α_S/α_B) ≈ L^(−3.6).)
    """
    import scipy.optimize

    floor = loss_of_n(N, consts.get("N_c", _B["N_c"]), consts.get("alpha_N", _B["alpha_N"]))
    gap = lambda L: L - loss_of_n_and_compute(N, c_flops, L, **consts)
    hi = 2 * floor
    while gap(hi) < 0:
        hi *= 2
    return scipy.optimize.brentq(gap, floor, hi, xtol=1e-15, rtol=1e-15)


def alpha_c_min(alpha_N=_B["alpha_N"], alpha_S=_B["alpha_S"], alpha_B=_B["alpha_B"]):
    """Eq B.7/B.8: α_C^min = 1/(1/α_S + 1/α_B + 1/α_N) (0.0520 with Table 5's exponents)."""
    return 1.0 / (1.0 / alpha_S + 1.0 / alpha_B + 1.0 / alpha_N)


def frontier_exponents(alpha_N=_B["alpha_N"], alpha_S=_B["alpha_S"], alpha_B=_B["alpha_B"]):
    """Eqs B.9-B.10: N ∝ C^(α_C/α_N), B ∝ C^(α_C/α_B), S ∝ C^(α_C/α_S); the three sum to one."""
    a_c = alpha_c_min(alpha_N, alpha_S, alpha_B)
    return dict(alpha_C_min=a_c, p_N=a_c / alpha_N, p_B=a_c / alpha_B, p_S=a_c / alpha_S)


def compute_constant_c_c(N_c=_B["N_c"], S_c=_B["S_c"], B_star=_B["B_star"], alpha_N=_B["alpha_N"],
                         alpha_S=_B["alpha_S"]):
    """Eq B.8: C_c = 6 N_c B* S_c (1+α_N/α_S)^(1/α_S+1/α_N) (α_S/α_N)^(1/α_S), in FLOPs."""
    return (6 * N_c * B_star * S_c * (1 + alpha_N / alpha_S) ** (1 / alpha_S + 1 / alpha_N)
            * (alpha_S / alpha_N) ** (1 / alpha_S))


def optimal_n_of_compute(c_flops, N_c=_B["N_c"], S_c=_B["S_c"], B_star=_B["B_star"], alpha_N=_B["alpha_N"],
                         alpha_S=_B["alpha_S"], alpha_B=_B["alpha_B"]):
    """Eq B.9: N(C_min) = N_c (C/C_c)^(α_C/α_N) (1+α_N/α_S)^(1/α_N), C in FLOPs."""
    a_c = alpha_c_min(alpha_N, alpha_S, alpha_B)
    c_c = compute_constant_c_c(N_c, S_c, B_star, alpha_N, alpha_S)
    return N_c * (c_flops / c_c) ** (a_c / alpha_N) * (1 + alpha_N / alpha_S) ** (1 / alpha_N)


def optimal_steps_of_compute(c_flops, N_c=_B["N_c"], S_c=_B["S_c"], B_star=_B["B_star"], alpha_N=_B["alpha_N"],
                             alpha_S=_B["alpha_S"], alpha_B=_B["alpha_B"]):
    """Eq B.10: S_min(C_min) = C_c/(6 N_c B*) (1+α_N/α_S)^(−1/α_N) (C/C_c)^(α_C/α_S)."""
    a_c = alpha_c_min(alpha_N, alpha_S, alpha_B)
    c_c = compute_constant_c_c(N_c, S_c, B_star, alpha_N, alpha_S)
    return c_c / (6 * N_c * B_star) * (1 + alpha_N / alpha_S) ** (-1 / alpha_N) * (c_flops / c_c) ** (a_c / alpha_S)


def converged_loss_excess(alpha_N=_B["alpha_N"], alpha_S=_B["alpha_S"]):
    """Eq B.5: L(N_eff(C), C) = (1 + α_N/α_S) L(N_eff, ∞): compute-efficient runs stop ~10 % above convergence."""
    return 1 + alpha_N / alpha_S


def kaplan_frontier(cmin_pf_days, table6=KAPLAN_TABLE6):
    """Table 6 / eqs 1.7-1.8 (empirical): N_opt, B_crit, S_min, D_opt against C_min in PF-days."""
    c = cmin_pf_days
    return dict(N_opt=table6["N_e"] * c ** table6["p_N"], B=table6["B_e"] * c ** table6["p_B"],
                S_min=table6["S_e"] * c ** table6["p_S"], D_opt=table6["D_e"] * c ** table6["p_D"])


def data_of_cmin(cmin_pf_days):
    """Eq 6.7: D(C_min) ≈ 4e10 · (C_min/PF-day)^0.26 tokens along the efficient frontier."""
    return 4e10 * cmin_pf_days ** 0.26


def steps_of_loss_gap(L_excess, S_c=KAPLAN_TABLE3["S_c"], alpha_S=KAPLAN_TABLE3["alpha_S"]):
    """Eq 1.6's step term inverted: S_min needed to close a loss gap L − L(N, ∞) = (S_c/S_min)^α_S."""
    return S_c / L_excess ** (1.0 / alpha_S)


def compute_of_loss_gap(N, L_excess, L, S_c=KAPLAN_TABLE3["S_c"], alpha_S=KAPLAN_TABLE3["alpha_S"],
                        B_star=KAPLAN_TABLE5["B_star"], alpha_B=KAPLAN_TABLE5["alpha_B"]):
    """C_min = 6 N B_crit(L) S_min(L − L(N, ∞)): the compute for a model of size N to reach loss L."""
    return 6 * N * critical_batch(L, B_star, alpha_B) * steps_of_loss_gap(L_excess, S_c, alpha_S)


def _is_concrete(x) -> bool:
    return isinstance(x, (float, int, np.ndarray, np.generic))


def min_reachable_size_ratio(alpha_N=_B["alpha_N"], alpha_S=_B["alpha_S"]) -> float:
    """App. B.4: the smallest N/N_eff that can reach N_eff's compute-efficient loss at all,
    (1 + α_N/α_S)^(−1/α_N) ≈ 0.285: a smaller model's converged loss L(N, ∞) is already above it."""
    return (1 + alpha_N / alpha_S) ** (-1.0 / alpha_N)


def suboptimal_steps_ratio(n_over_n_eff, alpha_N=_B["alpha_N"], alpha_S=_B["alpha_S"]):
    """App. B.4 (Fig. 12): S(N)/S(N_eff) = [1 + (α_S/α_N)(1 − (N_eff/N)^α_N)]^(−1/α_S) at equal loss,
    for a model N instead of the compute-efficient N_eff for that loss.

    Defined for N/N_eff > `min_reachable_size_ratio` (≈ 0.285); at or below it no number of steps
    reaches the loss (the bracket is <= 0: a Python float would give a complex number, numpy NaN), so
    that is a ValueError naming the limit.
    """
    x = n_over_n_eff
    base = 1 + (alpha_S / alpha_N) * (1 - x ** (-alpha_N))
    if _is_concrete(base) and not np.all(np.asarray(base) > 0):
        bad = np.asarray(x)[np.asarray(base) <= 0] if np.ndim(x) else np.asarray([x])
        raise ValueError(f"N/N_eff = {bad.ravel()[:5].tolist()} cannot reach N_eff's compute-efficient loss: a model "
                         f"smaller than {min_reachable_size_ratio(alpha_N, alpha_S):.4f} x N_eff converges above it "
                         f"(App. B.4, (1 + alpha_N/alpha_S)^(-1/alpha_N)); use N/N_eff above that")
    return base ** (-1.0 / alpha_S)


def suboptimal_compute_ratio(n_over_n_eff, alpha_N=_B["alpha_N"], alpha_S=_B["alpha_S"]):
    """App. B.4 (Fig. 12): C(N)/C(N_eff) = (N/N_eff)·S(N)/S(N_eff) (same loss, so the same B_crit).
    A ValueError below `min_reachable_size_ratio`, as `suboptimal_steps_ratio`."""
    return n_over_n_eff * suboptimal_steps_ratio(n_over_n_eff, alpha_N, alpha_S)


def convergence_factor_comparison(f=None, f_prime=0.02, alpha_N=_B["alpha_N"], alpha_S=_B["alpha_S"]) -> dict:
    """Kaplan App. B (eqs B.11-B.14): training to a convergence factor f, L(N, S) = (1 + f)·L(N, ∞) (B.11),
    against the usual f′ (the paper takes 2 %), at the same loss. From L(N, S) = (N_c/N)^α_N + (S_c/S)^α_S:

        N_f / N_f′ = ((1 + f)/(1 + f′))^(1/α_N)                       (B.12, ≈ 2.7)
        S_f / S_f′ = ((1 + 1/f)/(1 + 1/f′))^(1/α_S)                   (B.13, ≈ 0.13)
        C_f / C_f′ = (N_f / N_f′)·(S_f / S_f′)                          (B.14, ≈ 0.35; same loss, same B_crit)

    ``f`` defaults to the compute-efficient α_N/α_S (eq B.5, ≈ 10 %). Returns the three ratios and f, f′.
    """
    f = alpha_N / alpha_S if f is None else f
    for name, value in (("f", f), ("f_prime", f_prime)):
        if not value > 0:
            raise ValueError(f"convergence factor {name} must be > 0 (L = (1 + f) L(N, inf)), got {value!r}")
    n_ratio = ((1 + f) / (1 + f_prime)) ** (1.0 / alpha_N)
    s_ratio = ((1 + 1 / f) / (1 + 1 / f_prime)) ** (1.0 / alpha_S)
    return dict(f=f, f_prime=f_prime, n_ratio=n_ratio, s_ratio=s_ratio, c_ratio=n_ratio * s_ratio)


# --- Chinchilla (Hoffmann et al. 2022) ------------------------------------------------------------
def chinchilla_loss(N, D, E, A, B, alpha, beta):
    """Eq 10 (Approach 3): L̂(N, D) = E + A/N^α + B/D^β."""
    return E + A / N ** alpha + B / D ** beta


def chinchilla_frontier(c_flops, A, B, alpha, beta, E=None):
    """Eq 4: N_opt = G (C/6)^a, D_opt = G⁻¹ (C/6)^b, G = (αA/(βB))^(1/(α+β)), a = β/(α+β), b = α/(α+β)."""
    G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    a = beta / (alpha + beta)
    b = alpha / (alpha + beta)
    n_opt = G * (c_flops / 6.0) ** a
    d_opt = (c_flops / 6.0) ** b / G
    out = dict(G=G, a=a, b=b, N_opt=n_opt, D_opt=d_opt, tokens_per_param=d_opt / n_opt)
    if E is not None:
        out["loss"] = chinchilla_loss(n_opt, d_opt, E, A, B, alpha, beta)
    return out


# --- Muennighoff et al. 2023: data-constrained scaling -------------------------------------------
def effective_data(D, U_D, R_D_star):
    """D′ = U_D + U_D·R_D*·(1 − e^(−R_D/R_D*)), R_D = D/U_D − 1 repeated epochs (eq 5).

    U_D > D (more unique tokens than tokens trained on) would give D′ < D, or a NaN loss: a ValueError.
    """
    if _is_concrete(D) and _is_concrete(U_D):
        bad = np.flatnonzero(np.atleast_1d(np.asarray(U_D) > np.asarray(D) * (1 + 1e-12)))
        if len(bad):
            raise ValueError(f"unique tokens U_D exceed the tokens trained on D (element {int(bad[0])}: U_D = "
                             f"{np.ravel(np.broadcast_to(U_D, np.broadcast(D, U_D).shape))[bad[0]]:.6g} > D = "
                             f"{np.ravel(np.broadcast_to(D, np.broadcast(D, U_D).shape))[bad[0]]:.6g}); U_D <= D")
    R_D = D / U_D - 1.0
    return U_D + U_D * R_D_star * (1.0 - _exp(-R_D / R_D_star))


def chinchilla_n_opt_of_data(D, A, B, alpha, beta):
    """Compute-optimal N for a data budget D on the Chinchilla frontier: N = G·(D·G)^(β/α)."""
    G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    return (D * G) ** (beta / alpha) * G


def effective_params(N, U_D, A, B, alpha, beta, R_N_star):
    """N′ = U_N + U_N·R_N*·(1 − e^(−R_N/R_N*)), U_N = min(N, N_opt(U_D)), R_N = N/U_N − 1 (eq 6)."""
    U_N = _minimum(N, chinchilla_n_opt_of_data(U_D, A, B, alpha, beta))
    R_N = N / U_N - 1.0
    return U_N + U_N * R_N_star * (1.0 - _exp(-R_N / R_N_star))


def muennighoff_loss(N, D, U_D, E, A, B, alpha, beta, R_D_star, R_N_star):
    """Data-constrained law: L = E + A/N′^α + B/D′^β with repetition-discounted N′ and D′."""
    n_eff = effective_params(N, U_D, A, B, alpha, beta, R_N_star)
    d_eff = effective_data(D, U_D, R_D_star)
    return E + A / n_eff ** alpha + B / d_eff ** beta
