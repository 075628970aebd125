"""Converged losses from whole learning curves: Kaplan eq 1.6 with a free L(N) term.

A ladder of small models trained for a few thousand steps is not converged, so its final losses do not
follow eq 1.1, L(N) = (N_c/N)^α_N: every rung still carries the (S_c/S_min)^α_S term of eq 1.6, and
fitting a pure power law to them gives a flat, curved L(N) (what the old quick preset reported).
Kaplan et al. 2020 §5 model the learning curve as

    L(N, S_min) = (N_c/N)^α_N + (S_c/S_min)^α_S,        S_min = S / (1 + B_crit(L)/B)   (eqs 1.6, 5.4)

where the step term does not depend on N. This module fits that *separable* form to every rung's
learning curve at once, with the N term left free per rung:

    L_r(S) = L∞_r + (S_c/S_min)^α_S         (one L∞ per rung; S_c and α_S shared by all rungs)

so the power law in N is *not* imposed: L∞_r is each rung's S → ∞ (converged) loss, and the report fits
eq 1.1 to the (N_r, L∞_r) points and judges that fit's quality honestly. For fixed (S_c, α_S) each
L∞_r is a linear least-squares solution in closed form (variable projection), so only two nonlinear
parameters are searched (a grid, then Nelder-Mead on the profile). Residuals are relative
(L̂/L − 1), i.e. log-space errors, as in the rest of scaling/analysis.

The early part of a learning curve (warmup and the unigram plateau of a fresh model) does not follow
the step power law; `curve_window` keeps the part after `start_fraction` of each run.

Pure numpy/scipy on arrays (no model, data or trainer imports).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np
import scipy.optimize

from scaling.analysis import fitting, report_tables
from scaling.analysis.io import InputError


@dataclasses.dataclass(frozen=True)
class Curve:
    """One run's learning curve: held-out loss at optimizer steps S (and the run's batch in tokens)."""
    name: str
    n_params: float                 # N, non-embedding
    steps: np.ndarray               # S, optimizer steps
    loss: np.ndarray                # nats/token
    batch_tokens: float             # B


@dataclasses.dataclass
class SeparableFit:
    s_c: float                      # S_c (steps)
    alpha_s: float                  # α_S
    l_inf: dict                     # run name -> L∞ (S → ∞ loss)
    rms_rel: float                  # RMS of L̂/L − 1 over the fitted points
    n_points: int
    r2_log: float                   # R² of log L over all fitted points
    per_run_rms: dict               # run name -> RMS relative residual
    bcrit_used: bool                # True when S_min = S/(1 + B_crit(L)/B) was applied
    at_search_bound: bool = False   # S_c at the top of its search range or α_S at its floor: the step term runs
                                    # off toward one straight power law in S, so the L∞ are not separable from it
                                    # on these curves (S_c at its *lower* edge is harmless: a small step term)

    def step_term(self, s_min) -> np.ndarray:
        return (self.s_c / np.asarray(s_min, dtype=np.float64)) ** self.alpha_s

    def record(self) -> dict:
        return {"form": "L_r(S) = L_inf_r + (S_c/S_min)^alpha_S (Kaplan eq 1.6, free L(N) term)",
                "S_c": self.s_c, "alpha_S": self.alpha_s, "L_inf": dict(self.l_inf),
                "rms_relative_residual": self.rms_rel, "r2_log": self.r2_log, "n_points": self.n_points,
                "per_run_rms_relative": dict(self.per_run_rms), "s_min_correction": self.bcrit_used,
                "at_search_bound": self.at_search_bound}


def curve_window(steps, loss, start_fraction: float = 0.25, min_step: float = 1.0):
    """The part of a learning curve the step power law describes: S ≥ start_fraction · S_last (and ≥ min_step)."""
    steps = np.asarray(steps, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    if len(steps) == 0:
        return steps, loss
    keep = (steps >= max(min_step, start_fraction * steps.max())) & np.isfinite(loss) & (loss > 0)
    return steps[keep], loss[keep]


def best_loss_by_step(steps, loss, step: float, tolerance: float = 0.05) -> float | None:
    """The lowest eval loss a learning curve reached by optimizer step ``step`` (what a run stopped there would
    report as its best eval loss), or None when the curve has no eval within ``tolerance`` × step below it (it
    stopped earlier, or evaluated too rarely to say)."""
    steps = np.asarray(steps, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    upto = (steps <= step * (1 + 1e-9)) & np.isfinite(loss)
    if not upto.any() or steps[upto].max() < (1 - tolerance) * step:
        return None
    return float(loss[upto].min())


def s_min(steps, loss, batch_tokens: float, b_crit: Callable | None):
    """Kaplan eq 5.4: S_min = S / (1 + B_crit(L)/B); S itself when no B_crit(L) is given."""
    steps = np.asarray(steps, dtype=np.float64)
    if b_crit is None:
        return steps
    return steps / (1.0 + np.asarray(b_crit(np.asarray(loss, dtype=np.float64))) / float(batch_tokens))


@dataclasses.dataclass(frozen=True)
class _Packed:
    """Every rung's fitted points in flat arrays (the profile below is then a few vectorised numpy calls:
    the bootstraps call it ~2,000 times per fit)."""
    log_s: np.ndarray               # log S_min of every point
    loss: np.ndarray                # L of every point
    run: np.ndarray                 # rung index of every point
    n_runs: int

    @classmethod
    def of(cls, s_list, l_list) -> "_Packed":
        return cls(np.log(np.concatenate(s_list)), np.concatenate(l_list),
                   np.concatenate([np.full(len(s), i) for i, s in enumerate(s_list)]), len(s_list))

    def profile(self, log_sc: float, alpha: float):
        """For fixed (S_c, α_S): each rung's L∞ in closed form (least squares in relative error), the SSE and
        the relative residuals of every point."""
        term = np.exp(alpha * (log_sc - self.log_s))
        w = 1.0 / self.loss ** 2                          # relative residuals: (L∞ + term − L)/L
        l_inf = (np.bincount(self.run, w * (self.loss - term), self.n_runs)
                 / np.bincount(self.run, w, self.n_runs))
        r = (l_inf[self.run] + term - self.loss) / self.loss
        return l_inf, float(np.sum(r * r)), r


def fit_separable(curves: Sequence[Curve], *, b_crit: Callable | None = None, start_fraction: float = 0.25,
                  alpha_bounds=(0.05, 3.0)) -> SeparableFit:
    """Fits L_r(S) = L∞_r + (S_c/S_min)^α_S to all curves (shared S_c, α_S). Raises InputError on bad input."""
    if len(curves) < 2:
        raise InputError(f"the separable learning-curve fit needs >= 2 runs (got {len(curves)})")
    s_list, l_list, names = [], [], []
    for c in curves:
        s, l = curve_window(c.steps, c.loss, start_fraction)
        if len(s) < 3:
            raise InputError(f"run {c.name}: {len(s)} eval points after {start_fraction:.0%} of the run; "
                             "need >= 3 (evaluate more often: TrainConfig.eval_every)")
        s_list.append(s_min(s, l, c.batch_tokens, b_crit))
        l_list.append(l)
        names.append(c.name)
    if len(set(names)) != len(names):
        raise InputError(f"duplicate run names in the learning curves: {names}")
    s_all = np.concatenate(s_list)
    lo_sc, hi_sc = math.log(max(s_all.min() * 1e-3, 1e-3)), math.log(s_all.max() * 1e3)

    packed = _Packed.of(s_list, l_list)

    def objective(x):
        log_sc, alpha = x
        if not (alpha_bounds[0] <= alpha <= alpha_bounds[1]) or not lo_sc <= log_sc <= hi_sc:
            return 1e6
        return packed.profile(log_sc, alpha)[1]

    grid = [(a, b) for a in np.linspace(lo_sc, hi_sc, 41) for b in np.geomspace(*alpha_bounds, 30)]
    values = [objective(g) for g in grid]
    best = [grid[i] for i in np.argsort(values)[:5]]
    results = [scipy.optimize.minimize(objective, x0, method="Nelder-Mead",
                                       options=dict(xatol=1e-9, fatol=1e-14, maxiter=4000)) for x0 in best]
    res = min(results, key=lambda r: r.fun)
    log_sc, alpha = (float(v) for v in res.x)
    l_inf, sse, r_all = packed.profile(log_sc, alpha)
    l_inf = [float(v) for v in l_inf]
    resid = [r_all[packed.run == i] for i in range(packed.n_runs)]
    log_l = np.log(packed.loss)
    log_hat = np.log(packed.loss * (1.0 + r_all))
    ss_tot = float(np.sum((log_l - log_l.mean()) ** 2))
    r2 = 1.0 - float(np.sum((log_l - log_hat) ** 2)) / ss_tot if ss_tot > 0 else float("nan")
    edge = 1e-3   # in log S_c and log α_S
    at_bound = hi_sc - log_sc < edge or math.log(alpha / alpha_bounds[0]) < edge
    return SeparableFit(s_c=math.exp(log_sc), alpha_s=alpha, l_inf=dict(zip(names, l_inf)),
                        rms_rel=float(np.sqrt(np.mean(r_all ** 2))), n_points=int(len(r_all)), r2_log=r2,
                        per_run_rms={n: float(np.sqrt(np.mean(r ** 2))) for n, r in zip(names, resid)},
                        bcrit_used=b_crit is not None, at_search_bound=bool(at_bound))


def power_law_fit(n, l_inf) -> tuple[float, float]:
    """Eq 1.1 by least squares in log-log: (N_c, α_N) with L = (N_c/N)^α_N."""
    x, y = np.log(np.asarray(n, dtype=np.float64)), np.log(np.asarray(l_inf, dtype=np.float64))
    slope, intercept = np.polyfit(x, y, 1)
    alpha = -float(slope)
    return float(math.exp(intercept / alpha)) if alpha != 0 else float("inf"), alpha


def _floor_fit_weighted(x, y, w) -> tuple[float, float, float]:
    """(E, N_c, α) minimising Σ w·(log L − log(E + (N_c/N)^α))²: a profile over E (for each E, log(L − E) is
    linear in log N: one weighted line per grid value, all solved together), then a joint Gauss-Newton polish
    of the three parameters from the best profile point (scipy least_squares on the weighted log residuals)."""
    lx, ly = np.log(x), np.log(y)
    sw = np.sqrt(w)

    def residuals(theta):
        e, alpha, icpt = theta
        return sw * (ly - np.log(np.maximum(e + np.exp(icpt - alpha * lx), 1e-300)))

    # Profile: for every E on the grid the weighted least-squares line of log(L − E) on log N, in closed form.
    e_grid = y.min() * np.linspace(0.0, 0.995, 200)
    lz = np.log(y[None, :] - e_grid[:, None])                            # (grid, n)
    wsum = w.sum()
    mx = (w * lx).sum() / wsum
    mz = (lz * w).sum(axis=1) / wsum
    slope = ((lz - mz[:, None]) * (w * (lx - mx))).sum(axis=1) / (w * (lx - mx) ** 2).sum()
    icpts = mz - slope * mx
    pred = e_grid[:, None] + np.exp(icpts[:, None] + slope[:, None] * lx[None, :])
    profile = (w * (ly[None, :] - np.log(np.maximum(pred, 1e-300))) ** 2).sum(axis=1)
    i = int(np.argmin(profile))
    e0, alpha0, icpt0 = float(e_grid[i]), -float(slope[i]), float(icpts[i])
    res = scipy.optimize.least_squares(residuals, (e0, alpha0, icpt0), method="lm", xtol=1e-12, ftol=1e-14,
                                       gtol=1e-14, max_nfev=2000)
    e, alpha, icpt = (float(v) for v in res.x)
    if not (0.0 <= e < y.min()) or alpha <= 0 or not res.success:   # the polish left the valid region
        e, alpha, icpt = e0, alpha0, icpt0
    return e, float(math.exp(icpt / alpha)), float(alpha)


def floor_power_law_fit(n, loss, n_boot: int = 200, seed: int = 0, level: float = 0.95) -> dict:
    """L(N) = E + (N_c/N)^α_N with an irreducible loss E ≥ 0 (Henighan et al. 2020; Hoffmann et al. 2022's
    form in N), fitted in log space, with a bootstrap over the points (rungs) for the CIs.

    Kaplan eq 1.1 has no E: at the paper's losses the floor is far below, so log L is straight in log N. A
    ladder of tiny models whose loss flattens as it nears the entropy of the text bends in log-log; this fit
    says whether a floor accounts for that bend (its residuals then have no curvature left).
    """
    x, y = np.asarray(n, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    if len(x) < 4 or np.any(x <= 0) or np.any(y <= 0):
        raise InputError(f"the floor fit needs >= 4 points with positive N and loss, got {len(x)}")
    e, n_c, alpha = _floor_fit_weighted(x, y, np.ones_like(x))
    reps = []
    for counts in fitting.resample_counts(len(x), n_boot, seed):
        keep = counts > 0
        if np.count_nonzero(keep) < 4:
            continue
        try:
            reps.append(_floor_fit_weighted(x[keep], y[keep], counts[keep]))
        except (ValueError, np.linalg.LinAlgError, FloatingPointError):
            continue
    ci = {}
    if len(reps) >= 10:
        lo, hi = fitting.percentile_ci(np.asarray(reps), level)
        ci = {name: [float(lo[i]), float(hi[i])] for i, name in enumerate(("E", "N_c", "alpha_N"))}
    return dict(params=dict(E=e, N_c=n_c, alpha_N=alpha), ci95=ci, n_boot=len(reps),
                predict=lambda nn: e + (n_c / np.asarray(nn, dtype=np.float64)) ** alpha)


def loss_at_steps(l_n: float, fit: SeparableFit, steps: float, batch_tokens: float, b_crit: Callable) -> float:
    """The loss L that solves L = l_n + (S_c/S_min(L))^α_S with S_min = S/(1 + B_crit(L)/B) (eqs 1.6, 5.4).

    S_min depends on the loss it predicts, so L is a fixed point. g(L) = l_n + term(S_min(L)) − L falls with L
    (B_crit falls with L, so S_min grows and the term shrinks), so the root is unique and bracketed by
    [l_n, l_n + term(S_min(l_n))]; a root solve finds it whatever α_S is (iterating the map oscillates and
    diverges when α_S is large)."""
    def term(loss):
        return float(fit.step_term(s_min([steps], [loss], batch_tokens, b_crit))[0])

    lo = l_n
    hi = l_n + term(l_n)
    g = lambda loss: l_n + term(loss) - loss   # noqa: E731
    if not (math.isfinite(hi) and g(hi) < 0):
        return hi
    return float(scipy.optimize.brentq(g, lo, hi, xtol=1e-10))


def predict_final_loss(curves: Sequence[Curve], target_n: float, target_steps: float, target_batch_tokens: float, *,
                       b_crit: Callable | None = None, start_fraction: float = 0.25, n_boot: int = 200,
                       seed: int = 0, n_backtests: int = 3) -> dict:
    """Predicts a larger model's loss after `target_steps` before it trains: eq 1.6 from the ladder's curves.

    L̂ = (N_c/N)^α_N + (S_c/S_min)^α_S, with (S_c, α_S) and the L∞_r from `fit_separable` and (N_c, α_N)
    from eq 1.1 on the L∞_r. S_min at the target uses B_crit at the predicted loss (one fixed-point pass).
    The 95 % interval resamples whole runs (rungs) with replacement and refits both stages, and is widened by the
    error of the same method on the ladder's own largest rungs (`backtests`, `predictive_interval`): the rung
    bootstrap alone measures how the fit moves with the rungs, not how far its form misses a larger model
    (measured: the quick and full studies' held-out rungs fell outside it at +0.5 % and −0.5 %).
    """
    def one(cs):
        fit = fit_separable(cs, b_crit=b_crit, start_fraction=start_fraction)
        n = [c.n_params for c in cs]
        n_c, alpha_n = power_law_fit(n, [fit.l_inf[c.name] for c in cs])
        l_n = (n_c / target_n) ** alpha_n
        pred = l_n + float(fit.step_term(target_steps)) if b_crit is None else \
            loss_at_steps(l_n, fit, target_steps, target_batch_tokens, b_crit)
        return pred, l_n, fit, n_c, alpha_n

    pred, l_n, fit, n_c, alpha_n = one(curves)
    checks = backtests(curves, target_steps, b_crit=b_crit, start_fraction=start_fraction, n_backtests=n_backtests)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(curves), len(curves))
        if len(set(curves[i].n_params for i in idx)) < 3:
            continue
        picked = [dataclasses.replace(curves[i], name=f"{curves[i].name}#{j}") for j, i in enumerate(idx)]
        try:
            boots.append(one(picked)[0])
        except (InputError, FloatingPointError, ValueError):
            continue
    boot_lo, boot_hi = (np.percentile(boots, [2.5, 97.5]).tolist() if len(boots) >= 20 else (None, None))
    lo, hi = predictive_interval(pred, boot_lo, boot_hi, [c["error"] for c in checks])
    return {"loss_pred": pred, "loss_pred_lo": lo, "loss_pred_hi": hi, "l_inf_pred": l_n,
            "step_term_pred": pred - l_n, "N_c": n_c, "alpha_N": alpha_n, "separable_fit": fit.record(),
            "bootstrap": len(boots), "bootstrap_lo": boot_lo, "bootstrap_hi": boot_hi, "backtests": checks}


def loss_at_step(curve: Curve, step: float) -> float | None:
    """A curve's eval loss at optimizer step `step` (log-log interpolation between the evals around it), or None
    outside the evaluated steps."""
    if not len(curve.steps):
        return None
    value = float(report_tables.interp_loglog(curve.steps, curve.loss, [step])[0])
    return value if math.isfinite(value) else None


def backtests(curves: Sequence[Curve], target_steps: float, *, b_crit: Callable | None = None,
              start_fraction: float = 0.25, n_backtests: int = 3, min_rungs: int = 4) -> list[dict]:
    """The prediction method run on the ladder itself: each of the `n_backtests` largest rungs, predicted at
    `target_steps` from the rungs smaller than it (their whole curves, as the real prediction uses), against its
    own eval loss at that step. Their errors measure what the rung bootstrap leaves out: how far the method's
    form (one step term for every size, a pure power law in N through the L∞) misses one step up in N."""
    by_n = sorted(curves, key=lambda c: c.n_params)
    out = []
    for k in range(max(min_rungs, len(by_n) - n_backtests), len(by_n)):
        held, fitted = by_n[k], by_n[:k]
        measured = loss_at_step(held, target_steps)
        if measured is None or len({c.n_params for c in fitted}) < 3:
            continue
        try:
            got = predict_final_loss(fitted, held.n_params, target_steps, held.batch_tokens, b_crit=b_crit,
                                     start_fraction=start_fraction, n_boot=0, n_backtests=0)["loss_pred"]
        except (InputError, FloatingPointError, ValueError):
            continue
        out.append({"run": held.name, "n_params": held.n_params, "fit_runs": len(fitted), "steps": target_steps,
                    "predicted": got, "measured": measured, "error": got - measured})
    return out


def predictive_interval(pred: float, boot_lo, boot_hi, errors: Sequence[float], z: float = 1.96):
    """The rung bootstrap's 95 % interval widened by the backtests' error: each side's half-width and
    z × RMS(backtest errors) added in quadrature. Without backtests, the bootstrap interval as it is."""
    if boot_lo is None or boot_hi is None or not len(errors):
        return boot_lo, boot_hi
    model = z * float(np.sqrt(np.mean(np.square(errors))))
    return (float(pred - math.hypot(pred - boot_lo, model)), float(pred + math.hypot(boot_hi - pred, model)))


def read_curve(workdir: str, name: str | None = None) -> Curve | None:
    """A finished run's learning curve from its workdir (summary.json + eval.jsonl); None if either is missing."""
    import json
    import os
    summary_path, eval_path = os.path.join(workdir, "summary.json"), os.path.join(workdir, "eval.jsonl")
    if not (os.path.exists(summary_path) and os.path.exists(eval_path)):
        return None
    with open(summary_path) as f:
        summary = json.load(f)
    steps, loss = [], []
    with open(eval_path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if r.get("step", 0) > 0 and r.get("eval_loss") is not None and math.isfinite(r["eval_loss"]):
                steps.append(float(r["step"]))
                loss.append(float(r["eval_loss"]))
    if not steps:
        return None
    return Curve(name or os.path.basename(os.path.normpath(workdir)), float(summary["n_params_nonembedding"]),
                 np.asarray(steps), np.asarray(loss), float(summary["batch_tokens"]))


def bcrit_law(bcrit_record: dict | None) -> Callable | None:
    """B_crit(L) = B*/L^(1/α_B) (Kaplan eq 5.3) from a noise/bcrit.json record; None when it has no fit."""
    if not bcrit_record:
        return None
    b_star, alpha_b = bcrit_record.get("B_star"), bcrit_record.get("alpha_B")
    if not (isinstance(b_star, (int, float)) and isinstance(alpha_b, (int, float)) and b_star > 0 and alpha_b > 0):
        return None
    return lambda loss: b_star / np.asarray(loss, dtype=np.float64) ** (1.0 / alpha_b)


def alpha_n_by_bcrit_slope(curves: Sequence[Curve], bcrit_record: dict | None) -> dict | None:
    """α_N of the converged L(N) with B_crit(L)'s slope at the ends of its 95 % interval.

    S_min = S/(1 + B_crit(L)/B) evaluates B_crit(L) along the ladder's curves, mostly below the losses the batch scan
    measured it at, so how steeply it is extrapolated moves every rung's L∞, and so α_N, in a way the rung bootstrap
    does not see. Each refit keeps B_crit at the scan's pivot loss (bcrit.json `pivot`, where the scan pins it) and
    takes α_B at one end of `ci95.alpha_B`. {alpha_B: α_N} for the two ends, or None without an interval or a pivot."""
    if not bcrit_record or not bcrit_record.get("pivot") or not (bcrit_record.get("ci95") or {}).get("alpha_B"):
        return None
    loss_p, b_p = float(bcrit_record["pivot"]["loss"]), float(bcrit_record["pivot"]["B_crit"])
    out = {}
    for alpha_b in bcrit_record["ci95"]["alpha_B"]:
        if not (isinstance(alpha_b, (int, float)) and alpha_b > 0):
            return None
        law = bcrit_law({"B_star": b_p * loss_p ** (1.0 / alpha_b), "alpha_B": float(alpha_b)})
        sep = fit_separable(curves, b_crit=law)
        if sep.at_search_bound:
            return None
        out[float(alpha_b)] = power_law_fit([c.n_params for c in curves], [sep.l_inf[c.name] for c in curves])[1]
    return out
