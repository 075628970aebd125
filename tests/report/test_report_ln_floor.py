"""The α_N row explains a bend of eq 1.1 by what the sweep can tell: a floor, and unequal step counts."""
from __future__ import annotations

import numpy as np
import pytest

import report_synth_sweep as synth
from scaling.report.document import Report
from scaling.report.laws import section_ln_converged
from scaling.report.loader import SweepResults

E, N_C, ALPHA_N, S_C, ALPHA_S = 3.0, 2e4, 0.25, 300.0, 0.8
SIZES = [3e3 * 2.0 ** k for k in range(8)]


def floor_ladder(root, steps_of):
    """Curves L = E + (N_c/N)^α_N + (S_c/S)^α_S (one batch, no B_crit file: S_min = S): eq 1.1 on their S -> inf
    limits bends, E + (N_c/N)^α_N does not."""
    rows, rng = [], np.random.default_rng(0)
    for i, n in enumerate(SIZES):
        steps = np.arange(100, steps_of(i) + 1, 100, dtype=float)
        loss = E + (N_C / n) ** ALPHA_N + (S_C / steps) ** ALPHA_S
        loss *= np.exp(rng.normal(0, 1e-3, len(steps)))   # eval noise: exact curves leave float-precision residuals
        evals = [dict(step=int(s), tokens=float(s * synth.BATCH_TOKENS), eval_loss=float(v)) for s, v in zip(steps, loss)]
        row = synth._row(f"lad{i}", "ladder", n, float(steps[-1]), float(loss[-1]), float(loss.min()))
        synth._write_run(root, row, evals)
        rows.append(row)
    synth.write_runs_csv(root, rows)


def alpha_n_row(root) -> dict:
    rep = Report(SweepResults.load(str(root)), n_boot=20, seed=0)
    section_ln_converged(rep)
    return next(r for r in rep.exponents if r["symbol"] == "α_N")


@pytest.mark.parametrize("unequal", [False, True])
def test_a_bend_removed_by_a_floor_names_the_step_counts_when_they_differ(tmp_path, unequal):
    floor_ladder(str(tmp_path), (lambda i: 4000 - 400 * i) if unequal else (lambda i: 3000))
    row = alpha_n_row(tmp_path)
    assert any(n.startswith("curvature") for n in row["notes"])   # eq 1.1 bends on the floor
    row = row["differs"]
    assert "removed by an irreducible-loss floor" in row
    assert ("extrapolated unequally far" in row) == unequal
