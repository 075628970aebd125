"""Sections from the batch scan and the noise analysis (noise/bcrit.json, noise/smin_cmin.csv): L(N, S_min)
(Fig. 11, eq 1.6) and B_crit(L) with B_simple (Fig. 10).
"""
from __future__ import annotations

import json
import os

import numpy as np

from scaling.analysis.io import InputError
from scaling.analysis import api, bcrit, laws, learning_curves
from scaling.analysis import report_tables as rt
from scaling.core import formulas
from scaling.report.document import Report, T3, T5, fmt, log_grid, notes_text, paper_slope_line, param_ci_notes, value_range
from scaling.report.loader import NotMeasured, need


def batch_scan_words(rep: Report) -> str:
    if not rep.sweep.group("batch_scan", finished=False):
        return "and runs.csv has no `batch_scan` group to make it from"
    return "run `python -m experiments.noise_scale --root=...` on this sweep's `batch_scan` group"


MIN_NS_SIZES_FOR_ALPHA_N = 3  # model sizes eq 1.6 needs before its α_N is a measurement
MAX_NS_POINTS = 150  # the eq. 1.6 bootstrap (vmapped L-BFGS) grows with points; thinning keeps each run's S range


def smin_rows(rep: Report):
    path = os.path.join(rep.root, "noise", "smin_cmin.csv")
    need(os.path.exists(path), f"noise/smin_cmin.csv is absent ({batch_scan_words(rep)})")
    rows = [r for r in rt.read_rows(path) if rt.positive(r.get("loss"))]
    need(len(rows) > 0, f"{path} has no rows with a loss")
    return rows


def untuned_runs(rep: Report) -> set:
    """Runs of an LR grid (noise/bcrit.json `lr_grid`) other than each (size, batch)'s fastest: eq. 1.6 describes
    training at a tuned LR, and a run at a mistuned one is slower at every loss, so its S_min is not S_min."""
    path = os.path.join(rep.root, "noise", "bcrit.json")
    if not os.path.exists(path):
        return set()
    with open(path) as f:
        grid = json.load(f).get("lr_grid") or []
    return {name for g in grid if g.get("fastest_run") for name in g.get("runs", []) if name != g["fastest_run"]}


def section_lns(rep: Report) -> list:
    """L(N, S_min) (Fig. 11) with eq. 1.6 from noise/smin_cmin.csv (with an LR grid: each batch's tuned run)."""
    dropped = untuned_runs(rep)
    rows = [r for r in smin_rows(rep) if rt.positive(r.get("S_min")) and rt.positive(r.get("n_params_nonembedding"))
            and r.get("run") not in dropped]
    n_all = len(rows)
    rows = rt.thin_per_run(rows, MAX_NS_POINTS, key="S_min")
    Ns = sorted({float(r["n_params_nonembedding"]) for r in rows})
    need(len(rows) >= 6 and len(Ns) >= 2, f"noise/smin_cmin.csv has {len(rows)} usable points over {len(Ns)} model "
                                           "sizes (eq. 1.6 has 4 parameters: need >= 6 points, >= 2 sizes)")
    N = np.array([float(r["n_params_nonembedding"]) for r in rows])
    S = np.array([float(r["S_min"]) for r in rows])
    L = np.array([float(r["loss"]) for r in rows])
    if len(Ns) < MIN_NS_SIZES_FOR_ALPHA_N:
        return _lns_per_size(rep, rows, N, S, L, Ns, n_all, dropped)
    fit = api.fit_law("kaplan_ns", dict(N=N, S=S, loss=L), n_boot=rep.n_boot, seed=rep.seed)
    p, ci = fit.record["params"], fit.record["ci95"]
    pred = laws.loss_of_ns(N, S, p["N_c"], p["S_c"], p["alpha_N"], p["alpha_S"])
    q = rt.fit_quality(S, L, pred)
    notes = rt.quality_notes(q)
    notes_n, notes_s = param_ci_notes("α_N", p, ci, "alpha_N"), param_ci_notes("α_S", p, ci, "alpha_S")
    rep.save_fit("kaplan_ns", dict(fit.record, quality=q, notes=notes + notes_n + notes_s))
    rng = _lns_range(N, S, len(rows), n_all, dropped)
    # With >= MIN_NS_SIZES_FOR_ALPHA_N sizes the N term's exponent is a measurement (fewer: _lns_per_size).
    rep.exponent("α_N (eq 1.6, batch scan)", "L(N, S_min) fit, batch-scan curves", p["alpha_N"], ci.get("alpha_N"),
                 T3["alpha_N"], "Table 3", rng, notes + notes_n, checks="α_N")
    rep.exponent("α_S (batch scan)", "L(N, S_min) fit, batch-scan curves", p["alpha_S"], ci.get("alpha_S"), T3["alpha_S"], "Table 3",
                 rng + " (paper S_min up to ~1e5)", notes + notes_s, checks="α_S")
    fig = _lns_figure(rep, N, S, L, Ns, lambda n, g: laws.loss_of_ns(n, g, p["N_c"], p["S_c"], p["alpha_N"],
                                                                     p["alpha_S"]),
                      f"L(N, S_min): α_N = {p['alpha_N']:.3f}, α_S = {p['alpha_S']:.2f}")
    return [rng + ".", "",
            f"Eq. 1.6: α_N = {rt.format_ci(p['alpha_N'], ci.get('alpha_N'), '{:.4f}')}, "
            f"α_S = {rt.format_ci(p['alpha_S'], ci.get('alpha_S'), '{:.3f}')}, N_c = {fmt(p['N_c'])}, "
            f"S_c = {fmt(p['S_c'])}; R² (log) {q['r2_log']:.4f} (paper Table 3: α_N = {T3['alpha_N']}, "
            f"α_S = {T3['alpha_S']}, S_c = {T3['S_c']:.1e}).{notes_text(notes + notes_n + notes_s)}",
            "", fig]


def _lns_range(N, S, n_rows: int, n_all: int, dropped: set) -> str:
    return f"N = {value_range(N)}, S_min = {value_range(S)} steps, {n_rows} points" + (
        f" (thinned evenly within each run from {n_all})" if n_all > n_rows else "") + (
        f"; LR grid: each batch's fastest LR only ({len(dropped)} runs at other LRs left out)" if dropped else "")


def _lns_figure(rep: Report, N, S, L, Ns, curve, title: str) -> str:
    """Fig. 11: each size's points and its fitted curve ``curve(n, S_min grid)``."""
    series = []
    for i, n in enumerate(Ns):
        m = N == n
        ci_ = i / max(len(Ns) - 1, 1)
        series.append(dict(x=S[m], y=L[m], kind="scatter", size=8, cmap_index=ci_, label=f"N = {n:.2g}"))
        g = log_grid(S[m])
        series.append(dict(x=g, y=curve(n, g), kind="line", cmap_index=ci_))
    return rep.figure("lns.png", [dict(title=title, xlabel="S_min (steps, eq. 5.4)", ylabel="loss", ylog=True,
                                       series=series)], "L(N, S_min): Kaplan Fig. 11, eq. 1.6")


def _lns_per_size(rep: Report, rows, N, S, L, Ns, n_all: int, dropped: set) -> list:
    """Eq. 1.6 on a scan of fewer than MIN_NS_SIZES_FOR_ALPHA_N sizes: the N term as one free constant per size,
    L(S_min) = L_N + (S_c/S_min)^α_S (what eq. 1.6 is at fixed N; learning_curves.fit_separable). With two sizes
    (N_c/N)^α_N has exactly two values to match, so it is this form with α_N = ln(L_N1/L_N2)/ln(N2/N1), and when
    the larger size's N term comes out near 0 that α_N runs off to infinity and the 4-parameter fit fails
    (measured on the quick scan with a 12-step warmup: α_N → 8.3). α_S's interval: bootstrap over whole runs,
    resampled within each size, as for B_crit(L)."""
    runs = {}
    for r, n, s_, l_ in zip(rows, N, S, L):
        runs.setdefault(r["run"], (n, []))[1].append((s_, l_))

    def curves_of(names):
        by_size = {}
        for name in names:
            n, pts = runs[name]
            by_size.setdefault(n, []).extend(pts)
        return [learning_curves.Curve(f"N={n:.6g}", n, np.array([p[0] for p in pts]), np.array([p[1] for p in pts]), 1.0)
                for n, pts in sorted(by_size.items())]

    try:
        sep = learning_curves.fit_separable(curves_of(list(runs)), start_fraction=0.0)
    except InputError as e:
        raise NotMeasured(f"eq. 1.6 per size is not possible on the scan's curves: {e}") from e
    if sep.at_search_bound:
        raise NotMeasured(
            f"eq. 1.6 is not identified on the scan's curves ({len(Ns)} sizes, S_min = {value_range(S)} steps): "
            f"fitted with the N term free per size, the optimum runs to the edge of the search (S_c = {fmt(sep.s_c)} "
            f"steps, α_S = {sep.alpha_s:.3f}), i.e. over these steps the curves are straight in log-log and the "
            "step term cannot be told from the constant; the ladder's learning curves measure α_S (the exponent "
            "table's α_S row)")
    gen = np.random.default_rng(rep.seed)
    by_size = {}
    for name, (n, _) in runs.items():
        by_size.setdefault(n, []).append(name)
    # One run of a size resamples to itself: with any such size the bootstrap measures nothing (no interval).
    n_boot = rep.n_boot if min(len(v) for v in by_size.values()) >= 2 else 0
    boot = []
    for _ in range(n_boot):
        names = [str(x) for n in sorted(by_size) for x in gen.choice(by_size[n], len(by_size[n]), replace=True)]
        # a resampled size keeps duplicate runs: their points enter twice, as the bootstrap means
        try:
            b = learning_curves.fit_separable(curves_of(names), start_fraction=0.0)
        except InputError:
            continue
        if not b.at_search_bound:
            boot.append(b.alpha_s)
    ci = ([float(v) for v in np.percentile(boot, [2.5, 97.5])]
          if n_boot and len(boot) >= max(10, n_boot // 2) else None)
    l_n = {float(n): sep.l_inf[f"N={n:.6g}"] for n in Ns}
    pred = np.array([l_n[float(n)] for n in N]) + sep.step_term(S)
    q = rt.fit_quality(S, L, pred)
    notes = rt.quality_notes(q)
    notes_s = param_ci_notes("α_S", {"alpha_S": sep.alpha_s}, {"alpha_S": ci} if ci else {}, "alpha_S")
    rep.save_fit("kaplan_ns", dict(sep.record(), form="L(S_min) = L_N + (S_c/S_min)^alpha_S per model size "
                                   "(eq 1.6 at fixed N; too few sizes for alpha_N)",
                                   ci95={"alpha_S": ci}, quality=q, notes=notes + notes_s,
                                   n_boot=len(boot), sizes=[float(n) for n in Ns]))
    rng = _lns_range(N, S, len(rows), n_all, dropped)
    rep.exponent("α_S (batch scan)", "L(S_min) = L_N + (S_c/S_min)^α_S per size, batch-scan curves", sep.alpha_s, ci,
                 T3["alpha_S"], "Table 3", rng + " (paper S_min up to ~1e5)", notes + notes_s, checks="α_S")
    fig = _lns_figure(rep, N, S, L, Ns, lambda n, g: l_n[float(n)] + sep.step_term(g),
                      f"L(N, S_min) per size: α_S = {sep.alpha_s:.2f}")
    sizes = ", ".join(f"L_N = {l_n[float(n)]:.3f} at N = {n:.3g}" for n in Ns)
    return [rng + ".", "",
            f"Eq. 1.6 with the N term free per size ({len(Ns)} sizes: too few for α_N, which the ladder's rows "
            f"measure): α_S = {rt.format_ci(sep.alpha_s, ci, '{:.3f}')} (bootstrap over runs), S_c = {fmt(sep.s_c)}, "
            f"{sizes}; R² (log) {q['r2_log']:.4f} (paper Table 3: α_S = {T3['alpha_S']}, S_c = {T3['S_c']:.1e})."
            f"{notes_text(notes + notes_s)}", "", fig]


def _bcrit_shape_text(shape: dict, lr_grid: list) -> str:
    """Words for how B_crit(L) departs from one power law (scaling.analysis.bcrit.bcrit_shape) and, when the scan
    has an LR grid, which LR was the fastest (noise/bcrit.json `lr_grid`)."""
    parts = []
    if shape.get("collapse") is not None:
        if shape["collapse"] <= bcrit.COLLAPSE_TOLERANCE:
            parts.append(f"B_crit depends on L alone, as in the paper: at equal loss the model sizes' B_crit differ by "
                         f"a median {shape['collapse']:.0%}")
        else:
            parts.append(f"B_crit does not depend on L alone: at equal loss the model sizes' B_crit differ by a median "
                         f"{shape['collapse']:.0%} (Kaplan §5.1 finds no dependence on N), so one B_crit(L) for every "
                         "size is a compromise")
    hi, lo = shape.get("alpha_B_high_L"), shape.get("alpha_B_low_L")
    if hi and lo:
        text = f"fitted separately, α_B is {hi:.3f} above L = {shape['loss_split']:.3g} and {lo:.3f} below"
        if lo < 0.75 * hi:
            text += ": B_crit steepens as the loss falls, so one power law does not span the range"
            if not lr_grid:
                text += (" (every batch size trains at one LR here; gin/sweeps/kaplan_cpu_lr_grid.gin scans the LR "
                         "per batch to test whether that causes it)")
        parts.append(text)
    if shape.get("r2_vs_tokens") is not None:
        better = "better" if shape["r2_vs_tokens"] > shape["r2_vs_loss"] else "worse"
        parts.append(f"as a power law of the tokens a target needs, B_crit ∝ E_min^{shape['tokens_exponent']:.2f} "
                     f"fits {better} (R² {shape['r2_vs_tokens']:.3f}, against {shape['r2_vs_loss']:.3f} in L; Zhang "
                     "et al. 2024 and Bergsma et al. 2025 find B_crit follows the data seen)")
    if lr_grid:
        won = [(g["learning_rates"][int(np.argmax(g["fastest_at_targets"]))], g["learning_rates"]) for g in lr_grid]
        edge = sum(1 for lr, grid in won if lr in (max(grid), min(grid)))
        fastest = sorted({lr for lr, _ in won})
        parts.append(f"S(B, L) is the fewest steps over an LR grid at each of {len(lr_grid)} (size, batch) pairs "
                     f"(fastest LRs {', '.join(f'{x:.3g}' for x in fastest)}"
                     + (f"; at {edge} of them the fastest LR is the grid's edge, so the grid does not bracket it)"
                        if edge else ", all inside the grid)"))
    return "; ".join(parts)


def _warmup_text(warmup: list, threshold: float) -> str:
    """Words for how far the runs' LR warmup moves B_crit (noise/bcrit.json `warmup`, batch_scan.warmup_check),
    when it moves it by more than ``threshold`` at a model's median or highest target; '' otherwise."""
    moved = [w for w in warmup or [] if any(r is not None and abs(r - 1.0) > threshold
                                          for r in (w.get("bcrit_ratio_median"), w.get("bcrit_ratio_highest_target")))]
    if not moved:
        return ""
    steps = sorted({int(v) for w in moved for v in (w.get("warmup_steps") or {}).values()})
    span = f"{steps[-1]}" if len(steps) == 1 else f"{steps[-1]} to {steps[0]}"
    ratios = "; ".join(f"{w['model']}: ×{w['bcrit_ratio_highest_target']:.2f} at L = {w['highest_target']:.3g}, "
                       f"×{w['bcrit_ratio_median']:.2f} at the median target" for w in moved
                       if w.get("bcrit_ratio_highest_target") is not None and w.get("bcrit_ratio_median") is not None)
    inflated = all((w.get("bcrit_ratio_highest_target") or 1.0) < 1.0 for w in moved)
    why = ("the warmup is longer at the small batches (fixed in tokens), so it inflates B_crit, most at high loss, "
           "and flattens B_crit(L) there" if inflated else
           "the warmup adds to every batch's steps (it reads as S_min), so it lowers B_crit, most at high loss")
    return (f"the runs' LR warmup ({span} steps) shapes S: counted in steps at the peak LR (a linear warmup of W steps "
            f"as (W−1)/2 lost), B_crit moves ({ratios}); {why}; one warmup short against the steps to the highest "
            "target, at every batch size, avoids it")


def section_bcrit(rep: Report) -> list:
    """B_crit(L) with B_simple (Fig. 10) from noise/bcrit.json."""
    path = os.path.join(rep.root, "noise", "bcrit.json")
    need(os.path.exists(path), f"noise/bcrit.json is absent ({batch_scan_words(rep)})")
    with open(path) as f:
        b = json.load(f)
    per = [t for t in b.get("per_target", []) if rt.positive(t.get("B_crit")) and rt.positive(t.get("target_loss"))]
    need(rt.positive(b.get("B_star")) and rt.positive(b.get("alpha_B")), f"{path} has no fitted B_star/alpha_B")
    ci = b.get("ci95", {})
    Lt = np.array([t["target_loss"] for t in per])
    Bc = np.array([t["B_crit"] for t in per])
    notes = []
    q = None
    if len(per) >= 2:
        q = rt.fit_quality(Lt, Bc, formulas.critical_batch(Lt, b["B_star"], b["alpha_B"]))
        notes = rt.quality_notes(q)
    notes_a = param_ci_notes("α_B", b, ci, "alpha_B")
    unbracketed = sum(1 for t in per if not t.get("bracketed", True))
    if unbracketed:
        notes.append(f"{unbracketed} of {len(per)} targets are not bracketed by the scanned batches (bounds only)")
    models = b.get("models") or []
    rng = f"{b.get('n_runs', '?')} batch-scan runs, models {', '.join(map(str, models)) or '?'}; losses {value_range(Lt)}"
    shape = "; ".join(t for t in (_bcrit_shape_text(bcrit.bcrit_shape(per), b.get("lr_grid") or []),
                                  _warmup_text(b.get("warmup"), bcrit.WARMUP_RATIO_NOTE)) if t)
    rep.exponent("α_B", "B_crit(L) = B*/L^(1/α_B), batch scan", b["alpha_B"], ci.get("alpha_B"), T5["alpha_B"],
                 "Table 5 / eq 5.3", rng + (f"; {shape}" if shape else ""), notes + notes_a)
    pivot = b.get("pivot") or {}
    b_star_what = "loss scale depends on vocabulary: B* is not comparable across tokenizers"
    if rt.positive(pivot.get("loss")) and rt.positive(pivot.get("B_crit")):
        rep.scale_constant("B*", "B_crit constant (tokens)", b["B_star"], ci.get("B_star"), T5["B_star"], "Table 5",
                           b_star_what, (f"B_crit(L = {pivot['loss']:.3g}) in tokens", pivot["B_crit"],
                                         pivot.get("ci95")))
    else:   # a bcrit.json written before the pivot was recorded
        rep.exponent("B*", "B_crit constant (tokens)", b["B_star"], ci.get("B_star"), T5["B_star"], "Table 5",
                     b_star_what + "; no B_crit at the targets in bcrit.json (rerun experiments.noise_scale)", [])
    series = []
    if per:
        lo = np.array([t.get("B_crit_lo") if rt.positive(t.get("B_crit_lo")) else t["B_crit"] for t in per])
        hi = np.array([t.get("B_crit_hi") if rt.positive(t.get("B_crit_hi")) else t["B_crit"] for t in per])
        series.append(dict(x=Lt, y=Bc, yerr=np.stack([Bc - lo, hi - Bc]), kind="errorbar", color="k",
                           label="B_crit per target (S = S_min + E_min/B)"))
        g = np.exp(np.linspace(np.log(Lt.min()), np.log(Lt.max()), 100))
    else:
        g = np.linspace(2, 6, 100)
    series.append(dict(x=g, y=formulas.critical_batch(g, b["B_star"], b["alpha_B"]), kind="line", color="crimson",
                       label=f"ours: B* = {b['B_star']:.2g}, α_B = {b['alpha_B']:.3f}"))
    bs = [x for x in b.get("b_simple_vs_loss", []) if rt.positive(x.get("b_simple")) and rt.positive(x.get("loss"))]
    if bs:
        series.append(dict(x=[x["loss"] for x in bs], y=[x["b_simple"] for x in bs], kind="scatter", marker="^",
                           size=10, color="tab:blue", label="B_simple (gradient noise scale)"))
    if per:
        series.append(paper_slope_line(Lt, Bc, -1 / T5["alpha_B"], f"paper slope 1/α_B = {1 / T5['alpha_B']:.2f}"))
    fig = rep.figure("bcrit.png", [dict(title="critical batch vs loss", xlabel="loss (nats/token)",
                                        ylabel="batch (tokens)", ylog=True, series=series)],
                     "B_crit(L) and B_simple: Kaplan Fig. 10")
    lines = [rng + ".", "",
             f"B_crit(L) = B*/L^(1/α_B): α_B = {rt.format_ci(b['alpha_B'], ci.get('alpha_B'), '{:.3f}')}, "
             f"B* = {rt.format_ci(b['B_star'], ci.get('B_star'), '{:.3g}')} tokens"
             + (f", R² (log) {q['r2_log']:.3f}" if q else "")
             + f" (paper: α_B = {T5['alpha_B']}, B* = {T5['B_star']:.1e} tokens).{notes_text(notes + notes_a)}"
             + (f" Shape: {shape}." if shape else "")]
    if bs:
        ratio = np.median([x["b_simple"] / formulas.critical_batch(x["loss"], b["B_star"], b["alpha_B"]) for x in bs])
        lines.append(f"B_simple at the same loss is a median {ratio:.2g}× our B_crit fit ({len(bs)} points; the paper "
                     "finds B_simple ≈ B_crit within a small factor).")
    return lines + ["", fig]
