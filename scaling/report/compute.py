"""Compute sections: L(C) and the compute-efficient frontier (Fig. 1 left, Figs. 13-14), L(C_min) (Table 5)
and sample efficiency (Fig. 2).
"""
from __future__ import annotations

import numpy as np

from scaling.analysis import laws
from scaling.analysis import report_tables as rt
from scaling.core.units import PF_DAY
from scaling.report.batch import smin_rows
from scaling.report.document import Report, T5, T6, fit_band, fmt, log_grid, notes_text, paper_slope_line, value_range
from scaling.report.loader import bcrit_record, need


def ladder_curves(rep: Report):
    """Per ladder run: (row, N, C in PF-days, eval loss) from eval.jsonl (compute = flops/token × tokens)."""
    out = []
    for r in rep.sweep.group("ladder"):
        if not (rt.positive(r.get("flops_per_token")) and rt.positive(r.get("n_params_nonembedding"))):
            continue
        tokens, loss = rep.sweep.curve(r)
        if len(tokens) >= 2:
            out.append((r, float(r["n_params_nonembedding"]), float(r["flops_per_token"]) * tokens / PF_DAY, loss))
    out.sort(key=lambda c: c[1])
    return out


def _frontier_window(env: dict, trans: list):
    """Envelope points where it is a compute frontier: between the first and the last crossing of rungs.

    Before the first crossing the smallest rung is on the envelope only because nothing smaller was run;
    after the last one the largest rung stays there only because nothing larger was run (it converges to
    its own L(N) floor). With fewer than two crossings the whole envelope is used.
    """
    ok = env["winner"] >= 0
    if len(trans) >= 2:
        sel = ok & (env["C"] >= trans[0]["C"]) & (env["C"] <= trans[-1]["C"])
        if sel.sum() >= 5:
            return sel, trans[0]["C"], trans[-1]["C"]
    return ok, float(env["C"][ok].min()), float(env["C"][ok].max())


def _window_words(trans: list) -> str:
    if len(trans) >= 2:
        return ("between the first and the last crossing of neighbouring rungs (outside it the envelope is "
                "bounded by the smallest or largest model run, not by compute)")
    return "the whole envelope (fewer than two crossings of rungs: the frontier is not bracketed)"


def section_lc(rep: Report) -> list:
    """L(C) envelope and the compute-efficient frontier (Fig. 1 left, Figs. 13/14)."""
    curves = ladder_curves(rep)
    need(len(curves) >= 2, f"{len(curves)} ladder runs have an eval.jsonl learning curve with >= 2 points (need >= 2)")
    env = rt.envelope([(c, l) for _, _, c, l in curves], n_grid=60)
    trans = rt.frontier_transitions([(c, l) for _, _, c, l in curves], [n for _, n, _, _ in curves])
    ok = env["winner"] >= 0
    sel, c_lo, c_hi = _frontier_window(env, trans)
    Ce, Le = env["C"][sel], env["loss"][sel]
    rec, predict, notes = rep.power_fit("kaplan_c", "kaplan_c", Ce * PF_DAY, Le,
                                        "envelope of ladder learning curves (fixed batch), C in FLOPs",
                                        extra=dict(fit_range_pf_days=[c_lo, c_hi]))
    notes = notes + ["envelope grid points are not independent: the CI is optimistic"]
    a, ci = rec["params"]["alpha_C"], rec["ci95"].get("alpha_C")
    rep.setup["C_range"] = (float(env["C"].min()), float(env["C"].max()))
    batch = value_range([r.get("batch_tokens") for r, *_ in curves], ".0f")
    rep.exponent("α_C", "L(C) envelope of ladder learning curves (fixed batch)", a, ci, T5["alpha_C"], "Table 5",
                 f"C = {Ce.min():.2g}–{Ce.max():.2g} PF-days (paper ~1e-8–1e4); one batch of {batch} tokens, not C_min",
                 notes)
    lines = [f"{len(curves)} ladder learning curves, compute C = 6N × tokens in PF-days (1 PF-day = 8.64e19 FLOP); "
             f"covered C = {env['C'].min():.2g}–{env['C'].max():.2g} PF-days. The envelope is the lowest loss any "
             f"run reaches at each compute; it is fitted over C = {c_lo:.2g}–{c_hi:.2g} PF-days, {_window_words(trans)}.", "",
             f"- L(C) = (C_c/C)^α_C on the envelope: α_C = {rt.format_ci(a, ci, '{:.4f}')}, "
             f"C_c = {fmt(rec['params']['C_c'])} PF-days, R² (log) {rec['quality']['r2_log']:.4f} "
             f"(paper: α_C = {T5['alpha_C']} at fixed batch, α_C^min = {T5['alpha_C_min']} adjusted to B ≪ B_crit)."
             f"{notes_text(notes)}"]
    cmax = max(len(curves) - 1, 1)
    left = [dict(x=c, y=l, kind="line", lw=1, cmap_index=i / cmax, label=f"N = {n:.2g}")
            for i, (_, n, c, l) in enumerate(curves)]
    left += [dict(x=env["C"][ok], y=env["loss"][ok], kind="line", color="k", lw=2.5, alpha=0.5, label="envelope"),
             *fit_band(predict, "C", Ce * PF_DAY)]
    for s in left:  # the band/line of the fit are in FLOPs; plot everything in PF-days
        if s.get("color") == "crimson":
            s["x"] = np.asarray(s["x"]) / PF_DAY
    left.append(paper_slope_line(Ce, Le, -T5["alpha_C"], f"paper slope α_C = {T5['alpha_C']}"))
    panels = [dict(title=f"learning curves and envelope: α_C = {a:.3f}", xlabel="C (PF-days)", ylabel="eval loss",
                   ylog=True, series=left)]
    if len(trans) >= 2:
        Ct = np.array([t["C"] for t in trans])
        Nt = np.array([t["N_opt"] for t in trans])
        fr = rt.loglog_fit(Ct, Nt, n_boot=rep.n_boot if len(trans) >= 3 else 0, seed=rep.seed)
        fr_notes = rt.quality_notes(fr["quality"]) + rt.ci_notes("p_N", fr["p"], *fr["ci95"]["p"])
        if len(trans) < 4:
            fr_notes.append(f"only {len(trans)} crossings between rungs: p_N rests on very few points")
        rep.save_fit("frontier_n_opt", dict(law="N_opt = k C^p_N", params=dict(p_N=fr["p"], k=fr["k"]),
                                            ci95=fr["ci95"] | dict(p_N=fr["ci95"]["p"]), quality=fr["quality"],
                                            transitions=trans, notes=fr_notes,
                                            convention=dict(C="PF-days", N_opt="geometric mean of the two rungs "
                                                                               "whose learning curves cross at C")))
        rep.exponent("p_N", "N_opt ∝ C^p_N, rungs' crossings on the envelope", fr["p"], fr["ci95"]["p"], T6["p_N"],
                     "Table 6 / Fig. 14", f"{len(trans)} crossings over C = {Ct.min():.2g}–{Ct.max():.2g} PF-days, "
                     "fixed batch (paper uses C_min and B_crit)", fr_notes)
        g = log_grid(Ct)
        panels.append(dict(title=f"compute-efficient N: p_N = {fr['p']:.2f}", xlabel="C (PF-days)",
                           ylabel="N_opt (non-embedding)", ylog=True, series=[
                               dict(x=Ct, y=Nt, kind="scatter", color="k", label="crossings of neighbouring rungs"),
                               dict(x=g, y=fr["k"] * g ** fr["p"], kind="line", color="crimson", label="fit (ours)"),
                               paper_slope_line(Ct, Nt, T6["p_N"], f"paper slope p_N = {T6['p_N']}")]))
        lines.append(f"- Frontier: the optimal size passes from one rung to the next where their learning curves cross "
                     f"({len(trans)} crossings); N_opt ∝ C^p_N with p_N = {rt.format_ci(fr['p'], fr['ci95']['p'], '{:.3f}')} "
                     f"(paper Fig. 14: p_N = {T6['p_N']}).{notes_text(fr_notes)}")
        rows = ["", "| C (PF-days) | from N | to N | N_opt (geometric mean) |", "|---:|---:|---:|---:|"]
        rows += [f"| {t['C']:.3g} | {t['N_lo']:.3g} | {t['N_hi']:.3g} | {t['N_opt']:.3g} |" for t in trans]
        lines += rows
    else:
        lines.append(f"- Frontier N_opt(C): not measured in this sweep: only {len(trans)} crossing(s) between the "
                     "rungs' learning curves (need >= 2; larger rungs must overtake smaller ones within the runs).")
    lines += _derived_frontier(rep)
    rep.setup["lc_figure"] = rep.figure("lc.png", panels, "L(C) and the compute-efficient frontier: Kaplan Figs. 1, 13, 14")
    return lines + ["", rep.setup["lc_figure"]]


def _derived_frontier(rep: Report) -> list:
    """Kaplan §6.1 / App. B: the compute-efficient frontier implied by this sweep's α_N, α_S and α_B.

    N_opt ∝ C_min^(α_C^min/α_N), B_crit ∝ C_min^(α_C^min/α_B), S_min ∝ C_min^(α_C^min/α_S), with
    α_C^min = 1/(1/α_S + 1/α_B + 1/α_N) (eqs B.7-B.10). The interval takes every combination of the three
    exponents' 95 % bounds (their extremes bound the monotone map), so it is conservative. α_N and α_S come
    from the converged L(N) section (scaling/report/laws.py section_ln_converged, which runs first).
    """
    conv = rep.setup.get("ln_converged") or {}
    bc = bcrit_record(rep.root) or {}
    a_n, a_s, a_b = conv.get("alpha_N"), getattr(conv.get("fit"), "alpha_s", None), bc.get("alpha_B")
    if not all(rt.positive(v) for v in (a_n, a_s, a_b)):
        missing = [k for k, v in (("α_N (converged L(N))", a_n), ("α_S (learning curves)", a_s),
                                  ("α_B (noise/bcrit.json)", a_b)) if not rt.positive(v)]
        return [f"- Frontier from the fitted exponents (Kaplan §6.1): not derived: {', '.join(missing)} not measured."]
    central = laws.frontier_exponents(alpha_N=a_n, alpha_S=a_s, alpha_B=a_b)
    bounds = [conv.get("alpha_N_ci") or [a_n, a_n], conv.get("alpha_s_ci") or [a_s, a_s],
              (bc.get("ci95") or {}).get("alpha_B") or [a_b, a_b]]
    combos = [laws.frontier_exponents(alpha_N=x, alpha_S=y, alpha_B=z) for x in bounds[0] for y in bounds[1]
              for z in bounds[2] if min(x, y, z) > 0]
    ci = {k: [min(c[k] for c in combos), max(c[k] for c in combos)] for k in central} if combos else {}
    notes = rt.ci_notes("p_N", central["p_N"], *ci.get("p_N", [float("nan")] * 2))
    rep.save_fit("frontier_derived", dict(law="Kaplan eqs B.7-B.10 from measured exponents", params=central,
                                          ci95=ci, inputs=dict(alpha_N=a_n, alpha_S=a_s, alpha_B=a_b),
                                          notes=notes, convention=dict(C="C_min (B << B_crit)")))
    rep.exponent("p_N (derived)", "N_opt ∝ C_min^p_N from α_N, α_S, α_B (eqs B.7-B.10)", central["p_N"],
                 ci.get("p_N"), T6["p_N"], "Table 6", "small-model exponents: a shallow α_N makes p_N large", notes,
                 checks="p_N")
    rep.exponent("α_C^min (derived)", "1/(1/α_S + 1/α_B + 1/α_N)", central["alpha_C_min"], ci.get("alpha_C_min"),
                 T5["alpha_C_min"], "Table 5", "from this sweep's exponents", checks="α_C^min")
    fmt_ci = lambda k: rt.format_ci(central[k], ci.get(k), "{:.3f}")
    return [f"- **Frontier from the fitted exponents** (Kaplan §6.1, eqs B.7-B.10; α_N = {a_n:.4f}, α_S = {a_s:.3f}, "
            f"α_B = {a_b:.3f} from this sweep): α_C^min = {fmt_ci('alpha_C_min')}, N_opt ∝ C_min^{fmt_ci('p_N')}, "
            f"B_crit ∝ C_min^{fmt_ci('p_B')}, S_min ∝ C_min^{fmt_ci('p_S')} (paper Table 6: p_N = {T6['p_N']}, "
            f"p_B = {T6['p_B']}, p_S = {T6['p_S']}).{notes_text(notes)}"]


def section_lcmin(rep: Report) -> list:
    """L(C_min) (Table 5, Fig. 13 adjusted): envelope of batch-scan curves against C_min of eq. 5.5."""
    rows = smin_rows(rep)
    runs, runs_n = {}, {}
    for r in rows:
        if rt.positive(r.get("C_min_pf_days")):
            runs.setdefault(str(r["run"]), []).append((float(r["C_min_pf_days"]), float(r["loss"])))
            runs_n[str(r["run"])] = float(r.get("n_params_nonembedding") or 0)
    runs_n = {k: runs_n[k] for k, v in runs.items() if len(v) >= 2}
    curves = [np.array(sorted(runs[k])).T for k in runs_n]
    need(len(curves) >= 2, f"noise/smin_cmin.csv has {len(curves)} runs with >= 2 C_min points (need >= 2)")
    env = rt.envelope([(c, l) for c, l in curves], n_grid=50)
    sizes = [runs_n[k] for k in runs_n]
    trans = rt.frontier_transitions([(c, l) for c, l in curves], sizes) if len(set(sizes)) == len(sizes) else []
    ok, c_lo, c_hi = _frontier_window(env, trans)
    Ce, Le = env["C"][ok], env["loss"][ok]
    rec, predict, notes = rep.power_fit("kaplan_c_min", "kaplan_c", Ce * PF_DAY, Le,
                                        "envelope of batch_scan curves vs C_min (eq 5.5), C in FLOPs")
    notes = notes + ["envelope grid points are not independent: the CI is optimistic"]
    a, ci = rec["params"]["alpha_C"], rec["ci95"].get("alpha_C")
    rep.exponent("α_C^min", "L(C_min), envelope of batch-scan curves", a, ci, T5["alpha_C_min"], "Table 5",
                 f"C_min = {Ce.min():.2g}–{Ce.max():.2g} PF-days, {len(curves)} batch-scan runs", notes)
    series = [dict(x=c, y=l, kind="line", lw=1, cmap_index=i / max(len(curves) - 1, 1))
              for i, (c, l) in enumerate(curves)]
    series += [dict(x=Ce, y=Le, kind="line", color="k", lw=2.5, alpha=0.5, label="envelope")]
    g = log_grid(Ce)
    series += [dict(x=g, y=predict({"C": g * PF_DAY})[0], kind="line", color="crimson", label="fit (ours)"),
               paper_slope_line(Ce, Le, -T5["alpha_C_min"], f"paper slope α_C^min = {T5['alpha_C_min']}")]
    fig = rep.figure("lcmin.png", [dict(title=f"L(C_min): α_C^min = {a:.3f}", xlabel="C_min (PF-days)",
                                        ylabel="loss", ylog=True, series=series)], "L(C_min): Kaplan Table 5 / eq. 5.5")
    return [f"Envelope fitted over C_min = {c_lo:.2g}–{c_hi:.2g} PF-days, {_window_words(trans)}.", "",
            f"α_C^min = {rt.format_ci(a, ci, '{:.4f}')}, C_c^min = {fmt(rec['params']['C_c'])} PF-days, R² (log) "
            f"{rec['quality']['r2_log']:.4f} (paper: {T5['alpha_C_min']}, {T5['C_c_min']:.1e} PF-days)."
            f"{notes_text(notes)}", "", fig]


def section_sample_efficiency(rep: Report) -> list:
    """Sample efficiency (Fig. 2): learning curves vs tokens, tokens to reach a target loss vs N."""
    curves = []
    for r in sorted(rep.sweep.group("ladder"), key=lambda r: r.get("n_params_nonembedding") or 0):
        tok, loss = rep.sweep.curve(r)
        if len(tok) >= 2 and rt.positive(r.get("n_params_nonembedding")):
            curves.append((r, float(r["n_params_nonembedding"]), tok, loss))
    need(len(curves) >= 2, f"{len(curves)} ladder runs have learning curves (need >= 2)")
    # 5% above the lowest loss every run reaches: the smallest model gets there while still improving,
    # not only at the end of its run (where tokens-to-target would measure the run length, not efficiency).
    target = 1.05 * max(float(np.min(l)) for *_, l in curves)
    reach = [(n, rt.first_reach(tok, loss, target)) for _, n, tok, loss in curves]
    reach = [(n, d) for n, d in reach if d is not None]
    cm = max(len(curves) - 1, 1)
    left = [dict(x=tok, y=l, kind="line", lw=1, cmap_index=i / cm, label=f"N = {n:.2g}")
            for i, (_, n, tok, l) in enumerate(curves)]
    all_tok = np.concatenate([c[2] for c in curves])
    left.append(dict(x=[all_tok.min(), all_tok.max()], y=[target, target], kind="line", ls=":", color="k",
                     label=f"target loss {target:.3f}"))
    panels = [dict(title="learning curves", xlabel="tokens processed", ylabel="eval loss", ylog=True, series=left)]
    lines = [f"Target loss {target:.3f} nats/token (5% above the lowest loss every ladder run reaches)."]
    Nr = np.array([n for n, _ in reach])
    Dr = np.array([d for _, d in reach])
    right = [dict(x=Nr, y=Dr, kind="scatter", color="k", label="tokens to reach the target")]
    if len(reach) >= 3 and np.ptp(Nr) > 0 and np.ptp(Dr) > 0:
        fit = rt.loglog_fit(Nr, Dr, n_boot=rep.n_boot, seed=rep.seed)
        notes = rt.quality_notes(fit["quality"]) + rt.ci_notes("exponent", fit["p"], *fit["ci95"]["p"])
        rep.save_fit("sample_efficiency", dict(law="tokens_to_target = k N^p", params=dict(p=fit["p"], k=fit["k"]),
                                               ci95=fit["ci95"], target_loss=target, quality=fit["quality"],
                                               points=[dict(N=n, tokens=d) for n, d in reach], notes=notes))
        g = log_grid(Nr)
        right.append(dict(x=g, y=fit["k"] * g ** fit["p"], kind="line", color="crimson", label=f"∝ N^{fit['p']:.2f}"))
        verdict = ("larger models need fewer tokens (more sample-efficient), as in the paper" if fit["p"] < 0 else
                   "larger models do not need fewer tokens here, unlike the paper")
        lines.append(f"Tokens to reach it scale as N^{rt.format_ci(fit['p'], fit['ci95']['p'], '{:.2f}')} over N = "
                     f"{value_range(Nr)}: {verdict}.{notes_text(notes)}")
    else:
        lines.append(f"Only {len(reach)} runs reach a common target with distinct N and token counts: no fit.")
    panels.append(dict(title="tokens to reach the target loss", xlabel="N (non-embedding)", ylabel="tokens",
                       ylog=True, series=right))
    return lines + ["", rep.figure("sample_efficiency.png", panels, "Sample efficiency: Kaplan Fig. 2")]
