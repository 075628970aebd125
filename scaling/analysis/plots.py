"""Figures for the report (matplotlib, Agg backend, PNG): one function per figure, each writes `path`."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.interpolate  # noqa: E402

from scaling.analysis import isoflop as isoflop_lib  # noqa: E402
from scaling.core import formulas  # noqa: E402

_X_OF_LAW = dict(kaplan_n="N", kaplan_n_fixed_s="N", kaplan_d="D", kaplan_c="C", kaplan_nd="N", kaplan_ns="S", chinchilla="N",
                 muennighoff="D", bcrit="loss", isoflop="C")


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _compute(table):
    """The table's C column, else C = 6·N·D."""
    return table["C"] if "C" in table else formulas.training_flops(table["N"], table["D"])


def plot_fit(record: dict, table: dict, path: str, predict=None):
    """Data, fitted law (with bootstrap band where available) and residuals log(L̂/L) for one fit."""
    law = record["law"]
    if law == "isoflop":
        fit = isoflop_lib.fit_isoflop(_compute(table), table["N"],
                                      table["loss"], record["derived"].get("method", "parabola"))
        return plot_isoflop(_compute(table), table["N"], table["loss"],
                            fit, path)
    if law == "bcrit":
        return plot_bcrit(record, path)
    x_name = _X_OF_LAW[law]
    x = np.asarray(table[x_name] if x_name in table else _compute(table), dtype=float)
    y = np.asarray(table["loss"], dtype=float)
    fig, (ax, axr) = plt.subplots(1, 2, figsize=(11, 4.2))
    colour = np.log10(table["D"] if "D" in table and x_name != "D" else table.get("N", x))
    sc = ax.scatter(x, y, c=colour, s=14, cmap="viridis", label="data")
    fig.colorbar(sc, ax=ax, label="log10 D" if "D" in table and x_name != "D" else "log10 N")
    if predict is not None:
        pred, lo, hi = predict(table)
        order = np.argsort(x)
        if law in ("kaplan_n", "kaplan_d", "kaplan_c"):
            ax.plot(x[order], pred[order], "r-", label="fit")
            if np.all(np.isfinite(lo)):
                ax.fill_between(x[order], lo[order], hi[order], color="r", alpha=0.2, label="95% bootstrap")
        else:
            ax.scatter(x, pred, marker="x", c="r", s=10, label="fit at each point")
        axr.scatter(x, np.log(pred / y), s=10, c=colour, cmap="viridis")
    axr.axhline(0, color="k", lw=0.8)
    for a in (ax, axr):
        a.set_xscale("log")
        a.set_xlabel(x_name)
    ax.set_yscale("log")
    ax.set_ylabel("loss (nats/token)")
    axr.set_ylabel("log(L_hat / L)")
    params = ", ".join(f"{k}={v:.4g}" for k, v in record["params"].items())
    ax.set_title(f"{law}: {params}", fontsize=8)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_isoflop(C, N, loss, fit, path):
    """IsoFLOP profiles (loss vs N per budget) with the interpolant, the interior minima and N*(C)."""
    C, N, loss = (np.asarray(v, dtype=float) for v in (C, N, loss))
    labels, centres = isoflop_lib.group_budgets(C)
    fig, (ax, axf) = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("viridis")
    for k, c in enumerate(centres):
        rows = labels == k
        col = cmap(k / max(len(centres) - 1, 1))
        ax.scatter(N[rows], loss[rows], color=col, s=12)
        ln = np.log(N[rows])
        if fit.method == "parabola" and len(np.unique(ln)) >= 3:
            coef = np.polyfit(ln, loss[rows], 2)
            grid = np.linspace(ln.min(), ln.max(), 100)
            ax.plot(np.exp(grid), np.polyval(coef, grid), color=col, lw=1)
        elif len(np.unique(ln)) >= 3:
            xu = np.unique(ln)
            yu = np.array([loss[rows][ln == v].min() for v in xu])
            grid = np.linspace(xu[0], xu[-1], 200)
            ax.plot(np.exp(grid), np.exp(scipy.interpolate.Akima1DInterpolator(xu, np.log(yu))(grid)), color=col, lw=1)
    for o in fit.optima:
        ax.plot(o.n_star, o.loss_star, "r*", ms=9)
    ax.set_xscale("log")
    ax.set_xlabel("N")
    ax.set_ylabel("loss")
    ax.set_title(f"IsoFLOP profiles ({fit.method}); {len(fit.dropped)} budget(s) dropped", fontsize=9)
    plot_frontier_axes(axf, [o.C for o in fit.optima], [o.n_star for o in fit.optima], fit.a, fit.k_N)
    return _save(fig, path)


def plot_frontier_axes(ax, C, n_star, a, k_N, band=None):
    C, n_star = np.asarray(C, dtype=float), np.asarray(n_star, dtype=float)
    ax.scatter(C, n_star, color="k", s=14, label="N*(C)")
    grid = np.exp(np.linspace(np.log(C.min()), np.log(C.max()), 100))
    ax.plot(grid, k_N * grid ** a, "r-", label=f"N* = {k_N:.3g} C^{a:.3f}")
    if band is not None:
        reps = np.asarray(band)  # (R, 2) of (a, k_N)
        curves = reps[:, 1:2] * grid[None] ** reps[:, :1]
        lo, hi = np.nanpercentile(curves, [2.5, 97.5], axis=0)
        ax.fill_between(grid, lo, hi, color="r", alpha=0.2, label="95% bootstrap")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("C (FLOPs)")
    ax.set_ylabel("N*")
    ax.legend(fontsize=8)


def plot_frontier(C, n_star, a, k_N, path, band=None):
    """Compute-optimal N*(C) points and the fitted power law (with an optional bootstrap band)."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    plot_frontier_axes(ax, C, n_star, a, k_N, band)
    return _save(fig, path)


def plot_bootstrap(replicates, names, path):
    """Histograms of bootstrap replicates per parameter."""
    reps = np.asarray(replicates, dtype=float)
    fig, axes = plt.subplots(1, len(names), figsize=(3 * len(names), 3))
    for ax, name, col in zip(np.atleast_1d(axes), names, reps.T):
        col = col[np.isfinite(col)]
        ax.hist(col, bins=30, color="steelblue")
        lo, hi = np.percentile(col, [2.5, 97.5])
        ax.axvline(lo, color="r", ls="--")
        ax.axvline(hi, color="r", ls="--")
        ax.set_title(name, fontsize=9)
    return _save(fig, path)


def plot_bcrit(record, path):
    """B_crit per target loss and the fitted B*/L^(1/α_B)."""
    per = record["derived"].get("per_target", {})
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    if per:
        L = np.array([float(k) for k in per])
        bc = np.array([v["B_crit"] for v in per.values()])
        ax.scatter(L, bc, color="k", s=14, label="B_crit per target")
        grid = np.linspace(L.min(), L.max(), 100)
    else:
        grid = np.linspace(2, 6, 100)
    p = record["params"]
    ax.plot(grid, formulas.critical_batch(grid, p["B_star"], p["alpha_B"]), "r-",
            label=f"B* = {p['B_star']:.3g}, alpha_B = {p['alpha_B']:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("loss")
    ax.set_ylabel("B_crit (tokens)")
    ax.legend(fontsize=8)
    return _save(fig, path)


# --- report figures: panels of series, each series a dict ---------------------------------------------
def _draw_series(ax, s, colour):
    kind = s.get("kind", "line")
    x, y = np.asarray(s["x"], dtype=float), np.asarray(s["y"], dtype=float)
    kw = dict(color=s.get("color", colour), label=s.get("label"), alpha=s.get("alpha", 1.0))
    if kind == "scatter":
        ax.scatter(x, y, s=s.get("size", 18), marker=s.get("marker", "o"), zorder=3, **kw)
    elif kind == "errorbar":
        yerr = np.abs(np.asarray(s["yerr"], dtype=float))
        ax.errorbar(x, y, yerr=yerr, fmt=s.get("marker", "o"), ms=4, capsize=2, **kw)
    elif kind == "band":
        ax.fill_between(x, np.asarray(s["lo"], dtype=float), np.asarray(s["hi"], dtype=float),
                        color=s.get("color", colour), alpha=s.get("alpha", 0.2), label=s.get("label"))
    else:
        ax.plot(x, y, ls=s.get("ls", "-"), lw=s.get("lw", 1.5), **kw)


def plot_panels(path: str, panels: list, title: str | None = None):
    """Side-by-side panels; each panel is dict(title, xlabel, ylabel, xlog, ylog, series=[...], note).

    A series is dict(x, y, kind=line|scatter|errorbar|band, label, color, ls, yerr, lo, hi); series
    without a colour take successive viridis colours (`colormap` in the panel, or per-series `color`).
    Learning-curve families (many runs) use `cmap_index` in [0, 1] to share one colour scale.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.3), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, panel in zip(axes[0], panels):
        series = panel.get("series", [])
        auto = [id(s) for s in series if "color" not in s and "cmap_index" not in s]  # by identity: dicts hold arrays
        for s in series:
            if "cmap_index" in s:
                colour = cmap(0.9 * float(s["cmap_index"]))
            elif id(s) in auto:
                colour = cmap(0.9 * auto.index(id(s)) / max(len(auto) - 1, 1))
            else:
                colour = None
            _draw_series(ax, s, colour)
        ax.set_xscale("log" if panel.get("xlog", True) else "linear")
        ax.set_yscale("log" if panel.get("ylog", False) else "linear")
        ax.set_xlabel(panel.get("xlabel", ""))
        ax.set_ylabel(panel.get("ylabel", ""))
        ax.set_title(panel.get("title", ""), fontsize=9)
        if panel.get("note"):
            ax.text(0.02, 0.02, panel["note"], transform=ax.transAxes, fontsize=7, va="bottom",
                    bbox=dict(facecolor="white", alpha=0.7, lw=0))
        if any(s.get("label") for s in series):
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
