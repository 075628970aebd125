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


def test_the_warmup_is_named_only_when_it_moves_b_crit():
    small = [{"model": "cpu_25k", "warmup_steps": {"256": 12, "8192": 12}, "bcrit_ratio_median": 1.03,
              "bcrit_ratio_highest_target": 1.05, "highest_target": 5.4}]
    assert batch._warmup_text(small, 0.1) == ""
    assert batch._warmup_text(None, 0.1) == ""                     # a bcrit.json written before the check
    large = [{"model": "cpu_6k", "warmup_steps": {"256": 200, "512": 100, "8192": 6}, "bcrit_ratio_median": 0.85,
              "bcrit_ratio_highest_target": 0.71, "highest_target": 5.51}] + small
    text = batch._warmup_text(large, 0.1)
    assert "200 to 6 steps" in text and "cpu_6k: ×0.71 at L = 5.51, ×0.85 at the median target" in text
    assert text.count("cpu_6k") == 1                                # only the model whose B_crit it moves
    assert "inflates B_crit" in text
    long_in_steps = [{"model": "cpu_6k", "warmup_steps": {"256": 100, "8192": 100}, "bcrit_ratio_median": 1.2,
                      "bcrit_ratio_highest_target": 1.6, "highest_target": 5.5}]
    text = batch._warmup_text(long_in_steps, 0.1)
    assert "100 steps" in text and "lowers B_crit" in text and "inflates" not in text


def test_the_sizes_collapse_is_named_only_within_tolerance():
    near = batch._bcrit_shape_text({"collapse": 0.05}, [])
    far = batch._bcrit_shape_text({"collapse": 0.38}, [])
    assert near.startswith("B_crit depends on L alone") and "5%" in near
    assert far.startswith("B_crit does not depend on L alone") and "38%" in far
