"""The report being built (`Report`: figures, fits, the exponent table) and the shared formatting:
numbers, ranges, notes, the paper's slope line, fit bands; the headline set-up text and the two tables.
"""
from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from scaling.analysis import api, laws, plots
from scaling.analysis import report_tables as rt
from scaling.core import fileio
from scaling.report.loader import SweepResults


T5, T2, T3, T6 = laws.KAPLAN_TABLE5, laws.KAPLAN_TABLE2, laws.KAPLAN_TABLE3, laws.KAPLAN_TABLE6


PAPER_GREY = "0.55"


def fmt(v, spec=".3g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, spec)


def value_range(values, spec=".3g") -> str:
    v = [float(x) for x in values if rt.positive(x)]
    if not v:
        return "–"
    lo, hi = format(min(v), spec), format(max(v), spec)
    return lo if lo == hi else f"{lo}–{hi}"


def log_grid(x, n=100):
    x = np.asarray(x, dtype=float)
    return np.exp(np.linspace(np.log(x.min()), np.log(x.max()), n))


def paper_slope_line(x, y, exponent, label):
    """The paper's exponent drawn through our data's geometric centre (absolute values differ: other data)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    g = log_grid(x)
    x0, y0 = np.exp(np.mean(np.log(x))), np.exp(np.mean(np.log(y)))
    return dict(x=g, y=y0 * (g / x0) ** exponent, kind="line", ls="--", color=PAPER_GREY, label=label)


@dataclasses.dataclass
class Report:
    sweep: SweepResults
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

    def exponent(self, symbol, what, value, ci, paper, paper_src, differs, notes=(), checks=None):
        """A row of the exponent table. Each of the paper's quantities has one headline row, from the fit that
        identifies it best; a row with `checks` (the headline's symbol) is another fit of that quantity and goes
        to the cross-check table, unless the sweep has no headline row for it."""
        self.exponents.append(dict(symbol=symbol, what=what, value=value, ci=ci, paper=paper, paper_src=paper_src,
                                   differs=differs, notes=list(notes), checks=checks))

    def scale_constant(self, symbol, what, value, ci, paper, paper_src, differs, pivot):
        """A law's scale constant (N_c, B*): the fitted line's value at 1 nat/token, far outside the data, so its
        interval is the exponent's amplified by the extrapolation (ln N_c = ln N + ln L/α_N) and says nothing the
        exponent's row does not. What the data fix is the line inside its range: `pivot` = (label, value,
        [lo, hi]) at the data's geometric centre. The row is flagged when that interval is wide, not N_c's."""
        label, p_value, p_ci = pivot
        p_ci = list(p_ci) if p_ci is not None else [float("nan")] * 2
        text = (f"{differs}; {symbol} is where the fitted line meets 1 nat/token, outside the data, so its interval "
                f"is the exponent's amplified by the extrapolation; inside the data the fit pins {label} = "
                f"{rt.format_ci(p_value, p_ci, '{:.4g}')}")
        self.exponent(symbol, what, value, ci, paper, paper_src, text, rt.ci_notes(label, p_value, *p_ci))

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


def param_ci_notes(symbol: str, params: dict, ci95: dict, key: str) -> list:
    """Wide-CI notes for one fitted parameter (an absent interval counts as unknown, not narrow)."""
    return rt.ci_notes(symbol, params[key], *(ci95.get(key) or [float("nan")] * 2))


def notes_text(notes) -> str:
    return (" **" + "; ".join(notes) + ".**") if notes else ""


def fit_band(predict, col, x):
    g = log_grid(x)
    pred, lo, hi = predict({col: g})
    out = [dict(x=g, y=pred, kind="line", color="crimson", label="fit (ours)")]
    if np.all(np.isfinite(lo)):
        out.append(dict(x=g, y=pred, lo=lo, hi=hi, kind="band", color="crimson", label="95% bootstrap"))
    return out


EMBEDDED_TASKS = ("books_mini", "books_20m", "wiki_mini")   # data/corpora/ in the repository


def corpus_kind(task: str) -> str:
    """How the set-up line describes the training corpus: embedded in the repository, or the user's/TFDS data."""
    if task in EMBEDDED_TASKS:
        return "embedded corpus"
    if task.startswith("local_files"):
        return "your local files"
    return "corpus named by DataConfig.task"


def setup_text(rep: Report) -> str:
    fin = rep.sweep.finished()
    s = next(iter(rep.sweep.summaries.values()), {}) if rep.sweep.summaries else {}
    data = s.get("data") or {}
    vocab = data.get("vocab_size") or s.get("vocab_size") or "?"
    n_ctx = s.get("n_ctx") or data.get("n_ctx") or next((r.get("n_ctx") for r in fin if r.get("n_ctx")), "?")
    task = data.get("task") or "?"
    train_tokens = data.get("train_tokens")
    c_range = value_range([r.get("compute_pf_days") for r in fin])
    return (f"Data: `{task}` ({corpus_kind(task)}){f', {train_tokens:,} training tokens' if train_tokens else ''}, "
            f"vocabulary {vocab}, n_ctx {fmt(n_ctx, '.0f') if isinstance(n_ctx, float) else n_ctx}. "
            f"Covered by finished runs: N = {value_range([r.get('n_params_nonembedding') for r in fin])} non-embedding "
            f"parameters, D = {value_range([r.get('tokens') for r in fin])} tokens, C = {c_range} PF-days, "
            f"{value_range([r.get('steps') for r in fin], '.0f')} steps. Paper: WebText2 (2.3e10 tokens), vocabulary "
            "50257, n_ctx 1024, N up to 1.5e9, C up to ~1e4 PF-days.")


def data_tag(rep: Report) -> str:
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


def _exponent_rows(rep: Report, rows: list) -> list:
    out = ["| quantity | fit | ours (95% CI) | paper | what differs in our set-up | caveats |",
           "|---|---|---|---|---|---|"]
    tag = data_tag(rep)
    for e in rows:
        fmt = "{:.3g}" if abs(e["value"]) >= 100 or abs(e["value"]) < 1e-2 else "{:.4f}"
        out.append(f"| {e['symbol']} | {e['what']} | {rt.format_ci(e['value'], e['ci'], fmt)} | "
                   f"{'–' if e['paper'] is None else format(e['paper'], 'g')} ({e['paper_src']}) | {tag}{e['differs']} | {'; '.join(e['notes']) or 'none'} |")
    return out


def exponent_table(rep: Report) -> list:
    """The headline table (one row per quantity of the paper), then the cross-checks: the other fits of the same
    quantities in this sweep, each with its own caveats, so a reader sees how far the headline values agree."""
    if not rep.exponents:
        return ["*No exponent could be fitted from this sweep (see the sections below).*"]
    symbols = {e["symbol"] for e in rep.exponents if not e.get("checks")}
    is_check = [bool(e.get("checks")) and e["checks"] in symbols for e in rep.exponents]
    headline = [e for e, c in zip(rep.exponents, is_check) if not c]
    checks = [e for e, c in zip(rep.exponents, is_check) if c]
    out = _exponent_rows(rep, headline) if headline else ["*No headline fit in this sweep (see the cross-checks).*"]
    if checks:
        out += ["", "### Cross-checks: other fits of the same quantities", "",
                "Each quantity above comes from the fit that identifies it best in this sweep. These are the other fits "
                "of the same quantities (other groups, other forms of the law, or values derived from other "
                "exponents); where one is flagged or disagrees with its headline row, that bounds how far the "
                "headline can be trusted.", "", *_exponent_rows(rep, checks)]
    return out


def run_table(rep: Report) -> list:
    out = ["| run | group | N | D (tokens) | B (tokens) | steps | final loss | best loss | tokens/s | MFU | status |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rep.sweep.rows:
        mfu = r.get("mfu")
        out.append(f"| {r.get('run')} | {r.get('group') or '–'} | {fmt(r.get('n_params_nonembedding'))} | "
                   f"{fmt(r.get('tokens'))} | {fmt(r.get('batch_tokens'), '.0f')} | {fmt(r.get('steps'), '.0f')} | "
                   f"{fmt(r.get('final_eval_loss'), '.4f')} | {fmt(r.get('best_eval_loss'), '.4f')} | "
                   f"{fmt(r.get('tokens_per_sec'), ',.0f')} | "
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
