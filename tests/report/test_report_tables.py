"""The report's pure math: envelopes, frontier crossings, fit-quality flags, position and transfer fits."""
from __future__ import annotations

import numpy as np
import pytest

from scaling.analysis import plots
from scaling.analysis import report_tables as rt

A_N, A_S = 0.076, 0.76


def _curves(sizes, c=np.geomspace(1e-12, 1e-1, 400), batch=2048.0):
    """Learning curves loss(C) of L(N, S) = (8.8e13/N)^α_N + (2.1e3/S)^α_S at one batch, S = C/(6 N B)."""
    out = []
    for n in sizes:
        s = c * 8.64e19 / (6 * n * batch)
        keep = s >= 10
        out.append((c[keep], (8.8e13 / n) ** A_N + (2.1e3 / s[keep]) ** A_S))
    return out


def test_report_envelope_takes_the_lowest_covering_curve():
    c1 = np.array([1.0, 10.0, 100.0])
    c2 = np.array([10.0, 100.0, 1000.0])
    env = rt.envelope([(c1, np.array([5.0, 4.0, 3.5])), (c2, np.array([6.0, 3.0, 2.0]))], n_grid=4)
    np.testing.assert_allclose(env["C"], [1, 10, 100, 1000])
    np.testing.assert_allclose(env["loss"], [5.0, 4.0, 3.0, 2.0])
    np.testing.assert_array_equal(env["winner"], [0, 0, 1, 1])


def test_report_frontier_crossings_recover_the_fixed_batch_exponent():
    sizes = [1e4 * 3.0 ** k for k in range(6)]
    trans = rt.frontier_transitions(_curves(sizes), sizes)
    assert len(trans) == 5
    assert [t["N_lo"] for t in trans] == sizes[:-1]
    fit = rt.loglog_fit([t["C"] for t in trans], [t["N_opt"] for t in trans])
    assert fit["p"] == pytest.approx(A_S / (A_N + A_S), rel=5e-3)


def test_report_crossing_is_none_when_the_larger_model_never_overtakes():
    c = np.geomspace(1, 100, 20)
    assert rt.crossing(c, 2.0 * c ** -0.1, c, 3.0 * c ** -0.1) is None
    assert rt.crossing(c, 3.0 * c ** -0.1, c, 2.0 * c ** -0.1) is None  # lower from the start: no crossing inside
    x = rt.crossing(c, 3.0 * c ** -0.1, c, 6.0 * c ** -0.3)  # 6 c^-0.3 = 3 c^-0.1  ->  c = 2^(1/0.2) = 32
    assert x == pytest.approx(32.0, rel=1e-3)


def test_report_first_reach_interpolates_in_log_log():
    x = np.array([10.0, 1000.0, 1e5])
    loss = 10.0 * x ** -0.5
    assert rt.first_reach(x, loss, 1.0) == pytest.approx(100.0)
    assert rt.first_reach(x, loss, 0.001) is None
    assert rt.first_reach(x, loss, 5.0) == 10.0


def test_report_fit_quality_is_silent_on_an_exact_power_law():
    x = np.geomspace(1e4, 1e7, 8)
    y = 5 * x ** -0.08
    q = rt.fit_quality(x, y, y * (1 + 1e-9 * np.sin(np.arange(8))))
    assert q["r2_log"] > 0.999 and rt.quality_notes(q) == []


def test_report_fit_quality_flags_bends_trends_and_noise():
    x = np.geomspace(1e4, 1e7, 10)
    bent = 2.0 + 50 * x ** -0.3                      # a floor: a straight log-log line misses the bend
    slope, icpt = np.polyfit(np.log(x), np.log(bent), 1)
    notes = rt.quality_notes(rt.fit_quality(x, bent, np.exp(icpt) * x ** slope))
    assert any(n.startswith("curvature") for n in notes)
    y = 5 * x ** -0.1                                  # the right form, the wrong exponent: a residual trend
    notes = rt.quality_notes(rt.fit_quality(x, y, 5 * x ** -0.08))
    assert any(n.startswith("residual trend") for n in notes)
    noisy = y * np.exp(np.random.default_rng(0).normal(0, 0.3, len(x)))
    slope, icpt = np.polyfit(np.log(x), np.log(noisy), 1)
    notes = rt.quality_notes(rt.fit_quality(x, noisy, np.exp(icpt) * x ** slope))
    assert any(n.startswith("poor fit") for n in notes)


def test_report_ci_notes_call_wide_intervals_wide():
    assert rt.ci_notes("a", 1.0, 0.9, 1.1) == []
    assert "hi/lo = 4×" in rt.ci_notes("a", 1.0, 0.5, 2.0)[0]
    assert "width 150%" in rt.ci_notes("a", 0.2, -0.1, 0.2)[0]
    assert rt.ci_notes("a", 1.0, float("nan"), float("nan")) == ["a: no bootstrap interval"]
    assert rt.format_ci(0.0761, [0.07, 0.08], "{:.3f}") == "0.076 (0.070–0.080)"


def test_report_position_law_and_transfer_offset():
    t = np.arange(1, 129)
    f = rt.position_power_law(3.0 + 2.0 * t ** -0.4)
    assert f["c"] == pytest.approx(0.4, rel=1e-3) and f["L_inf"] == pytest.approx(3.0, rel=1e-3)
    tr = rt.transfer_offset([4.0, 4.5, 5.0], [4.3, 4.8, 5.3])
    assert tr["offset"] == pytest.approx(0.3) and tr["slope"] == pytest.approx(1.0)


def test_report_read_rows_parses_numbers_and_blanks(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("run,group,N,data_budget_tokens\na,ladder,12288,\n")
    assert rt.read_rows(str(path)) == [dict(run="a", group="ladder", N=12288.0, data_budget_tokens=None)]
    assert rt.read_rows(str(tmp_path / "missing.csv")) == []


def test_report_plot_panels_draws_every_series_kind(tmp_path):
    x = np.geomspace(1, 100, 5)
    path = plots.plot_panels(str(tmp_path / "f.png"), [
        dict(title="a", ylog=True, series=[dict(x=x, y=x, kind="scatter", label="pts"), dict(x=x, y=x, cmap_index=0.5),
                                           dict(x=x, y=x, lo=x / 2, hi=x * 2, kind="band")]),
        dict(title="b", xlog=False, note="n", series=[dict(x=x, y=x, yerr=np.stack([x / 10, x / 10]),
                                                           kind="errorbar", color="k")])], "title")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_report_thin_per_run_keeps_each_runs_range():
    rows = [dict(run=f"r{j}", S_min=float(s)) for j in range(3) for s in range(1, 301)]
    thin = rt.thin_per_run(rows, 60, key="S_min")
    assert 57 <= len(thin) <= 63
    for j in range(3):
        s = [r["S_min"] for r in thin if r["run"] == f"r{j}"]
        assert min(s) == 1.0 and max(s) == 300.0
    assert rt.thin_per_run(rows[:10], 60, key="S_min") == rows[:10]


def test_position_curve_prefers_the_stride_one_position_eval():
    from scaling.analysis import report_tables as rt
    from scaling.report.context import position_curve
    t = np.arange(1, 129)
    law = 4.0 + 0.5 * t ** -0.6
    noisy = law + np.random.default_rng(0).normal(0, 0.1, size=t.size)   # disjoint windows: ~0.1 nats per position
    record = dict(loss_per_position=noisy.tolist(), eval_windows=256,
                  position_eval_loss_per_position=law.tolist(), position_eval_windows=4096)
    curve, windows, paired = position_curve(record)
    assert paired and windows == 4096
    np.testing.assert_array_equal(curve, law)
    fit = rt.position_power_law(curve)
    assert fit["r2"] > 0.999 and fit["c"] == pytest.approx(0.6, rel=1e-3)
    assert rt.position_power_law(noisy)["r2"] < 0.9                        # what the noisy curve alone gives
    curve, windows, paired = position_curve(dict(loss_per_position=noisy.tolist(), eval_windows=256))
    assert not paired and windows == 256 and np.array_equal(curve, noisy)  # older runs: the disjoint windows
