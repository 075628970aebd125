"""End-to-end: `python -m experiments.report` on synthetic sweep roots generated from known laws."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import report_synth_sweep as synth

REPO = Path(__file__).resolve().parents[2]
PY = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_FIGURES = ("ln.png", "ld.png", "lc.png", "lcmin.png", "lnd.png", "lns.png", "bcrit.png", "per_position.png",
               "lstm.png", "recurrent.png", "transfer.png", "sample_efficiency.png", "prediction.png")


def run_report(root, *args, check=True):
    proc = subprocess.run([PY, "-m", "experiments.report", f"--root={root}", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def fit(root, name):
    with open(os.path.join(root, "fits", f"{name}.json")) as f:
        return json.load(f)


def section(text: str, title_start: str) -> str:
    """The markdown of one `## ` section."""
    part = text.split(f"\n## {title_start}", 1)[1]
    return part.split("\n## ", 1)[0]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = tmp_path_factory.mktemp("full_sweep")
    rows = synth.full_sweep(str(root))
    proc = run_report(root, "--bootstrap=20", "--seed=1")
    return root, rows, proc, (root / "report.md").read_text()


def test_report_full_sweep_writes_report_and_every_figure(full):
    root, _, proc, text = full
    assert str(root / "report.md") in proc.stdout
    for name in ALL_FIGURES:
        data = (root / "figures" / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, name
        assert f"](figures/{name})" in text, name
    assert "Not measured in this sweep" not in text
    # The headline comes first: the L(N) figure and the exponent table precede the run table and the sections.
    assert text.index("figures/ln.png") < text.index("## Exponents") < text.index("## Runs") < text.index("## L(N)")


def test_report_fits_recover_the_generating_exponents(full):
    root = full[0]
    assert fit(root, "kaplan_n")["params"]["alpha_N"] == pytest.approx(synth.ALPHA_N, rel=0.05)
    # Eq 1.6 at the ladder's one step count: α_N and the shared L_S = (S_c/S)^α_S.
    fixed_s = fit(root, "kaplan_n_fixed_s")["params"]
    assert fixed_s["alpha_N"] == pytest.approx(synth.ALPHA_N, rel=0.01)
    assert fixed_s["L_S"] == pytest.approx((synth.S_C / 1e7) ** synth.ALPHA_S, rel=0.05)
    nd = fit(root, "kaplan_nd")["params"]  # eq 1.5 with Kaplan Table 2 constants
    assert nd["alpha_N"] == pytest.approx(0.076, rel=0.05) and nd["alpha_D"] == pytest.approx(0.103, rel=0.05)
    ns = fit(root, "kaplan_ns")["params"]  # eq 1.6 with Table 3 constants
    assert ns["alpha_N"] == pytest.approx(0.077, rel=0.05) and ns["alpha_S"] == pytest.approx(0.76, rel=0.05)
    # L(D) uses the largest model (N = 1e9) per budget, where eq 1.5 is within 2% of a pure D power law.
    assert fit(root, "kaplan_d")["params"]["alpha_D"] == pytest.approx(0.103, rel=0.05)
    # Fixed-batch L(N, S): the frontier is N_opt ∝ C^(α_S/(α_N+α_S)) and the envelope falls as C^-(α_N α_S/(α_N+α_S)).
    frontier = fit(root, "frontier_n_opt")
    assert frontier["params"]["p_N"] == pytest.approx(synth.FRONTIER_P, rel=0.05)
    lo, hi = frontier["ci95"]["p_N"]   # the bootstrap interval covers the true exponent and is tight
    assert lo <= synth.FRONTIER_P <= hi and hi - lo < 0.01 * synth.FRONTIER_P, (lo, hi)
    assert fit(root, "kaplan_c")["params"]["alpha_C"] == pytest.approx(synth.ENVELOPE_ALPHA_C, rel=0.05)
    assert fit(root, "transfer_wiki_mini")["params"]["offset"] == pytest.approx(0.3, abs=1e-6)
    assert fit(root, "sample_efficiency")["params"]["p"] < 0  # larger models reach the target in fewer tokens


def test_report_exponent_table_lists_ours_beside_the_papers(full):
    text = full[3]
    table = section(text, "Exponents")
    for symbol, paper in (("α_N", "0.076 (Table 5)"), ("α_D", "0.095 (Table 5)"), ("α_C", "0.057 (Table 5)"),
                          ("p_N", "0.73 (Table 6"), ("α_D (eq 1.5)", "0.103 (Table 2)"), ("α_S", "0.76 (Table 3)"),
                          ("α_B", "0.21 (Table 5"), ("α_C^min", "0.05 (Table 5)")):
        line = next((ln for ln in table.splitlines() if ln.startswith(f"| {symbol} |")), None)
        assert line is not None, symbol
        assert paper in line, line
    assert "what differs in our set-up" in table
    assert "vocabulary 4096, n_ctx 128" in text  # the set-up paragraph names what differs from WebText2


def test_headline_table_has_one_row_per_quantity_and_the_other_fits_are_cross_checks(full):
    """One headline row per quantity (the fit that identifies it best); the other fits of the same quantity
    (final losses, eq 1.5, derived frontier exponents) are in the cross-check table below it, with their caveats."""
    table = section(full[3], "Exponents")
    head, checks = table.split("### Cross-checks", 1)
    symbol = lambda ln: ln.split("|")[1].strip()  # noqa: E731
    rows = lambda part: [ln for ln in part.splitlines() if ln.startswith("| ") and not ln.startswith("| quantity")]  # noqa: E731
    head_symbols = [symbol(ln) for ln in rows(head)]
    assert len(head_symbols) == len(set(head_symbols)), head_symbols
    assert {"α_N", "N_c", "α_S", "α_D", "α_B", "B*"} <= set(head_symbols)
    check_symbols = {symbol(ln) for ln in rows(checks)}
    assert {"α_N (final losses)", "α_D (eq 1.5)", "α_N (eq 1.5)", "p_N (derived)"} <= check_symbols
    assert not check_symbols & set(head_symbols)


def test_scale_constants_are_judged_by_the_line_inside_the_data(full):
    """N_c is the converged fit's, where the line meets 1 nat: its interval is α_N's amplified, so the row gives
    the loss the fit pins at the ladder's geometric-mean N and flags only that interval when it is wide."""
    root, _, _, text = full
    n_c = next(ln for ln in section(text, "Exponents").splitlines() if ln.startswith("| N_c |"))
    record = fit(root, "kaplan_n")
    assert f"{record['params']['N_c']:.3g}" in n_c
    assert "inside the data the fit pins L(N = " in n_c
    assert "wide CI for N_c" not in n_c
    b_star = next(ln for ln in section(text, "Exponents").splitlines() if ln.startswith("| B* |"))
    assert "inside the data the fit pins B_crit(L = " in b_star


def test_alpha_n_row_gives_its_spread_over_b_crits_slope(full):
    """S_min's B_crit(L) is extrapolated below the scan's losses: the α_N row gives α_N refitted with α_B at the ends
    of its interval (kaplan_n.json `alpha_N_by_bcrit_alpha_B`, keyed by α_B), the spread the rung bootstrap misses."""
    root, _, _, text = full
    by_slope = fit(root, "kaplan_n")["alpha_N_by_bcrit_alpha_B"]
    bcrit_ci = json.loads((root / "noise" / "bcrit.json").read_text())["ci95"]["alpha_B"]
    assert sorted(float(k) for k in by_slope) == pytest.approx(sorted(bcrit_ci), rel=1e-5)
    row = next(ln for ln in section(text, "Exponents").splitlines() if ln.startswith("| α_N |"))
    assert "a systematic beyond the rung bootstrap's interval" in row
    assert "–".join(f"{v:.4f}" for v in sorted(by_slope.values())) in row


def test_report_prediction_section_states_the_error(full):
    root, rows, _, text = full
    holdout = next(r for r in rows if r["run"] == "holdout_big")
    pred = json.loads((root / "prediction.json").read_text())
    err = holdout["best_eval_loss"] - pred["loss_pred"]
    body = section(text, "Predict, then verify")
    assert f"{err:+.4f}" in body and "**inside** the 95% CI" in body
    assert f"{pred['loss_pred']:.4f}" in body


def test_report_lists_failed_runs_and_recurrent_counts(full):
    text = full[3]
    assert "`lad_broken` (ladder): RuntimeError: XLA out of memory" in text
    rec = section(text, "Recurrent Transformer")
    assert "| rec0 | 9.83e+04 | 4 | 3.93e+05 |" in rec  # shared parameters once, and with the 4 repeats


def test_report_ladder_only_root_says_what_was_not_measured_and_reruns(tmp_path):
    root = tmp_path / "ladder_only"
    root.mkdir()
    synth.ladder_only_sweep(str(root))
    (root / "figures").mkdir()
    (root / "figures" / "lnd.png").write_bytes(PNG_MAGIC)  # a figure from an earlier report of other inputs
    run_report(root, "--bootstrap=10")
    text = (root / "report.md").read_text()
    for why in ("no `data` group in runs.csv", "no `lstm` group in runs.csv", "no `recurrent` group in runs.csv",
                "noise/bcrit.json is absent", "noise/smin_cmin.csv is absent"):
        assert f"Not measured in this sweep: {why}" in text, why
    assert "**Measured: pending**" in section(text, "Predict, then verify")
    figures = sorted(os.listdir(root / "figures"))
    assert figures == sorted(["ln.png", "ln_final.png", "lc.png", "per_position.png", "transfer.png",
                              "sample_efficiency.png"])
    first = {name: (root / "fits" / name).read_text() for name in os.listdir(root / "fits")}
    run_report(root, "--bootstrap=10")  # idempotent: same outputs, replaced in place
    assert {name: (root / "fits" / name).read_text() for name in os.listdir(root / "fits")} == first
    assert sorted(os.listdir(root / "figures")) == figures


def test_report_flags_a_poor_fit_in_words(tmp_path):
    synth.ladder_only_sweep(str(tmp_path), noise=0.15, seed=3)
    run_report(tmp_path, "--bootstrap=10")
    ln = section((tmp_path / "report.md").read_text(), "L(N) of the final")   # the L(N) of the best losses
    line = next(ln_ for ln_ in ln.splitlines() if ln_.startswith("- **Non-embedding N**"))
    assert "poor fit: R² =" in line
    assert fit(tmp_path, "kaplan_n_final")["quality"]["r2_log"] < 0.95


def test_report_without_runs_csv_fails_with_one_clear_line(tmp_path):
    proc = run_report(tmp_path, check=False)
    assert proc.returncode == 2
    assert "runs.csv does not exist" in proc.stderr and "experiments.sweep" in proc.stderr
