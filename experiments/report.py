"""The sweep report: every Kaplan et al. 2020 figure this sweep measured, our constants beside the paper's.

    python -m experiments.report --root=DIR [--bootstrap=200] [--seed=0]

Reads DIR/runs.csv, the run directories DIR/runs/<name>/ (summary.json, eval.jsonl), DIR/noise/
(bcrit.json, smin_cmin.csv) and DIR/prediction.json, and writes DIR/report.md, DIR/figures/*.png and
DIR/fits/<fit>.json (atomically; a rerun replaces them and removes figures/fits it no longer makes).

Honesty rules, applied by fixed thresholds (scaling/analysis/report_tables.py): only measured numbers; the
N/D/C range covered is stated; a fit with R² < 0.95 in log space, a residual trend or a bend, or a 95% CI
wider than 3× (or 100% of the value) is called so in words beside the number; a section whose inputs are
missing says "not measured in this sweep: <why>" instead of a figure.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import sys
import time
import traceback

import numpy as np
from absl import app, flags

from scaling import fileio
from scaling.analysis import api, fitting, laws, learning_curves, plots
from scaling.analysis import report_tables as rt
from scaling.analysis.io import InputError

ROOT = flags.DEFINE_string("root", None, "Sweep root (runs.csv, runs/, noise/, prediction.json).")
BOOTSTRAP = flags.DEFINE_integer("bootstrap", 200, "Bootstrap replicates for every 95% interval.")
SEED = flags.DEFINE_integer("seed", 0, "Bootstrap seed.")

PF_DAY = laws.PF_DAY_FLOPS
T5, T2, T3, T6 = laws.KAPLAN_TABLE5, laws.KAPLAN_TABLE2, laws.KAPLAN_TABLE3, laws.KAPLAN_TABLE6
PAPER_GREY = "0.55"


class NotMeasured(Exception):
    """A section's inputs are absent from this sweep (the message says which)."""


# --- the sweep on disk ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Sweep:
    root: str
    rows: list                      # runs.csv rows (numbers parsed), summary.json merged in where missing
    summaries: dict                 # run -> summary.json
    evals: dict                     # run -> eval.jsonl lines

    @classmethod
    def load(cls, root: str) -> "Sweep":
        path = os.path.join(root, "runs.csv")
        if not os.path.exists(path):
            raise InputError(f"{path} does not exist; run `python -m experiments.sweep --root={root}` first")
        rows = rt.read_rows(path)
        if rows and all("group" not in r for r in rows):
            for r in rows:  # a runs.csv from before sweep groups (experiments.reproduce's ladder): all ladder
                r["group"] = "ladder"
        summaries, evals = {}, {}
        for r in rows:
            name = str(r.get("run"))
            workdir = r.get("workdir") or os.path.join("runs", name)
            workdir = workdir if os.path.isabs(str(workdir)) else os.path.join(root, str(workdir))
            s_path = os.path.join(workdir, "summary.json")
            if os.path.exists(s_path):
                try:
                    with open(s_path) as f:
                        summaries[name] = json.load(f)
                except json.JSONDecodeError:
                    summaries[name] = {}
            evals[name] = fileio.read_jsonl(os.path.join(workdir, "eval.jsonl"))
            s = summaries.get(name, {})
            for k, v in s.items():  # runs.csv wins; the summary fills what it lacks
                if r.get(k) is None and isinstance(v, (int, float)) and not isinstance(v, bool):
                    r[k] = float(v)
            if r.get("final_eval_loss_wiki_mini") is None:
                extra = (s.get("final_extra_eval") or {}).get("eval_loss_wiki_mini")
                if isinstance(extra, (int, float)):
                    r["final_eval_loss_wiki_mini"] = float(extra)
            if not r.get("status"):
                r["status"] = s.get("status") or ("finished" if s else "pending")
        return cls(root, rows, summaries, evals)

    def group(self, name: str, finished: bool = True) -> list:
        return [r for r in self.rows if r.get("group") == name and (not finished or r.get("status") == "finished")]

    def finished(self) -> list:
        return [r for r in self.rows if r.get("status") == "finished"]

    def curve(self, row, x: str = "tokens", y: str = "eval_loss"):
        """(x, y) arrays of a run's eval.jsonl (positive x only), sorted by step."""
        lines = [e for e in self.evals.get(str(row["run"]), []) if rt.positive(e.get(x)) and rt.positive(e.get(y))]
        lines.sort(key=lambda e: e.get("step", 0))
        return np.array([e[x] for e in lines], dtype=float), np.array([e[y] for e in lines], dtype=float)


def _loss(row) -> float | None:
    """The loss a run is scored by: best eval loss (early stopping), else the final eval loss."""
    for k in ("best_eval_loss", "final_eval_loss"):
        if rt.positive(row.get(k)):
            return float(row[k])
    return None


def _scored(rows, x_key) -> tuple[list, np.ndarray, np.ndarray]:
    keep = [r for r in rows if rt.positive(r.get(x_key)) and _loss(r) is not None]
    return keep, np.array([float(r[x_key]) for r in keep]), np.array([_loss(r) for r in keep])


def _need(cond: bool, why: str):
    if not cond:
        raise NotMeasured(why)


def _fmt(v, spec=".3g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, spec)


def _range(values, spec=".3g") -> str:
    v = [float(x) for x in values if rt.positive(x)]
    if not v:
        return "–"
    lo, hi = format(min(v), spec), format(max(v), spec)
    return lo if lo == hi else f"{lo}–{hi}"


def _grid(x, n=100):
    x = np.asarray(x, dtype=float)
    return np.exp(np.linspace(np.log(x.min()), np.log(x.max()), n))


def _paper_slope_line(x, y, exponent, label):
    """The paper's exponent drawn through our data's geometric centre (absolute values differ: other data)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    g = _grid(x)
    x0, y0 = np.exp(np.mean(np.log(x))), np.exp(np.mean(np.log(y)))
    return dict(x=g, y=y0 * (g / x0) ** exponent, kind="line", ls="--", color=PAPER_GREY, label=label)


# --- the report being built -------------------------------------------------------------------------------
@dataclasses.dataclass
class Report:
    sweep: Sweep
    n_boot: int
    seed: int
    sections: list = dataclasses.field(default_factory=list)     # (title, [markdown lines])
    exponents: list = dataclasses.field(default_factory=list)    # rows of the exponent table
    figures: list = dataclasses.field(default_factory=list)      # file names written this run
    fits: list = dataclasses.field(default_factory=list)
    setup: dict = dataclasses.field(default_factory=dict)

    @property
    def root(self):
        return self.sweep.root

    def figure(self, name: str, panels: list, title: str | None = None) -> str:
        """Draw to a temporary file, then rename: a crash never leaves a half-written PNG."""
        path = os.path.join(self.root, "figures", name)
        tmp = os.path.join(self.root, "figures", f".tmp{os.getpid()}_{name}")
        plots.plot_panels(tmp, panels, title)
        os.replace(tmp, path)
        self.figures.append(name)
        return f"![{name}](figures/{name})"

    def save_fit(self, name: str, record: dict) -> str:
        fileio.write_json_atomic(os.path.join(self.root, "fits", f"{name}.json"), record)
        self.fits.append(name)
        return f"fits/{name}.json"

    def exponent(self, symbol, what, value, ci, paper, paper_src, differs, notes=()):
        self.exponents.append(dict(symbol=symbol, what=what, value=value, ci=ci, paper=paper, paper_src=paper_src,
                                   differs=differs, notes=list(notes)))

    def power_fit(self, name: str, law: str, x, y, x_label: str, extra: dict | None = None):
        """Single power law (kaplan_n/d/c) with bootstrap CI and quality; written to fits/<name>.json."""
        col = dict(kaplan_n="N", kaplan_d="D", kaplan_c="C")[law]
        fit = api.fit_law(law, {col: np.asarray(x, dtype=float), "loss": np.asarray(y, dtype=float)},
                          n_boot=self.n_boot, seed=self.seed)
        pred, lo, hi = fit.predict({col: np.asarray(x, dtype=float)})
        q = rt.fit_quality(np.asarray(x, dtype=float), y, pred)
        record = dict(fit.record, quality=q, x=x_label, **(extra or {}))
        alpha_key = [k for k in record["params"] if k.startswith("alpha")][0]
        ci = record["ci95"].get(alpha_key, [float("nan")] * 2)
        notes = rt.quality_notes(q) + rt.ci_notes(alpha_key.replace("alpha", "α"), record["params"][alpha_key], *ci)
        record["notes"] = notes
        self.save_fit(name, record)
        return record, fit.predict, notes


def _param_ci_notes(symbol: str, params: dict, ci95: dict, key: str) -> list:
    """Wide-CI notes for one fitted parameter (an absent interval counts as unknown, not narrow)."""
    return rt.ci_notes(symbol, params[key], *(ci95.get(key) or [float("nan")] * 2))


def _notes_text(notes) -> str:
    return (" **" + "; ".join(notes) + ".**") if notes else ""


def _fit_band(predict, col, x):
    g = _grid(x)
    pred, lo, hi = predict({col: g})
    out = [dict(x=g, y=pred, kind="line", color="crimson", label="fit (ours)")]
    if np.all(np.isfinite(lo)):
        out.append(dict(x=g, y=pred, lo=lo, hi=hi, kind="band", color="crimson", label="95% bootstrap"))
    return out


# --- sections ----------------------------------------------------------------------------------------------
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
    path = os.path.join(rep.root, "noise", "bcrit.json")
    return fileio.read_json_object(path) if os.path.exists(path) else None


def section_ln_converged(rep: Report) -> list:
    """L(N) at convergence (eq 1.1) from whole learning curves: eq 1.6 with a free L(N) term, then eq 1.1."""
    curves = _ladder_learning_curves(rep)
    _need(len(curves) >= 3, f"the `ladder` group has {len(curves)} finished runs with learning curves (need >= 3)")
    b_crit = learning_curves.bcrit_law(_bcrit_record(rep))
    try:
        sep = learning_curves.fit_separable(curves, b_crit=b_crit)
    except InputError as e:
        raise NotMeasured(f"the learning-curve fit is not possible: {e}") from e
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
    rec, predict, notes = rep.power_fit("kaplan_n", "kaplan_n", N, L_inf, "n_params_nonembedding",
                                        extra=dict(loss="L_inf: S -> infinity loss of each rung's learning curve",
                                                   learning_curve_fit=sep.record(),
                                                   runs=[c.name for c in curves]))
    a, ci = rec["params"]["alpha_N"], rec["ci95"].get("alpha_N")
    q = rec["quality"]
    steps = _range([float(c.steps.max()) for c in curves], ".0f")
    rep.exponent("α_N", "L(N) = (N_c/N)^α_N, converged losses (S → ∞ of each rung's curve)", a, ci, T5["alpha_N"],
                 "Table 5", f"N = {_range(N)} (paper 7e2–1.5e9); at ≤ 4e5 parameters with a 1,024-token "
                 "vocabulary the loss falls more slowly with N than for the paper's larger models", notes)
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
    lines = [f"Ladder: {len(curves)} runs, N = {_range(N)} non-embedding parameters ({steps} steps each). None is "
             "trained to convergence (a 2-core CPU cannot), so each rung's converged loss is the S → ∞ limit of its "
             "learning curve: one fit of L_r(S) = L∞_r + (S_c/S_min)^α_S to every rung's eval curve after 25 % of its "
             "steps (Kaplan eq 1.6 with the N term left free per rung, so the power law in N is not assumed; "
             + ("S_min = S/(1 + B_crit(L)/B) from this sweep's batch scan, eq 5.4" if sep.bcrit_used else
                "no B_crit(L) in this sweep, so S is used for S_min") + ").", "",
             f"- **Step term** (shared by all rungs): α_S = {rt.format_ci(sep.alpha_s, alpha_s_ci, '{:.3f}')} "
             f"(jackknife over rungs), S_c = {_fmt(sep.s_c)} steps; "
             f"{sep.n_points} eval points, relative RMS {sep.rms_rel:.2%}, R² (log) {sep.r2_log:.4f} "
             f"(paper Table 3: α_S = {T3['alpha_S']}, S_c = {T3['S_c']:.1e}).",
             f"- **L(N) at convergence** (eq 1.1 on the L∞): α_N = {rt.format_ci(a, ci, '{:.4f}')}, "
             f"N_c = {_fmt(rec['params']['N_c'])}; R² (log) = {q['r2_log']:.4f}, residual RMS {q['rms_log']:.2g}, "
             f"bend p = {_fmt(q['bend_p'], '.2g')} (paper: α_N = {T5['alpha_N']}, N_c = {T5['N_c']:.1e}).{_notes_text(notes)}",
             "", *table]
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
              *_fit_band(predict, "N", N),
              _paper_slope_line(N, L_inf, -T5["alpha_N"], f"paper slope α_N = {T5['alpha_N']}")]
    panels = [dict(title=f"converged L(N): α_N = {a:.3f}", xlabel="N (non-embedding parameters)",
                   ylabel="loss (nats/token)", ylog=True, series=series),
              dict(title="learning curves and the eq 1.6 fit (dotted: extrapolation)", xlabel="step S",
                   ylabel="eval loss", ylog=True, series=curve_series)]
    rep.setup["ln_figure"] = rep.figure("ln.png", panels, "L(N) at convergence: Kaplan Fig. 1 (right), eq 1.6")
    return lines + ["", rep.setup["ln_figure"]]


def section_ln(rep: Report) -> list:
    """L(N) (Fig. 1 right, Fig. 6): ladder, non-embedding N, and the embedding-inclusive count beside it."""
    ladder = rep.sweep.group("ladder")
    rows, N, L = _scored(ladder, "n_params_nonembedding")
    _need(len(rows) >= 3, f"the `ladder` group has {len(rows)} finished runs with a loss (a power law needs >= 3)")
    rec, predict, notes = rep.power_fit("kaplan_n_final", "kaplan_n", N, L, "n_params_nonembedding")
    a, ci = rec["params"]["alpha_N"], rec["ci95"].get("alpha_N")
    steps = _range([r.get("steps") for r in rows], ".0f")
    rep.exponent("α_N (final losses)", "L(N) = (N_c/N)^α_N, ladder, best eval loss (not converged)", a, ci, T5["alpha_N"], "Table 5",
                 f"N = {_range(N)} (paper 7e2–1.5e9), {steps} steps each, not trained to convergence", notes)
    rep.exponent("N_c", "L(N) constant", rec["params"]["N_c"], rec["ci95"].get("N_c"), T5["N_c"], "Table 5",
                 "loss scale depends on tokenizer/vocabulary and corpus: not comparable across data sets",
                 _param_ci_notes("N_c", rec["params"], rec["ci95"], "N_c"))
    lines = [f"Ladder: {len(rows)} runs, N = {_range(N)} non-embedding parameters, loss = best eval loss "
             f"(nats/token).", "",
             f"- **Non-embedding N**: α_N = {rt.format_ci(a, ci, '{:.4f}')}, N_c = {_fmt(rec['params']['N_c'])}; "
             f"R² (log) = {rec['quality']['r2_log']:.4f}, residual RMS {rec['quality']['rms_log']:.2g} "
             f"(paper: α_N = {T5['alpha_N']}, N_c = {T5['N_c']:.1e}).{_notes_text(notes)}"]
    series = [dict(x=N, y=L, kind="scatter", color="k", label="ladder runs"), *_fit_band(predict, "N", N),
              _paper_slope_line(N, L, -T5["alpha_N"], f"paper slope α_N = {T5['alpha_N']}")]
    lines += _fixed_s_fit(rep, rows, N, L, series)
    fixed_s = rep.setup.get("ln_fixed_s")
    title = f"non-embedding N: α_N = {a:.3f} (eq 1.1)" + (
        f", {fixed_s['alpha_N']:.3f} (eq 1.6 at fixed S)" if fixed_s else "")
    panels = [dict(title=title, xlabel="N (non-embedding parameters)",
                   ylabel="loss (nats/token)", ylog=True, series=series)]
    rows_t, Nt, Lt = _scored(ladder, "n_params_total")
    if len(rows_t) >= 3:
        rec_t, predict_t, notes_t = rep.power_fit("kaplan_n_total", "kaplan_n", Nt, Lt, "n_params_total")
        qt, q = rec_t["quality"], rec["quality"]
        bends = any(n.startswith(("curvature", "residual trend", "poor fit")) for n in notes_t)
        verdict = ("the points bend away from a power law, as in the paper's Fig. 6 (left)" if bends else
                   "no bend is detectable at this scale range (the paper's bend comes from small models whose "
                   "embedding dominates the count)")
        alpha_t = rt.format_ci(rec_t["params"]["alpha_N"], rec_t["ci95"].get("alpha_N"), "{:.4f}")
        lines.append(f"- **All parameters (embedding included)**: α = {alpha_t}; R² (log) = {qt['r2_log']:.4f}, "
                     f"residual RMS {qt['rms_log']:.2g}, bend p = {_fmt(qt['bend_p'], '.2g')} (non-embedding: R² "
                     f"{q['r2_log']:.4f}, RMS {q['rms_log']:.2g}, bend p = {_fmt(q['bend_p'], '.2g')}): "
                     f"{verdict}.{_notes_text(notes_t)}")
        panels.append(dict(title="with embedding parameters (Fig. 6 left)", xlabel="N (all parameters)",
                           ylabel="loss (nats/token)", ylog=True,
                           series=[dict(x=Nt, y=Lt, kind="scatter", color="k", label="ladder runs"),
                                   *_fit_band(predict_t, "N", Nt)]))
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
               f"the rungs trained different step counts ({_range(list(steps), '.0f')}), so no common L_S")
        return [f"- **Eq 1.6 at fixed S** (L = (N_c/N)^α_N + L_S): not fitted: {why}."]
    try:
        fit = api.fit_law("kaplan_n_fixed_s", dict(N=N, loss=L), n_boot=rep.n_boot, seed=rep.seed)
    except (InputError, fitting.FitError) as e:
        return [f"- **Eq 1.6 at fixed S** (L = (N_c/N)^α_N + L_S): the fit failed: {e}."]
    p, ci = fit.record["params"], fit.record["ci95"]
    q = rt.fit_quality(N, L, fit.predict(dict(N=N))[0])
    notes = rt.quality_notes(q) + _param_ci_notes("α_N", p, ci, "alpha_N") + _param_ci_notes("L_S", p, ci, "L_S")
    n_steps = float(next(iter(steps)))
    rep.save_fit("kaplan_n_fixed_s", dict(fit.record, quality=q, notes=notes, x="n_params_nonembedding",
                                          steps=n_steps))
    rep.setup["ln_fixed_s"] = dict(alpha_N=p["alpha_N"], ci=ci.get("alpha_N"), r2=q["r2_log"], L_S=p["L_S"])
    rep.exponent("α_N (eq 1.6, fixed S)", "L(N) = (N_c/N)^α_N + L_S, ladder at one step count", p["alpha_N"],
                 ci.get("alpha_N"), T3["alpha_N"], "Table 3",
                 f"N = {_range(N)}, {len(rows)} rungs, all {n_steps:.0f} steps; L_S absorbs the shared "
                 "(S_c/S)^α_S, so α_N here is the converged-model exponent, not eq 1.1's fixed-S slope", notes)
    g = _grid(N)
    pred, lo, hi = fit.predict(dict(N=g))
    series.append(dict(x=g, y=pred, kind="line", color="tab:blue", label="eq 1.6 at fixed S (ours)"))
    if np.all(np.isfinite(lo)):
        series.append(dict(x=g, y=pred, lo=lo, hi=hi, kind="band", color="tab:blue", label="95% bootstrap"))
    return [f"- **Eq 1.6 at fixed S** (every rung trained {n_steps:.0f} steps, so each carries the same "
            f"(S_c/S)^α_S = L_S): α_N = {rt.format_ci(p['alpha_N'], ci.get('alpha_N'), '{:.3f}')}, "
            f"L_S = {rt.format_ci(p['L_S'], ci.get('L_S'), '{:.3f}')} nats, N_c = {_fmt(p['N_c'])}; "
            f"R² (log) = {q['r2_log']:.4f}, residual RMS {q['rms_log']:.2g} (paper Table 3: α_N = {T3['alpha_N']}). "
            f"Eq 1.1 above is exact only for converged models; the pure power law's curvature here is the "
            f"constant L_S.{_notes_text(notes)}"]


def _data_budget(rep: Report, row) -> float | None:
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
        d = _data_budget(rep, r)
        if d is not None and rt.positive(r.get("n_params_nonembedding")) and _loss(r) is not None:
            rows.append((r, float(r["n_params_nonembedding"]), d, _loss(r)))
    _need(bool(rep.sweep.group("data", finished=False)), "no `data` group in runs.csv")
    return rows


def section_ld(rep: Report) -> list:
    """L(D) with early stopping (Fig. 1 centre): the largest model at each data budget."""
    pts = _data_points(rep)
    by_d = {}
    for r, n, d, l in pts:
        if d not in by_d or n > by_d[d][1]:
            by_d[d] = (r, n, d, l)
    _need(len(by_d) >= 3, f"the `data` group has {len(by_d)} distinct data budgets with finished runs (need >= 3)")
    sel = [by_d[d] for d in sorted(by_d)]
    D = np.array([p[2] for p in sel])
    L = np.array([p[3] for p in sel])
    rec, predict, notes = rep.power_fit("kaplan_d", "kaplan_d", D, L, "data_budget_tokens (largest model per D)",
                                        extra=dict(runs=[str(p[0]["run"]) for p in sel]))
    a, ci = rec["params"]["alpha_D"], rec["ci95"].get("alpha_D")
    rep.exponent("α_D", "L(D) = (D_c/D)^α_D, largest model per D, early stopping", a, ci, T5["alpha_D"], "Table 5",
                 f"D = {_range(D)} tokens (paper 2.2e7–2.3e10), repeated epochs on a small corpus; "
                 f"largest model per D is N = {_range([p[1] for p in sel])}", notes)
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
                           *_fit_band(predict, "D", D),
                           _paper_slope_line(D, L, -T5["alpha_D"], f"paper slope α_D = {T5['alpha_D']}")])]
    if curves:
        panels.append(dict(title="learning curves of those runs (the minimum is the early-stopping point)",
                           xlabel="tokens seen", ylabel="eval loss", ylog=True, series=curves))
    fig = rep.figure("ld.png", panels, "L(D) with early stopping: Kaplan Fig. 1 (centre)")
    return [f"{len(sel)} data budgets D = {_range(D)} tokens; at each, the largest model's best eval loss.", "",
            f"α_D = {rt.format_ci(a, ci, '{:.4f}')}, D_c = {_fmt(rec['params']['D_c'])}, R² (log) "
            f"{rec['quality']['r2_log']:.4f} (paper: α_D = {T5['alpha_D']}, D_c = {T5['D_c']:.1e}).{_notes_text(notes)}",
            "", fig]


def section_lnd(rep: Report) -> list:
    """L(N, D) overfitting family (Fig. 9) with eq. 1.5."""
    pts = _data_points(rep)
    Ns = sorted({p[1] for p in pts})
    Ds = sorted({p[2] for p in pts})
    _need(len(pts) >= 6 and len(Ns) >= 2 and len(Ds) >= 2,
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
    notes_n, notes_d = _param_ci_notes("α_N", p, ci, "alpha_N"), _param_ci_notes("α_D", p, ci, "alpha_D")
    rep.save_fit("kaplan_nd", dict(fit.record, quality=q, notes=notes + notes_n + notes_d,
                                   runs=[str(x[0]["run"]) for x in pts]))
    rng = f"N = {_range(N)}, D = {_range(D)} tokens; {len(pts)} runs (paper: N up to 1.5e9, D 2.2e7–2.3e10)"
    rep.exponent("α_N (eq 1.5)", "L(N, D) fit, data group", p["alpha_N"], ci.get("alpha_N"), T2["alpha_N"], "Table 2",
                 rng, notes + notes_n)
    rep.exponent("α_D (eq 1.5)", "L(N, D) fit, data group", p["alpha_D"], ci.get("alpha_D"), T2["alpha_D"], "Table 2",
                 rng, notes + notes_d)
    ratio = p["alpha_N"] / p["alpha_D"]
    cmap_i = lambda d: Ds.index(d) / max(len(Ds) - 1, 1)
    left = []
    for d in Ds:
        m = D == d
        left.append(dict(x=N[m], y=L[m], kind="scatter", cmap_index=cmap_i(d), label=f"D = {d:.2g}"))
        g = _grid(N)
        left.append(dict(x=g, y=laws.loss_of_nd(g, d, p["N_c"], p["D_c"], p["alpha_N"], p["alpha_D"]),
                         kind="line", cmap_index=cmap_i(d)))
    x_ratio = N ** ratio / D
    l_inf = laws.loss_of_n(N, p["N_c"], p["alpha_N"])
    g = _grid(x_ratio)
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
            f"α_D = {rt.format_ci(p['alpha_D'], ci.get('alpha_D'), '{:.4f}')}, N_c = {_fmt(p['N_c'])}, "
            f"D_c = {_fmt(p['D_c'])}; R² (log) {q['r2_log']:.4f} (paper Table 2: α_N = {T2['alpha_N']}, "
            f"α_D = {T2['alpha_D']}, N_c = {T2['N_c']:.1e}, D_c = {T2['D_c']:.1e}).{_notes_text(notes + notes_n + notes_d)}",
            f"Data needed to keep overfitting small grows as D ∝ N^(α_N/α_D) = N^{ratio:.2f} (paper eq. 4.4: N^0.74).",
            "", fig]


def _ladder_curves(rep: Report):
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
    curves = _ladder_curves(rep)
    _need(len(curves) >= 2, f"{len(curves)} ladder runs have an eval.jsonl learning curve with >= 2 points (need >= 2)")
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
    batch = _range([r.get("batch_tokens") for r, *_ in curves], ".0f")
    rep.exponent("α_C", "L(C) envelope of ladder learning curves (fixed batch)", a, ci, T5["alpha_C"], "Table 5",
                 f"C = {Ce.min():.2g}–{Ce.max():.2g} PF-days (paper ~1e-8–1e4); one batch of {batch} tokens, not C_min",
                 notes)
    lines = [f"{len(curves)} ladder learning curves, compute C = 6N × tokens in PF-days (1 PF-day = 8.64e19 FLOP); "
             f"covered C = {env['C'].min():.2g}–{env['C'].max():.2g} PF-days. The envelope is the lowest loss any "
             f"run reaches at each compute; it is fitted over C = {c_lo:.2g}–{c_hi:.2g} PF-days, {_window_words(trans)}.", "",
             f"- L(C) = (C_c/C)^α_C on the envelope: α_C = {rt.format_ci(a, ci, '{:.4f}')}, "
             f"C_c = {_fmt(rec['params']['C_c'])} PF-days, R² (log) {rec['quality']['r2_log']:.4f} "
             f"(paper: α_C = {T5['alpha_C']} at fixed batch, α_C^min = {T5['alpha_C_min']} adjusted to B ≪ B_crit)."
             f"{_notes_text(notes)}"]
    cmax = max(len(curves) - 1, 1)
    left = [dict(x=c, y=l, kind="line", lw=1, cmap_index=i / cmax, label=f"N = {n:.2g}")
            for i, (_, n, c, l) in enumerate(curves)]
    left += [dict(x=env["C"][ok], y=env["loss"][ok], kind="line", color="k", lw=2.5, alpha=0.5, label="envelope"),
             *_fit_band(predict, "C", Ce * PF_DAY)]
    for s in left:  # the band/line of the fit are in FLOPs; plot everything in PF-days
        if s.get("color") == "crimson":
            s["x"] = np.asarray(s["x"]) / PF_DAY
    left.append(_paper_slope_line(Ce, Le, -T5["alpha_C"], f"paper slope α_C = {T5['alpha_C']}"))
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
        g = _grid(Ct)
        panels.append(dict(title=f"compute-efficient N: p_N = {fr['p']:.2f}", xlabel="C (PF-days)",
                           ylabel="N_opt (non-embedding)", ylog=True, series=[
                               dict(x=Ct, y=Nt, kind="scatter", color="k", label="crossings of neighbouring rungs"),
                               dict(x=g, y=fr["k"] * g ** fr["p"], kind="line", color="crimson", label="fit (ours)"),
                               _paper_slope_line(Ct, Nt, T6["p_N"], f"paper slope p_N = {T6['p_N']}")]))
        lines.append(f"- Frontier: the optimal size passes from one rung to the next where their learning curves cross "
                     f"({len(trans)} crossings); N_opt ∝ C^p_N with p_N = {rt.format_ci(fr['p'], fr['ci95']['p'], '{:.3f}')} "
                     f"(paper Fig. 14: p_N = {T6['p_N']}).{_notes_text(fr_notes)}")
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
    exponents' 95 % bounds (their extremes bound the monotone map), so it is conservative.
    """
    conv = rep.setup.get("ln_converged") or {}
    bc = _bcrit_record(rep) or {}
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
                 ci.get("p_N"), T6["p_N"], "Table 6", "small-model exponents: a shallow α_N makes p_N large", notes)
    rep.exponent("α_C^min (derived)", "1/(1/α_S + 1/α_B + 1/α_N)", central["alpha_C_min"], ci.get("alpha_C_min"),
                 T5["alpha_C_min"], "Table 5", "from this sweep's exponents")
    fmt = lambda k: rt.format_ci(central[k], ci.get(k), "{:.3f}")
    return [f"- **Frontier from the fitted exponents** (Kaplan §6.1, eqs B.7-B.10; α_N = {a_n:.4f}, α_S = {a_s:.3f}, "
            f"α_B = {a_b:.3f} from this sweep): α_C^min = {fmt('alpha_C_min')}, N_opt ∝ C_min^{fmt('p_N')}, "
            f"B_crit ∝ C_min^{fmt('p_B')}, S_min ∝ C_min^{fmt('p_S')} (paper Table 6: p_N = {T6['p_N']}, "
            f"p_B = {T6['p_B']}, p_S = {T6['p_S']}).{_notes_text(notes)}"]


def _batch_scan_words(rep: Report) -> str:
    if not rep.sweep.group("batch_scan", finished=False):
        return "and runs.csv has no `batch_scan` group to make it from"
    return "run `python -m experiments.noise_scale --root=...` on this sweep's `batch_scan` group"


MAX_NS_POINTS = 150  # the eq. 1.6 bootstrap (vmapped L-BFGS) grows with points; thinning keeps each run's S range


def _smin_rows(rep: Report):
    path = os.path.join(rep.root, "noise", "smin_cmin.csv")
    _need(os.path.exists(path), f"noise/smin_cmin.csv is absent ({_batch_scan_words(rep)})")
    rows = [r for r in rt.read_rows(path) if rt.positive(r.get("loss"))]
    _need(len(rows) > 0, f"{path} has no rows with a loss")
    return rows


def section_lcmin(rep: Report) -> list:
    """L(C_min) (Table 5, Fig. 13 adjusted): envelope of batch-scan curves against C_min of eq. 5.5."""
    rows = _smin_rows(rep)
    runs, runs_n = {}, {}
    for r in rows:
        if rt.positive(r.get("C_min_pf_days")):
            runs.setdefault(str(r["run"]), []).append((float(r["C_min_pf_days"]), float(r["loss"])))
            runs_n[str(r["run"])] = float(r.get("n_params_nonembedding") or 0)
    runs_n = {k: runs_n[k] for k, v in runs.items() if len(v) >= 2}
    curves = [np.array(sorted(runs[k])).T for k in runs_n]
    _need(len(curves) >= 2, f"noise/smin_cmin.csv has {len(curves)} runs with >= 2 C_min points (need >= 2)")
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
    g = _grid(Ce)
    series += [dict(x=g, y=predict({"C": g * PF_DAY})[0], kind="line", color="crimson", label="fit (ours)"),
               _paper_slope_line(Ce, Le, -T5["alpha_C_min"], f"paper slope α_C^min = {T5['alpha_C_min']}")]
    fig = rep.figure("lcmin.png", [dict(title=f"L(C_min): α_C^min = {a:.3f}", xlabel="C_min (PF-days)",
                                        ylabel="loss", ylog=True, series=series)], "L(C_min): Kaplan Table 5 / eq. 5.5")
    return [f"Envelope fitted over C_min = {c_lo:.2g}–{c_hi:.2g} PF-days, {_window_words(trans)}.", "",
            f"α_C^min = {rt.format_ci(a, ci, '{:.4f}')}, C_c^min = {_fmt(rec['params']['C_c'])} PF-days, R² (log) "
            f"{rec['quality']['r2_log']:.4f} (paper: {T5['alpha_C_min']}, {T5['C_c_min']:.1e} PF-days)."
            f"{_notes_text(notes)}", "", fig]


def section_lns(rep: Report) -> list:
    """L(N, S_min) (Fig. 11) with eq. 1.6 from noise/smin_cmin.csv."""
    rows = [r for r in _smin_rows(rep) if rt.positive(r.get("S_min")) and rt.positive(r.get("n_params_nonembedding"))]
    n_all = len(rows)
    rows = rt.thin_per_run(rows, MAX_NS_POINTS, key="S_min")
    Ns = sorted({float(r["n_params_nonembedding"]) for r in rows})
    _need(len(rows) >= 6 and len(Ns) >= 2, f"noise/smin_cmin.csv has {len(rows)} usable points over {len(Ns)} model "
                                           "sizes (eq. 1.6 has 4 parameters: need >= 6 points, >= 2 sizes)")
    N = np.array([float(r["n_params_nonembedding"]) for r in rows])
    S = np.array([float(r["S_min"]) for r in rows])
    L = np.array([float(r["loss"]) for r in rows])
    fit = api.fit_law("kaplan_ns", dict(N=N, S=S, loss=L), n_boot=rep.n_boot, seed=rep.seed)
    p, ci = fit.record["params"], fit.record["ci95"]
    pred = laws.loss_of_ns(N, S, p["N_c"], p["S_c"], p["alpha_N"], p["alpha_S"])
    q = rt.fit_quality(S, L, pred)
    notes = rt.quality_notes(q)
    notes_n, notes_s = _param_ci_notes("α_N", p, ci, "alpha_N"), _param_ci_notes("α_S", p, ci, "alpha_S")
    rep.save_fit("kaplan_ns", dict(fit.record, quality=q, notes=notes + notes_n + notes_s))
    rng = f"N = {_range(N)}, S_min = {_range(S)} steps, {len(rows)} points" + (
        f" (thinned evenly within each run from {n_all})" if n_all > len(rows) else "")
    rep.exponent("α_N (eq 1.6)", "L(N, S_min) fit, batch-scan curves", p["alpha_N"], ci.get("alpha_N"), T3["alpha_N"],
                 "Table 3", rng, notes + notes_n)
    rep.exponent("α_S", "L(N, S_min) fit, batch-scan curves", p["alpha_S"], ci.get("alpha_S"), T3["alpha_S"], "Table 3",
                 rng + " (paper S_min up to ~1e5)", notes + notes_s)
    series = []
    for i, n in enumerate(Ns):
        m = N == n
        ci_ = i / max(len(Ns) - 1, 1)
        series.append(dict(x=S[m], y=L[m], kind="scatter", size=8, cmap_index=ci_, label=f"N = {n:.2g}"))
        g = _grid(S[m])
        series.append(dict(x=g, y=laws.loss_of_ns(n, g, p["N_c"], p["S_c"], p["alpha_N"], p["alpha_S"]),
                           kind="line", cmap_index=ci_))
    fig = rep.figure("lns.png", [dict(title=f"L(N, S_min): α_N = {p['alpha_N']:.3f}, α_S = {p['alpha_S']:.2f}",
                                      xlabel="S_min (steps, eq. 5.4)", ylabel="loss", ylog=True, series=series)],
                     "L(N, S_min): Kaplan Fig. 11, eq. 1.6")
    return [rng + ".", "",
            f"Eq. 1.6: α_N = {rt.format_ci(p['alpha_N'], ci.get('alpha_N'), '{:.4f}')}, "
            f"α_S = {rt.format_ci(p['alpha_S'], ci.get('alpha_S'), '{:.3f}')}, N_c = {_fmt(p['N_c'])}, "
            f"S_c = {_fmt(p['S_c'])}; R² (log) {q['r2_log']:.4f} (paper Table 3: α_N = {T3['alpha_N']}, "
            f"α_S = {T3['alpha_S']}, S_c = {T3['S_c']:.1e}).{_notes_text(notes + notes_n + notes_s)}", "", fig]


def section_bcrit(rep: Report) -> list:
    """B_crit(L) with B_simple (Fig. 10) from noise/bcrit.json."""
    path = os.path.join(rep.root, "noise", "bcrit.json")
    _need(os.path.exists(path), f"noise/bcrit.json is absent ({_batch_scan_words(rep)})")
    with open(path) as f:
        b = json.load(f)
    per = [t for t in b.get("per_target", []) if rt.positive(t.get("B_crit")) and rt.positive(t.get("target_loss"))]
    _need(rt.positive(b.get("B_star")) and rt.positive(b.get("alpha_B")), f"{path} has no fitted B_star/alpha_B")
    ci = b.get("ci95", {})
    Lt = np.array([t["target_loss"] for t in per])
    Bc = np.array([t["B_crit"] for t in per])
    notes = []
    q = None
    if len(per) >= 2:
        q = rt.fit_quality(Lt, Bc, b["B_star"] / Lt ** (1 / b["alpha_B"]))
        notes = rt.quality_notes(q)
    notes_a = _param_ci_notes("α_B", b, ci, "alpha_B")
    unbracketed = sum(1 for t in per if not t.get("bracketed", True))
    if unbracketed:
        notes.append(f"{unbracketed} of {len(per)} targets are not bracketed by the scanned batches (bounds only)")
    models = b.get("models") or []
    rng = f"{b.get('n_runs', '?')} batch-scan runs, models {', '.join(map(str, models)) or '?'}; losses {_range(Lt)}"
    rep.exponent("α_B", "B_crit(L) = B*/L^(1/α_B), batch scan", b["alpha_B"], ci.get("alpha_B"), T5["alpha_B"],
                 "Table 5 / eq 5.3", rng, notes + notes_a)
    rep.exponent("B*", "B_crit constant (tokens)", b["B_star"], ci.get("B_star"), T5["B_star"], "Table 5",
                 "loss scale depends on vocabulary: B* is not comparable across tokenizers", [])
    series = []
    if per:
        lo = np.array([t.get("B_crit_lo") if rt.positive(t.get("B_crit_lo")) else t["B_crit"] for t in per])
        hi = np.array([t.get("B_crit_hi") if rt.positive(t.get("B_crit_hi")) else t["B_crit"] for t in per])
        series.append(dict(x=Lt, y=Bc, yerr=np.stack([Bc - lo, hi - Bc]), kind="errorbar", color="k",
                           label="B_crit per target (S = S_min + E_min/B)"))
        g = np.exp(np.linspace(np.log(Lt.min()), np.log(Lt.max()), 100))
    else:
        g = np.linspace(2, 6, 100)
    series.append(dict(x=g, y=b["B_star"] / g ** (1 / b["alpha_B"]), kind="line", color="crimson",
                       label=f"ours: B* = {b['B_star']:.2g}, α_B = {b['alpha_B']:.3f}"))
    bs = [x for x in b.get("b_simple_vs_loss", []) if rt.positive(x.get("b_simple")) and rt.positive(x.get("loss"))]
    if bs:
        series.append(dict(x=[x["loss"] for x in bs], y=[x["b_simple"] for x in bs], kind="scatter", marker="^",
                           size=10, color="tab:blue", label="B_simple (gradient noise scale)"))
    if per:
        series.append(_paper_slope_line(Lt, Bc, -1 / T5["alpha_B"], f"paper slope 1/α_B = {1 / T5['alpha_B']:.2f}"))
    fig = rep.figure("bcrit.png", [dict(title="critical batch vs loss", xlabel="loss (nats/token)",
                                        ylabel="batch (tokens)", ylog=True, series=series)],
                     "B_crit(L) and B_simple: Kaplan Fig. 10")
    lines = [rng + ".", "",
             f"B_crit(L) = B*/L^(1/α_B): α_B = {rt.format_ci(b['alpha_B'], ci.get('alpha_B'), '{:.3f}')}, "
             f"B* = {rt.format_ci(b['B_star'], ci.get('B_star'), '{:.3g}')} tokens"
             + (f", R² (log) {q['r2_log']:.3f}" if q else "")
             + f" (paper: α_B = {T5['alpha_B']}, B* = {T5['B_star']:.1e} tokens).{_notes_text(notes + notes_a)}"]
    if bs:
        ratio = np.median([x["b_simple"] / (b["B_star"] / x["loss"] ** (1 / b["alpha_B"])) for x in bs])
        lines.append(f"B_simple at the same loss is a median {ratio:.2g}× our B_crit fit ({len(bs)} points; the paper "
                     "finds B_simple ≈ B_crit within a small factor).")
    return lines + ["", fig]


def _final_eval(rep: Report, row) -> dict | None:
    lines = [e for e in rep.sweep.evals.get(str(row["run"]), []) if e.get("loss_per_position")]
    return max(lines, key=lambda e: e.get("step", 0)) if lines else None


def section_position(rep: Report) -> list:
    """Per-token-position loss (Fig. 20) from the final eval of each ladder run."""
    runs = []
    for r in sorted(rep.sweep.group("ladder"), key=lambda r: r.get("n_params_nonembedding") or 0):
        e = _final_eval(rep, r)
        if e is not None:
            runs.append((r, np.asarray(e["loss_per_position"], dtype=float)))
    _need(len(runs) >= 1, "no ladder run has loss_per_position in eval.jsonl")
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
        table.append(f"| {r['run']} | {_fmt(r.get('n_params_nonembedding'))} | {lp[0]:.3f} | {lp[-1]:.3f} | "
                     f"{_fmt(f['c'] if f else None)} | {_fmt(f['r2'] if f else None, '.3f')} | {note} |")
    rep.save_fit("per_position", dict(law="L(T) = L_inf + b T^-c per run", params=fits))
    fig = rep.figure("per_position.png", [dict(title="loss by position in the context (dotted: power-law fits)",
                                               xlabel="token position T", ylabel="eval loss", ylog=True, series=series)],
                     "Per-token loss: Kaplan Fig. 20")
    return [f"Final eval of {len(runs)} ladder runs; loss at each of the n_ctx positions (later tokens see more "
            "context). The paper fits L(T) with a power law in T for T ≪ n_ctx.", "", *table, "", fig]


def _family_fit(rows):
    rows, N, L = _scored(rows, "n_params_nonembedding")
    fit = rt.loglog_fit(N, L) if len(rows) >= 2 and np.ptp(N) > 0 else None
    return rows, N, L, fit


def _family_and_ladder(rep: Report, group: str):
    """Finished runs of `group` and of the Transformer ladder, each with its power-law fit (or the section's
    reason for not being measured)."""
    _need(bool(rep.sweep.group(group, finished=False)), f"no `{group}` group in runs.csv")
    family = _family_fit(rep.sweep.group(group))
    _need(len(family[0]) >= 1, f"no `{group}` run has finished")
    ladder = _family_fit(rep.sweep.group("ladder"))
    _need(len(ladder[0]) >= 1, "no finished `ladder` run to compare with")
    return family, ladder


def section_lstm(rep: Report) -> list:
    """LSTM vs Transformer (Fig. 7): loss vs N and per-position loss."""
    (lstm, Nl, Ll, fl), (tr, Nt, Lt, ft) = _family_and_ladder(rep, "lstm")
    left = [dict(x=Nt, y=Lt, kind="scatter", color="tab:blue", label="Transformer (ladder)"),
            dict(x=Nl, y=Ll, kind="scatter", color="tab:red", marker="s", label="LSTM")]
    lines = [f"LSTM runs: {len(lstm)} (N = {_range(Nl)}); Transformer ladder: {len(tr)} (N = {_range(Nt)}).", ""]
    for name, fit, N, colour in (("Transformer", ft, Nt, "tab:blue"), ("LSTM", fl, Nl, "tab:red")):
        if fit:
            g = _grid(N)
            left.append(dict(x=g, y=fit["k"] * g ** fit["p"], kind="line", color=colour))
            lines.append(f"- {name}: L ∝ N^{fit['p']:.3f} (R² log {fit['quality']['r2_log']:.3f}, "
                         f"{len(N)} points){_notes_text(rt.quality_notes(fit['quality']))}")
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
        e = _final_eval(rep, r)
        if e is not None:
            lp = np.asarray(e["loss_per_position"], dtype=float)
            right.append(dict(x=np.arange(1, len(lp) + 1), y=lp, kind="line", color=colour,
                              label=f"{label} N = {r['n_params_nonembedding']:.2g}"))
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
    (rec, Nr, Lr, _), (tr, Nt, Lt, ft) = _family_and_ladder(rep, "recurrent")
    reps = np.array([_n_recurrence(rep, r) for r in rec])
    base = [dict(x=Nt, y=Lt, kind="scatter", color="tab:blue", label="Transformer (ladder)")]
    if ft:
        g = _grid(np.concatenate([Nt, Nr, Nr * reps]))
        base.append(dict(x=g, y=ft["k"] * g ** ft["p"], kind="line", color="tab:blue", ls="--"))
    panels = [dict(title="N counting shared parameters once", xlabel="N (unique non-embedding)", ylabel="best eval loss",
                   ylog=True, series=base + [dict(x=Nr, y=Lr, kind="scatter", marker="s", color="tab:green",
                                                  label="recurrent")]),
              dict(title="N counting every repeat", xlabel="N × n_recurrence", ylabel="best eval loss", ylog=True,
                   series=base + [dict(x=Nr * reps, y=Lr, kind="scatter", marker="s", color="tab:green",
                                       label="recurrent")])]
    lines = ["| run | N (unique) | repeats | N × repeats | best loss | ladder fit at N | ladder fit at N × repeats |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r, n, l, k in zip(rec, Nr, Lr, reps):
        at = lambda x: f"{ft['k'] * x ** ft['p']:.4f}" if ft else "–"
        lines.append(f"| {r['run']} | {n:.3g} | {k:.0f} | {n * k:.3g} | {l:.4f} | {at(n)} | {at(n * k)} |")
    lines += ["", "Paper: a recurrent Transformer does better than a standard one with the same unique parameters and "
                  "slightly worse than one with N × repeats parameters (its loss lies between the two ladder values).",
              "", rep.figure("recurrent.png", panels, "Recurrent Transformer: Kaplan Fig. 17")]
    return lines


def section_transfer(rep: Report) -> list:
    """Generalisation to a second distribution (Fig. 8): wiki-mini loss vs books loss, and vs N."""
    rows = [r for r in rep.sweep.finished() if rt.positive(r.get("final_eval_loss_wiki_mini"))
            and rt.positive(r.get("final_eval_loss")) and r.get("group") in ("ladder", "lstm", "recurrent", "holdout")]
    _need(len(rows) >= 2, f"{len(rows)} finished runs have final_eval_loss_wiki_mini (the extra-distribution eval; "
                          "need >= 2): set DataConfig extra evals in the sweep")
    x = np.array([r["final_eval_loss"] for r in rows])
    y = np.array([r["final_eval_loss_wiki_mini"] for r in rows])
    t = rt.transfer_offset(x, y)
    rep.save_fit("transfer_wiki_mini", dict(law="L_wiki = intercept + slope * L_books", params=t,
                                            runs=[str(r["run"]) for r in rows]))
    groups = sorted({r["group"] for r in rows})
    colours = dict(ladder="tab:blue", lstm="tab:red", recurrent="tab:green", holdout="k")
    left, right = [], []
    for g in groups:
        m = [r for r in rows if r["group"] == g]
        left.append(dict(x=[r["n_params_nonembedding"] for r in m], y=[r["final_eval_loss"] for r in m],
                         kind="scatter", color=colours.get(g, "0.5"), label=f"{g}: books (train distribution)"))
        left.append(dict(x=[r["n_params_nonembedding"] for r in m], y=[r["final_eval_loss_wiki_mini"] for r in m],
                         kind="scatter", marker="^", color=colours.get(g, "0.5"), label=f"{g}: wiki-mini"))
        right.append(dict(x=[r["final_eval_loss"] for r in m], y=[r["final_eval_loss_wiki_mini"] for r in m],
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
        dict(title="wiki-mini loss vs books loss", xlabel="books-mini eval loss", ylabel="wiki-mini eval loss",
             xlog=False, series=right)], "Generalisation to a second distribution: Kaplan Fig. 8")
    return [f"{len(rows)} runs ({', '.join(groups)}) evaluated on both the training distribution (books-mini) and "
            "wiki-mini (never trained on).", "",
            f"wiki-mini loss = {_fmt(t['intercept'], '.3f')} + {_fmt(t['slope'], '.3f')} × books loss; mean offset "
            f"{t['offset']:+.3f} ± {_fmt(t['offset_sd'], '.3f')} nats/token (paper Fig. 8: a roughly constant offset, "
            "slope ≈ 1, across model families).", "", fig]


def section_sample_efficiency(rep: Report) -> list:
    """Sample efficiency (Fig. 2): learning curves vs tokens, tokens to reach a target loss vs N."""
    curves = []
    for r in sorted(rep.sweep.group("ladder"), key=lambda r: r.get("n_params_nonembedding") or 0):
        tok, loss = rep.sweep.curve(r)
        if len(tok) >= 2 and rt.positive(r.get("n_params_nonembedding")):
            curves.append((r, float(r["n_params_nonembedding"]), tok, loss))
    _need(len(curves) >= 2, f"{len(curves)} ladder runs have learning curves (need >= 2)")
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
        g = _grid(Nr)
        right.append(dict(x=g, y=fit["k"] * g ** fit["p"], kind="line", color="crimson", label=f"∝ N^{fit['p']:.2f}"))
        verdict = ("larger models need fewer tokens (more sample-efficient), as in the paper" if fit["p"] < 0 else
                   "larger models do not need fewer tokens here, unlike the paper")
        lines.append(f"Tokens to reach it scale as N^{rt.format_ci(fit['p'], fit['ci95']['p'], '{:.2f}')} over N = "
                     f"{_range(Nr)}: {verdict}.{_notes_text(notes)}")
    else:
        lines.append(f"Only {len(reach)} runs reach a common target with distinct N and token counts: no fit.")
    panels.append(dict(title="tokens to reach the target loss", xlabel="N (non-embedding)", ylabel="tokens",
                       ylog=True, series=right))
    return lines + ["", rep.figure("sample_efficiency.png", panels, "Sample efficiency: Kaplan Fig. 2")]


def _interval_text(lo, hi) -> str:
    """'lo–hi' of a prediction interval; a null bound (non-finite bootstrap replicates) is an open side."""
    return f"{_fmt(lo, '.4f') if lo is not None else '−∞'}–{_fmt(hi, '.4f') if hi is not None else '∞'}"


def _inside(x: float, lo, hi) -> bool:
    return (lo is None or lo <= x) and (hi is None or x <= hi)


def section_prediction(rep: Report) -> list:
    """Predict-then-verify from prediction.json and the holdout run."""
    path = os.path.join(rep.root, "prediction.json")
    _need(os.path.exists(path), "prediction.json is absent (experiments.reproduce writes it before the holdout run)")
    with open(path) as f:
        p = json.load(f)
    target = str(p.get("target_run"))
    pred, lo, hi = (p.get(k) for k in ("loss_pred", "loss_pred_lo", "loss_pred_hi"))
    _need(rt.positive(pred), f"{path} has no positive loss_pred")
    lines = [f"Law `{p.get('law')}` fitted on {len(p.get('fit_runs', []))} runs ({', '.join(map(str, p.get('fit_runs', [])))}), "
             f"written {p.get('written_at', '?')}, predicts the holdout run `{target}` "
             f"(N = {_fmt(p.get('n_params_nonembedding'))}): loss {_fmt(pred, '.4f')} "
             f"(95% CI {_interval_text(lo, hi)}"
             f"{'; unbounded: the fit is poorly determined' if lo is None or hi is None else ''}).", ""]
    row = next((r for r in rep.sweep.rows if str(r.get("run")) == target), None)
    if row is None or row.get("status") != "finished" or _loss(row) is None:
        state = "not in runs.csv" if row is None else f"status {row.get('status')}"
        return lines + [f"**Measured: pending** — the holdout run is {state}; rerun the report when it has finished."]
    # What the prediction is of: the final eval loss (learning-curve law, predicted at the run's last step) or
    # the best eval loss (L(N) fits on the ladder's best losses).
    measure = p.get("measure") or "best_eval_loss"
    measured_of = lambda key: row.get(key) if rt.positive(row.get(key)) else _loss(row)
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
    fr, Nf, Lf = _scored(fit_rows, "n_params_nonembedding")
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


# --- headline, tables, assembly ------------------------------------------------------------------------------
def _setup_text(rep: Report) -> str:
    fin = rep.sweep.finished()
    s = next(iter(rep.sweep.summaries.values()), {}) if rep.sweep.summaries else {}
    data = s.get("data") or {}
    vocab = data.get("vocab_size") or s.get("vocab_size") or "?"
    n_ctx = s.get("n_ctx") or data.get("n_ctx") or next((r.get("n_ctx") for r in fin if r.get("n_ctx")), "?")
    task = data.get("task") or "?"
    train_tokens = data.get("train_tokens")
    c_range = _range([r.get("compute_pf_days") for r in fin])
    return (f"Data: `{task}` (embedded corpus){f', {train_tokens:,} training tokens' if train_tokens else ''}, "
            f"vocabulary {vocab}, n_ctx {_fmt(n_ctx, '.0f') if isinstance(n_ctx, float) else n_ctx}. "
            f"Covered by finished runs: N = {_range([r.get('n_params_nonembedding') for r in fin])} non-embedding "
            f"parameters, D = {_range([r.get('tokens') for r in fin])} tokens, C = {c_range} PF-days, "
            f"{_range([r.get('steps') for r in fin], '.0f')} steps. Paper: WebText2 (2.3e10 tokens), vocabulary "
            "50257, n_ctx 1024, N up to 1.5e9, C up to ~1e4 PF-days.")


def _data_tag(rep: Report) -> str:
    """Short 'what differs' prefix shared by every row: corpus, vocabulary, context (paper: WebText2, 50257, 1024)."""
    s = next(iter(rep.sweep.summaries.values()), {}) if rep.sweep.summaries else {}
    data = s.get("data") or {}
    vocab = data.get("vocab_size") or s.get("vocab_size")
    n_ctx = s.get("n_ctx") or data.get("n_ctx")
    parts = [str(data.get("task") or "our corpus")]
    if vocab:
        parts.append(f"V = {int(vocab)}")
    if n_ctx:
        parts.append(f"n_ctx = {int(n_ctx)}")
    return ", ".join(parts) + "; "


def _exponent_table(rep: Report) -> list:
    if not rep.exponents:
        return ["*No exponent could be fitted from this sweep (see the sections below).*"]
    out = ["| quantity | fit | ours (95% CI) | paper | what differs in our set-up | caveats |",
           "|---|---|---|---|---|---|"]
    tag = _data_tag(rep)
    for e in rep.exponents:
        fmt = "{:.3g}" if abs(e["value"]) >= 100 or abs(e["value"]) < 1e-2 else "{:.4f}"
        out.append(f"| {e['symbol']} | {e['what']} | {rt.format_ci(e['value'], e['ci'], fmt)} | {e['paper']:g} "
                   f"({e['paper_src']}) | {tag}{e['differs']} | {'; '.join(e['notes']) or 'none'} |")
    return out


def _run_table(rep: Report) -> list:
    out = ["| run | group | N | D (tokens) | B (tokens) | steps | final loss | best loss | tokens/s | MFU | status |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rep.sweep.rows:
        mfu = r.get("mfu")
        out.append(f"| {r.get('run')} | {r.get('group') or '–'} | {_fmt(r.get('n_params_nonembedding'))} | "
                   f"{_fmt(r.get('tokens'))} | {_fmt(r.get('batch_tokens'), '.0f')} | {_fmt(r.get('steps'), '.0f')} | "
                   f"{_fmt(r.get('final_eval_loss'), '.4f')} | {_fmt(r.get('best_eval_loss'), '.4f')} | "
                   f"{_fmt(r.get('tokens_per_sec'), ',.0f')} | "
                   f"{(f'{100 * mfu:.1f}%' if isinstance(mfu, float) else '–')} | {r.get('status') or '–'} |")
    failed = [r for r in rep.sweep.rows if r.get("status") == "failed"]
    if failed:
        out += ["", f"**{len(failed)} failed run(s):**", ""]
        out += [f"- `{r.get('run')}` ({r.get('group')}): {str(r.get('error') or 'no error recorded').strip()}"
                for r in failed]
    pending = [r for r in rep.sweep.rows if r.get("status") not in ("finished", "failed")]
    if pending:
        out += ["", f"{len(pending)} run(s) not finished: {', '.join(str(r.get('run')) for r in pending)}."]
    return out


SECTIONS = (
    ("L(N) at convergence: from whole learning curves (Fig. 1 right, eq 1.6)", section_ln_converged),
    ("L(N) of the final (unconverged) losses (Fig. 6)", section_ln),
    ("L(D): loss vs data with early stopping (Fig. 1 centre)", section_ld),
    ("L(C) and the compute-efficient frontier (Fig. 1 left, Figs. 13-14)", section_lc),
    ("L(C_min) (Table 5)", section_lcmin),
    ("L(N, D): overfitting (Fig. 9, eq. 1.5)", section_lnd),
    ("L(N, S_min) (Fig. 11, eq. 1.6)", section_lns),
    ("Critical batch size B_crit(L) and B_simple (Fig. 10)", section_bcrit),
    ("Loss per token position (Fig. 20)", section_position),
    ("LSTM vs Transformer (Fig. 7)", section_lstm),
    ("Recurrent Transformer (Fig. 17)", section_recurrent),
    ("Generalisation to another distribution (Fig. 8)", section_transfer),
    ("Sample efficiency (Fig. 2)", section_sample_efficiency),
    ("Predict, then verify", section_prediction),
)
FIT_ERRORS = (InputError, fitting.FitError, ValueError, KeyError, TypeError, ZeroDivisionError, np.linalg.LinAlgError)


def _run_section(rep: Report, fn) -> list:
    try:
        return fn(rep)
    except NotMeasured as e:
        return [f"*Not measured in this sweep: {e}.*"]
    except FIT_ERRORS as e:
        # A failed fit is a finding about the data, not a reason to lose the rest of the report.
        traceback.print_exc(file=sys.stderr)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return [f"*Not measured in this sweep: the fit failed ({type(e).__name__}: {msg}).*"]


def _remove_stale(directory: str, keep: list, pattern: str):
    for path in glob.glob(os.path.join(directory, pattern)):
        if os.path.basename(path) not in keep:
            os.remove(path)


def build(root: str, n_boot: int = 200, seed: int = 0) -> str:
    """Write ROOT/report.md, ROOT/figures/*.png, ROOT/fits/*.json; returns the report's path."""
    start = time.time()
    sweep = Sweep.load(root)
    os.makedirs(os.path.join(root, "figures"), exist_ok=True)
    rep = Report(sweep, n_boot, seed)
    bodies = [(title, _run_section(rep, fn)) for title, fn in SECTIONS]
    n_fin, n_all = len(sweep.finished()), len(sweep.rows)
    groups = sorted({str(r.get("group")) for r in sweep.rows if r.get("group")})
    head = ["# Scaling laws reproduction report (Kaplan et al. 2020)", "",
            f"Sweep `{os.path.abspath(root)}`: {n_all} runs ({n_fin} finished) in groups {', '.join(groups) or '–'}. "
            f"Bootstrap: {n_boot} replicates, seed {seed}. Every number below is measured in this sweep; the paper's "
            "values are beside ours, never in their place.", "", _setup_text(rep), ""]
    if "ln_figure" in rep.setup:
        head += [rep.setup["ln_figure"], ""]
    else:
        head += [f"*L(N) headline figure: {bodies[0][1][0].strip('*')}*", ""]
    pred = rep.setup.get("prediction")
    if pred:
        head += [f"Predict-then-verify: predicted {pred['pred']:.4f}, measured {pred['measured']:.4f} for "
                 f"`{pred['run']}`, error {pred['error']:+.4f} ({'inside' if pred['inside'] else 'outside'} the 95% CI).", ""]
    head += ["## Exponents: ours vs the paper", "", *_exponent_table(rep), "", "## Runs", "", *_run_table(rep), ""]
    text = head
    for title, body in bodies:
        text += [f"## {title}", "", *body, ""]
    text.append(f"_Generated by `python -m experiments.report --root={root}` in {time.time() - start:.1f} s._")
    _remove_stale(os.path.join(root, "figures"), rep.figures, "*.png")
    _remove_stale(os.path.join(root, "fits"), [f"{f}.json" for f in rep.fits], "*.json")
    path = os.path.join(root, "report.md")
    fileio.write_text_atomic(path, "\n".join(text) + "\n")
    return path


def main(argv):
    if len(argv) > 1:
        print(f"report: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        sys.exit(2)
    if not ROOT.value:
        print("report: error: --root=DIR is required (a sweep root with runs.csv)", file=sys.stderr)
        sys.exit(2)
    if BOOTSTRAP.value < 0:
        print(f"report: error: --bootstrap must be >= 0, got {BOOTSTRAP.value}", file=sys.stderr)
        sys.exit(2)
    try:
        path = build(ROOT.value, BOOTSTRAP.value, SEED.value)
    except InputError as e:
        print(f"report: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"[report] wrote {path} (figures in {os.path.join(ROOT.value, 'figures')}, fits in "
          f"{os.path.join(ROOT.value, 'fits')})")


if __name__ == "__main__":
    app.run(main)
