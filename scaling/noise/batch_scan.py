"""B_crit measured directly from a batch-size scan (McCandlish et al. 2018 §2.2; Kaplan et al. 2020 §5.1).

docs/noise-scale.md §2.2. For each model size, runs at several batch sizes B (tokens) with a constant LR
after warmup. Pipeline:

  1. targets: ~30 log-spaced losses L_j that every run of the model reaches (running-min eval loss);
  2. S(B, L_j): the first crossing, log-interpolated between evaluations (bcrit.steps_to_target);
  3. per (model, target): S = S_min + E_min/B, B_crit = E_min/S_min, flagged when the scanned batch
     sizes do not bracket it (then it is only a bound);
  4. B_crit(L) = B*/L^(1/α_B) over every (model, target) point (steps 3-5: scaling.analysis.bcrit.fit_scans,
     the project's one B_crit fit);
  5. 95% CIs by resampling *whole runs* (within each model size) through steps 3-4, since all
     B_crit(L_j) share the same runs; the targets stay those of the full data;
  6. pointwise along every curve (Kaplan eqs 5.4/5.5): S_min = S/(1+B_crit(L)/B),
     E_min = E/(1+B/B_crit(L)), C_min = flops_per_token·E_min (summary.json's 6N convention).
  7. `warmup_check`: how far the runs' LR warmup moves B_crit (S counted at the peak LR instead), per model
     (bcrit.json `warmup`; the report names it above bcrit.WARMUP_RATIO_NOTE).

Run directories need summary.json (batch_tokens, n_params_nonembedding, flops_per_token) and
eval.jsonl (step, tokens, eval_loss). Pure numpy/scipy (scaling.analysis.bcrit).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from scaling.analysis import bcrit
from scaling.core import formulas
from scaling.core.formulas import critical_batch  # noqa: F401  (B_crit(L) = B*/L^(1/α_B), eq 5.3)
from scaling.core.units import KAPLAN_BCRIT
from scaling.noise.offline import read_jsonl

PAPER = dict(KAPLAN_BCRIT)  # Kaplan et al. 2020 eq 5.3 / Table 5, tokens


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
    learning_rate: float = math.nan  # peak LR (summary.json); runs of one batch at several LRs form an LR grid
    warmup_steps: int = 0            # linear LR warmup (summary.json): `warmup_check`

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
                   flops_per_token=float(summary.get("flops_per_token", formulas.training_flops(n, 1))),
                   steps=np.array([r["step"] for r in evals], dtype=np.float64),
                   tokens=np.array([r.get("tokens", r["step"] * summary["batch_tokens"]) for r in evals],
                                   dtype=np.float64),
                   loss=np.array([r["eval_loss"] for r in evals], dtype=np.float64),
                   learning_rate=float(summary.get("learning_rate") or math.nan),
                   warmup_steps=int(summary.get("warmup_steps") or 0))


def group_by_model(runs: list[ScanRun]) -> dict[str, list[ScanRun]]:
    out: dict[str, list[ScanRun]] = {}
    for r in runs:
        out.setdefault(r.model, []).append(r)
    return out


# Targets span every loss each run reaches (noise-scale spec §2.2 step 4). Until session 16 the lower half only
# (0.5), a workaround for the flat B_crit at high loss that the scan's warmup, fixed in tokens, made (below).
TARGET_FRACTION = 1.0


def choose_targets(runs: list[ScanRun], n_targets: int = 30, loss_range=None,
                   target_fraction: float = TARGET_FRACTION) -> np.ndarray:
    """``n_targets`` log-spaced losses (highest first) that every run reaches after its first evaluation.

    The top is below every run's first evaluation (so each crossing is interpolated, not clamped) and
    the bottom is the worst batch size's best loss (with an LR grid, the best of that batch's LRs: a target
    only its best LR reaches is still measured, `steps_by_batch`). ``loss_range`` = (lo, hi) narrows the span. Only the lowest
    ``target_fraction`` of that span (in log loss) is used (default: all of it). A scan whose warmup is long
    against the steps to the highest targets flattens B_crit there (the quick preset's scan until session 16, warmed
    up over ~51k tokens: 700-900 tokens from 6.1 to 5.3 nats, then rising to 1,750 at 4.8; over the whole span
    B*/L^(1/α_B) had R² 0.70, over the lower half 0.95, which that scan used); with a 12-step warmup at every batch
    the whole span has R² 0.953 (experiments/results/kaplan_cpu_scan_warmup), and the lower half's steeper line,
    extrapolated to a ladder's lower losses through S_min, bent L(N) (README "The batch scan's warmup").
    """
    if not 0.0 < target_fraction <= 1.0:
        raise ValueError(f"target_fraction must be in (0, 1], got {target_fraction}")
    hi = min(float(r.best_loss[0]) for r in runs)
    by_batch: dict[float, float] = {}
    for r in runs:
        by_batch[r.batch_tokens] = min(by_batch.get(r.batch_tokens, math.inf), float(r.best_loss[-1]))
    lo = worst = max(by_batch.values())
    if loss_range is not None:
        lo, hi = max(lo, loss_range[0]), min(hi, loss_range[1])
    if lo < hi:
        hi = float(np.exp(np.log(lo) + target_fraction * (np.log(hi) - np.log(lo))))
    if not lo < hi:
        stuck = min((r for r in runs if by_batch[r.batch_tokens] == worst), key=lambda r: r.best_loss[-1])
        raise ValueError(f"no loss is reached by every batch size of {runs[0].model}: run {stuck.name} only gets to "
                         f"{stuck.best_loss[-1]:.4f}, above the first evaluation of another run ({hi:.4f}); "
                         "train the small-batch runs longer or drop them")
    return np.geomspace(hi, lo, n_targets + 1)[1:]


def steps_matrix(runs: list[ScanRun], targets) -> np.ndarray:
    """(n_runs, n_targets) steps to reach each target (NaN = not reached)."""
    return np.array([[bcrit.steps_to_target(r.steps, r.loss, t) for t in targets] for r in runs])


def steps_by_batch(runs: list[ScanRun], targets) -> tuple[np.ndarray, list[str], np.ndarray, list[dict]]:
    """Steps to each target per batch size: with several runs at one batch (an LR grid), the fewest any of
    them needs (McCandlish et al. 2018 §2.2 take the minimum S over an LR grid at each target; at one LR for
    every batch the batches far from where that LR was tuned need too many steps, which bends B_crit(L)).

    Returns (batches (n_B,), row labels (run names joined by '|'), S (n_B, n_targets), lr_grid): lr_grid
    lists, per batch with more than one LR, each LR and run, at how many targets each was the fastest, and the
    run that was the fastest at the most (`fastest_run`: the batch's tuned run).
    """
    S = steps_matrix(runs, targets)
    batches = np.unique([r.batch_tokens for r in runs])
    rows, names, lr_grid = [], [], []
    for b in batches:
        idx = [i for i, r in enumerate(runs) if r.batch_tokens == b]
        block = np.where(np.isfinite(S[idx]), S[idx], np.inf)   # not reached: never the fewest
        reached = np.isfinite(block).any(axis=0)
        rows.append(np.where(reached, block.min(axis=0), np.nan))
        names.append("|".join(runs[i].name for i in idx))
        if len(idx) > 1:
            fastest = block.argmin(axis=0)[reached]
            counts = [int(np.sum(fastest == k)) for k in range(len(idx))]
            lr_grid.append({"batch_tokens": float(b), "model": runs[idx[0]].model,
                            "learning_rates": [runs[i].learning_rate for i in idx], "fastest_at_targets": counts,
                            "runs": [runs[i].name for i in idx], "fastest_run": runs[idx[int(np.argmax(counts))]].name})
    return batches, names, np.array(rows), lr_grid


def warmup_check(model: str, group: list[ScanRun], batches, names, targets, S) -> dict:
    """How much the runs' LR warmup shapes one model's B_crit (bcrit.warmup_sensitivity): B_crit at each target
    with S counted at the peak LR ÷ B_crit in optimizer steps, at the median target and the highest (earliest)
    one. A warmup fixed in tokens (long at small batches) moves it most (README, the batch scan's warmup)."""
    by_name = {r.name: r for r in group}
    W = [max(by_name[n].warmup_steps for n in row.split("|")) for row in names]
    ratio = bcrit.warmup_sensitivity(batches, S, W)
    finite = ratio[np.isfinite(ratio)]
    return {"model": model, "warmup_steps": {f"{b:g}": int(w) for b, w in zip(batches, W)},
            "bcrit_ratio_median": float(np.median(finite)) if len(finite) else None,
            "bcrit_ratio_highest_target": float(ratio[0]) if np.isfinite(ratio[0]) else None,
            "highest_target": float(targets[0])}


def fit_scan(runs: list[ScanRun], n_targets: int = 30, n_boot: int = 200, seed: int = 0, level: float = 0.95,
             loss_range=None, target_fraction: float = TARGET_FRACTION) -> dict:
    """The whole §2.2 pipeline on a scan; B in tokens. Models with < 2 batch sizes are skipped (listed).

    This module extracts each model size's targets and steps-to-target; the fit (per-target hyperbolas,
    B_crit(L), whole-run bootstrap) is scaling.analysis.bcrit.fit_scans.
    Runs of one model at the same batch size and different LRs are an LR grid: each target's steps at that
    batch are the fewest any of its LRs needs (`steps_by_batch`), and the bootstrap resamples batch sizes.
    """
    scans, skipped, lr_grid, warmup = [], [], [], []
    for model, group in sorted(group_by_model(runs).items()):
        batches = np.array([r.batch_tokens for r in group])
        if len(np.unique(batches)) < 2:
            skipped.append({"model": model, "reason": f"only batch size(s) {sorted(set(batches.tolist()))}"})
            continue
        targets = choose_targets(group, n_targets, loss_range, target_fraction)
        batches, names, S, grid = steps_by_batch(group, targets)
        lr_grid += grid
        warmup.append(warmup_check(model, group, batches, names, targets, S))
        scans.append(bcrit.Scan(model=model, n_params_nonembedding=group[0].n_params_nonembedding,
                                run_names=names, batches=batches, targets=targets, S=S))
    fit = bcrit.fit_scans(scans, n_boot=n_boot, seed=seed, level=level)
    return {
        **{k: fit[k] for k in ("B_star", "alpha_B", "ci95", "pivot", "n_boot", "n_boot_valid", "level", "per_target")},
        "n_runs": len(runs), "models": sorted({r.model for r in runs}),
        "skipped_models": skipped, "not_reached": fit["not_reached"],
        "bracketed_fraction": float(np.mean([p["bracketed"] for p in fit["per_target"]])),
        "lr_grid": lr_grid,
        "warmup": warmup,
        "target_fraction": float(target_fraction),
        "paper": dict(PAPER),
    }


def pointwise_min(run: ScanRun, B_star: float, alpha_B: float) -> list[dict]:
    """Kaplan eqs 5.4/5.5 at every evaluation of a run: S_min, E_min (tokens), C_min (PF-days)."""
    b_crit = critical_batch(run.loss, B_star, alpha_B)
    B = run.batch_tokens
    s_min = run.steps / (1 + b_crit / B)
    e_min = run.tokens / (1 + B / b_crit)
    return [{"run": run.name, "n_params_nonembedding": run.n_params_nonembedding, "batch_tokens": B,
             "step": int(s), "tokens": float(e), "loss": float(l), "S_min": float(sm), "E_min": float(em),
             "C_min_pf_days": float(formulas.pf_days(run.flops_per_token * em))}
            for s, e, l, sm, em in zip(run.steps, run.tokens, run.loss, s_min, e_min)]


SMIN_CMIN_COLUMNS = ("run", "n_params_nonembedding", "batch_tokens", "step", "tokens", "loss", "S_min", "E_min",
                     "C_min_pf_days")


def smin_cmin_csv(rows: list[dict]) -> str:
    lines = [",".join(SMIN_CMIN_COLUMNS)]
    for r in rows:
        lines.append(",".join(r[c] if isinstance(r[c], str) else repr(r[c]) for c in SMIN_CMIN_COLUMNS))
    return "\n".join(lines) + "\n"
