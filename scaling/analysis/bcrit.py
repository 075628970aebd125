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
