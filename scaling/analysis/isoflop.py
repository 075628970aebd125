"""IsoFLOP analysis: Chinchilla approaches 1 (training-curve envelope) and 2 (IsoFLOP profiles).

Approach 2 (Hoffmann et al. 2022 §3.2): at each compute budget C, interpolate the final loss over log N
(a parabola, as Hoffmann, or Akima as Porian et al. 2024), take the interior minimum N*(C), then fit
N* ∝ C^a and D* ∝ C^b by weighted least squares in log-log. A budget whose minimum sits at the edge of its
sampled sizes is *dropped and reported*, never clipped: its true optimum lies outside the grid.

The FLOP convention is explicit: D* = C / (flops_per_param_token · N*), 6 for Kaplan's and Chinchilla's
C ≈ 6ND; pass the per-token FLOPs of your own counting convention where it differs.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import scipy.interpolate
import scipy.ndimage

from scaling.analysis import fitting


@dataclasses.dataclass
class BudgetOptimum:
    C: float
    n_star: float
    d_star: float
    loss_star: float
    n_points: int


@dataclasses.dataclass
class IsoflopFit:
    a: float                 # N* ∝ C^a
    k_N: float               # N* = k_N · C^a
    b: float                 # D* ∝ C^b
    k_D: float
    a_se: float
    b_se: float
    optima: list             # kept BudgetOptimum per budget
    dropped: dict            # budget C -> reason it was dropped
    method: str
    flops_per_param_token: float


def budget_minimum(log_n, loss, method="parabola"):
    """(log N*, L*, reason) of one IsoFLOP profile; reason is None for an interior minimum.

    parabola: least-squares quadratic of L in log N, vertex must be a minimum inside the sampled range.
    akima: Akima spline of log L over log N on a geometric grid of (m−1)·25 points (Porian et al. 2024);
    an argmin at either end is a boundary minimum.
    """
    order = np.argsort(log_n)
    x, y = np.asarray(log_n, dtype=np.float64)[order], np.asarray(loss, dtype=np.float64)[order]
    if len(np.unique(x)) < 3:
        return np.nan, np.nan, f"only {len(np.unique(x))} distinct model sizes (need >= 3)"
    if method == "parabola":
        c2, c1, c0 = np.polyfit(x, y, 2)
        if c2 <= 0:
            return np.nan, np.nan, "profile is not convex (parabola opens downwards)"
        x_star = -c1 / (2 * c2)
        if not x[0] < x_star < x[-1]:
            side = "smallest" if x_star <= x[0] else "largest"
            return np.nan, np.nan, f"minimum beyond the {side} model size sampled (boundary minimum)"
        return x_star, c0 + c1 * x_star + c2 * x_star ** 2, None
    if method == "akima":
        xu, first = np.unique(x, return_index=True)
        yu = np.array([y[x == v].min() for v in xu])  # several runs of one size: keep the best
        spline = scipy.interpolate.Akima1DInterpolator(xu, np.log(yu))
        grid = np.linspace(xu[0], xu[-1], (len(xu) - 1) * 25)
        log_l = spline(grid)
        i = int(np.argmin(log_l))
        if i == 0 or i == len(grid) - 1:
            side = "smallest" if i == 0 else "largest"
            return np.nan, np.nan, f"minimum at the {side} model size sampled (boundary minimum)"
        return grid[i], float(np.exp(log_l[i])), None
    raise ValueError(f"unknown interpolation method {method!r}; use 'parabola' or 'akima'")


def group_budgets(C, rel_tol=1e-6):
    """Label rows by budget: C values equal to `rel_tol` belong to one IsoFLOP profile."""
    C = np.asarray(C, dtype=np.float64)
    labels = np.full(len(C), -1)
    centres = []
    for i in np.argsort(C):
        if centres and abs(C[i] / centres[-1] - 1) <= rel_tol:
            labels[i] = len(centres) - 1
        else:
            centres.append(C[i])
            labels[i] = len(centres) - 1
    return labels, np.array(centres)


def isoflop_optima(C, N, loss, method="parabola", flops_per_param_token=6.0):
    """Interior minimum per budget: (list of BudgetOptimum, {C: reason} for the dropped budgets)."""
    C, N, loss = (np.asarray(v, dtype=np.float64) for v in (C, N, loss))
    labels, centres = group_budgets(C)
    optima, dropped = [], {}
    for k, c in enumerate(centres):
        rows = labels == k
        log_n_star, l_star, reason = budget_minimum(np.log(N[rows]), loss[rows], method)
        if reason is not None:
            dropped[float(c)] = reason
            continue
        n_star = float(np.exp(log_n_star))
        optima.append(BudgetOptimum(C=float(c), n_star=n_star, d_star=float(c / (flops_per_param_token * n_star)),
                                    loss_star=float(l_star), n_points=int(rows.sum())))
    return optima, dropped


def fit_optima(optima, dropped=None, weights=None, method="", flops_per_param_token=6.0) -> IsoflopFit:
    """WLS of log N* and log D* on log C over the kept budgets."""
    if len(optima) < 2:
        why = "; ".join(f"C={c:.3g}: {r}" for c, r in (dropped or {}).items())
        raise fitting.FitError(f"only {len(optima)} budget(s) with an interior minimum (need >= 2) -- {why}. "
                               "Centre each IsoFLOP grid of model sizes on its optimum, or add budgets")
    C = np.array([o.C for o in optima])
    n_fit = fitting.wls_loglog(C, [o.n_star for o in optima], weights)
    d_fit = fitting.wls_loglog(C, [o.d_star for o in optima], weights)
    return IsoflopFit(a=n_fit.slope, k_N=float(np.exp(n_fit.intercept)), b=d_fit.slope,
                      k_D=float(np.exp(d_fit.intercept)), a_se=n_fit.slope_se, b_se=d_fit.slope_se, optima=optima,
                      dropped=dict(dropped or {}), method=method, flops_per_param_token=flops_per_param_token)


def fit_isoflop(C, N, loss, method="parabola", flops_per_param_token=6.0, weights=None) -> IsoflopFit:
    """Chinchilla approach 2 end to end: per-budget interior minima, then N* ∝ C^a and D* ∝ C^b."""
    optima, dropped = isoflop_optima(C, N, loss, method, flops_per_param_token)
    return fit_optima(optima, dropped, weights, method, flops_per_param_token)


def bootstrap_isoflop(C, N, loss, n_boot=200, seed=0, method="parabola", flops_per_param_token=6.0):
    """Replicates (n_boot, 2) of (a, b): resample points within each budget, redo approach 2.

    Budgets that lose their interior minimum in a replicate are dropped from that replicate, as in the fit.
    """
    C, N, loss = (np.asarray(v, dtype=np.float64) for v in (C, N, loss))
    labels, _ = group_budgets(C)
    rng = np.random.default_rng(seed)
    out = np.full((n_boot, 2), np.nan)
    for r in range(n_boot):
        idx = np.concatenate([rng.choice(np.flatnonzero(labels == k), size=np.sum(labels == k))
                              for k in np.unique(labels)])
        try:
            fit = fit_isoflop(C[idx], N[idx], loss[idx], method, flops_per_param_token)
        except fitting.FitError:
            continue
        out[r] = fit.a, fit.b
    return out


# --- approach 1: the lower envelope of training curves -----------------------------------------------
def envelope_optima(run, N, D, loss, budgets=None, flops_per_param_token=6.0, smooth=1):
    """Chinchilla approach 1: for each budget C, the run with the lowest loss at C gives N*(C).

    `run`, `N`, `D` (tokens seen so far), `loss`: one row per checkpoint. Each run's loss is interpolated
    at C = 6·N·D linearly in (log C, log L), after a moving average of log L over `smooth` neighbouring
    checkpoints (Hoffmann et al. smooth the curves: on noisy curves the raw envelope chases noise). A budget whose best run is the smallest or largest model is a
    boundary optimum and is dropped. Returns (optima, dropped).
    """
    run, N, D, loss = np.asarray(run), *(np.asarray(v, dtype=np.float64) for v in (N, D, loss))
    C = flops_per_param_token * N * D
    runs = list(dict.fromkeys(run.tolist()))
    curves = {}
    for r in runs:
        rows = run == r
        order = np.argsort(C[rows])
        log_loss = np.log(loss[rows][order])
        if smooth > 1:
            log_loss = scipy.ndimage.uniform_filter1d(log_loss, smooth, mode="nearest")
        curves[r] = (np.log(C[rows][order]), log_loss, float(N[rows][0]))
    sizes = sorted({v[2] for v in curves.values()})
    if budgets is None:
        lo = np.quantile([c[0][0] for c in curves.values()], 0.5)
        hi = max(c[0][-1] for c in curves.values())
        budgets = np.exp(np.linspace(lo, hi, 24))
    optima, dropped = [], {}
    for c in np.asarray(budgets, dtype=np.float64):
        best = (np.inf, None)
        for r, (lc, ll, n) in curves.items():
            if lc[0] <= np.log(c) <= lc[-1]:
                value = float(np.interp(np.log(c), lc, ll))
                if value < best[0]:
                    best = (value, n)
        if best[1] is None:
            dropped[float(c)] = "no run reaches this budget"
        elif best[1] in (sizes[0], sizes[-1]):
            dropped[float(c)] = "best run is the smallest or largest model (boundary optimum)"
        else:
            n = best[1]
            optima.append(BudgetOptimum(C=float(c), n_star=n, d_star=float(c / (flops_per_param_token * n)),
                                        loss_star=float(np.exp(best[0])), n_points=len(curves)))
    return optima, dropped


def fit_envelope(run, N, D, loss, budgets=None, flops_per_param_token=6.0, smooth=1) -> IsoflopFit:
    """Approach 1 end to end: envelope optima, then N* ∝ C^a and D* ∝ C^b by least squares."""
    optima, dropped = envelope_optima(run, N, D, loss, budgets, flops_per_param_token, smooth)
    return fit_optima(optima, dropped, None, "envelope", flops_per_param_token)
