"""The holdout prediction's law choice (experiments.reproduce): eq 1.6 at fixed S is the headline once the
ladder has the degrees of freedom for it, and it extrapolates a fixed-S ladder where eq 1.1 cannot."""
import numpy as np
import pytest

from experiments import reproduce
from scaling.analysis import laws


def test_law_choice_needs_five_rungs_for_the_three_parameter_form():
    assert reproduce.prediction_laws(3) == ["kaplan_n"]
    assert reproduce.prediction_laws(4) == ["kaplan_n"]
    assert reproduce.prediction_laws(5) == ["kaplan_n_fixed_s", "kaplan_n"]


def test_fixed_s_form_predicts_a_larger_rung_of_a_fixed_step_ladder():
    # A ladder trained S = 300 steps obeys eq 1.6 with one S: the held-out rung 1.8x above the top one.
    N = np.logspace(4, 6, 6)
    points = {"run": [f"r{i}" for i in range(6)], "N": list(N), "loss": list(laws.loss_of_ns(N, 300.0))}
    n_target = 1.8 * N[-1]
    truth = float(laws.loss_of_ns(n_target, 300.0))
    fixed = reproduce.predict_loss("kaplan_n_fixed_s", points, n_target, n_boot=20)
    pure = reproduce.predict_loss("kaplan_n", points, n_target, n_boot=20)
    assert fixed["loss_pred"] == pytest.approx(truth, rel=1e-4)
    assert abs(pure["loss_pred"] - truth) > 10 * abs(fixed["loss_pred"] - truth)
    for rec in (fixed, pure):   # every prediction carries its bootstrap interval
        assert rec["loss_pred_lo"] is not None and rec["loss_pred_hi"] is not None, rec
        assert rec["loss_pred_lo"] <= rec["loss_pred"] <= rec["loss_pred_hi"]
    assert fixed["loss_pred_lo"] <= truth * (1 + 1e-4) and truth * (1 - 1e-4) <= fixed["loss_pred_hi"]
    assert set(fixed["fit_params"]) == {"N_c", "L_S", "alpha_N"}


def test_full_preset_without_its_corpus_is_refused_naming_the_path(tmp_path):
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, SCALING_SHARED_DATA=str(tmp_path / "nowhere"), JAX_PLATFORMS="cpu")
    root = tmp_path / "root"
    proc = subprocess.run([sys.executable, "-m", "experiments.reproduce", "--preset=full", f"--root={root}"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{tmp_path / 'nowhere'}/corpus/train-*.jsonl.xz matches no file" in proc.stderr
    assert "SCALING_SHARED_DATA" in proc.stderr
    assert not root.exists()   # nothing written
