"""The committed three-size batch scan (experiments/results/kaplan_cpu_scan_sizes/, gin/sweeps/kaplan_cpu_scan_sizes.gin).

Pins what its README concludes from the files the job wrote: B_crit depends on the loss, not the size, over three
sizes (16x in N); every size alone steepens towards low loss (the bend of the quick preset's B_crit(L) is neither the
small models' nor where the small-batch runs end).
"""
from collections import defaultdict

from scaling.analysis import bcrit
from tests.experiments import reference

RESULTS = "kaplan_cpu_scan_sizes"


def load_bcrit():
    return reference.read_json(RESULTS, "noise", "bcrit.json")


def test_three_sizes_at_six_batches_and_the_small_batches_of_two_trained_longer():
    rows = reference.read_runs(RESULTS)
    assert len(rows) == 18 and all(r["status"] == "finished" for r in rows)
    steps = defaultdict(dict)
    for r in rows:
        steps[r["model"]][int(r["batch_size"])] = int(r["steps"])
    assert set(steps) == {"cpu_6k", "cpu_25k", "cpu_98k"}
    assert all(set(by_batch) == {2, 4, 8, 16, 32, 64} for by_batch in steps.values())
    for model in ("cpu_6k", "cpu_25k"):
        assert steps[model][2] == 2 * steps["cpu_98k"][2] and steps[model][4] == 2 * steps["cpu_98k"][4]


def test_b_crit_depends_on_the_loss_not_the_size():
    b = load_bcrit()
    assert b["bracketed_fraction"] >= 0.8 and sorted(b["models"]) == ["cpu_25k", "cpu_6k", "cpu_98k"]
    assert bcrit.bcrit_shape(b["per_target"])["collapse"] < 0.10


def test_every_size_alone_steepens_towards_low_loss():
    fit = load_bcrit()
    per = fit["per_target"]
    for model in ("cpu_6k", "cpu_25k", "cpu_98k"):
        shape = bcrit.bcrit_shape([p for p in per if p["model"] == model])
        assert shape["alpha_B_low_L"] < 0.7 * shape["alpha_B_high_L"], (model, shape)
    # cpu_25k's longer small-batch runs reach lower targets, where B_crit rises above the pooled line.
    lowest = min((p for p in per if p["model"] == "cpu_25k"), key=lambda p: p["target_loss"])
    assert lowest["target_loss"] < 4.70
    assert lowest["B_crit"] > fit["B_star"] / lowest["target_loss"] ** (1 / fit["alpha_B"])
