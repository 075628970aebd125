"""The LSTM and recurrent sections compare a family with the Transformer ladder trained as many steps."""
from __future__ import annotations

import re

import numpy as np
import pytest

import report_synth_sweep as synth
from scaling.analysis import learning_curves
from scaling.report.document import Report
from scaling.report.families import section_lstm
from scaling.report.loader import SweepResults


def test_best_loss_by_step_reads_the_curve_up_to_the_step():
    steps, loss = np.array([100, 200, 300, 400]), np.array([5.0, 4.0, 4.2, 3.0])
    assert learning_curves.best_loss_by_step(steps, loss, 300) == 4.0      # the best so far, not the last
    assert learning_curves.best_loss_by_step(steps, loss, 400) == 3.0
    assert learning_curves.best_loss_by_step(steps, loss, 500) is None     # the curve stops before 500
    assert learning_curves.best_loss_by_step(steps, loss, 50) is None


@pytest.mark.parametrize("lstm_steps", [1e5, 1e7])
def test_lstm_is_compared_with_the_ladder_at_its_own_step_count(tmp_path, lstm_steps):
    """The LSTMs lose 8 % to a Transformer of the same N at every step; the ladder trains 1e7 steps. Compared with
    the ladder's final losses, LSTMs trained 1e5 steps would look far worse; compared at 1e5 steps, the gap is 8 %."""
    root = str(tmp_path)
    rows = synth.ladder_runs(root, n_eval=61)   # evals at S = 10^(2 + k/12): 1e5 and 1e6 among them
    rows += synth.ladder_runs(root, sizes=[3e4, 3e5], group="lstm", prefix="lstm", factor=1.08, n_eval=20,
                              steps=lstm_steps)
    synth.write_runs_csv(root, rows)
    text = "\n".join(section_lstm(Report(SweepResults.load(root), n_boot=0, seed=0)))
    assert f"by step {lstm_steps:.0f}, the lstm runs' step count" in text
    gaps = [float(g) for g in re.search(r"the LSTM loss is ([^ ]+%(?:, [^ ]+%)*) relative", text).group(1)
            .replace("%", "").split(", ")]
    assert gaps == pytest.approx([8.0, 8.0], abs=0.6), text   # the ladder's power-law fit is within 0.6 % of eq 1.6


def test_a_family_with_mixed_step_counts_falls_back_to_the_ladder_final_losses(tmp_path):
    root = str(tmp_path)
    rows = synth.ladder_runs(root, n_eval=61)   # evals at S = 10^(2 + k/12): 1e5 and 1e6 among them
    rows += synth.ladder_runs(root, sizes=[3e4], group="lstm", prefix="lstmA", n_eval=20, steps=1e5)
    rows += synth.ladder_runs(root, sizes=[3e5], group="lstm", prefix="lstmB", n_eval=20, steps=1e6)
    synth.write_runs_csv(root, rows)
    text = "\n".join(section_lstm(Report(SweepResults.load(root), n_boot=0, seed=0)))
    assert "at the end of each rung's training (the lstm runs' step counts differ)" in text
