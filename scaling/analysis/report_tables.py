"""Pure math behind `experiments.report`: run tables, learning-curve envelopes, fit-quality flags.

Everything here works on CSV rows and arrays (no model, data or trainer imports), so each piece is
testable on synthetic curves with known answers:

* `read_rows` reads runs.csv / smin_cmin.csv into dicts with numbers parsed;
* `envelope` / `frontier_transitions` turn learning curves (loss vs compute) into the compute-efficient
  frontier of Kaplan Fig. 13/14: the lowest loss at each compute and which model reaches it;
* `fit_quality` / `quality_notes` / `ci_notes` decide, by fixed rules, when the report must say in words
  that a fit is poor (R² < 0.95 in log space, a residual trend, a bend) or an interval is wide.
"""
from __future__ import annotations

import csv
import math
import os
from typing import Sequence

import numpy as np
import scipy.optimize
import scipy.stats

from scaling.analysis import fitting

R2_MIN = 0.95            # below this (log space) a fit is called poor
TREND_P = 0.05           # residual trend / bend significance
RESID_FLOOR = 1e-3       # log residuals below this RMS are numerical noise: no trend is reported
CI_RATIO_MAX = 3.0       # hi/lo above this (positive parameters) is a wide interval
CI_REL_MAX = 1.0         # (hi - lo)/|value| above this is a wide interval


# --- CSV rows --------------------------------------------------------------------------------------
def _number(v):
    if v is None:
        return None
    v = v.strip()
    if v == "":
        return None
    try:
        return float(v)
    except ValueError:
        return v


def read_rows(path: str) -> list[dict]:
    """CSV rows as dicts; numeric cells become floats, empty cells None (missing file: [])."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [{(k or "").strip(): _number(v) for k, v in r.items()} for r in csv.DictReader(f)]


def positive(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def thin_per_run(rows: list, max_n: int, key: str, run_key: str = "run") -> list:
    """At most ~`max_n` rows, evenly spaced within each run (sorted by `key`): every run keeps its whole range."""
    if len(rows) <= max_n:
        return list(rows)
    by_run = {}
    for r in rows:
        by_run.setdefault(str(r.get(run_key)), []).append(r)
    frac = max_n / len(rows)
    out = []
    for rs in by_run.values():
        rs = sorted(rs, key=lambda r: r[key])
        k = max(2, int(round(len(rs) * frac)))
        out += [rs[i] for i in sorted(set(np.linspace(0, len(rs) - 1, k).round().astype(int)))]
    return out


# --- fit quality ----------------------------------------------------------------------------------
def fit_quality(x, y, y_hat) -> dict:
    """Goodness of a fit in log space: R², Spearman ρ of log residuals vs log x, and a bend test.

    The bend test fits a quadratic in log x to the residuals and F-tests it against none; a curve that
    bends away from a straight log-log line (Kaplan Fig. 6 left, parameters counted with embeddings)
    leaves U-shaped residuals that a rank correlation misses.
    """
    x, y, y_hat = (np.asarray(v, dtype=np.float64) for v in (x, y, y_hat))
    lx, ly, r = np.log(x), np.log(y), np.log(y) - np.log(y_hat)
    n = len(ly)
    ss_tot = float(np.sum((ly - ly.mean()) ** 2))
    ss_res = float(np.sum(r ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    rms = float(np.sqrt(np.mean(r ** 2))) if n else float("nan")
    rho, rho_p = float("nan"), float("nan")
    if n >= 4 and np.ptp(r) > 0 and np.ptp(lx) > 0:
        rho, rho_p = (float(v) for v in scipy.stats.spearmanr(lx, r))
    bend, bend_p = float("nan"), float("nan")
    if n >= 5 and np.ptp(lx) > 0:
        X1 = np.stack([np.ones(n), lx], axis=1)
        X2 = np.stack([np.ones(n), lx, lx ** 2], axis=1)
        s1 = float(np.sum((r - X1 @ np.linalg.lstsq(X1, r, rcond=None)[0]) ** 2))
        c2 = np.linalg.lstsq(X2, r, rcond=None)[0]
        s2 = float(np.sum((r - X2 @ c2) ** 2))
        bend = float(c2[2])
        if s2 > 0:
            f_stat = (s1 - s2) / (s2 / (n - 3))
            bend_p = float(scipy.stats.f.sf(f_stat, 1, n - 3))
        elif s1 > 0:
            bend_p = 0.0
    return dict(n=n, r2_log=r2, rms_log=rms, spearman_rho=rho, spearman_p=rho_p, bend=bend, bend_p=bend_p)


def quality_notes(q: dict) -> list[str]:
    """Words the report prints beside a fit whose quality fails a rule (empty list: nothing to say)."""
    notes = []
    if q["n"] < 4:
        notes.append(f"only {q['n']} points: too few to test the power-law form")
    if math.isfinite(q["r2_log"]) and q["r2_log"] < R2_MIN:
        notes.append(f"poor fit: R² = {q['r2_log']:.3f} in log space (< {R2_MIN})")
    if q["rms_log"] > RESID_FLOOR:
        if math.isfinite(q["spearman_p"]) and q["spearman_p"] < TREND_P:
            notes.append(f"residual trend: Spearman ρ = {q['spearman_rho']:+.2f} (p = {q['spearman_p']:.2g}) "
                         "of residuals vs x: the power law misses a systematic drift")
        if math.isfinite(q["bend_p"]) and q["bend_p"] < TREND_P:
            notes.append(f"curvature: the residuals bend (quadratic term p = {q['bend_p']:.2g}); the data are not "
                         "a straight line in log-log")
    return notes


def ci_notes(name: str, value, lo, hi) -> list[str]:
    """Words for a wide 95% interval: hi/lo > 3× (positive parameters) or width > 100% of the value."""
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return [f"{name}: no bootstrap interval"]
    notes = []
    if lo > 0 and hi / lo > CI_RATIO_MAX:
        notes.append(f"wide CI for {name}: hi/lo = {hi / lo:.3g}× (> {CI_RATIO_MAX:g}×)")
    elif value and abs(value) > 0 and (hi - lo) / abs(value) > CI_REL_MAX:
        notes.append(f"wide CI for {name}: width {100 * (hi - lo) / abs(value):.0f}% of the value (> 100%)")
    return notes


# --- power laws in log-log with a bootstrap -------------------------------------------------------
def loglog_fit(x, y, n_boot: int = 0, seed: int = 0) -> dict:
    """y = k·x^p by least squares in log-log; p with a 95% percentile bootstrap interval over points."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    fit = fitting.wls_loglog(x, y)
    out = dict(p=fit.slope, k=float(np.exp(fit.intercept)), p_se=fit.slope_se, ci95=dict(p=[float("nan")] * 2))
    if n_boot and len(x) >= 3:
        reps = fitting.bootstrap_wls_loglog(x, y, n_boot=n_boot, seed=seed)
        lo, hi = fitting.percentile_ci(reps[:, 0])
        out["ci95"] = dict(p=[float(lo), float(hi)])
    out["quality"] = fit_quality(x, y, out["k"] * x ** out["p"])
    return out


# --- learning curves: interpolation, envelope, frontier --------------------------------------------
def interp_loglog(x, y, xq) -> np.ndarray:
    """Interpolate a curve linearly in (log x, log y); NaN outside the curve's x range."""
    x, y, xq = (np.asarray(v, dtype=np.float64) for v in (x, y, xq))
    order = np.argsort(x)
    lx, ly = np.log(x[order]), np.log(y[order])
    out = np.exp(np.interp(np.log(xq), lx, ly))
    out[(xq < x.min() * (1 - 1e-12)) | (xq > x.max() * (1 + 1e-12))] = np.nan
    return out


def envelope(curves: Sequence[tuple], n_grid: int = 60) -> dict:
    """Lowest loss at each compute over a family of learning curves (Kaplan Fig. 13's envelope).

    `curves`: (C array, loss array) per run. The grid spans from the smallest compute any curve
    reaches to the largest; at each grid point only curves covering it compete. Returns dict(C, loss,
    winner) with `winner` the index of the curve on the envelope (-1 where none covers).
    """
    if not curves:
        raise ValueError("envelope needs at least one learning curve")
    lo = min(float(np.min(c)) for c, _ in curves)
    hi = max(float(np.max(c)) for c, _ in curves)
    grid = np.exp(np.linspace(np.log(lo), np.log(hi), n_grid))
    table = np.stack([interp_loglog(c, l, grid) for c, l in curves])          # (runs, grid)
    filled = np.where(np.isfinite(table), table, np.inf)
    winner = np.argmin(filled, axis=0)
    best = filled[winner, np.arange(len(grid))]
    winner = np.where(np.isfinite(best), winner, -1)
    return dict(C=grid, loss=np.where(np.isfinite(best), best, np.nan), winner=winner)


def crossing(c1, l1, c2, l2) -> float | None:
    """Compute where curve 2 first drops below curve 1 (log-log interpolation), or None if never."""
    lo = max(np.min(c1), np.min(c2))
    hi = min(np.max(c1), np.max(c2))
    if not hi > lo:
        return None
    grid = np.exp(np.linspace(np.log(lo), np.log(hi), 400))
    d = np.log(interp_loglog(c2, l2, grid)) - np.log(interp_loglog(c1, l1, grid))
    below = np.flatnonzero(d < 0)
    if not len(below):
        return None
    i = below[0]
    if i == 0:
        return None  # curve 2 is already lower where both start: no crossing inside the overlap
    lg = np.log(grid)
    t = d[i - 1] / (d[i - 1] - d[i])
    return float(np.exp(lg[i - 1] + t * (lg[i] - lg[i - 1])))


def frontier_transitions(curves: Sequence[tuple], sizes: Sequence[float]) -> list[dict]:
    """Compute-efficient model size along the frontier from where neighbouring rungs' curves cross.

    With runs sorted by size, the compute C* at which rung i+1's learning curve drops below rung i's is
    where the optimal size passes from N_i to N_{i+1}; N_opt(C*) is taken as their geometric mean
    (exact for a geometric ladder under L = a N^-α_N + b (N/C)^α_S, whose optimum is N ∝ C^p).
    Returns [{C, N_opt, N_lo, N_hi}] for each crossing found.
    """
    order = np.argsort(sizes)
    out = []
    for a, b in zip(order[:-1], order[1:]):
        c_star = crossing(*curves[a], *curves[b])
        if c_star is not None:
            out.append(dict(C=c_star, N_opt=float(np.sqrt(sizes[a] * sizes[b])), N_lo=float(sizes[a]),
                            N_hi=float(sizes[b])))
    return out


def first_reach(x, loss, target: float) -> float | None:
    """x (tokens, steps) at which a learning curve first reaches `target` (log-log interpolation)."""
    x, loss = np.asarray(x, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    hit = np.flatnonzero(loss <= target)
    if not len(hit):
        return None
    i = hit[0]
    if i == 0:
        return float(x[0])
    lx0, lx1 = np.log(x[i - 1]), np.log(x[i])
    ly0, ly1, lt = np.log(loss[i - 1]), np.log(loss[i]), np.log(target)
    t = (ly0 - lt) / (ly0 - ly1) if ly0 != ly1 else 1.0
    return float(np.exp(lx0 + t * (lx1 - lx0)))


# --- per-position loss and transfer -----------------------------------------------------------------
def position_bins(n: int, bins_per_octave: int = 4) -> list[np.ndarray]:
    """Positions 1..n in log-spaced bins (each position alone while bins would be narrower than one position)."""
    edges = np.unique(np.round(np.geomspace(1, n + 1, max(2, int(np.log2(n + 1) * bins_per_octave) + 1))).astype(int))
    return [np.arange(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def position_power_law(loss_per_position, max_fraction: float = 0.5) -> dict | None:
    """Fit L(T) = L_∞ + b·T^(−c) to the loss at token position T (Kaplan Fig. 20), for T ≤ max_fraction·n_ctx.

    Each position's mean loss over a few hundred held-out windows has a standard error of ~0.1–0.2 nats, so the
    fit and its R² use log-spaced bins of positions (means weighted by their position counts): the small-T
    positions, where the power law lives, stay single; the flat tail is averaged. T ≪ n_ctx as in the paper.
    """
    y_all = np.asarray(loss_per_position, dtype=np.float64)
    n = int(max(4, round(len(y_all) * max_fraction)))
    y_all = y_all[:n]
    t_mid, y, w = [], [], []
    for b in position_bins(len(y_all)):
        vals = y_all[b - 1]
        ok = np.isfinite(vals)
        if ok.any():
            t_mid.append(float(np.exp(np.mean(np.log(b[ok])))))
            y.append(float(vals[ok].mean()))
            w.append(float(ok.sum()))
    if len(y) < 4:
        return None
    t, y, w = np.asarray(t_mid), np.asarray(y), np.asarray(w)
    model = lambda tt, l_inf, b, c: l_inf + b * tt ** (-c)
    try:
        p0 = (float(y[-max(1, len(y) // 4):].mean()), max(float(y[0] - y[-1]), 1e-3), 0.5)
        (l_inf, b, c), _ = scipy.optimize.curve_fit(model, t, y, p0=p0, sigma=1 / np.sqrt(w), maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    pred = model(t, l_inf, b, c)
    mean = float(np.average(y, weights=w))
    ss_tot = float(np.sum(w * (y - mean) ** 2))
    r2 = 1 - float(np.sum(w * (y - pred) ** 2)) / ss_tot if ss_tot > 0 else float("nan")
    return dict(L_inf=float(l_inf), b=float(b), c=float(c), r2=r2, n_bins=len(y), max_position=n)


def transfer_offset(loss_main, loss_other) -> dict:
    """Kaplan Fig. 8: other-distribution loss against main loss; a line with slope ~1 and a constant offset."""
    x, y = np.asarray(loss_main, dtype=np.float64), np.asarray(loss_other, dtype=np.float64)
    offset = float(np.mean(y - x))
    out = dict(offset=offset, offset_sd=float(np.std(y - x, ddof=1)) if len(x) > 1 else float("nan"),
               slope=float("nan"), intercept=float("nan"), n=len(x))
    if len(x) >= 2 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        out.update(slope=float(slope), intercept=float(intercept))
    return out


def format_ci(value, ci, fmt="{:.3g}") -> str:
    """'v (lo–hi)' for the tables; a missing interval shows as 'v (no CI)'."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if not ci or ci[0] is None or ci[1] is None or not all(math.isfinite(c) for c in ci):
        return f"{fmt.format(value)} (no CI)"
    return f"{fmt.format(value)} ({fmt.format(ci[0])}–{fmt.format(ci[1])})"
