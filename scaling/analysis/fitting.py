"""Robust fitting of scaling laws: Huber in log space, vmapped multi-start L-BFGS, bootstrap, WLS.

The recipe follows Hoffmann et al. 2022 (App. D.2) as corrected by Besiroglu et al. 2024 (Epoch):

* the law predicts log L through a log-sum-exp (LSE) of its terms, so every coefficient stays positive
  (A = e^a, ...) and the computation is stable;
* the objective is the Huber loss (δ = 1e-3) of log L̂ − log L, **summed** over points (a mean shrinks the
  objective 240× and default tolerances then stop the optimiser early, marin PR #749);
* gradients are exact (`jax.grad`); L-BFGS runs from every start of a grid at once (`jax.vmap`), at tight
  tolerances, in float64; the best start is then polished by BFGS (scipy, exact jax gradients).

float64 is enabled only inside the fitters (``jax.enable_x64`` context), never globally, because the
trainer shares the process in tests.

Size (~470 lines): one solver family (multi-start L-BFGS, variable projection, the bootstraps and the
log-log regression they share); splitting it would scatter the shared objective code.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
import scipy.optimize

HUBER_DELTA = 1e-3
SAME_OPTIMUM_TOL = 1e-9  # starts whose objective is within this of the best count as "reached it"
_STALL_PATIENCE = 5      # L-BFGS stops after this many iterations without a decrease in the objective
_BOOT_FIRST_PASS = 300   # bootstrap_huber: iterations every replicate runs together before the stragglers go on


class FitError(ValueError):
    """A fit that must not be trusted: optimum on the grid boundary, never moved, too few points, ..."""


# --- objective -------------------------------------------------------------------------------------
def huber(r, delta=HUBER_DELTA):
    """Huber loss: r²/2 inside |r| ≤ δ, δ(|r| − δ/2) outside (scipy.special.huber)."""
    a = jnp.abs(r)
    return jnp.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def huber_objective(log_pred: Callable, theta, cols, log_loss, weights, delta=HUBER_DELTA, reduction="sum"):
    """Σ_i w_i Huber_δ(log L̂(θ; x_i) − log L_i); `reduction="mean"` divides by Σ w (for the regression test)."""
    total = jnp.sum(weights * huber(log_pred(theta, cols) - log_loss, delta))
    return total / jnp.sum(weights) if reduction == "mean" else total


# --- L-BFGS on one start; vmapped over starts or bootstrap replicates --------------------------------
def _lbfgs_solve(fun, x0, maxiter: int, gtol: float, memory: int = 20, linesearch_steps: int = 40):
    """Minimise `fun` from x0 with optax L-BFGS + backtracking (Armijo) line search; returns (x, f, |g|, its).

    Backtracking rather than zoom: under vmap the zoom search's nested loops cost every lane the worst
    lane's evaluations and compile slowly; measured 3-5x slower end to end for the same optima.

    Stops on |g| ≤ gtol, maxiter, a non-finite value, or `_STALL_PATIENCE` iterations without decrease
    (the line search can no longer improve at float64 resolution: that *is* convergence).
    """
    opt = optax.lbfgs(memory_size=memory, linesearch=optax.scale_by_backtracking_linesearch(
        max_backtracking_steps=linesearch_steps, store_grad=True))
    value_and_grad = optax.value_and_grad_from_state(fun)
    f0, g0 = jax.value_and_grad(fun)(x0)

    def cond(carry):
        _, _, it, stall, f_best, g_norm, _, _ = carry
        return (it < maxiter) & (g_norm > gtol) & (stall < _STALL_PATIENCE) & jnp.isfinite(f_best)

    def body(carry):
        x, state, it, stall, f_best, g_norm, x_best, g_best = carry
        value, grad = value_and_grad(x, state=state)
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=fun)
        x = optax.apply_updates(x, updates)
        f_new = otu.tree_get(state, "value")
        g_new = otu.tree_get(state, "grad")
        finite = jnp.isfinite(f_new) & jnp.all(jnp.isfinite(x))
        # Strict decrease at float64 resolution; otherwise count towards the stall patience.
        improved = finite & (f_new < f_best - 4 * jnp.finfo(x.dtype).eps * jnp.abs(f_best))
        stall = jnp.where(improved, 0, jnp.where(finite, stall + 1, _STALL_PATIENCE))
        better = finite & (f_new <= f_best)
        x_best = jnp.where(better, x, x_best)
        g_best = jnp.where(better, g_new, g_best)
        f_best = jnp.where(better, f_new, f_best)
        return x, state, it + 1, stall, f_best, jnp.linalg.norm(g_best), x_best, g_best

    carry = (x0, opt.init(x0), 0, 0, f0, jnp.linalg.norm(g0), x0, g0)
    _, _, it, _, f_best, g_norm, x_best, _ = jax.lax.while_loop(cond, body, carry)
    return x_best, f_best, g_norm, it


@functools.partial(jax.jit, static_argnames=("log_pred", "maxiter", "delta", "reduction", "linesearch_steps"))
def _multistart(log_pred, starts, cols, log_loss, weights, maxiter, gtol, delta, reduction, linesearch_steps,
                shift, scale):
    """vmap of `_lbfgs_solve` over rows of `starts` (S, P) and rows of `weights` (S, n).

    The search runs in z with θ = shift + scale·z (an affine preconditioner; identity by default), and
    returns θ. Under vmap every lane waits for the slowest lane's line search, so screening stages cap it.
    """
    def one(x0, w):
        fun = lambda z: huber_objective(log_pred, shift + scale @ z, cols, log_loss, w, delta, reduction)
        z0 = jnp.linalg.solve(scale, x0 - shift)
        z, f, g, it = _lbfgs_solve(fun, z0, maxiter, gtol, linesearch_steps=linesearch_steps)
        return shift + scale @ z, f, g, it
    return jax.vmap(one)(starts, weights)


@functools.partial(jax.jit, static_argnames=("log_pred", "delta", "reduction"))
def _value_and_grad(log_pred, theta, cols, log_loss, weights, delta, reduction):
    return jax.value_and_grad(lambda th: huber_objective(log_pred, th, cols, log_loss, weights, delta, reduction))(theta)


_PAD_TO = 128


def _pad(cols, loss, weights):
    """Pad the points to a multiple of 128 with weight-0 rows (log covariates 0, loss 1).

    Padded rows add exactly zero to the objective and its gradient; fits of different sizes then share
    compiled programs (XLA compiles per shape, and compiling the vmapped L-BFGS costs seconds).
    """
    n = len(np.asarray(loss))
    pad = (-n) % _PAD_TO
    if pad == 0:
        return cols, loss, weights
    cols = {k: np.concatenate([np.asarray(v, dtype=np.float64), np.zeros(pad)]) for k, v in cols.items()}
    loss = np.concatenate([np.asarray(loss, dtype=np.float64), np.ones(pad)])
    weights = np.concatenate([weights, np.zeros((len(weights), pad))], axis=1)
    return cols, loss, weights


def run_starts(log_pred, starts, cols, loss, weights=None, maxiter=2000, gtol=1e-12, delta=HUBER_DELTA,
               reduction="sum", chunk=None, float64=True, linesearch_steps=40, precondition=None):
    """Run vmapped L-BFGS from each start (S, P); `weights` (S, n) per start (bootstrap) or None.

    `cols` maps names to *log* covariates (log N, log D, ...). Returns numpy float64 arrays
    (theta (S, P), objective (S,), grad_norm (S,), iterations (S,)). `chunk` bounds memory for huge S.
    `float64=False` runs in float32 (4× cheaper; only for the screening stage of the grid).
    `precondition=(θ0, M)` searches θ = θ0 + M z (see `curvature_preconditioner`); the reported grad norm is in z.
    """
    starts = np.atleast_2d(np.asarray(starts, dtype=np.float64))
    n = len(np.asarray(loss))
    if weights is None:
        weights = np.ones((len(starts), n))
    weights = np.asarray(weights, dtype=np.float64)
    cols, loss, weights = _pad(cols, loss, weights)
    chunk = chunk or len(starts)
    p = starts.shape[1]
    shift, scale = (np.zeros(p), np.eye(p)) if precondition is None else precondition
    dtype = np.float64 if float64 else np.float32
    outs = []
    with jax.enable_x64(float64):
        c = {k: jnp.asarray(np.asarray(v, dtype=dtype)) for k, v in cols.items()}
        y = jnp.asarray(np.log(np.asarray(loss, dtype=np.float64)).astype(dtype))
        for i in range(0, len(starts), chunk):
            res = _multistart(log_pred, jnp.asarray(starts[i:i + chunk].astype(dtype)), c, y,
                              jnp.asarray(weights[i:i + chunk].astype(dtype)), int(maxiter), float(gtol), float(delta),
                              reduction, int(linesearch_steps), jnp.asarray(np.asarray(shift, dtype=dtype)),
                              jnp.asarray(np.asarray(scale, dtype=dtype)))
            outs.append([np.asarray(r, dtype=np.float64) for r in res])
    return tuple(np.concatenate([o[k] for o in outs]) for k in range(4))


def polish(log_pred, theta, cols, loss, weights=None, delta=HUBER_DELTA, reduction="sum", gtol=1e-12):
    """BFGS (scipy) with exact jax gradients from `theta`; returns (theta, objective, grad_norm)."""
    n = len(np.asarray(loss))
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    cols, loss, w = _pad(cols, loss, w[None])
    w = w[0]
    with jax.enable_x64(True):
        c = {k: jnp.asarray(np.asarray(v, dtype=np.float64)) for k, v in cols.items()}
        y = jnp.log(jnp.asarray(np.asarray(loss, dtype=np.float64)))
        wj = jnp.asarray(w)

        def fg(th):
            v, g = _value_and_grad(log_pred, jnp.asarray(th), c, y, wj, float(delta), reduction)
            return float(v), np.asarray(g, dtype=np.float64)

        f0, g0 = fg(theta)
        res = scipy.optimize.minimize(fg, np.asarray(theta, dtype=np.float64), jac=True, method="BFGS",
                                      options=dict(gtol=gtol, maxiter=10_000))
        f1, g1 = fg(res.x)
    if np.isfinite(f1) and f1 <= f0:
        return np.asarray(res.x), f1, float(np.linalg.norm(g1))
    return np.asarray(theta, dtype=np.float64), f0, float(np.linalg.norm(g0))


# --- the multi-start fit ------------------------------------------------------------------------------
def grid_starts(axes: Sequence[Sequence[float]]) -> np.ndarray:
    """Cartesian product of per-parameter start values, (Π len(axis), P)."""
    return np.array(list(itertools.product(*axes)), dtype=np.float64)


@dataclasses.dataclass
class HuberFit:
    theta: np.ndarray            # best parameters (the law's internal, log-space parameterisation)
    objective: float             # Σ Huber at the optimum (after polishing)
    grad_norm: float
    n_starts: int                # starts in the grid (all screened)
    n_refined: int               # best screened starts that went on in float64
    n_at_best: int               # of those, how many reached within SAME_OPTIMUM_TOL of the best objective
    best_start: np.ndarray       # the grid start that led to the optimum
    iterations: int
    all_objectives: np.ndarray   # per start: float64 objective if refined, else the float32 screening value
    all_thetas: np.ndarray


# Screening schedule (successive halving): (how many starts go on, float64?, L-BFGS iterations, line-search
# cap). All grid starts get a short float32 run, the best 256 a longer one, the best 64 of those then run to
# convergence in float64 (gtol 1e-12, curvature-preconditioned). Under vmap every lane waits for the slowest
# line search, so the cheap float32 stages cap it. On Epoch's 240 points this finds the same optimum
# (1.0182740e-3) as running all 4,500 starts to convergence (1,562 of which reach it), ~50x faster.
DEFAULT_STAGES = ((None, False, 30, 8), (256, False, 150, 10), (64, True, 10_000, 20))


def fit_huber(log_pred, cols, loss, theta_names: Sequence[str], grid=None, init=None, delta=HUBER_DELTA,
              reduction="sum", gtol=1e-12, check_boundary=True, stages=DEFAULT_STAGES, do_polish=True):
    """Huber-in-log-space fit from a grid of starts (default) or from one `init`.

    Successive halving over the grid (`stages`): every start runs a short L-BFGS screen, the best continue
    at float64 and tight tolerance (gtol 1e-12, ≥ 1e4 iterations), the overall best is polished by BFGS.
    Refuses (FitError) when the optimum sits on or outside the grid's boundary in any coordinate (the grid
    does not bracket it) or when the best start never moved.
    """
    n = len(np.asarray(loss))
    p = len(theta_names)
    if n <= p:
        raise FitError(f"{n} points cannot determine {p} parameters {list(theta_names)}; give more than {p} points")
    if (grid is None) == (init is None):
        raise ValueError("fit_huber needs exactly one of grid= (axes of start values) or init= (one start)")
    starts = grid_starts(grid) if grid is not None else np.atleast_2d(np.asarray(init, dtype=np.float64))
    if init is not None:
        stages = stages[-1:]  # one start: go straight to the converged float64 stage
    theta = starts.copy()
    f = np.full(len(starts), np.inf)
    g = np.full(len(starts), np.inf)
    it = np.zeros(len(starts), dtype=np.int64)
    alive = np.arange(len(starts))
    refined = None
    for keep, float64, maxiter, ls_steps in stages:
        if keep is not None and keep < len(alive):
            # Keep the best `keep` by current objective (unscreened starts have f = inf and sort last).
            alive = alive[np.argsort(f[alive], kind="stable")[:keep]]
        pre = None
        if float64 and np.isfinite(f[alive]).any():
            # The converging stage searches in curvature-scaled coordinates around the best point so far.
            try:
                pre = curvature_preconditioner(log_pred, theta[alive[np.argmin(f[alive])]], cols, loss, delta)
            except np.linalg.LinAlgError:
                pre = None
        th2, f2, g2, it2 = run_starts(log_pred, theta[alive], cols, loss, maxiter=maxiter, gtol=gtol, delta=delta,
                                      reduction=reduction, chunk=4500, float64=float64, linesearch_steps=ls_steps,
                                      precondition=pre)
        f2 = np.where(np.isfinite(f2), f2, np.inf)
        theta[alive], f[alive], g[alive] = th2, f2, g2
        it[alive] += it2.astype(np.int64)
        if float64 and refined is None:
            refined = alive  # every start that ran in float64 has a comparable objective
    refined = alive if refined is None else refined
    if not np.isfinite(f[refined]).any():
        raise FitError("every start produced a non-finite objective; check the data for zeros or NaNs")
    best = int(refined[np.argmin(f[refined])])
    theta_best, f_best, g_best = theta[best], float(f[best]), float(g[best])
    if do_polish:
        theta_best, f_best, g_best = polish(log_pred, theta_best, cols, loss, delta=delta, reduction=reduction)
        f[best] = min(f[best], f_best)
    n_at_best = int(np.sum(np.abs(f[refined] - f_best) <= SAME_OPTIMUM_TOL))
    fit = HuberFit(theta=theta_best, objective=f_best, grad_norm=g_best, n_starts=len(starts), n_refined=len(refined),
                   n_at_best=n_at_best, best_start=starts[best], iterations=int(it[best]), all_objectives=f,
                   all_thetas=theta)
    if np.linalg.norm(theta_best - starts[best]) < 1e-10 and g_best > 1e-8:
        raise FitError(f"the best start {dict(zip(theta_names, starts[best]))} never moved (|grad|={g_best:.3g}); "
                       "the objective is flat or non-finite there: check the data and the start grid")
    if check_boundary and grid is not None:
        for name, axis, value in zip(theta_names, grid, theta_best):
            lo, hi = min(axis), max(axis)
            tol = 1e-6 * max(hi - lo, 1.0)
            if len(axis) > 1 and not (lo + tol < value < hi - tol):
                raise FitError(f"optimum {name}={value:.6g} lies on or outside the start grid [{lo}, {hi}]; the "
                               "grid does not bracket the optimum: widen the grid for that parameter or check the data")
    return fit


def curvature_preconditioner(log_pred, theta, cols, loss, delta=HUBER_DELTA):
    """(θ, M) with M = L⁻ᵀ, L Lᵀ = Σ_i min(1, δ/|r_i|) J_i J_iᵀ: the IRLS Gauss-Newton curvature at θ.

    In z = M⁻¹(θ − θ̂) the Huber objective near θ̂ has Hessian ≈ I, so L-BFGS needs a few dozen iterations
    instead of hundreds (the raw problem has κ ≈ 1e11: A trades against α through log N ≈ 20).
    """
    with jax.enable_x64(True):
        c = {k: jnp.asarray(np.asarray(v, dtype=np.float64)) for k, v in cols.items()}
        th = jnp.asarray(np.asarray(theta, dtype=np.float64))
        J = np.asarray(jax.jacfwd(lambda t: log_pred(t, c))(th))
        r = np.asarray(log_pred(th, c)) - np.log(np.asarray(loss, dtype=np.float64))
    w = np.minimum(1.0, delta / np.maximum(np.abs(r), 1e-300))
    H = J.T @ (J * w[:, None])
    H += 1e-12 * np.trace(H) / len(H) * np.eye(len(H))  # keep it positive definite
    L = np.linalg.cholesky(H)
    return np.asarray(theta, dtype=np.float64), np.linalg.inv(L).T


def bootstrap_huber(log_pred, cols, loss, theta_hat, n_boot=1000, seed=0, groups=None, delta=HUBER_DELTA,
                    maxiter=5000, gtol=1e-12):
    """Bootstrap by resampling points (or whole groups, e.g. runs) with replacement, fixed seed.

    Each replicate is a weighted refit (weights = resample counts) started from the full-data optimum, all
    replicates vmapped in one L-BFGS run (Epoch refits each replicate from one start too).
    Returns (replicates (n_boot, P), objectives (n_boot,)); rows of failed replicates are NaN.
    """
    weights = resample_counts(len(np.asarray(loss)), n_boot, seed, groups)
    starts = np.repeat(np.asarray(theta_hat, dtype=np.float64)[None], n_boot, axis=0)
    pre = curvature_preconditioner(log_pred, theta_hat, cols, loss, delta)
    # Two passes: under vmap every lane pays the slowest lane's iterations, and a few replicates need
    # thousands (median ~100 on the quick study's L(N, S) and L(N, D) fits, max ~3,500). So every replicate
    # gets `_BOOT_FIRST_PASS` iterations together, and only the unfinished ones (stopped by that cap) go on,
    # alone in a small batch, from where they stopped, up to `maxiter` in all (measured: 116 s -> ~15 s).
    first = min(maxiter, _BOOT_FIRST_PASS)
    theta, f, _, it = run_starts(log_pred, starts, cols, loss, weights=weights, maxiter=first, gtol=gtol,
                                 delta=delta, chunk=250, precondition=pre, linesearch_steps=20)
    unfinished = np.flatnonzero((it >= first) & np.isfinite(f))
    if maxiter > first and len(unfinished):
        theta[unfinished], f[unfinished], _, _ = run_starts(
            log_pred, theta[unfinished], cols, loss, weights=weights[unfinished], maxiter=maxiter - first,
            gtol=gtol, delta=delta, chunk=250, precondition=pre, linesearch_steps=20)
    bad = ~np.isfinite(f)
    theta[bad] = np.nan
    return theta, f


# --- resampling and intervals ---------------------------------------------------------------------------
def resample_counts(n: int, n_boot: int, seed: int = 0, groups=None) -> np.ndarray:
    """(n_boot, n) counts of each point in a bootstrap resample; with `groups`, whole groups are resampled."""
    rng = np.random.default_rng(seed)
    if groups is None:
        idx = rng.integers(0, n, size=(n_boot, n))
        return np.stack([np.bincount(row, minlength=n) for row in idx]).astype(np.float64)
    groups = np.asarray(groups)
    labels, inverse = np.unique(groups, return_inverse=True)
    g = len(labels)
    picks = rng.integers(0, g, size=(n_boot, g))
    group_counts = np.stack([np.bincount(row, minlength=g) for row in picks])
    return group_counts[:, inverse].astype(np.float64)


def percentile_ci(samples, level=0.95, axis=0):
    """Percentile interval of bootstrap replicates (NaN rows, i.e. failed replicates, ignored)."""
    q = 100 * (1 - level) / 2
    lo, hi = np.nanpercentile(samples, [q, 100 - q], axis=axis)
    return lo, hi


# --- ordinary weighted least squares in log-log for single power laws -----------------------------------
@dataclasses.dataclass
class PowerLawFit:
    slope: float        # k in log y = c + k log x
    intercept: float    # c
    slope_se: float
    intercept_se: float
    residuals: np.ndarray
    objective: float    # weighted sum of squared log residuals


def wls_loglog(x, y, weights=None) -> PowerLawFit:
    """Fit log y = c + k·log x by weighted least squares (w = 1/σ² of log y); classic standard errors."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        raise FitError(f"a power law needs at least 2 points, got {len(x)}")
    if np.any(x <= 0) or np.any(y <= 0):
        raise FitError("power-law fits need positive x and y (they are fit in log-log)")
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    lx, ly = np.log(x), np.log(y)
    if np.ptp(lx) == 0:
        raise FitError("all x values are equal: the exponent is not identifiable")
    X = np.stack([np.ones_like(lx), lx], axis=1)
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(X * sw[:, None], ly * sw, rcond=None)
    resid = ly - X @ coef
    dof = max(len(x) - 2, 1)
    sigma2 = float(np.sum(w * resid ** 2) / dof)
    cov = sigma2 * np.linalg.inv(X.T @ (X * w[:, None]))
    return PowerLawFit(slope=float(coef[1]), intercept=float(coef[0]), slope_se=float(np.sqrt(cov[1, 1])),
                       intercept_se=float(np.sqrt(cov[0, 0])), residuals=resid, objective=float(np.sum(w * resid ** 2)))


def bootstrap_wls_loglog(x, y, weights=None, n_boot=1000, seed=0, groups=None):
    """Bootstrap replicates (n_boot, 2) of (slope, intercept) for `wls_loglog`, resampling points or groups."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    counts = resample_counts(len(x), n_boot, seed, groups)
    X = np.stack([np.ones_like(x), np.log(x)], axis=1)
    ly = np.log(y)
    out = np.full((n_boot, 2), np.nan)
    for r, c in enumerate(counts):
        ww = w * c
        if np.count_nonzero(ww) < 2 or np.ptp(X[ww > 0, 1]) == 0:
            continue  # a degenerate resample (one distinct x) has no slope
        A = X.T @ (X * ww[:, None])
        coef = np.linalg.solve(A, X.T @ (ww * ly))
        out[r] = coef[1], coef[0]
    return out


# --- variable projection for the Chinchilla form (second solver, cross-check) -----------------------------
def _chinchilla_inner_log_pred(th3, cols):
    """log(E + A N^-α + B D^-β) with (a, b, e) = log(A, B, E) free and (α, β) fixed in `cols`."""
    terms = jnp.stack([th3[0] - cols["alpha"] * cols["logN"], th3[1] - cols["beta"] * cols["logD"],
                       jnp.broadcast_to(th3[2], cols["logN"].shape)])
    return jax.nn.logsumexp(terms, axis=0)


def _chinchilla_inner_log_pred_5(theta, cols):
    """The full 5-parameter Chinchilla log L̂ (θ = a, b, e, α, β), for the profile's envelope gradient."""
    return _chinchilla_inner_log_pred(theta[:3], dict(cols, alpha=theta[3], beta=theta[4]))


@functools.partial(jax.jit, static_argnames=("maxiter",))
def _varpro_inner(exponents, init3, logN, logD, log_loss, maxiter):
    """For each (α, β) row, minimise the Huber objective over the linear coefficients' logs."""
    def one(ab, x0):
        cols = dict(logN=logN, logD=logD, alpha=ab[0], beta=ab[1])
        fun = lambda th: huber_objective(_chinchilla_inner_log_pred, th, cols, log_loss, jnp.ones_like(log_loss))
        return _lbfgs_solve(fun, x0, maxiter, 1e-13, linesearch_steps=30)
    return jax.vmap(one)(exponents, init3)


def _nnls_init(alpha, beta, N, D, loss):
    """(a, b, e) from NNLS of L ≈ A N^-α + B D^-β + E in relative error (≈ the log residual)."""
    X = np.stack([N ** -alpha, D ** -beta, np.ones_like(N)], axis=1) / loss[:, None]
    coef, _ = scipy.optimize.nnls(X, np.ones_like(loss))
    coef = np.maximum(coef, 1e-8 * np.max(np.abs(coef)) + 1e-300)  # a zero coefficient has log −∞
    return np.log(coef)


def varpro_chinchilla(N, D, loss, alpha_grid=None, beta_grid=None, maxiter=2000):
    """Variable projection: profile out (A, B, E) for each (α, β) and search the 2-D profile.

    For fixed exponents the law is linear in (A, B, E) ≥ 0: NNLS gives the start, a small L-BFGS solves
    the Huber-in-log objective exactly. A grid over (α, β) picks the start; BFGS then minimises the 2-D
    profile with its exact gradient (envelope theorem: ∂f*/∂(α, β) = ∂f/∂(α, β) at the inner optimum).
    The 2-D problem is well conditioned (κ ≈ 11 instead of ≈ 3.5e11 for the 5-D one, Open-Athena
    arXiv 2603.22339). Returns dict(theta=(a, b, e, α, β), objective, grid_best).
    """
    N, D, loss = (np.asarray(v, dtype=np.float64) for v in (N, D, loss))
    alpha_grid = np.linspace(0.05, 1.5, 12) if alpha_grid is None else np.asarray(alpha_grid)
    beta_grid = np.linspace(0.05, 1.5, 12) if beta_grid is None else np.asarray(beta_grid)
    cols = dict(logN=np.log(N), logD=np.log(D))
    ones = np.ones_like(loss)
    warm = {}

    def inner(exps):
        exps = np.atleast_2d(exps)
        init = np.stack([_nnls_init(a, b, N, D, loss) for a, b in exps])
        with jax.enable_x64(True):
            th, f, _, _ = _varpro_inner(jnp.asarray(exps), jnp.asarray(init), jnp.asarray(cols["logN"]),
                                        jnp.asarray(cols["logD"]), jnp.asarray(np.log(loss)), maxiter)
        return np.asarray(th), np.asarray(f)

    def profile_and_grad(ab):
        if np.any(ab <= 0):
            return np.inf, np.zeros(2)
        th3, _ = inner(ab)
        theta = np.concatenate([th3[0], ab])
        warm["theta"] = theta
        f, g = _full_value_and_grad(theta, cols, loss, ones)
        return f, g[3:]

    pairs = np.array(list(itertools.product(alpha_grid, beta_grid)))
    _, f = inner(pairs)
    f = np.where(np.isfinite(f), f, np.inf)
    best = int(np.argmin(f))
    res = scipy.optimize.minimize(profile_and_grad, pairs[best], jac=True, method="BFGS",
                                  options=dict(gtol=1e-11, maxiter=500))
    f_final, _ = profile_and_grad(res.x)
    return dict(theta=warm["theta"], objective=float(f_final), grid_best=pairs[best])


def _full_value_and_grad(theta, cols, loss, weights):
    with jax.enable_x64(True):
        v, g = _value_and_grad(_chinchilla_inner_log_pred_5, jnp.asarray(theta),
                               {k: jnp.asarray(v) for k, v in cols.items()}, jnp.log(jnp.asarray(loss)),
                               jnp.asarray(weights), HUBER_DELTA, "sum")
    return float(v), np.asarray(g, dtype=np.float64)
