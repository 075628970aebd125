"""Critical batch size from batch-size scans (McCandlish et al. 2018 eqs 2.11-2.12; Kaplan §5.1).

Spec: docs/noise-scale.md §2. At a target loss L, the steps S and examples E = B·S needed
by a run at batch B obey (S/S_min − 1)(E/E_min − 1) = 1, i.e. the linear form S = S_min + E_min/B, with
B_crit = E_min/S_min. Across targets, B_crit(L) = B*/L^(1/α_B) (Kaplan eq 5.3; B* ≈ 2e8 tokens, α_B ≈ 0.21).
B is in tokens throughout (sequences × n_ctx).

The one B_crit pipeline of the project (experiments.noise_scale, experiments.fit --law=bcrit and the report
all go through it): one solver for S = S_min + E_min/B (`fit_steps_vs_batch_many`, vectorised over bootstrap
replicates; `fit_steps_vs_batch` is its one-row view), one law fit (`fit_bcrit_law`: WLS of log B_crit on
log L), one bootstrap (whole runs resampled within each model size, `fit_scans`), and one B_crit(L)
(`critical_batch`, scaling.core.formulas). Extracting the scans from run directories (targets, steps to
reach them) is data handling: scaling/noise/batch_scan.py.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from scaling.analysis import fitting, report_tables
from scaling.core.formulas import critical_batch  # noqa: F401  (B_crit(L) = B*/L^(1/α_B), Kaplan eq 5.3)


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

    # A bootstrap replicate's trial step may overflow exp(); its cost is then inf or NaN and the step is rejected.
    with np.errstate(over="ignore", invalid="ignore"):
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


@dataclasses.dataclass
class StepsBatchFit:
    S_min: float
    E_min: float       # tokens
    B_crit: float      # tokens, = E_min / S_min
    bracketed: bool    # the scanned batches span B_crit; otherwise B_crit is only a bound
    residuals: np.ndarray


def fit_steps_vs_batch(B, S, weights=None) -> StepsBatchFit:
    """S = S_min + E_min/B at one target loss (least squares in log S): `fit_steps_vs_batch_many` on one row.

    NaN S (target not reached) carry no weight; `weights` (e.g. bootstrap counts) multiply the squared
    log residuals. FitError with fewer than 2 distinct batch sizes.
    """
    B, S = np.asarray(B, dtype=np.float64), np.asarray(S, dtype=np.float64)
    w = np.ones_like(B) if weights is None else np.asarray(weights, dtype=np.float64)
    used = np.isfinite(S) & (w > 0)
    if len(np.unique(B[used])) < 2:
        raise fitting.FitError("S = S_min + E_min/B needs runs at >= 2 distinct batch sizes that reach the target")
    s_min, e_min = (float(v[0]) for v in fit_steps_vs_batch_many(B, S, w[None]))
    b_crit = e_min / s_min
    resid = np.sqrt(w[used]) * (np.log(s_min + e_min / B[used]) - np.log(S[used]))
    return StepsBatchFit(S_min=s_min, E_min=e_min, B_crit=b_crit,
                         bracketed=bool(B[used].min() <= b_crit <= B[used].max()), residuals=resid)


def peak_lr_steps(steps, warmup_steps: int):
    """Optimizer steps counted at the peak LR: the sum of lr_t / lr_peak over the first ``steps`` updates.

    The trainer's warmup is linear from peak/W at step 0 to the peak at step W−1 (scaling/train/optimizers.py), then
    constant (a batch scan trains at a constant LR). If progress per step is proportional to the LR, a run needs
    this many steps at the peak LR to do what its ``steps`` did: ``steps − (W−1)/2`` after the warmup, ``S(S+1)/(2W)``
    inside it. Measured (README, the batch scan's warmup): exact at B = 64 sequences, an over-correction at B = 2,
    where the peak LR is noise-limited and the warmup costs fewer steps than (W−1)/2.
    """
    S = np.asarray(steps, dtype=np.float64)
    W = float(warmup_steps)
    if W <= 1:
        return S
    return np.where(S >= W, S - (W - 1.0) / 2.0, S * (S + 1.0) / (2.0 * W))


COLLAPSE_TOLERANCE = 0.15   # model sizes' B_crit this far apart at equal loss (median) still count as one B_crit(L)
WARMUP_RATIO_NOTE = 0.1   # the report names the warmup when it moves B_crit by more than this (either way)


def warmup_sensitivity(batches, S, warmup_steps) -> np.ndarray:
    """B_crit at each target counted in peak-LR steps (`peak_lr_steps`) ÷ B_crit in optimizer steps.

    batches (n_runs,) tokens, S (n_runs, n_targets) optimizer steps to each target, warmup_steps (n_runs,). A
    warmup of the same W steps at every batch adds a constant to S (it enters S_min); one fixed in tokens adds
    (W−1)/2 ∝ 1/B (it enters E_min and inflates B_crit most where E_min is small: the high-loss targets). A ratio
    far from 1 says the targets are reached so early that the warmup, not the batch, shapes S. NaN where
    either fit fails.
    """
    batches, S = np.asarray(batches, dtype=np.float64), np.asarray(S, dtype=np.float64)
    W = np.asarray(warmup_steps, dtype=np.float64)
    S_peak = np.stack([peak_lr_steps(row, w) for row, w in zip(S, W)])
    ones = np.ones((1, len(batches)))
    out = np.full(S.shape[1], np.nan)
    for j in range(S.shape[1]):
        raw_s, raw_e = fit_steps_vs_batch_many(batches, S[:, j], ones)
        peak_s, peak_e = fit_steps_vs_batch_many(batches, S_peak[:, j], ones)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[j] = (peak_e[0] / peak_s[0]) / (raw_e[0] / raw_s[0])
    return out


def fit_bcrit_law(L, B_crit, weights=None) -> tuple[float, float, fitting.PowerLawFit]:
    """Regress log B_crit = log B* − (1/α_B) log L; returns (B*, α_B, the underlying WLS fit)."""
    fit = fitting.wls_loglog(L, B_crit, weights)
    if fit.slope >= 0:
        raise fitting.FitError(f"B_crit does not fall with the loss (slope {fit.slope:.3g} >= 0): alpha_B is undefined")
    if fit.intercept > 700:  # B* = e^intercept beyond float64 (B_crit falls extremely steeply, α_B → 0): no law
        raise fitting.FitError(f"B* = exp({fit.intercept:.0f}) overflows: B_crit falls too steeply for B*/L^(1/alpha_B)")
    return float(np.exp(fit.intercept)), float(-1.0 / fit.slope), fit


def fit_bcrit_law_many(L, B_crit) -> tuple[np.ndarray, np.ndarray]:
    """`fit_bcrit_law` per row of B_crit (R, n) over the same losses L: (B*, α_B) arrays, NaN entries of a row
    skipped, NaN where fewer than 2 are left or B_crit does not fall."""
    L = np.asarray(L, dtype=np.float64)
    B_crit = np.atleast_2d(B_crit)
    b_star, alpha = np.full(len(B_crit), np.nan), np.full(len(B_crit), np.nan)
    for i, row in enumerate(B_crit):
        ok = np.isfinite(row) & (row > 0)
        try:
            b_star[i], alpha[i], _ = fit_bcrit_law(L[ok], row[ok])
        except fitting.FitError:
            continue
    return b_star, alpha


@dataclasses.dataclass
class Scan:
    """One model size's batch-size scan: the steps each run needed to reach each target loss."""
    model: str
    n_params_nonembedding: float
    run_names: list            # (n_runs,)
    batches: np.ndarray        # (n_runs,) batch tokens
    targets: np.ndarray        # (n_targets,) target losses
    S: np.ndarray              # (n_runs, n_targets) steps to reach each target, NaN = not reached


def scan_from_rows(target, B, S, runs=None, model: str = "scan") -> Scan:
    """Rows (target loss, batch tokens, steps to reach it[, run id]) as one Scan; without run ids every row
    is its own run."""
    target, B, S = (np.asarray(v, dtype=np.float64) for v in (target, B, S))
    runs = np.arange(len(B)) if runs is None else np.asarray(runs)
    names, run_index = np.unique(runs, return_inverse=True)
    targets, target_index = np.unique(target, return_inverse=True)
    matrix = np.full((len(names), len(targets)), np.nan)
    matrix[run_index, target_index] = S
    batches = np.zeros(len(names))
    batches[run_index] = B
    if not np.all(batches[run_index] == B):
        raise fitting.FitError("a run id has rows at different batch sizes; one run is one batch size")
    return Scan(model=model, n_params_nonembedding=math.nan, run_names=[str(n) for n in names], batches=batches,
                targets=targets, S=matrix)


def fit_scans(scans: list, n_boot: int = 200, seed: int = 0, level: float = 0.95) -> dict:
    """Per-target S = S_min + E_min/B fits, then B_crit(L) = B*/L^(1/α_B) over every (model, target) point,
    with 95% CIs from resampling *whole runs* within each model size (all B_crit(L_j) of a model share its
    runs; the targets stay those of the full data). B in tokens.

    Returns B_star, alpha_B, ci95, n_boot, n_boot_valid, level, per_target (model, target_loss, S_min, E_min,
    B_crit with its bootstrap bounds, bracketed, n_runs, rms_log_residual) and not_reached (run, target_loss).
    """
    per_target, not_reached = [], []
    L_all, bc_all, boot_all = [], [], []
    rng = np.random.default_rng(seed)
    for scan in scans:
        batches, targets, S = scan.batches, scan.targets, scan.S
        for i, j in zip(*np.nonzero(~np.isfinite(S))):
            not_reached.append({"run": scan.run_names[i], "target_loss": float(targets[j])})
        # Whole-run resampling within this model size; row 0 is the fit to the data itself.
        resampled = fitting.resample_counts(len(batches), n_boot, int(rng.integers(2 ** 31))) if n_boot else []
        counts = np.vstack([np.ones(len(batches)), *resampled])
        b_crit = np.full((n_boot + 1, len(targets)), np.nan)
        for j, t in enumerate(targets):
            s_min, e_min = fit_steps_vs_batch_many(batches, S[:, j], counts)
            with np.errstate(divide="ignore", invalid="ignore"):
                b_crit[:, j] = e_min / s_min
            if not np.isfinite(b_crit[0, j]):
                continue
            reached = np.isfinite(S[:, j])
            lo, hi = fitting.percentile_ci(b_crit[1:, j], level) if n_boot else (math.nan, math.nan)
            pred = np.log(s_min[0] + e_min[0] / batches[reached])
            per_target.append({
                "model": scan.model, "n_params_nonembedding": scan.n_params_nonembedding,
                "target_loss": float(t), "S_min": float(s_min[0]), "E_min": float(e_min[0]),
                "B_crit": float(b_crit[0, j]), "B_crit_lo": float(lo), "B_crit_hi": float(hi),
                "bracketed": bool(batches[reached].min() <= b_crit[0, j] <= batches[reached].max()),
                "n_runs": int(reached.sum()),
                "rms_log_residual": float(np.sqrt(np.mean((pred - np.log(S[reached, j])) ** 2))),
            })
        L_all.append(targets)
        bc_all.append(b_crit[0])
        boot_all.append(b_crit[1:])
    if not per_target:
        raise fitting.FitError("no model size of the scan has runs at >= 2 batch sizes that reach common losses")
    L = np.concatenate(L_all)
    b_star, alpha = fit_bcrit_law_many(L, np.concatenate(bc_all)[None])
    if not np.isfinite(alpha[0]):
        raise fitting.FitError("B_crit does not fall with the loss over the targets: B*/L^(1/alpha_B) cannot be "
                               "fit (is the scan bracketing B_crit? see per_target)")
    boot_b, boot_a = fit_bcrit_law_many(L, np.concatenate(boot_all, axis=1)) if n_boot else (np.array([]),) * 2
    ci = lambda x: [float(v) for v in fitting.percentile_ci(x, level)] if np.isfinite(x).any() else [None, None]
    # B* is B_crit at L = 1 nat, far outside the targets, so its interval is alpha_B's amplified; what the scan
    # fixes is B_crit inside the targets, given at their geometric mean (the pivot) with its own interval.
    l_pivot = float(np.exp(np.mean(np.log(L))))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        boot_pivot = boot_b / l_pivot ** (1.0 / boot_a)
    return {"B_star": float(b_star[0]), "alpha_B": float(alpha[0]),
            "ci95": {"B_star": ci(boot_b), "alpha_B": ci(boot_a)},
            "pivot": {"loss": l_pivot, "B_crit": float(b_star[0] / l_pivot ** (1.0 / alpha[0])),
                      "ci95": ci(boot_pivot)},
            "n_boot": n_boot, "n_boot_valid": int(np.isfinite(boot_a).sum()), "level": level,
            "per_target": per_target, "not_reached": not_reached}


def _r2_log(fit: fitting.PowerLawFit, y) -> float:
    """R² in log space of an unweighted log-log line `fit` through points with ordinates y."""
    ly = np.log(y)
    return float(1.0 - np.sum(np.asarray(fit.residuals) ** 2) / np.sum((ly - ly.mean()) ** 2))


def bcrit_shape(per_target: list) -> dict:
    """How B_crit(L) departs from one power law, from the per-target points of `fit_scans`.

    - `collapse`: does B_crit depend on L alone (Kaplan §5.1)? For each pair of model sizes, over the losses both
      scanned, the median |ln| ratio of their B_crit (interpolated in log-log), as a fraction: None with < 2 sizes
      or no shared losses;
    - `alpha_B_high_L` / `alpha_B_low_L`: the exponent fitted separately to the points above and below the median
      loss (a power law has one; B_crit steepening towards low loss gives a smaller α_B below);
    - `r2_vs_loss`, `tokens_exponent`, `r2_vs_tokens`: one power law of B_crit in L against one in the tokens
      E_min the target needs (B_crit ∝ E_min^p, the form Zhang et al. 2024 and Bergsma et al. 2025 report: the
      critical batch follows the data seen, not the loss), pooled over sizes, R² in log space. E_min is also
      B_crit's numerator (B_crit = E_min/S_min), so p and its R² are inflated when S_min varies little; compare
      the two R² rather than read p alone.
    """
    by_model, points = {}, []
    for t in per_target:
        if t.get("B_crit") and t["B_crit"] > 0 and t.get("target_loss") and t["target_loss"] > 0:
            by_model.setdefault(str(t.get("model")), []).append((float(t["target_loss"]), float(t["B_crit"])))
            points.append((float(t["target_loss"]), float(t.get("E_min") or math.nan), float(t["B_crit"])))
    ratios = []
    models = sorted(by_model)
    for i, a in enumerate(models):
        for b in models[i + 1:]:
            la, ba = (np.array(v) for v in zip(*sorted(by_model[a])))
            lb, bb = (np.array(v) for v in zip(*sorted(by_model[b])))
            inside = (lb >= la.min()) & (lb <= la.max())     # b's losses that a's scan also covers
            if inside.any():
                at_a = report_tables.interp_loglog(la, ba, lb[inside])
                ratios.append(float(np.median(np.abs(np.log(bb[inside] / at_a)))))
    L, E, B = (np.array(v) for v in zip(*points)) if points else (np.array([]),) * 3
    out = {"collapse": float(np.expm1(np.median(ratios))) if ratios else None,
           "alpha_B_high_L": None, "alpha_B_low_L": None, "loss_split": None,
           "r2_vs_loss": None, "tokens_exponent": None, "r2_vs_tokens": None}
    ok = np.isfinite(E) & (E > 0)
    if ok.sum() >= 3 and np.ptp(np.log(L[ok])) > 0 and np.ptp(np.log(E[ok])) > 0:
        vs_l = fitting.wls_loglog(L[ok], B[ok])
        vs_e = fitting.wls_loglog(E[ok], B[ok])
        out.update(r2_vs_loss=_r2_log(vs_l, B[ok]), tokens_exponent=float(vs_e.slope),
                   r2_vs_tokens=_r2_log(vs_e, B[ok]))
    if len(L) >= 6:
        split = float(np.median(L))
        out["loss_split"] = split
        for key, part in (("alpha_B_high_L", L >= split), ("alpha_B_low_L", L < split)):
            if part.sum() >= 3 and np.ptp(np.log(L[part])) > 0:
                try:
                    out[key] = fit_bcrit_law(L[part], B[part])[1]
                except fitting.FitError:
                    pass
    return out
