"""Sections L(N) at convergence (Fig. 1 right, eq 1.6 fitted to whole learning curves), L(N) of the final
losses (Fig. 6; eq 1.6 at the ladder's one step count beside eq 1.1), L(D) (Fig. 1 centre) and L(N, D)
(Fig. 9, eq 1.5).
"""
from __future__ import annotations

import math

import numpy as np

from scaling.analysis import api, fitting, laws, learning_curves
from scaling.analysis import report_tables as rt
from scaling.analysis.io import InputError
from scaling.report.document import Report, T2, T3, T5, fit_band, fmt, log_grid, notes_text, paper_slope_line, param_ci_notes, value_range
from scaling.report.loader import NotMeasured, bcrit_record, need, run_loss, scored


def _ladder_learning_curves(rep: Report) -> list:
    """Every finished ladder run's learning curve (eval loss vs optimizer step) as learning_curves.Curve."""
    curves = []
    for r in rep.sweep.group("ladder"):
        steps, loss = rep.sweep.curve(r, x="step")
        if len(steps) and rt.positive(r.get("n_params_nonembedding")) and rt.positive(r.get("batch_tokens")):
            curves.append(learning_curves.Curve(str(r["run"]), float(r["n_params_nonembedding"]), steps, loss,
                                                float(r["batch_tokens"])))
    return sorted(curves, key=lambda c: c.n_params)


def _bcrit_record(rep: Report) -> dict | None:
    return bcrit_record(rep.root)


def _no_floor(floor: dict) -> bool:
    """E's bootstrap interval reaches 0 (to 1e-3 nats): the data ask for no irreducible loss."""
    e_ci = floor["ci95"].get("E") or [floor["params"]["E"]]
    return min(e_ci) < 1e-3


def _floor_fit(rep: Report, N, L_inf, pure_quality: dict, steps=()) -> tuple[dict | None, str]:
    """L(N) = E + (N_c/N)^α_N on the converged losses (fits/kaplan_n_floor.json) and the report's line on it.

    When eq 1.1 bends and the floor removes the bend, the record's ``why`` says so for the α_N row: the
    difference from the paper may then be the entropy floor these tiny models approach, not noise. When the
    rungs trained different step counts (``steps``), their S → ∞ limits are extrapolated unequally far, which can
    bend eq 1.1 as well (measured: the full preset's bend, p = 3e-6 at 4,000 ... 1,200 steps, was gone at 4,000
    steps for every rung), so the line names both and the experiment that tells them apart.
    """
    if len(N) < 5:
        return None, ""
    try:
        fit = learning_curves.floor_power_law_fit(N, L_inf, n_boot=rep.n_boot, seed=rep.seed)
    except InputError:
        return None, ""
    q = rt.fit_quality(N, L_inf, fit["predict"](N))
    notes = rt.quality_notes(q) + param_ci_notes("α_N", fit["params"], fit["ci95"], "alpha_N")
    record = dict(law="L(N) = E + (N_c/N)^alpha_N", params=fit["params"], ci95=fit["ci95"],
                  bootstrap=dict(n=fit["n_boot"], seed=rep.seed, resample="points (rungs)"), quality=q,
                  x="n_params_nonembedding", loss="L_inf: S -> infinity loss of each rung's learning curve",
                  notes=notes)
    pure_bends = pure_quality.get("bend_p", 1.0) < 0.05
    explains = pure_bends and q["bend_p"] >= 0.05 and q["r2_log"] >= rt.R2_MIN
    unequal = len(set(steps)) > 1
    if explains:
        record["why"] = (f"the bend of eq 1.1 here is removed by an irreducible-loss floor: E + (N_c/N)^α fits with R² "
                         f"{q['r2_log']:.4f} and no bend left (p = {q['bend_p']:.2g}), E = {fit['params']['E']:.2f} nats"
                         + (f"; but the rungs trained {min(steps):.0f}–{max(steps):.0f} steps, so their S → ∞ limits are "
                            "extrapolated unequally far, which can also bend eq 1.1 (equal steps tell the two apart)"
                            if unequal else ""))
    rep.save_fit("kaplan_n_floor", record)
    record = dict(record, predict=fit["predict"])  # for the figure (not in the JSON)
    p = fit["params"]
    line = (f"- **With an irreducible loss** L(N) = E + (N_c/N)^α_N (Henighan et al. 2020; not in Kaplan eq 1.1): "
            f"E = {rt.format_ci(p['E'], fit['ci95'].get('E'), '{:.3f}')} nats, "
            f"α_N = {rt.format_ci(p['alpha_N'], fit['ci95'].get('alpha_N'), '{:.3f}')}; R² (log) = {q['r2_log']:.5f}, "
            f"bend p = {fmt(q['bend_p'], '.2g')}."
            + (" The pure power law's bend is what a floor gives: as these tiny models approach the entropy of "
               "the text (~E), log L flattens in log N. Kaplan's models sit far above their floor, where eq 1.1 is "
               "straight; eq 1.1's α_N here is a local slope that falls with N." if explains else "")
            + (f" The rungs trained different step counts ({min(steps):.0f}–{max(steps):.0f}): the larger ones' L∞ "
               "are extrapolated further, which bends eq 1.1 too; with one step count for every rung the full "
               "preset's bend vanished and E went to 0, so the floor reading is not established here."
               if explains and unequal else "")
            + notes_text(notes))
    return record, line


def section_ln_converged(rep: Report) -> list:
    """L(N) at convergence (eq 1.1) from whole learning curves: eq 1.6 with a free L(N) term, then eq 1.1."""
    curves = _ladder_learning_curves(rep)
    need(len(curves) >= 3, f"the `ladder` group has {len(curves)} finished runs with learning curves (need >= 3)")
    b_crit = learning_curves.bcrit_law(_bcrit_record(rep))
    try:
        sep = learning_curves.fit_separable(curves, b_crit=b_crit)
    except InputError as e:
        raise NotMeasured(f"the learning-curve fit is not possible: {e}") from e
    if sep.at_search_bound:
        raise NotMeasured(f"the learning-curve fit is not identified: its optimum runs to the edge of the search "
                          f"(S_c = {fmt(sep.s_c)} steps, α_S = {sep.alpha_s:.3f}), so the step term cannot be told "
                          f"from the L∞ on curves of {value_range([c.steps.max() for c in curves], '.0f')} steps; "
                          "train the rungs longer")
    N = np.array([c.n_params for c in curves])
    L_inf = np.array([sep.l_inf[c.name] for c in curves])
    alpha_s_jack = []
    for i in range(len(curves)):   # jackknife over rungs: the step exponent's uncertainty
        try:
            alpha_s_jack.append(learning_curves.fit_separable(curves[:i] + curves[i + 1:], b_crit=b_crit).alpha_s)
        except InputError:
            pass
    jack_se = (float(np.sqrt((len(alpha_s_jack) - 1) / len(alpha_s_jack) *
                             np.sum((np.array(alpha_s_jack) - np.mean(alpha_s_jack)) ** 2)))
               if len(alpha_s_jack) >= 3 else float("nan"))
    alpha_s_ci = [sep.alpha_s - 1.96 * jack_se, sep.alpha_s + 1.96 * jack_se] if math.isfinite(jack_se) else None
    rep.setup["ln_converged"] = dict(fit=sep, curves=curves, alpha_s_ci=alpha_s_ci)
    by_slope = learning_curves.alpha_n_by_bcrit_slope(curves, _bcrit_record(rep)) if b_crit else None
    rec, predict, notes = rep.power_fit("kaplan_n", "kaplan_n", N, L_inf, "n_params_nonembedding",
                                        extra=dict(loss="L_inf: S -> infinity loss of each rung's learning curve",
                                                   learning_curve_fit=sep.record(),
                                                   runs=[c.name for c in curves],
                                                   alpha_N_by_bcrit_alpha_B=(
                                                       {f"{k:.6g}": v for k, v in by_slope.items()}
                                                       if by_slope else None)))
    a, ci = rec["params"]["alpha_N"], rec["ci95"].get("alpha_N")
    q = rec["quality"]
    last_steps = [float(c.steps.max()) for c in curves]
    steps = value_range(last_steps, ".0f")
    floor, floor_line = _floor_fit(rep, N, L_inf, q, steps=last_steps)
    slope_text = ("; S_min's B_crit(L) is extrapolated below the scan's losses: with its α_B at the 95 % ends ("
                  + ", ".join(f"{ab:.3f}" for ab in by_slope) + ", B_crit held at the scan's pivot) α_N is "
                  + "–".join(f"{v:.4f}" for v in sorted(by_slope.values()))
                  + ", a systematic beyond the rung bootstrap's interval") if by_slope else ""
    rep.exponent("α_N", "L(N) = (N_c/N)^α_N, converged losses (S → ∞ of each rung's curve)", a, ci, T5["alpha_N"],
                 "Table 5", f"N = {value_range(N)} (paper 7e2–1.5e9); tiny models, 1,024-token vocabulary"
                 + (f"; {floor['why']}" if floor and floor.get("why") else "") + slope_text, notes)
    if floor:
        rep.exponent("α_N (floor)", "L(N) = E + (N_c/N)^α_N, converged losses (irreducible loss E fitted)",
                     floor["params"]["alpha_N"], floor["ci95"].get("alpha_N"), None, "no floor in Kaplan eq 1.1",
                     f"E = {rt.format_ci(floor['params']['E'], floor['ci95'].get('E'), '{:.3f}')} nats; "
                     + ("no floor detected: E's interval reaches 0, so this is eq 1.1 again"
                        if _no_floor(floor) else "Kaplan's losses sit far above the floor, these tiny models near it"),
                     floor["notes"], checks="α_N")
    n_pivot = float(np.exp(np.mean(np.log(N))))
    l_pivot, l_lo, l_hi = (float(v[0]) for v in predict({"N": np.array([n_pivot])}))
    rep.scale_constant("N_c", "L(N) constant, converged losses", rec["params"]["N_c"], rec["ci95"].get("N_c"),
                       T5["N_c"], "Table 5", "loss scale depends on tokenizer/vocabulary and corpus: not comparable "
                       "across data sets", (f"L(N = {n_pivot:.3g})", l_pivot, [l_lo, l_hi]))
    rep.setup["ln_converged"].update(alpha_N=a, alpha_N_ci=ci, N_c=rec["params"]["N_c"])
    rep.exponent("α_S", "step term of eq 1.6, fitted to all ladder curves", sep.alpha_s, alpha_s_ci, T3["alpha_S"],
                 "Table 3", "S_min from this sweep's B_crit(L)" if sep.bcrit_used else "S, not S_min (no B_crit(L))")
    s_term_end = {c.name: float(sep.step_term(learning_curves.s_min([c.steps.max()], [c.loss[-1]], c.batch_tokens,
                                                                     b_crit))[0]) for c in curves}
    table = ["| run | N | steps | final eval loss | L∞ (S → ∞) | step term at the end | curve fit RMS |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for c in curves:
        table.append(f"| {c.name} | {c.n_params:,.0f} | {c.steps.max():.0f} | {c.loss[-1]:.4f} | "
                     f"{sep.l_inf[c.name]:.4f} | {s_term_end[c.name]:.3f} | {sep.per_run_rms[c.name]:.2%} |")
    lines = [f"Ladder: {len(curves)} runs, N = {value_range(N)} non-embedding parameters ({steps} steps each). None is "
             "trained to convergence (a 2-core CPU cannot), so each rung's converged loss is the S → ∞ limit of its "
             "learning curve: one fit of L_r(S) = L∞_r + (S_c/S_min)^α_S to every rung's eval curve after 25 % of its "
             "steps (Kaplan eq 1.6 with the N term left free per rung, so the power law in N is not assumed; "
             + ("S_min = S/(1 + B_crit(L)/B) from this sweep's batch scan, eq 5.4" if sep.bcrit_used else
                "no B_crit(L) in this sweep, so S is used for S_min") + ").", "",
             f"- **Step term** (shared by all rungs): α_S = {rt.format_ci(sep.alpha_s, alpha_s_ci, '{:.3f}')} "
             f"(jackknife over rungs), S_c = {fmt(sep.s_c)} steps; "
             f"{sep.n_points} eval points, relative RMS {sep.rms_rel:.2%}, R² (log) {sep.r2_log:.4f} "
             f"(paper Table 3: α_S = {T3['alpha_S']}, S_c = {T3['S_c']:.1e}).",
             f"- **L(N) at convergence** (eq 1.1 on the L∞): α_N = {rt.format_ci(a, ci, '{:.4f}')}, "
             f"N_c = {fmt(rec['params']['N_c'])}; R² (log) = {q['r2_log']:.4f}, residual RMS {q['rms_log']:.2g}, "
             f"bend p = {fmt(q['bend_p'], '.2g')} (paper: α_N = {T5['alpha_N']}, N_c = {T5['N_c']:.1e}).{notes_text(notes)}",
             *([floor_line] if floor_line else []), "", *table]
    ci_n = [i / max(len(curves) - 1, 1) for i in range(len(curves))]
    curve_series = []
    for c, k in zip(curves, ci_n):
        curve_series.append(dict(x=c.steps, y=c.loss, kind="line", lw=1, cmap_index=k, label=f"N = {c.n_params:.2g}"))
        s_grid = np.geomspace(c.steps.max() * 0.25, c.steps.max() * 8, 40)
        fit_line = sep.l_inf[c.name] + sep.step_term(learning_curves.s_min(
            s_grid, np.full_like(s_grid, sep.l_inf[c.name] + 0.3), c.batch_tokens, b_crit))
        curve_series.append(dict(x=s_grid, y=fit_line, kind="line", ls=":", lw=1, cmap_index=k))
    final = np.array([c.loss[-1] for c in curves])
    series = [dict(x=N, y=L_inf, kind="scatter", color="k", label="L∞ (converged, from the curves)"),
              dict(x=N, y=final, kind="scatter", color="tab:gray", marker="x", label="final eval loss"),
              *fit_band(predict, "N", N),
              *([dict(x=log_grid(N), y=floor["predict"](log_grid(N)), kind="line", ls="--", color="tab:green",
                      label=f"E + (N_c/N)^α: E = {floor['params']['E']:.2f}, α = {floor['params']['alpha_N']:.3f}")]
                if floor else []),
              paper_slope_line(N, L_inf, -T5["alpha_N"], f"paper slope α_N = {T5['alpha_N']}")]
    panels = [dict(title=f"converged L(N): α_N = {a:.3f}", xlabel="N (non-embedding parameters)",
                   ylabel="loss (nats/token)", ylog=True, series=series),
              dict(title="learning curves and the eq 1.6 fit (dotted: extrapolation)", xlabel="step S",
                   ylabel="eval loss", ylog=True, series=curve_series)]
    rep.setup["ln_figure"] = rep.figure("ln.png", panels, "L(N) at convergence: Kaplan Fig. 1 (right), eq 1.6")
    return lines + ["", rep.setup["ln_figure"]]


def section_ln(rep: Report) -> list:
    """L(N) of the final (unconverged) losses (Fig. 1 right, Fig. 6): ladder, non-embedding N, and the embedding-inclusive count beside it."""
    ladder = rep.sweep.group("ladder")
    rows, N, L = scored(ladder, "n_params_nonembedding")
    need(len(rows) >= 3, f"the `ladder` group has {len(rows)} finished runs with a loss (a power law needs >= 3)")
    rec, predict, notes = rep.power_fit("kaplan_n_final", "kaplan_n", N, L, "n_params_nonembedding")
    a, ci = rec["params"]["alpha_N"], rec["ci95"].get("alpha_N")
    steps = value_range([r.get("steps") for r in rows], ".0f")
    rep.exponent("α_N (final losses)", "L(N) = (N_c/N)^α_N, ladder, best eval loss (not converged)", a, ci,
                 T5["alpha_N"], "Table 5",
                 f"N = {value_range(N)} (paper 7e2–1.5e9), {steps} steps each, not trained to convergence", notes,
                 checks="α_N")
    lines = [f"Ladder: {len(rows)} runs, N = {value_range(N)} non-embedding parameters, loss = best eval loss "
             f"(nats/token).", "",
             f"- **Non-embedding N**: α_N = {rt.format_ci(a, ci, '{:.4f}')}, N_c = {fmt(rec['params']['N_c'])}; "
             f"R² (log) = {rec['quality']['r2_log']:.4f}, residual RMS {rec['quality']['rms_log']:.2g} "
             f"(paper: α_N = {T5['alpha_N']}, N_c = {T5['N_c']:.1e}).{notes_text(notes)}"]
    series = [dict(x=N, y=L, kind="scatter", color="k", label="ladder runs"), *fit_band(predict, "N", N),
              paper_slope_line(N, L, -T5["alpha_N"], f"paper slope α_N = {T5['alpha_N']}")]
    lines += _fixed_s_fit(rep, rows, N, L, series)
    fixed_s = rep.setup.get("ln_fixed_s")
    title = f"non-embedding N: α_N = {a:.3f} (eq 1.1)" + (
        f", {fixed_s['alpha_N']:.3f} (eq 1.6 at fixed S)" if fixed_s else "")
    panels = [dict(title=title, xlabel="N (non-embedding parameters)",
                   ylabel="loss (nats/token)", ylog=True, series=series)]
    rows_t, Nt, Lt = scored(ladder, "n_params_total")
    if len(rows_t) >= 3:
        rec_t, predict_t, notes_t = rep.power_fit("kaplan_n_total", "kaplan_n", Nt, Lt, "n_params_total")
        qt, q = rec_t["quality"], rec["quality"]
        bends = any(n.startswith(("curvature", "residual trend", "poor fit")) for n in notes_t)
        verdict = ("the points bend away from a power law, as in the paper's Fig. 6 (left)" if bends else
                   "no bend is detectable at this scale range (the paper's bend comes from small models whose "
                   "embedding dominates the count)")
        alpha_t = rt.format_ci(rec_t["params"]["alpha_N"], rec_t["ci95"].get("alpha_N"), "{:.4f}")
        lines.append(f"- **All parameters (embedding included)**: α = {alpha_t}; R² (log) = {qt['r2_log']:.4f}, "
                     f"residual RMS {qt['rms_log']:.2g}, bend p = {fmt(qt['bend_p'], '.2g')} (non-embedding: R² "
                     f"{q['r2_log']:.4f}, RMS {q['rms_log']:.2g}, bend p = {fmt(q['bend_p'], '.2g')}): "
                     f"{verdict}.{notes_text(notes_t)}")
        panels.append(dict(title="with embedding parameters (Fig. 6 left)", xlabel="N (all parameters)",
                           ylabel="loss (nats/token)", ylog=True,
                           series=[dict(x=Nt, y=Lt, kind="scatter", color="k", label="ladder runs"),
                                   *fit_band(predict_t, "N", Nt)]))
    else:
        lines.append("- All-parameter count: not measured in this sweep (runs.csv lacks n_params_total).")
    figure = rep.figure("ln_final.png", panels, "L(N) of the final losses: Kaplan Fig. 1 (right) and Fig. 6")
    rep.setup.setdefault("ln_figure", figure)
    lines += ["", figure]
    return lines


def _fixed_s_fit(rep: Report, rows, N, L, series: list) -> list:
    """Eq 1.6 at the ladder's one step count: L = (N_c/N)^α_N + L_S. Adds its curve to `series`; report lines."""
    steps = {r.get("steps") for r in rows}
    if len(rows) < 5 or len(steps) != 1:
        why = (f"{len(rows)} rungs (3 parameters: need >= 5)" if len(rows) < 5 else
               f"the rungs trained different step counts ({value_range(list(steps), '.0f')}), so no common L_S")
        return [f"- **Eq 1.6 at fixed S** (L = (N_c/N)^α_N + L_S): not fitted: {why}."]
    try:
        fit = api.fit_law("kaplan_n_fixed_s", dict(N=N, loss=L), n_boot=rep.n_boot, seed=rep.seed)
    except (InputError, fitting.FitError) as e:
        return [f"- **Eq 1.6 at fixed S** (L = (N_c/N)^α_N + L_S): the fit failed: {e}."]
    p, ci = fit.record["params"], fit.record["ci95"]
    q = rt.fit_quality(N, L, fit.predict(dict(N=N))[0])
    notes = rt.quality_notes(q) + param_ci_notes("α_N", p, ci, "alpha_N") + param_ci_notes("L_S", p, ci, "L_S")
    n_steps = float(next(iter(steps)))
    rep.save_fit("kaplan_n_fixed_s", dict(fit.record, quality=q, notes=notes, x="n_params_nonembedding",
                                          steps=n_steps))
    rep.setup["ln_fixed_s"] = dict(alpha_N=p["alpha_N"], ci=ci.get("alpha_N"), r2=q["r2_log"], L_S=p["L_S"])
    rep.exponent("α_N (eq 1.6, fixed S)", "L(N) = (N_c/N)^α_N + L_S, ladder at one step count", p["alpha_N"],
                 ci.get("alpha_N"), T3["alpha_N"], "Table 3",
                 f"N = {value_range(N)}, {len(rows)} rungs, all {n_steps:.0f} steps; L_S absorbs the shared "
                 "(S_c/S)^α_S, so α_N here is the converged-model exponent, not eq 1.1's fixed-S slope", notes,
                 checks="α_N")
    g = log_grid(N)
    pred, lo, hi = fit.predict(dict(N=g))
    series.append(dict(x=g, y=pred, kind="line", color="tab:blue", label="eq 1.6 at fixed S (ours)"))
    if np.all(np.isfinite(lo)):
        series.append(dict(x=g, y=pred, lo=lo, hi=hi, kind="band", color="tab:blue", label="95% bootstrap"))
    return [f"- **Eq 1.6 at fixed S** (every rung trained {n_steps:.0f} steps, so each carries the same "
            f"(S_c/S)^α_S = L_S): α_N = {rt.format_ci(p['alpha_N'], ci.get('alpha_N'), '{:.3f}')}, "
            f"L_S = {rt.format_ci(p['L_S'], ci.get('L_S'), '{:.3f}')} nats, N_c = {fmt(p['N_c'])}; "
            f"R² (log) = {q['r2_log']:.4f}, residual RMS {q['rms_log']:.2g} (paper Table 3: α_N = {T3['alpha_N']}). "
            f"Eq 1.1 above is exact only for converged models; the pure power law's curvature here is the "
            f"constant L_S.{notes_text(notes)}"]


def data_budget(rep: Report, row) -> float | None:
    if rt.positive(row.get("data_budget_tokens")):
        return float(row["data_budget_tokens"])
    data = rep.sweep.summaries.get(str(row["run"]), {}).get("data", {}) or {}
    for k in ("unique_train_tokens", "train_tokens"):  # empty budget = all the data
        if rt.positive(data.get(k)):
            return float(data[k])
    return None


def _data_points(rep: Report):
    rows = []
    for r in rep.sweep.group("data"):
        d = data_budget(rep, r)
        if d is not None and rt.positive(r.get("n_params_nonembedding")) and run_loss(r) is not None:
            rows.append((r, float(r["n_params_nonembedding"]), d, run_loss(r)))
    need(bool(rep.sweep.group("data", finished=False)), "no `data` group in runs.csv")
    return rows


def section_ld(rep: Report) -> list:
    """L(D) with early stopping (Fig. 1 centre): the largest model at each data budget."""
    pts = _data_points(rep)
    by_d = {}
    for r, n, d, l in pts:
        if d not in by_d or n > by_d[d][1]:
            by_d[d] = (r, n, d, l)
    need(len(by_d) >= 3, f"the `data` group has {len(by_d)} distinct data budgets with finished runs (need >= 3)")
    sel = [by_d[d] for d in sorted(by_d)]
    D = np.array([p[2] for p in sel])
    L = np.array([p[3] for p in sel])
    rec, predict, notes = rep.power_fit("kaplan_d", "kaplan_d", D, L, "data_budget_tokens (largest model per D)",
                                        extra=dict(runs=[str(p[0]["run"]) for p in sel]))
    a, ci = rec["params"]["alpha_D"], rec["ci95"].get("alpha_D")
    rep.exponent("α_D", "L(D) = (D_c/D)^α_D, largest model per D, early stopping", a, ci, T5["alpha_D"], "Table 5",
                 f"D = {value_range(D)} tokens (paper 2.2e7–2.3e10), repeated epochs on a small corpus; "
                 f"largest model per D is N = {value_range([p[1] for p in sel])}", notes)
    curves = []
    for i, p in enumerate(sel):
        x, y = rep.sweep.curve(p[0])
        if len(x):
            curves.append(dict(x=x, y=y, kind="line", cmap_index=i / max(len(sel) - 1, 1),
                               label=f"D = {p[2]:.2g}"))
    panels = [dict(title=f"L(D), early stopped: α_D = {a:.3f}", xlabel="D (tokens in the budget)",
                   ylabel="best eval loss", ylog=True,
                   series=[dict(x=[p[2] for p in pts], y=[p[3] for p in pts], kind="scatter", color="0.7",
                                size=10, label="all data-group runs"),
                           dict(x=D, y=L, kind="scatter", color="k", label="largest model per D"),
                           *fit_band(predict, "D", D),
                           paper_slope_line(D, L, -T5["alpha_D"], f"paper slope α_D = {T5['alpha_D']}")])]
    if curves:
        panels.append(dict(title="learning curves of those runs (the minimum is the early-stopping point)",
                           xlabel="tokens seen", ylabel="eval loss", ylog=True, series=curves))
    fig = rep.figure("ld.png", panels, "L(D) with early stopping: Kaplan Fig. 1 (centre)")
    return [f"{len(sel)} data budgets D = {value_range(D)} tokens; at each, the largest model's best eval loss.", "",
            f"α_D = {rt.format_ci(a, ci, '{:.4f}')}, D_c = {fmt(rec['params']['D_c'])}, R² (log) "
            f"{rec['quality']['r2_log']:.4f} (paper: α_D = {T5['alpha_D']}, D_c = {T5['D_c']:.1e}).{notes_text(notes)}",
            "", fig]


def section_lnd(rep: Report) -> list:
    """L(N, D) overfitting family (Fig. 9) with eq. 1.5."""
    pts = _data_points(rep)
    Ns = sorted({p[1] for p in pts})
    Ds = sorted({p[2] for p in pts})
    need(len(pts) >= 6 and len(Ns) >= 2 and len(Ds) >= 2,
          f"the `data` group has {len(pts)} finished runs over {len(Ns)} sizes x {len(Ds)} budgets "
          "(eq. 1.5 has 4 parameters: need >= 6 runs, >= 2 sizes and >= 2 budgets)")
    N = np.array([p[1] for p in pts])
    D = np.array([p[2] for p in pts])
    L = np.array([p[3] for p in pts])
    fit = api.fit_law("kaplan_nd", dict(N=N, D=D, loss=L), n_boot=rep.n_boot, seed=rep.seed)
    p, ci = fit.record["params"], fit.record["ci95"]
    pred = laws.loss_of_nd(N, D, p["N_c"], p["D_c"], p["alpha_N"], p["alpha_D"])
    q = rt.fit_quality(D, L, pred)
    notes = rt.quality_notes(q)
    notes_n, notes_d = param_ci_notes("α_N", p, ci, "alpha_N"), param_ci_notes("α_D", p, ci, "alpha_D")
    rep.save_fit("kaplan_nd", dict(fit.record, quality=q, notes=notes + notes_n + notes_d,
                                   runs=[str(x[0]["run"]) for x in pts]))
    rng = f"N = {value_range(N)}, D = {value_range(D)} tokens; {len(pts)} runs (paper: N up to 1.5e9, D 2.2e7–2.3e10)"
    rep.exponent("α_N (eq 1.5)", "L(N, D) fit, data group", p["alpha_N"], ci.get("alpha_N"), T2["alpha_N"], "Table 2",
                 rng, notes + notes_n, checks="α_N")
    rep.exponent("α_D (eq 1.5)", "L(N, D) fit, data group", p["alpha_D"], ci.get("alpha_D"), T2["alpha_D"], "Table 2",
                 rng, notes + notes_d, checks="α_D")
    ratio = p["alpha_N"] / p["alpha_D"]
    cmap_i = lambda d: Ds.index(d) / max(len(Ds) - 1, 1)
    left = []
    for d in Ds:
        m = D == d
        left.append(dict(x=N[m], y=L[m], kind="scatter", cmap_index=cmap_i(d), label=f"D = {d:.2g}"))
        g = log_grid(N)
        left.append(dict(x=g, y=laws.loss_of_nd(g, d, p["N_c"], p["D_c"], p["alpha_N"], p["alpha_D"]),
                         kind="line", cmap_index=cmap_i(d)))
    x_ratio = N ** ratio / D
    l_inf = laws.loss_of_n(N, p["N_c"], p["alpha_N"])
    g = log_grid(x_ratio)
    right = [dict(x=x_ratio, y=L / l_inf - 1, kind="scatter", color="k", label="runs: L/L(N,∞) − 1"),
             dict(x=g, y=(1 + g * p["D_c"] / p["N_c"] ** ratio) ** p["alpha_D"] - 1, kind="line", color="crimson",
                  label="eq 1.5 (ours)")]
    fig = rep.figure("lnd.png", [
        dict(title="L(N, D): one colour per data budget", xlabel="N (non-embedding)", ylabel="best eval loss",
             ylog=True, series=left),
        dict(title=f"overfitting vs N^(α_N/α_D)/D, α_N/α_D = {ratio:.2f}", xlabel="N^(α_N/α_D) / D",
             ylabel="L / L(N, ∞) − 1", ylog=False, series=right)], "L(N, D): Kaplan Fig. 9, eq. 1.5")
    return [rng + ".", "",
            f"Eq. 1.5 fit: α_N = {rt.format_ci(p['alpha_N'], ci.get('alpha_N'), '{:.4f}')}, "
            f"α_D = {rt.format_ci(p['alpha_D'], ci.get('alpha_D'), '{:.4f}')}, N_c = {fmt(p['N_c'])}, "
            f"D_c = {fmt(p['D_c'])}; R² (log) {q['r2_log']:.4f} (paper Table 2: α_N = {T2['alpha_N']}, "
            f"α_D = {T2['alpha_D']}, N_c = {T2['N_c']:.1e}, D_c = {T2['D_c']:.1e}).{notes_text(notes + notes_n + notes_d)}",
            f"Data needed to keep overfitting small grows as D ∝ N^(α_N/α_D) = N^{ratio:.2f} (paper eq. 4.4: N^0.74).",
            "", fig]
