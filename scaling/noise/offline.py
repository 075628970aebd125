"""Offline (authoritative) B_simple from a run's metrics.jsonl: loss bins, ratio of sums, block bootstrap.

noise-scale.md §1.4. Every metrics.jsonl line that carries noise-scale sums holds their *window means*
over ``gns_steps`` training steps, ``gns_s_small`` at ``gns_b_small`` sequences and ``gns_s_big`` at
``gns_b_big``. Both unbiased estimates are linear in the sums, so each line gives a window mean of
|G|² and trΣ (scaling.noise.estimator.unbiased_estimates). B_simple is a ratio, so it is formed only
after summing the numerator and the denominator over many steps (weighted by ``gns_steps``):

    B_simple(bin) = Σ_i w_i trΣ_i / Σ_i w_i |G|²_i        (ratio of sums, never the mean of ratios)

Bins are ~1% wide in loss (B_crit ∝ L^-4.8, so a 1% loss window blurs B by ~5%). Confidence intervals
resample *blocks* of consecutive records (neighbouring steps share θ drift) within each bin. Everything
is in sequences (the estimator's examples) and ×n_ctx in tokens. Pure numpy.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from scaling.core import fileio
from scaling.noise import estimator


@dataclasses.dataclass
class GnsRecords:
    """One row per metrics line with noise-scale sums, in step order."""
    step: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    weight: np.ndarray   # gns_steps: steps averaged in the line
    g2: np.ndarray       # window-mean unbiased |G|² (per sequence-mean loss)
    trace: np.ndarray    # window-mean unbiased trΣ
    b_small: np.ndarray  # sequences
    b_big: np.ndarray

    def __len__(self) -> int:
        return len(self.step)

    def take(self, index) -> "GnsRecords":
        return GnsRecords(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})


def read_jsonl(path: str) -> list[dict]:
    """Records of a .jsonl file; a truncated last line (a run killed mid-write) is ignored, any other
    invalid line is an error."""
    return fileio.read_jsonl(path, strict=True)


def has_gns(records: list[dict]) -> bool:
    return any(r.get("gns_s_small") is not None for r in records)


def gns_records(records: list[dict], skip_steps: int = 0) -> GnsRecords:
    """The metrics lines with finite noise-scale sums whose whole window lies after ``skip_steps``."""
    rows = []
    for r in records:
        if r.get("gns_s_small") is None or r.get("gns_s_big") is None:
            continue
        if r["step"] - r.get("gns_steps", 1) + 1 <= skip_steps:  # the line's window starts in the warm-up
            continue
        s_small, s_big = float(r["gns_s_small"]), float(r["gns_s_big"])
        if not (math.isfinite(s_small) and math.isfinite(s_big)):
            continue
        b_small, b_big = int(r["gns_b_small"]), int(r["gns_b_big"])
        g2, trace = estimator.unbiased_estimates(s_small, s_big, b_small, b_big)
        loss = r.get("loss_avg", r.get("loss"))
        rows.append((r["step"], r.get("tokens", np.nan), loss, r.get("gns_steps", 1), g2, trace, b_small, b_big))
    if not rows:
        raise ValueError(f"no metrics lines with gns_s_small/gns_s_big after step {skip_steps}: train with "
                         "TrainConfig.microbatches >= 2 and TrainConfig.noise_scale = True")
    cols = list(zip(*sorted(rows, key=lambda row: row[0])))
    as_f = lambda c: np.asarray(c, dtype=np.float64)
    return GnsRecords(step=np.asarray(cols[0], dtype=np.int64), tokens=as_f(cols[1]), loss=as_f(cols[2]),
                      weight=as_f(cols[3]), g2=as_f(cols[4]), trace=as_f(cols[5]),
                      b_small=np.asarray(cols[6], dtype=np.int64), b_big=np.asarray(cols[7], dtype=np.int64))


def ratio_of_sums(trace, g2, weight) -> float:
    """Σ w·trΣ / Σ w·|G|²; +inf when the summed |G|² is not positive (B_simple unresolved)."""
    num, den = float(np.sum(weight * trace)), float(np.sum(weight * g2))
    return num / den if den > 0 else math.inf


def bootstrap_blocks(n_records: int, block: int) -> np.ndarray:
    """Start index of each bootstrap block: ``block`` consecutive records, shrunk when there are few
    records so that there are >= 5 blocks when there are >= 5 records (2 blocks: 3 distinct resamples)."""
    if block < 1:
        raise ValueError(f"the bootstrap block length must be >= 1 record, got {block}")
    block = min(block, max(1, n_records // 5))
    return np.arange(0, n_records, block)


def block_bootstrap_ratio(trace, g2, weight, block: int = 5, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_boot,) replicates of the ratio of sums, resampling blocks of ``block`` consecutive records.

    The block shrinks when there are few records (so there are several blocks); one record gives NaN.
    """
    starts = bootstrap_blocks(len(trace), block)
    if len(starts) < 2:  # one record: no spread to resample, the interval is unknown
        return np.full(n_boot, np.nan)
    block_num = np.add.reduceat(weight * trace, starts)
    block_den = np.add.reduceat(weight * g2, starts)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(starts), size=(n_boot, len(starts)))
    num, den = block_num[pick].sum(axis=1), block_den[pick].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.inf)


def interval(replicates, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval; +inf replicates (|G|² summed ≤ 0) stay as an unbounded upper end."""
    q = (1 - level) / 2
    if np.isnan(replicates).all():
        return math.nan, math.nan
    return (float(np.quantile(replicates, q, method="lower")),
            float(np.quantile(replicates, 1 - q, method="higher")))


FEW_BLOCKS = 10  # a bin resampled from fewer blocks is flagged (few_blocks) beside its widened interval


def small_sample_factor(n_blocks: int, level: float = 0.95) -> float:
    """How much to widen a percentile bootstrap interval resampled from ``n_blocks`` blocks.

    The bootstrap's spread is that of a plug-in estimate (variance biased by (n−1)/n) and its percentile
    interval uses normal quantiles, so with few blocks it is too narrow: 83-86 % coverage at a nominal
    95 % with 5 blocks (tests/noise/test_noise_offline.py simulates it). The factor t_{n−1}/z · √(n/(n−1))
    (Student's t for the estimated spread, the n/(n−1) variance correction) brings it to ~95 %; it tends
    to 1 as the blocks grow in number.
    """
    if n_blocks < 2:
        return math.nan
    import scipy.stats  # pylint: disable=import-outside-toplevel
    q = 0.5 + level / 2
    return float(scipy.stats.t.ppf(q, n_blocks - 1) / scipy.stats.norm.ppf(q) * math.sqrt(n_blocks / (n_blocks - 1)))


def widen_interval(center: float, lo: float, hi: float, factor: float) -> tuple[float, float]:
    """Scales a positive ratio's interval about ``center`` in log space (lo/center and hi/center to the power
    ``factor``); an unbounded or non-positive end is left as it is."""
    if not (math.isfinite(factor) and center > 0 and math.isfinite(center)):
        return lo, hi
    new_lo = center * (lo / center) ** factor if (math.isfinite(lo) and lo > 0) else lo
    new_hi = center * (hi / center) ** factor if (math.isfinite(hi) and hi > 0) else hi
    return new_lo, new_hi


def summarize(recs: GnsRecords, n_ctx: int, block: int, n_boot: int, seed: int, level: float) -> dict:
    """One group of records: sums, ratio, CI (widened for few blocks, `small_sample_factor`), in sequences
    and tokens; ``blocks`` resampled and ``few_blocks`` when fewer than FEW_BLOCKS."""
    b_seq = ratio_of_sums(recs.trace, recs.g2, recs.weight)
    lo, hi = interval(block_bootstrap_ratio(recs.trace, recs.g2, recs.weight, block, n_boot, seed), level)
    n_blocks = len(bootstrap_blocks(len(recs), block))
    lo, hi = widen_interval(b_seq, lo, hi, small_sample_factor(n_blocks, level))
    w = recs.weight
    return {
        "loss": float(np.sum(w * recs.loss) / np.sum(w)),
        "loss_max": float(recs.loss.max()), "loss_min": float(recs.loss.min()),
        "step_first": int(recs.step[0]), "step_last": int(recs.step[-1]),
        "tokens": float(np.sum(w * recs.tokens) / np.sum(w)),
        "tokens_first": float(recs.tokens[0]), "tokens_last": float(recs.tokens[-1]),
        "records": len(recs), "steps": float(np.sum(w)),
        "g2": float(np.sum(w * recs.g2) / np.sum(w)), "trace": float(np.sum(w * recs.trace) / np.sum(w)),
        "b_simple_sequences": b_seq, "lo_sequences": lo, "hi_sequences": hi,
        "b_simple": b_seq * n_ctx, "lo": lo * n_ctx, "hi": hi * n_ctx,  # tokens
        "resolved": bool(math.isfinite(b_seq) and math.isfinite(lo) and math.isfinite(hi)),
        "blocks": int(n_blocks), "few_blocks": bool(n_blocks < FEW_BLOCKS),
    }


def loss_bin_index(loss, bin_frac: float = 0.01) -> np.ndarray:
    """Geometric bins of relative width ``bin_frac``: bin k holds L in [L_min·(1+f)^k, L_min·(1+f)^(k+1))."""
    if not bin_frac > 0:
        raise ValueError(f"the loss bin width must be > 0, got {bin_frac}")
    loss = np.asarray(loss, dtype=np.float64)
    return np.floor(np.log(loss / loss.min()) / math.log1p(bin_frac) + 1e-12).astype(np.int64)


def binned_by_loss(recs: GnsRecords, n_ctx: int, bin_frac: float = 0.01, block: int = 5, n_boot: int = 1000,
                   seed: int = 0, level: float = 0.95, min_steps: float = 1) -> list[dict]:
    """B_simple per ~``bin_frac`` loss bin (ratio of sums, block-bootstrap CI), highest loss first."""
    bins = loss_bin_index(recs.loss, bin_frac)
    out = []
    for k in sorted(np.unique(bins), reverse=True):
        sel = recs.take(np.flatnonzero(bins == k))
        if sel.weight.sum() < min_steps:
            continue
        row = summarize(sel, n_ctx, block, n_boot, seed + int(k), level)
        row["bin_lo"] = float(recs.loss.min() * (1 + bin_frac) ** k)
        row["bin_hi"] = float(recs.loss.min() * (1 + bin_frac) ** (k + 1))
        out.append(row)
    return out


def windowed(recs: GnsRecords, n_ctx: int, n_windows: int = 20, block: int = 5, n_boot: int = 1000,
             seed: int = 0, level: float = 0.95) -> list[dict]:
    """B_simple vs tokens: ``n_windows`` runs of consecutive records holding equal numbers of steps."""
    n_windows = max(1, min(n_windows, len(recs)))
    cum = np.cumsum(recs.weight)
    window = np.minimum((n_windows * (cum - recs.weight) / cum[-1]).astype(np.int64), n_windows - 1)
    return [summarize(recs.take(np.flatnonzero(window == k)), n_ctx, block, n_boot, seed + k, level)
            for k in np.unique(window)]


def ema_curve(records: list[dict]) -> list[dict]:
    """The trainer's online estimate (per-token EMAs) as logged: step, tokens, loss, b_simple (tokens)."""
    return [{"step": r["step"], "tokens": r.get("tokens"), "loss": r.get("loss_avg", r.get("loss")),
             "b_simple": r["b_simple"], "b_simple_sequences": r.get("b_simple_sequences")}
            for r in records if r.get("b_simple") is not None and math.isfinite(r["b_simple"])]


def analyse_metrics(records: list[dict], n_ctx: int, *, skip_steps: int = 0, bin_frac: float = 0.01,
                    n_windows: int = 20, block: int = 5, n_boot: int = 1000, seed: int = 0,
                    level: float = 0.95) -> dict:
    """Everything the noise_scale.json of one run holds (B in tokens unless the key says sequences)."""
    recs = gns_records(records, skip_steps)
    return {
        "n_ctx": n_ctx,
        "b_small": sorted({int(b) for b in recs.b_small}), "b_big": sorted({int(b) for b in recs.b_big}),
        "skip_steps": skip_steps, "records": len(recs), "steps": float(recs.weight.sum()),
        "bin_frac": bin_frac, "block": block, "n_boot": n_boot, "level": level,
        "overall": summarize(recs, n_ctx, block, n_boot, seed, level),
        "by_loss": binned_by_loss(recs, n_ctx, bin_frac, block, n_boot, seed, level),
        "by_tokens": windowed(recs, n_ctx, n_windows, block, n_boot, seed, level),
        "ema": ema_curve(records),
    }


def analyse_run_dir(workdir: str, **kwargs) -> dict:
    """noise_scale.json content for a training workdir (metrics.jsonl + summary.json or config)."""
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(metrics_path):
        raise FileNotFoundError(f"{metrics_path} not found: is {workdir} a training workdir?")
    records = read_jsonl(metrics_path)
    summary = {}
    if os.path.exists(os.path.join(workdir, "summary.json")):
        with open(os.path.join(workdir, "summary.json")) as f:
            summary = json.load(f)
    n_ctx = summary.get("n_ctx") or _n_ctx_from_records(records)
    skip = kwargs.pop("skip_steps", None)
    if skip is None:  # the trainer's default: the EMA starts after the warmup
        skip = summary.get("noise_scale_skip_steps", summary.get("warmup_steps", 0)) or 0
    out = analyse_metrics(records, int(n_ctx), skip_steps=int(skip), **kwargs)
    out["run"] = os.path.basename(os.path.normpath(workdir))
    out["final_b_simple_ema"] = summary.get("b_simple")
    return out


def _n_ctx_from_records(records: list[dict]) -> int:
    """tokens per step / sequences per step, from two consecutive lines (no summary.json yet)."""
    r = [x for x in records if x.get("gns_b_big") and x.get("tokens")]
    if len(r) >= 2 and r[1]["step"] > r[0]["step"]:
        return int(round((r[1]["tokens"] - r[0]["tokens"]) / ((r[1]["step"] - r[0]["step"]) * r[1]["gns_b_big"])))
    raise ValueError("cannot tell n_ctx: no summary.json and fewer than 2 metrics lines")
