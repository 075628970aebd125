"""Sections on what the loss is measured over: loss per token position (Fig. 20) and transfer to another
distribution (Fig. 8).
"""
from __future__ import annotations

import math

import numpy as np

from scaling.analysis import report_tables as rt
from scaling.report.document import PAPER_GREY, Report, fmt
from scaling.report.loader import need


def final_eval(rep: Report, row) -> dict | None:
    lines = [e for e in rep.sweep.evals.get(str(row["run"]), []) if e.get("loss_per_position")]
    return max(lines, key=lambda e: e.get("step", 0)) if lines else None


def position_curve(e: dict) -> tuple[np.ndarray, int, bool]:
    """(loss per position, windows, paired) of an eval record: the stride-1 position eval when the run has one
    (DataConfig.position_eval_windows; nearly the same tokens at every position), else the disjoint windows'."""
    if e.get("position_eval_loss_per_position"):
        return np.asarray(e["position_eval_loss_per_position"], dtype=float), int(e.get("position_eval_windows", 0)), True
    return np.asarray(e["loss_per_position"], dtype=float), int(e.get("eval_windows", 0)), False


def section_position(rep: Report) -> list:
    """Per-token-position loss (Fig. 20) from the final eval of each ladder run."""
    runs, estimators = [], set()
    for r in sorted(rep.sweep.group("ladder"), key=lambda r: r.get("n_params_nonembedding") or 0):
        e = final_eval(rep, r)
        if e is not None:
            lp, n_windows, paired = position_curve(e)
            runs.append((r, lp))
            estimators.add(f"{n_windows} stride-1 windows (DataConfig.position_eval_windows)" if paired else
                           f"{n_windows} disjoint eval windows (noisy per position: set DataConfig.position_eval_windows)")
    need(len(runs) >= 1, "no ladder run has loss_per_position in eval.jsonl")
    series, table = [], ["| run | N | L(T=1) | L(T=n_ctx) | fit L_∞ + b·T^(−c): c | R² | note |",
                         "|---|---:|---:|---:|---:|---:|---|"]
    fits = {}
    for i, (r, lp) in enumerate(runs):
        t = np.arange(1, len(lp) + 1)
        ci_ = i / max(len(runs) - 1, 1)
        series.append(dict(x=t, y=lp, kind="line", lw=1, cmap_index=ci_,
                           label=f"N = {r.get('n_params_nonembedding', 0):.2g}"))
        f = rt.position_power_law(lp)
        fits[str(r["run"])] = f
        if f:
            series.append(dict(x=t, y=f["L_inf"] + f["b"] * t ** (-f["c"]), kind="line", ls=":", lw=1, cmap_index=ci_))
        note = ("no fit (did not converge)" if not f else
                f"poor fit: R² < {rt.R2_MIN}, the position curve is not a power law (or is noise-dominated)"
                if not f["r2"] >= rt.R2_MIN else "")
        table.append(f"| {r['run']} | {fmt(r.get('n_params_nonembedding'))} | {lp[0]:.3f} | {lp[-1]:.3f} | "
                     f"{fmt(f['c'] if f else None)} | {fmt(f['r2'] if f else None, '.3f')} | {note} |")
    rep.save_fit("per_position", dict(law="L(T) = L_inf + b T^-c per run", params=fits))
    fig = rep.figure("per_position.png", [dict(title="loss by position in the context (dotted: power-law fits)",
                                               xlabel="token position T", ylabel="eval loss", ylog=True, series=series)],
                     "Per-token loss: Kaplan Fig. 20")
    return [f"Final eval of {len(runs)} ladder runs on {'; '.join(sorted(estimators))}; loss at each of the n_ctx "
            "positions (later tokens see more context). The paper fits L(T) with a power law in T for T ≪ n_ctx; "
            "the fit uses T ≤ n_ctx/2 in log-spaced bins.", "", *table, "", fig]


def train_corpus(rep: Report) -> str:
    """The training corpus's task name, from the runs' summaries (what the sweep actually trained on)."""
    for summary in rep.sweep.summaries.values():
        task = (summary.get("data") or {}).get("task")
        if task:
            return str(task)
    return "the training corpus"


def transfer_task(rep: Report) -> str:
    """The extra-distribution eval the runs carry (final_eval_loss_<task>; wiki_mini in the quick preset, wiki in
    the full one): the one most finished runs have, wiki_mini first on a tie."""
    prefix, counts = "final_eval_loss_", {}
    for r in rep.sweep.finished():
        for k, v in r.items():
            if k.startswith(prefix) and rt.positive(v):
                counts[k[len(prefix):]] = counts.get(k[len(prefix):], 0) + 1
    return max(sorted(counts), key=lambda t: (counts[t], t == "wiki_mini")) if counts else "wiki_mini"


def section_transfer(rep: Report) -> list:
    """Generalisation to a second distribution (Fig. 8): wiki loss vs books loss, and vs N."""
    corpus = train_corpus(rep)
    task = transfer_task(rep)
    col, label = f"final_eval_loss_{task}", task.replace("_", "-")
    rows = [r for r in rep.sweep.finished() if rt.positive(r.get(col))
            and rt.positive(r.get("final_eval_loss")) and r.get("group") in ("ladder", "lstm", "recurrent", "holdout")]
    need(len(rows) >= 2, f"{len(rows)} finished runs have {col} (the extra-distribution eval; "
                          "need >= 2): set DataConfig.extra_eval_tasks in the sweep")
    x = np.array([r["final_eval_loss"] for r in rows])
    y = np.array([r[col] for r in rows])
    t = rt.transfer_offset(x, y)
    rep.save_fit(f"transfer_{task}", dict(law=f"L_{task} = intercept + slope * L_train", params=t,
                                          runs=[str(r["run"]) for r in rows]))
    groups = sorted({r["group"] for r in rows})
    colours = dict(ladder="tab:blue", lstm="tab:red", recurrent="tab:green", holdout="k")
    left, right = [], []
    for g in groups:
        m = [r for r in rows if r["group"] == g]
        left.append(dict(x=[r["n_params_nonembedding"] for r in m], y=[r["final_eval_loss"] for r in m],
                         kind="scatter", color=colours.get(g, "0.5"), label=f"{g}: {corpus} (train distribution)"))
        left.append(dict(x=[r["n_params_nonembedding"] for r in m], y=[r[col] for r in m],
                         kind="scatter", marker="^", color=colours.get(g, "0.5"), label=f"{g}: {label}"))
        right.append(dict(x=[r["final_eval_loss"] for r in m], y=[r[col] for r in m],
                          kind="scatter", color=colours.get(g, "0.5"), label=g))
    g = np.linspace(x.min(), x.max(), 50)
    if math.isfinite(t["slope"]):
        right.append(dict(x=g, y=t["intercept"] + t["slope"] * g, kind="line", color="crimson",
                          label=f"fit: slope {t['slope']:.2f}"))
    right.append(dict(x=g, y=g + t["offset"], kind="line", ls="--", color=PAPER_GREY,
                      label=f"slope 1, offset {t['offset']:+.3f}"))
    fig = rep.figure("transfer.png", [
        dict(title="loss on both distributions vs N", xlabel="N (non-embedding)", ylabel="final eval loss", ylog=True,
             series=left),
        dict(title=f"{label} loss vs {corpus} loss", xlabel=f"{corpus} eval loss", ylabel=f"{label} eval loss",
             xlog=False, series=right)], "Generalisation to a second distribution: Kaplan Fig. 8")
    return [f"{len(rows)} runs ({', '.join(groups)}) evaluated on both the training distribution ({corpus}) and "
            f"{label} (never trained on).", "",
            f"{label} loss = {fmt(t['intercept'], '.3f')} + {fmt(t['slope'], '.3f')} × {corpus} loss; mean offset "
            f"{t['offset']:+.3f} ± {fmt(t['offset_sd'], '.3f')} nats/token (paper Fig. 8: a roughly constant offset, "
            "slope ≈ 1, across model families).", "", fig]
