"""Noise-scale figures (matplotlib, Agg, PNG): one run's B_simple, and B_crit(L) beside B_simple(L)."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # headless: figures are files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from scaling.core import formulas  # noqa: E402


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finite(v) -> bool:
    return v is not None and bool(np.isfinite(v))


def _errorbar(ax, rows, x, **kw):
    """Points with CIs; unresolved rows (|G|² summed ≤ 0, or a single record) are left out."""
    rows = [r for r in rows if r.get("resolved", True) and _finite(r["b_simple"]) and r["b_simple"] > 0]
    if not rows:
        return
    xs = np.array([r[x] for r in rows])
    y = np.array([r["b_simple"] for r in rows])
    lo = np.array([max(r["lo"], 1e-300) for r in rows])
    hi = np.array([r["hi"] for r in rows])
    kw.setdefault("marker", "o")
    ax.errorbar(xs, y, yerr=[np.maximum(y - lo, 0), np.maximum(hi - y, 0)], ls="none", ms=3, capsize=2, **kw)


def plot_run(result: dict, path: str):
    """Left: B_simple vs tokens (windows with 95% CIs, the trainer's EMA); right: vs loss (1% bins)."""
    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(10, 4))
    _errorbar(ax_t, result["by_tokens"], "tokens", color="C0", label="window ratio of sums (95% CI)")
    ema = [r for r in result.get("ema", []) if r["b_simple"] > 0]
    if ema:
        ax_t.plot([r["tokens"] for r in ema], [r["b_simple"] for r in ema], "-", color="C1", lw=1,
                  label="online EMA (trainer)")
        ax_l.plot([r["loss"] for r in ema], [r["b_simple"] for r in ema], "-", color="C1", lw=1, alpha=0.6,
                  label="online EMA (trainer)")
    _errorbar(ax_l, result["by_loss"], "loss", color="C0",
              label=f"{100 * result['bin_frac']:.0f}% loss bins (95% CI)")
    for ax, xl in ((ax_t, "tokens"), (ax_l, "training loss (nats/token)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel("B_simple (tokens)")
        ax.legend(fontsize=8)
    ax_l.invert_xaxis()  # training runs left to right
    fig.suptitle(f"gradient noise scale: {result.get('run', '')}", fontsize=10)
    return _save(fig, path)


def bcrit_ylim(result: dict, grid) -> tuple[float, float]:
    """Fig. 10's batch axis: the central values (B_crit per target, B_simple per bin, both laws over the losses
    drawn), a factor 2 either side. The intervals do not set it: a B_simple bin whose interval spans 18 decades
    (one noisy 1 % bin) flattened B_crit(L) and its bend into a line."""
    central = [p["B_crit"] for p in result["per_target"]] + [r["b_simple"] for r in result.get("b_simple_vs_loss", [])]
    central += list(formulas.critical_batch(grid, result["B_star"], result["alpha_B"]))
    central += list(formulas.critical_batch(grid, result["paper"]["B_star"], result["paper"]["alpha_B"]))
    central = [float(v) for v in central if _finite(v) and float(v) > 0]
    return min(central) / 2.0, max(central) * 2.0


def plot_bcrit(result: dict, path: str):
    """Kaplan Fig. 10: B_crit(L) per target (CIs, by model) and fitted law, B_simple(L), paper line dashed."""
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    per = result["per_target"]
    losses = [p["target_loss"] for p in per] + [r["loss"] for r in result.get("b_simple_vs_loss", [])]
    for i, model in enumerate(sorted({p["model"] for p in per})):
        rows = [p for p in per if p["model"] == model]
        L = np.array([p["target_loss"] for p in rows])
        bc = np.array([p["B_crit"] for p in rows])
        # A bound the bootstrap could not set is NaN in memory and null once read back from bcrit.json.
        lo = np.array([np.nan if p["B_crit_lo"] is None else p["B_crit_lo"] for p in rows], dtype=float)
        hi = np.array([np.nan if p["B_crit_hi"] is None else p["B_crit_hi"] for p in rows], dtype=float)
        lo, hi = np.where(np.isfinite(lo), lo, bc), np.where(np.isfinite(hi), hi, bc)
        open_ = np.array([not p["bracketed"] for p in rows])
        ax.errorbar(L, bc, yerr=[np.maximum(bc - lo, 0), np.maximum(hi - bc, 0)], fmt="o", ms=4, capsize=2,
                    color=f"C{i}", label=f"B_crit, {model} (scan, 95% CI)")
        if open_.any():
            ax.scatter(L[open_], bc[open_], facecolors="white", edgecolors=f"C{i}", s=16, zorder=3)
    for i, run in enumerate(sorted({r["run"] for r in result.get("b_simple_vs_loss", [])})):
        _errorbar(ax, [dict(r, resolved=_finite(r["lo"]) and _finite(r["hi"]))
                       for r in result["b_simple_vs_loss"] if r["run"] == run], "loss",
                  color="0.5", marker="x", alpha=0.5, label="B_simple (runs, 1% bins)" if i == 0 else None)
    grid = np.geomspace(min(losses), max(losses), 100)
    ax.plot(grid, formulas.critical_batch(grid, result["B_star"], result["alpha_B"]), "k-",
            label=f"fit: B* = {result['B_star']:.3g} / L^(1/{result['alpha_B']:.3f})")
    paper = result["paper"]
    ax.plot(grid, formulas.critical_batch(grid, paper["B_star"], paper["alpha_B"]), "k--",
            label=f"Kaplan: {paper['B_star']:.2g} / L^(1/{paper['alpha_B']})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(*bcrit_ylim(result, grid))
    ax.set_xlabel("loss (nats/token)")
    ax.set_ylabel("batch size (tokens)")
    ax.invert_xaxis()
    ax.legend(fontsize=7)
    ax.set_title("critical batch size vs loss (open: not bracketed, a bound; error bars clipped)", fontsize=9)
    return _save(fig, path)
