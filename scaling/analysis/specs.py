"""Parametric laws in fitting form: log-space parameters, log L̂ via log-sum-exp, start grids.

Each `ParametricLaw` says which CSV columns it needs, how its internal parameters θ (logs of the
positive coefficients, plus exponents) map to the paper's symbols, and the grid of starts for the
multi-start fitter. Add a law by writing its `log_pred(theta, cols)` (cols hold log N, log D, ... as
arrays) and registering it in `PARAMETRIC_LAWS`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from scaling.analysis import laws

CHINCHILLA_GRID = (tuple(np.arange(0, 26, 5.0)), tuple(np.arange(0, 26, 5.0)), tuple(np.arange(-1, 1.01, 0.5)),
                   tuple(np.arange(0, 2.01, 0.5)), tuple(np.arange(0, 2.01, 0.5)))  # Hoffmann App. D.2: 4,500 starts

# log N_c, log D_c starts for eqs 1.5/1.6. Kaplan's are ~31 (N_c = 8.8e13); a small model trained briefly has a
# tiny exponent, and log X_c ≈ mean(log L)/α + mean(log X) is then ~80 (α_N = 0.027 at N ~ 1e5 gives 78) or more.
KAPLAN_LOG_SCALE_GRID = (0, 10, 30, 50, 70, 90, 120, 160, 240)


@dataclasses.dataclass(frozen=True)
class ParametricLaw:
    name: str
    theta_names: tuple            # internal parameters (fitted)
    columns: tuple                # CSV columns needed besides `loss`
    log_pred: Callable            # (theta, cols) -> log L̂, cols = {"logN": ..., ...}
    to_params: Callable           # theta -> {paper symbol: value}
    grid: tuple                   # start values per theta coordinate
    description: str

    def cols(self, table: Mapping[str, np.ndarray]) -> dict:
        """Log covariates for `log_pred` from a table of raw columns."""
        return {f"log{c}": np.log(np.asarray(table[c], dtype=np.float64)) for c in self.columns}

    def predict(self, theta, table) -> np.ndarray:
        """L̂ at the rows of `table` (numpy, float64)."""
        with jax.enable_x64(True):
            cols = {k: jnp.asarray(v) for k, v in self.cols(table).items()}
            return np.exp(np.asarray(self.log_pred(jnp.asarray(np.asarray(theta, dtype=np.float64)), cols)))


def _exp(x: float) -> float:
    """exp that returns inf past float64's range: a degenerate bootstrap replicate (α → 0, log N_c → 1e3) must
    become an unbounded CI side, not an OverflowError."""
    return math.exp(x) if x < 709.0 else math.inf


def _lse(*terms):
    return jax.nn.logsumexp(jnp.stack(jnp.broadcast_arrays(*terms)), axis=0)


# --- Chinchilla approach 3: L = E + A/N^α + B/D^β, θ = (a, b, e, α, β) ---------------------------------
def chinchilla_log_pred(theta, cols):
    a, b, e, alpha, beta = theta
    return _lse(a - alpha * cols["logN"], b - beta * cols["logD"], e + 0 * cols["logN"])


def _chinchilla_params(theta):
    a, b, e, alpha, beta = (float(x) for x in theta)
    return dict(A=_exp(a), B=_exp(b), E=_exp(e), alpha=alpha, beta=beta)


def chinchilla_theta(params) -> np.ndarray:
    """Paper symbols → θ (e.g. to start from the TeX constants)."""
    return np.array([math.log(params["A"]), math.log(params["B"]), math.log(params["E"]), params["alpha"],
                     params["beta"]])


# --- Kaplan eq 1.5: L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D, θ = (log N_c, log D_c, α_N, α_D) --------
def kaplan_nd_log_pred(theta, cols):
    lnc, ldc, a_n, a_d = theta
    return a_d * _lse((a_n / a_d) * (lnc - cols["logN"]), ldc - cols["logD"])


def _kaplan_nd_params(theta):
    lnc, ldc, a_n, a_d = (float(x) for x in theta)
    return dict(N_c=_exp(lnc), D_c=_exp(ldc), alpha_N=a_n, alpha_D=a_d)


# --- Kaplan eq 1.6: L(N, S) = (N_c/N)^α_N + (S_c/S)^α_S, θ = (log N_c, log S_c, α_N, α_S) -------------
def kaplan_ns_log_pred(theta, cols):
    lnc, lsc, a_n, a_s = theta
    return _lse(a_n * (lnc - cols["logN"]), a_s * (lsc - cols["logS"]))


def _kaplan_ns_params(theta):
    lnc, lsc, a_n, a_s = (float(x) for x in theta)
    return dict(N_c=_exp(lnc), S_c=_exp(lsc), alpha_N=a_n, alpha_S=a_s)


# --- Kaplan eq 1.6 at one step count: L(N) = (N_c/N)^α_N + L_S, θ = (log N_c, log L_S, α_N) -------------
# A ladder trained for the same S steps (and batch) is not converged: eq 1.6 says every rung then carries the
# same additive (S_c/S_min)^α_S, so L(N) at fixed S is a power law plus a constant, not eq 1.1's pure power law.
def kaplan_n_fixed_s_log_pred(theta, cols):
    lnc, l_s, a_n = theta
    return _lse(a_n * (lnc - cols["logN"]), l_s + 0 * cols["logN"])


def _kaplan_n_fixed_s_params(theta):
    lnc, l_s, a_n = (float(x) for x in theta)
    return dict(N_c=_exp(lnc), L_S=_exp(l_s), alpha_N=a_n)


# --- Muennighoff et al. 2023: θ = (a, b, e, α, β, log R_D*, log R_N*) --------------------------------
def muennighoff_log_pred(theta, cols):
    a, b, e, alpha, beta, l_rd, l_rn = theta
    N, D, U = jnp.exp(cols["logN"]), jnp.exp(cols["logD"]), jnp.exp(cols["logU"])
    A, B = jnp.exp(a), jnp.exp(b)
    d_eff = laws.effective_data(D, U, jnp.exp(l_rd))
    n_eff = laws.effective_params(N, U, A, B, alpha, beta, jnp.exp(l_rn))
    return _lse(a - alpha * jnp.log(n_eff), b - beta * jnp.log(d_eff), e + 0 * cols["logN"])


def _muennighoff_params(theta):
    p = _chinchilla_params(theta[:5])
    p.update(R_D_star=math.exp(float(theta[5])), R_N_star=math.exp(float(theta[6])))
    return p


PARAMETRIC_LAWS = {
    "chinchilla": ParametricLaw(
        "chinchilla", ("a", "b", "e", "alpha", "beta"), ("N", "D"), chinchilla_log_pred, _chinchilla_params,
        CHINCHILLA_GRID, "Hoffmann et al. 2022 approach 3: L = E + A/N^alpha + B/D^beta"),
    "kaplan_nd": ParametricLaw(
        "kaplan_nd", ("log_N_c", "log_D_c", "alpha_N", "alpha_D"), ("N", "D"), kaplan_nd_log_pred,
        _kaplan_nd_params, (KAPLAN_LOG_SCALE_GRID, KAPLAN_LOG_SCALE_GRID, (0.01, 0.1, 0.3, 1.0), (0.01, 0.1, 0.3, 1.0)),
        "Kaplan eq 1.5: L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D"),
    "kaplan_ns": ParametricLaw(
        "kaplan_ns", ("log_N_c", "log_S_c", "alpha_N", "alpha_S"), ("N", "S"), kaplan_ns_log_pred,
        _kaplan_ns_params, (KAPLAN_LOG_SCALE_GRID, (-5, 5, 15, 30, 60, 120), (0.01, 0.1, 0.3, 1.0),
                            (0.01, 0.05, 0.5, 1.0, 3.0)),
        "Kaplan eq 1.6: L = (N_c/N)^alpha_N + (S_c/S_min)^alpha_S"),
    "kaplan_n_fixed_s": ParametricLaw(
        "kaplan_n_fixed_s", ("log_N_c", "log_L_S", "alpha_N"), ("N",), kaplan_n_fixed_s_log_pred,
        _kaplan_n_fixed_s_params, ((0, 10, 20, 40, 70, 120), (-10, -6, -3, -1, 0, 1, 1.5, 2, 2.5),
                                  (0.01, 0.05, 0.2, 0.5, 1.0)),
        "Kaplan eq 1.6 at one step count S for every run: L = (N_c/N)^alpha_N + L_S, L_S = (S_c/S)^alpha_S"),
    "muennighoff": ParametricLaw(
        "muennighoff", ("a", "b", "e", "alpha", "beta", "log_R_D_star", "log_R_N_star"), ("N", "D", "U"),
        muennighoff_log_pred, _muennighoff_params,
        ((0, 8, 16, 24), (0, 8, 16, 24), (-1, 0, 1), (0, 0.5, 2), (0, 0.5, 2), (-1, 2, 5), (-1, 2, 5)),
        "Muennighoff et al. 2023: L = E + A/N'^alpha + B/D'^beta, repetition-discounted N', D'"),
}
