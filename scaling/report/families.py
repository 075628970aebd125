"""Model-family sections: LSTM vs Transformer (Fig. 7) and the recurrent Transformer (Fig. 17).
"""
from __future__ import annotations

import math

import numpy as np

from scaling.analysis import learning_curves
from scaling.analysis import report_tables as rt
from scaling.report.context import final_eval, position_curve
from scaling.report.document import Report, log_grid, notes_text, value_range
from scaling.report.loader import need, scored


def _with_fit(rows, N, L):
    """(rows, N, L, power-law fit of L(N) or None when fewer than two distinct sizes)."""
    fit = rt.loglog_fit(N, L) if len(rows) >= 2 and np.ptp(N) > 0 else None
    return rows, N, L, fit


def _family_fit(rows):
    return _with_fit(*scored(rows, "n_params_nonembedding"))


def _common_steps(rows) -> float | None:
    steps = {float(r["steps"]) for r in rows if rt.positive(r.get("steps"))}
    return steps.pop() if len(steps) == 1 else None


def ladder_at_steps(rep: Report, step: float):
    """The ladder rungs' best eval loss by optimizer step ``step`` (from their learning curves), with the power-law
    fit: the Transformer a family run trained as long would have reached. Rungs that stopped earlier are left out."""
    rows, N, L = [], [], []
    for r in rep.sweep.group("ladder"):
        steps, loss = rep.sweep.curve(r, x="step")
        value = learning_curves.best_loss_by_step(steps, loss, step) if len(steps) else None
        if value is not None and rt.positive(r.get("n_params_nonembedding")):
            rows.append(r)
            N.append(float(r["n_params_nonembedding"]))
            L.append(value)
    return _with_fit(rows, np.array(N), np.array(L))


def family_and_ladder(rep: Report, group: str):
    """Finished runs of `group` and of the Transformer ladder, each with its power-law fit (or the section's
    reason for not being measured), and the words saying what the ladder's losses are.

    A family trained S steps is compared with the ladder's losses at step S, read off the rungs' learning
    curves (the ladder's rungs train S or more steps): a rung trained longer is not a fair comparison."""
    need(bool(rep.sweep.group(group, finished=False)), f"no `{group}` group in runs.csv")
    family = _family_fit(rep.sweep.group(group))
    need(len(family[0]) >= 1, f"no `{group}` run has finished")
    steps = _common_steps(family[0])
    ladder = ladder_at_steps(rep, steps) if steps else None
    if ladder is not None and len(ladder[0]) >= 2:
        basis = f"ladder best eval losses by step {steps:.0f}, the {group} runs' step count (from the rungs' curves)"
    else:
        ladder = _family_fit(rep.sweep.group("ladder"))
        why = (f"fewer than 2 rungs trained {steps:.0f} steps" if steps else f"the {group} runs' step counts differ")
        basis = f"ladder best eval losses at the end of each rung's training ({why})"
    need(len(ladder[0]) >= 1, "no finished `ladder` run to compare with")
    return family, ladder, basis


def section_lstm(rep: Report) -> list:
    """LSTM vs Transformer (Fig. 7): loss vs N and per-position loss."""
    (lstm, Nl, Ll, fl), (tr, Nt, Lt, ft), basis = family_and_ladder(rep, "lstm")
    left = [dict(x=Nt, y=Lt, kind="scatter", color="tab:blue", label="Transformer (ladder)"),
            dict(x=Nl, y=Ll, kind="scatter", color="tab:red", marker="s", label="LSTM")]
    lines = [f"LSTM runs: {len(lstm)} (N = {value_range(Nl)}); Transformer ladder: {len(tr)} (N = {value_range(Nt)}; "
             f"{basis}).", ""]
    for name, fit, N, colour in (("Transformer", ft, Nt, "tab:blue"), ("LSTM", fl, Nl, "tab:red")):
        if fit:
            g = log_grid(N)
            left.append(dict(x=g, y=fit["k"] * g ** fit["p"], kind="line", color=colour))
            lines.append(f"- {name}: L ∝ N^{fit['p']:.3f} (R² log {fit['quality']['r2_log']:.3f}, "
                         f"{len(N)} points){notes_text(rt.quality_notes(fit['quality']))}")
    # Loss gap at matched N: the ladder's power law evaluated at each LSTM's N.
    if ft:
        gap = Ll / (ft["k"] * Nl ** ft["p"]) - 1
        lines.append(f"- At the LSTMs' sizes the LSTM loss is {', '.join(f'{100 * g:+.1f}%' for g in gap)} relative "
                     "to the Transformer ladder's fit (paper: LSTMs match Transformers on early tokens and fall behind "
                     "on later ones).")
    right = []
    big_l = max(lstm, key=lambda r: r["n_params_nonembedding"])
    near_t = min(tr, key=lambda r: abs(math.log(r["n_params_nonembedding"] / big_l["n_params_nonembedding"])))
    for r, colour, label in ((near_t, "tab:blue", "Transformer"), (big_l, "tab:red", "LSTM")):
        e = final_eval(rep, r)
        if e is not None:
            lp = position_curve(e)[0]
            right.append(dict(x=np.arange(1, len(lp) + 1), y=lp, kind="line", color=colour,
                              label=f"{label} N = {r['n_params_nonembedding']:.2g}, "
                                    f"{float(r.get('steps') or 0):.0f} steps"))
    panels = [dict(title="loss vs N", xlabel="N (non-embedding)", ylabel="best eval loss", ylog=True, series=left)]
    if right:
        panels.append(dict(title="per-token loss at similar N", xlabel="token position", ylabel="eval loss",
                           ylog=True, series=right))
    return lines + ["", rep.figure("lstm.png", panels, "LSTM vs Transformer: Kaplan Fig. 7")]


def _n_recurrence(rep: Report, row) -> float:
    model = rep.sweep.summaries.get(str(row["run"]), {}).get("model") or {}
    if rt.positive(model.get("n_recurrence")):
        return float(model["n_recurrence"])
    for k in ("RecurrentTransformerConfig.n_recurrence", "n_recurrence"):
        if rt.positive(row.get(k)):
            return float(row[k])
    if rt.positive(row.get("flops_per_token")):  # Kaplan training FLOPs = 6 × N × applications of the shared stack
        return max(1.0, round(float(row["flops_per_token"]) / (6 * float(row["n_params_nonembedding"]))))
    return 1.0


def section_recurrent(rep: Report) -> list:
    """Recurrent (parameter-shared) Transformer (Fig. 17): N counted once and with the repeats."""
    (rec, Nr, Lr, _), (tr, Nt, Lt, ft), basis = family_and_ladder(rep, "recurrent")
    reps = np.array([_n_recurrence(rep, r) for r in rec])
    base = [dict(x=Nt, y=Lt, kind="scatter", color="tab:blue", label="Transformer (ladder)")]
    if ft:
        g = log_grid(np.concatenate([Nt, Nr, Nr * reps]))
        base.append(dict(x=g, y=ft["k"] * g ** ft["p"], kind="line", color="tab:blue", ls="--"))
    panels = [dict(title="N counting shared parameters once", xlabel="N (unique non-embedding)", ylabel="best eval loss",
                   ylog=True, series=base + [dict(x=Nr, y=Lr, kind="scatter", marker="s", color="tab:green",
                                                  label="recurrent")]),
              dict(title="N counting every repeat", xlabel="N × n_recurrence", ylabel="best eval loss", ylog=True,
                   series=base + [dict(x=Nr * reps, y=Lr, kind="scatter", marker="s", color="tab:green",
                                       label="recurrent")])]
    lines = [f"Transformer ladder: {len(tr)} rungs, N = {value_range(Nt)} ({basis}).", "",
             "| run | N (unique) | repeats | N × repeats | best loss | ladder fit at N | ladder fit at N × repeats |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r, n, l, k in zip(rec, Nr, Lr, reps):
        at = lambda x: f"{ft['k'] * x ** ft['p']:.4f}" if ft else "–"
        lines.append(f"| {r['run']} | {n:.3g} | {k:.0f} | {n * k:.3g} | {l:.4f} | {at(n)} | {at(n * k)} |")
    lines += ["", "Paper: a recurrent Transformer does better than a standard one with the same unique parameters and "
                  "slightly worse than one with N × repeats parameters (its loss lies between the two ladder values).",
              "", rep.figure("recurrent.png", panels, "Recurrent Transformer: Kaplan Fig. 17")]
    return lines
