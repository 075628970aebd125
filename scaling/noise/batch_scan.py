"""B_crit measured directly from a batch-size scan (McCandlish et al. 2018 §2.2; Kaplan et al. 2020 §5.1).

noise-scale.md §2.2. For each model size, runs at several batch sizes B (tokens) with a constant LR
after warmup. Pipeline:

  1. targets: ~30 log-spaced losses L_j that every run of the model reaches (running-min eval loss);
  2. S(B, L_j): the first crossing, log-interpolated between evaluations (bcrit.steps_to_target);
  3. per (model, target): S = S_min + E_min/B, B_crit = E_min/S_min, flagged when the scanned batch
     sizes do not bracket it (then it is only a bound);
  4. B_crit(L) = B*/L^(1/α_B) over every (model, target) point;
  5. 95% CIs by resampling *whole runs* (within each model size) through steps 3-4, since all
     B_crit(L_j) share the same runs; the targets stay those of the full data;
  6. pointwise along every curve (Kaplan eqs 5.4/5.5): S_min = S/(1+B_crit(L)/B),
     E_min = E/(1+B/B_crit(L)), C_min = flops_per_token·E_min (summary.json's 6N convention).

Run directories need summary.json (batch_tokens, n_params_nonembedding, flops_per_token) and
eval.jsonl (step, tokens, eval_loss). Pure numpy/scipy (scaling.analysis.bcrit).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from scaling.analysis import bcrit, fitting
from scaling.noise.offline import read_jsonl

PF_DAY = 8.64e19  # FLOPs in one PF-day (models.accounting.PF_DAY; not imported: scaling/noise is model-free)
PAPER = {"B_star": 2.1e8, "alpha_B": 0.21}  # Kaplan et al. 2020 eq 5.3 / Table 5, tokens


@dataclasses.dataclass
class ScanRun:
    name: str
    model: str                  # runs of one model size share a key
    n_params_nonembedding: float
    batch_tokens: float
    flops_per_token: float
    steps: np.ndarray           # evaluation points
    tokens: np.ndarray
    loss: np.ndarray            # eval_loss

    @property
    def best_loss(self) -> np.ndarray:
        return np.minimum.accumulate(self.loss)


def load_scan_run(workdir: str, name: str | None = None, model: str | None = None) -> ScanRun:
    """A run of the scan from its workdir (summary.json + eval.jsonl); errors name the missing file."""
    name = name or os.path.basename(os.path.normpath(workdir))
    for f in ("summary.json", "eval.jsonl"):
        if not os.path.exists(os.path.join(workdir, f)):
            raise FileNotFoundError(f"run {name}: {os.path.join(workdir, f)} not found (run not finished?)")
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    evals = [r for r in read_jsonl(os.path.join(workdir, "eval.jsonl"))
             if r.get("eval_loss") is not None and math.isfinite(r["eval_loss"]) and r["step"] > 0]
    if len(evals) < 2:
        raise ValueError(f"run {name}: needs >= 2 evaluations after step 0 in eval.jsonl, has {len(evals)}")
    n = float(summary["n_params_nonembedding"])
    return ScanRun(name=name, model=model or f"{summary.get('model_family', 'model')}_N{int(n)}",
                   n_params_nonembedding=n, batch_tokens=float(summary["batch_tokens"]),
                   flops_per_token=float(summary.get("flops_per_token", 6 * n)),
                   steps=np.array([r["step"] for r in evals], dtype=np.float64),
                   tokens=np.array([r.get("tokens", r["step"] * summary["batch_tokens"]) for r in evals],
                                   dtype=np.float64),
                   loss=np.array([r["eval_loss"] for r in evals], dtype=np.float64))


def group_by_model(runs: list[ScanRun]) -> dict[str, list[ScanRun]]:
    out: dict[str, list[ScanRun]] = {}
    for r in runs:
        out.setdefault(r.model, []).append(r)
    return out


TARGET_FRACTION = 0.5   # targets span the lower half (in log loss) of the losses every run reaches


def choose_targets(runs: list[ScanRun], n_targets: int = 30, loss_range=None,
                   target_fraction: float = TARGET_FRACTION) -> np.ndarray:
    """``n_targets`` log-spaced losses (highest first) that every run reaches after its first evaluation.

    The top is below every run's first evaluation (so each crossing is interpolated, not clamped) and
    the bottom is the worst run's best loss. ``loss_range`` = (lo, hi) narrows the span. Only the lowest
    ``target_fraction`` of that span (in log loss) is used: early in training (the unigram and bigram
    statistics) B_crit is nearly constant and eq 5.3 does not describe it (measured on the quick preset's
    scan: 700-900 tokens from 6.1 to 5.3 nats, then rising to 1,750 at 4.8; over the whole span
    B*/L^(1/α_B) has R² 0.70, over the lower half 0.95).
    """
    if not 0.0 < target_fraction <= 1.0:
        raise ValueError(f"target_fraction must be in (0, 1], got {target_fraction}")
    hi = min(float(r.best_loss[0]) for r in runs)
    lo = max(float(r.best_loss[-1]) for r in runs)
    if loss_range is not None:
        lo, hi = max(lo, loss_range[0]), min(hi, loss_range[1])
    if lo < hi:
        hi = float(np.exp(np.log(lo) + target_fraction * (np.log(hi) - np.log(lo))))
    if not lo < hi:
        worst = max(runs, key=lambda r: r.best_loss[-1])
        raise ValueError(f"no loss is reached by every run of {runs[0].model}: run {worst.name} only gets to "
                         f"{worst.best_loss[-1]:.4f}, above the first evaluation of another run ({hi:.4f}); "
                         "train the small-batch runs longer or drop them")
    return np.geomspace(hi, lo, n_targets + 1)[1:]


def steps_matrix(runs: list[ScanRun], targets) -> np.ndarray:
    """(n_runs, n_targets) steps to reach each target (NaN = not reached)."""
    return np.array([[bcrit.steps_to_target(r.steps, r.loss, t) for t in targets] for r in runs])


def law_fit_many(L, B_crit) -> tuple[np.ndarray, np.ndarray]:
    """(B*, α_B) per row of B_crit (R, n) over the same losses L; NaN entries skipped, NaN if < 2 left."""
    L = np.asarray(L, dtype=np.float64)
    B_crit = np.atleast_2d(B_crit)
    b_star, alpha = np.full(len(B_crit), np.nan), np.full(len(B_crit), np.nan)
    for i, row in enumerate(B_crit):
        ok = np.isfinite(row) & (row > 0)
        if ok.sum() < 2 or np.ptp(np.log(L[ok])) == 0:
            continue
        slope, intercept = np.polyfit(np.log(L[ok]), np.log(row[ok]), 1)
        # A replicate whose B_crit falls extremely steeply (α_B → 0) has B* = e^intercept beyond float64: no law.
        if slope < 0 and intercept < 700:
            b_star[i], alpha[i] = math.exp(intercept), -1.0 / slope
    return b_star, alpha


def fit_scan(runs: list[ScanRun], n_targets: int = 30, n_boot: int = 200, seed: int = 0, level: float = 0.95,
             loss_range=None, target_fraction: float = TARGET_FRACTION) -> dict:
    """The whole §2.2 pipeline on a scan; B in tokens. Models with < 2 batch sizes are skipped (listed)."""
    per_target, skipped, not_reached = [], [], []
    L_all, bc_all, boot_all = [], [], []
    rng = np.random.default_rng(seed)
    for model, group in sorted(group_by_model(runs).items()):
        batches = np.array([r.batch_tokens for r in group])
        if len(np.unique(batches)) < 2:
            skipped.append({"model": model, "reason": f"only batch size(s) {sorted(set(batches.tolist()))}"})
            continue
        targets = choose_targets(group, n_targets, loss_range, target_fraction)
        S = steps_matrix(group, targets)
        for i, j in zip(*np.nonzero(~np.isfinite(S))):
            not_reached.append({"run": group[i].name, "target_loss": float(targets[j])})
        # Whole-run resampling within this model size; row 0 is the fit to the data itself.
        counts = np.vstack([np.ones(len(group)),
                            fitting.resample_counts(len(group), n_boot, int(rng.integers(2 ** 31)))])
        b_crit = np.full((n_boot + 1, len(targets)), np.nan)
        for j, t in enumerate(targets):
            s_min, e_min = bcrit.fit_steps_vs_batch_many(batches, S[:, j], counts)
            b_crit[:, j] = e_min / s_min
            if not np.isfinite(b_crit[0, j]):
                continue
            reached = np.isfinite(S[:, j])
            lo, hi = fitting.percentile_ci(b_crit[1:, j], level) if n_boot else (math.nan, math.nan)
            pred = np.log(s_min[0] + e_min[0] / batches[reached])
            per_target.append({
                "model": model, "n_params_nonembedding": group[0].n_params_nonembedding,
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
        raise ValueError("no model size of the scan has runs at >= 2 batch sizes that reach common losses")
    L = np.concatenate(L_all)
    b_star, alpha = law_fit_many(L, np.concatenate(bc_all)[None])
    if not np.isfinite(alpha[0]):
        raise ValueError("B_crit does not fall with the loss over the targets: B*/L^(1/alpha_B) cannot be fit "
                         "(is the scan bracketing B_crit? see per_target)")
    boot_b, boot_a = law_fit_many(L, np.concatenate(boot_all, axis=1)) if n_boot else (np.array([]),) * 2
    ci = lambda x: [float(v) for v in fitting.percentile_ci(x, level)] if np.isfinite(x).any() else [None, None]
    return {
        "B_star": float(b_star[0]), "alpha_B": float(alpha[0]),
        "ci95": {"B_star": ci(boot_b), "alpha_B": ci(boot_a)},
        "n_boot": n_boot, "n_boot_valid": int(np.isfinite(boot_a).sum()), "level": level,
        "per_target": per_target, "n_runs": len(runs), "models": sorted({r.model for r in runs}),
        "skipped_models": skipped, "not_reached": not_reached,
        "bracketed_fraction": float(np.mean([p["bracketed"] for p in per_target])),
        "paper": dict(PAPER),
    }


def critical_batch(L, B_star: float, alpha_B: float):
    """B_crit(L) = B*/L^(1/α_B) in tokens (Kaplan eq 5.3)."""
    return B_star / np.asarray(L, dtype=np.float64) ** (1.0 / alpha_B)


def pointwise_min(run: ScanRun, B_star: float, alpha_B: float) -> list[dict]:
    """Kaplan eqs 5.4/5.5 at every evaluation of a run: S_min, E_min (tokens), C_min (PF-days)."""
    b_crit = critical_batch(run.loss, B_star, alpha_B)
    B = run.batch_tokens
    s_min = run.steps / (1 + b_crit / B)
    e_min = run.tokens / (1 + B / b_crit)
    return [{"run": run.name, "n_params_nonembedding": run.n_params_nonembedding, "batch_tokens": B,
             "step": int(s), "tokens": float(e), "loss": float(l), "S_min": float(sm), "E_min": float(em),
             "C_min_pf_days": float(run.flops_per_token * em / PF_DAY)}
            for s, e, l, sm, em in zip(run.steps, run.tokens, run.loss, s_min, e_min)]


SMIN_CMIN_COLUMNS = ("run", "n_params_nonembedding", "batch_tokens", "step", "tokens", "loss", "S_min", "E_min",
                     "C_min_pf_days")


def smin_cmin_csv(rows: list[dict]) -> str:
    lines = [",".join(SMIN_CMIN_COLUMNS)]
    for r in rows:
        lines.append(",".join(r[c] if isinstance(r[c], str) else repr(r[c]) for c in SMIN_CMIN_COLUMNS))
    return "\n".join(lines) + "\n"
