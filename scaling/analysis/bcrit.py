"""Critical batch size from batch-size scans (McCandlish et al. 2018 eqs 2.11-2.12; Kaplan §5.1).

Spec: ../shared/design/noise-scale.md §2. At a target loss L, the steps S and examples E = B·S needed
by a run at batch B obey (S/S_min − 1)(E/E_min − 1) = 1, i.e. the linear form S = S_min + E_min/B, with
B_crit = E_min/S_min. Across targets, B_crit(L) = B*/L^(1/α_B) (Kaplan eq 5.3; B* ≈ 2e8 tokens, α_B ≈ 0.21).
B is in tokens throughout (sequences × n_ctx).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import scipy.optimize

from scaling.analysis import fitting


def steps_to_target(steps, losses, target) -> float:
    """First step where the running-min loss reaches `target`, log-interpolated between evaluations.

    NaN when the run never gets there (noise-scale.md §2.2 step 4).
    """
    steps = np.asarray(steps, dtype=np.float64)
    best = np.minimum.accumulate(np.asarray(losses, dtype=np.float64))
    hit = np.flatnonzero(best <= target)
    if len(hit) == 0:
        return float("nan")
    i = int(hit[0])
    if i == 0:
        return float(steps[0])
    # best[i-1] > target >= best[i]: interpolate log step linearly in loss.
    frac = (best[i - 1] - target) / (best[i - 1] - best[i])
    return float(np.exp(np.log(steps[i - 1]) + frac * (np.log(steps[i]) - np.log(steps[i - 1]))))


@dataclasses.dataclass
class StepsBatchFit:
    S_min: float
    E_min: float       # tokens
    B_crit: float      # tokens, = E_min / S_min
    bracketed: bool    # the scanned batches span B_crit; otherwise B_crit is only a bound
    residuals: np.ndarray


def fit_steps_vs_batch(B, S, weights=None) -> StepsBatchFit:
    """Least squares of log S = log(S_min + E_min/B) over the runs of one target loss.

    Started from the linear fit S ≈ S_min + E_min·(1/B); both coefficients are kept positive by fitting
    their logs. `weights` (e.g. bootstrap counts) multiply the squared log residuals.
    """
    B, S = np.asarray(B, dtype=np.float64), np.asarray(S, dtype=np.float64)
    ok = np.isfinite(S)
    w = np.ones_like(B) if weights is None else np.asarray(weights, dtype=np.float64)
    B, S, w = B[ok], S[ok], w[ok]
    if np.count_nonzero(w) < 2 or len(np.unique(B[w > 0])) < 2:
        raise fitting.FitError("S = S_min + E_min/B needs runs at >= 2 distinct batch sizes that reach the target")
    X = np.stack([np.ones_like(B), 1.0 / B], axis=1)
    lin, *_ = np.linalg.lstsq(X * np.sqrt(w)[:, None], S * np.sqrt(w), rcond=None)
    start = np.log(np.maximum(lin, [S.min() * 1e-3, S.min() * B.min() * 1e-3]))
    resid = lambda th: np.sqrt(w) * (np.log(np.exp(th[0]) + np.exp(th[1]) / B) - np.log(S))
    res = scipy.optimize.least_squares(resid, start, method="lm", xtol=1e-14, ftol=1e-14, gtol=1e-14)
    s_min, e_min = np.exp(res.x)
    b_crit = e_min / s_min
    return StepsBatchFit(S_min=float(s_min), E_min=float(e_min), B_crit=float(b_crit),
                         bracketed=bool(B[w > 0].min() <= b_crit <= B[w > 0].max()), residuals=res.fun)


@dataclasses.dataclass
class BcritLawFit:
    B_star: float      # tokens
    alpha_B: float
    per_target: dict   # target loss -> StepsBatchFit
    objective: float


def fit_bcrit_law(L, B_crit, weights=None) -> tuple[float, float, fitting.PowerLawFit]:
    """Regress log B_crit = log B* − (1/α_B) log L; returns (B*, α_B, the underlying WLS fit)."""
    fit = fitting.wls_loglog(L, B_crit, weights)
    if fit.slope >= 0:
        raise fitting.FitError(f"B_crit does not fall with the loss (slope {fit.slope:.3g} >= 0): alpha_B is undefined")
    return float(np.exp(fit.intercept)), float(-1.0 / fit.slope), fit


def fit_bcrit_scan(target, B, S, weights=None) -> BcritLawFit:
    """Rows (target loss, batch tokens, steps to reach it): per-target hyperbola fits, then B_crit(L).

    Targets whose fit fails (fewer than 2 batch sizes reached them) are skipped.
    """
    target, B, S = (np.asarray(v, dtype=np.float64) for v in (target, B, S))
    w = np.ones_like(B) if weights is None else np.asarray(weights, dtype=np.float64)
    per_target = {}
    for t in np.unique(target):
        rows = target == t
        try:
            per_target[float(t)] = fit_steps_vs_batch(B[rows], S[rows], w[rows])
        except fitting.FitError:
            continue
    if len(per_target) < 2:
        raise fitting.FitError(f"only {len(per_target)} target loss(es) could be fit; B_crit(L) needs >= 2")
    L = np.array(list(per_target))
    bc = np.array([f.B_crit for f in per_target.values()])
    b_star, alpha_b, fit = fit_bcrit_law(L, bc)
    return BcritLawFit(B_star=b_star, alpha_B=alpha_b, per_target=per_target, objective=fit.objective)


def bootstrap_bcrit_scan(target, B, S, runs, n_boot=200, seed=0):
    """(n_boot, 2) replicates of (B*, α_B) resampling *whole runs* (B_crit values share runs)."""
    counts = fitting.resample_counts(len(np.asarray(B)), n_boot, seed, groups=runs)
    out = np.full((n_boot, 2), np.nan)
    for r, w in enumerate(counts):
        try:
            fit = fit_bcrit_scan(target, B, S, w)
        except fitting.FitError:
            continue
        out[r] = fit.B_star, fit.alpha_B
    return out


def fit_steps_vs_batch_many(B, S, weights, iters: int = 60):
    """`fit_steps_vs_batch` for many weight vectors at once (bootstrap replicates), vectorised in numpy.

    B, S: (n,) batch tokens and steps (NaN S = target not reached: zero weight); weights: (R, n).
    Returns (S_min, E_min) arrays of shape (R,), NaN where fewer than 2 distinct batch sizes carry weight.
    Levenberg-Marquardt on the log parameters, from the same weighted linear start.
    """
    B, S = np.asarray(B, dtype=np.float64), np.asarray(S, dtype=np.float64)
    reached = np.isfinite(S)
    W = np.atleast_2d(np.asarray(weights, dtype=np.float64)) * reached
    S = np.where(reached, S, 1.0)  # weight 0: any finite value keeps the arithmetic clean
    ok = np.array([len(np.unique(B[w > 0])) >= 2 for w in W])
    if not reached.any() or len(np.unique(B[reached])) < 2:
        return np.full(len(W), np.nan), np.full(len(W), np.nan)
    W = np.where(ok[:, None], W, reached * 1.0)  # degenerate replicates: placeholder rows, masked at the end
    X = np.stack([np.ones_like(B), 1.0 / B], axis=1)
    A = np.einsum("rn,ni,nj->rij", W, X, X) + 1e-300 * np.eye(2)
    lin = np.linalg.solve(A, np.einsum("rn,ni,n->ri", W, X, S)[..., None])[..., 0]
    floor = S[reached].min() * 1e-3
    theta = np.log(np.maximum(lin, [floor, floor * B[reached].min()]))
    log_s = np.log(S)

    def cost_and_parts(th):
        a, e = np.exp(th[:, :1]), np.exp(th[:, 1:])
        p = a + e / B
        r = np.log(p) - log_s
        return np.sum(W * r ** 2, axis=1), r, a / p, e / (B * p)

    cost, r, j0, j1 = cost_and_parts(theta)
    lam = np.full(len(W), 1e-3)
    for _ in range(iters):
        h00, h01, h11 = (np.sum(W * j0 * j0, 1), np.sum(W * j0 * j1, 1), np.sum(W * j1 * j1, 1))
        g0, g1 = np.sum(W * j0 * r, 1), np.sum(W * j1 * r, 1)
        a00, a11 = h00 * (1 + lam), h11 * (1 + lam)
        det = a00 * a11 - h01 ** 2
        det = np.where(np.abs(det) > 0, det, np.inf)
        step = np.stack([-(a11 * g0 - h01 * g1) / det, -(a00 * g1 - h01 * g0) / det], axis=1)
        new = theta + step
        new_cost, new_r, new_j0, new_j1 = cost_and_parts(new)
        better = new_cost < cost
        theta = np.where(better[:, None], new, theta)
        cost = np.where(better, new_cost, cost)
        r = np.where(better[:, None], new_r, r)
        j0 = np.where(better[:, None], new_j0, j0)
        j1 = np.where(better[:, None], new_j1, j1)
        lam = np.where(better, lam / 3, lam * 4)
    s_min, e_min = np.exp(theta[:, 0]), np.exp(theta[:, 1])
    return np.where(ok, s_min, np.nan), np.where(ok, e_min, np.nan)
