"""With an LR grid in the batch scan (noise/bcrit.json `lr_grid`), eq. 1.6's L(N, S_min) fit keeps each batch's
fastest-LR run only: a run at a mistuned LR is slower at every loss, so its S_min is not S_min."""
import json
import os
import types

from scaling.report import batch


def test_untuned_runs_are_the_grid_runs_other_than_each_batch_fastest(tmp_path):
    rep = types.SimpleNamespace(root=str(tmp_path))
    assert batch.untuned_runs(rep) == set()          # no noise analysis yet: nothing to leave out
    os.makedirs(tmp_path / "noise")
    grid = [{"model": "m", "batch_tokens": 256.0, "runs": ["a_lr1", "a_lr2", "a_lr4"], "fastest_run": "a_lr2",
             "learning_rates": [1e-3, 2e-3, 4e-3], "fastest_at_targets": [3, 20, 7]},
            {"model": "m", "batch_tokens": 512.0, "runs": ["b_lr1", "b_lr2"], "fastest_run": "b_lr1",
             "learning_rates": [1e-3, 2e-3], "fastest_at_targets": [30, 0]}]
    with open(tmp_path / "noise" / "bcrit.json", "w") as f:
        json.dump({"lr_grid": grid}, f)
    assert batch.untuned_runs(rep) == {"a_lr1", "a_lr4", "b_lr2"}
    with open(tmp_path / "noise" / "bcrit.json", "w") as f:
        json.dump({"lr_grid": []}, f)                 # one LR per batch (the presets): every run stays
    assert batch.untuned_runs(rep) == set()
