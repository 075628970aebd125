"""Predict, then verify: the holdout run's loss predicted before it trained (prediction.json) vs measured.
"""
from __future__ import annotations

import json
import os

from scaling.analysis import report_tables as rt
from scaling.report.document import Report, fmt
from scaling.report.loader import need, run_loss, scored


def _interval_text(lo, hi) -> str:
    """'lo–hi' of a prediction interval; a null bound (non-finite bootstrap replicates) is an open side."""
    return f"{fmt(lo, '.4f') if lo is not None else '−∞'}–{fmt(hi, '.4f') if hi is not None else '∞'}"


def _inside(x: float, lo, hi) -> bool:
    return (lo is None or lo <= x) and (hi is None or x <= hi)


def section_prediction(rep: Report) -> list:
    """Predict-then-verify from prediction.json and the holdout run."""
    path = os.path.join(rep.root, "prediction.json")
    need(os.path.exists(path), "prediction.json is absent (experiments.reproduce writes it before the holdout run)")
    with open(path) as f:
        p = json.load(f)
    target = str(p.get("target_run"))
    pred, lo, hi = (p.get(k) for k in ("loss_pred", "loss_pred_lo", "loss_pred_hi"))
    need(rt.positive(pred), f"{path} has no positive loss_pred")
    lines = [f"Law `{p.get('law')}` fitted on {len(p.get('fit_runs', []))} runs ({', '.join(map(str, p.get('fit_runs', [])))}), "
             f"written {p.get('written_at', '?')}, predicts the holdout run `{target}` "
             f"(N = {fmt(p.get('n_params_nonembedding'))}): loss {fmt(pred, '.4f')} "
             f"(95% CI {_interval_text(lo, hi)}"
             f"{'; unbounded: the fit is poorly determined' if lo is None or hi is None else ''}).", ""]
    row = next((r for r in rep.sweep.rows if str(r.get("run")) == target), None)
    if row is None or row.get("status") != "finished" or run_loss(row) is None:
        state = "not in runs.csv" if row is None else f"status {row.get('status')}"
        return lines + [f"**Measured: pending** — the holdout run is {state}; rerun the report when it has finished."]
    # What the prediction is of: the final eval loss (learning-curve law, predicted at the run's last step) or
    # the best eval loss (L(N) fits on the ladder's best losses).
    measure = p.get("measure") or "best_eval_loss"
    measured_of = lambda key: row.get(key) if rt.positive(row.get(key)) else run_loss(row)
    measured = measured_of(measure)
    err = measured - pred
    # A null bound is an unbounded side of the interval (the bootstrap produced non-finite replicates).
    inside = _inside(measured, lo, hi)
    rep.setup["prediction"] = dict(pred=pred, lo=lo, hi=hi, measured=measured, error=err, inside=inside, run=target)
    final = row.get("final_eval_loss")
    final_text = f" (final eval loss {final:.4f})" if rt.positive(final) else ""
    final_text = "" if measure == "final_eval_loss" else final_text
    lines.append(f"**Measured** ({measure.replace('_', ' ')}): {measured:.4f}{final_text}. **Error** measured − predicted = "
                 f"{err:+.4f} nats/token ({100 * err / pred:+.2f}%); the measurement is "
                 f"**{'inside' if inside else 'outside'}** the 95% CI.")
    checks = p.get("backtests") or []
    if checks:
        b_lo, b_hi = p.get("bootstrap_lo"), p.get("bootstrap_hi")
        lines.append(f"- The interval is the rung bootstrap's ({_interval_text(b_lo, b_hi)}; measured "
                     f"{'inside' if _inside(measured, b_lo, b_hi) else 'outside'} it) widened by the error of the same "
                     "method on the ladder's own largest rungs, each predicted at the holdout's steps from the rungs "
                     "below it (added in quadrature, 1.96 × RMS): "
                     + "; ".join(f"`{c['run']}` from {c['fit_runs']} rungs {c['predicted']:.4f} vs {c['measured']:.4f} "
                                 f"({100 * c['error'] / c['measured']:+.2f}%)" for c in checks) + ".")
    for law, alt in (p.get("alternatives") or {}).items():
        a_pred, a_lo, a_hi = (alt.get(k) for k in ("loss_pred", "loss_pred_lo", "loss_pred_hi"))
        if not rt.positive(a_pred):
            continue
        a_measure = alt.get("measure") or "best_eval_loss"
        a_measured = measured_of(a_measure)
        lines.append(f"- Also written before training, by law `{law}`: {a_pred:.4f} (95% CI "
                     f"{_interval_text(a_lo, a_hi)}) of the {a_measure.replace('_', ' ')}; error "
                     f"{a_measured - a_pred:+.4f} ({100 * (a_measured - a_pred) / a_pred:+.2f}%), "
                     f"{'inside' if _inside(a_measured, a_lo, a_hi) else 'outside'} its CI.")
    fit_rows = [r for r in rep.sweep.rows if str(r.get("run")) in set(map(str, p.get("fit_runs", [])))]
    fr, Nf, Lf = scored(fit_rows, "n_params_nonembedding")
    n_t = p.get("n_params_nonembedding") or row.get("n_params_nonembedding")
    if rt.positive(n_t) and all(v is not None for v in (pred, lo, hi)):
        series = [dict(x=Nf, y=Lf, kind="scatter", color="k", label="runs the prediction was fitted on"),
                  dict(x=[n_t], y=[pred], yerr=[[pred - lo], [hi - pred]], kind="errorbar", color="crimson",
                       label="prediction (95% CI)"),
                  dict(x=[n_t], y=[measured], kind="scatter", marker="*", size=80, color="tab:green",
                       label="measured")]
        lines += ["", rep.figure("prediction.png", [dict(title="predict, then verify", xlabel="N (non-embedding)",
                                                         ylabel="loss", ylog=True, series=series)])]
    return lines
