"""The committed LR-grid batch scan (experiments/results/kaplan_cpu_lr_grid/, gin/sweeps/kaplan_cpu_lr_grid.gin).

Pins what its README concludes from the files the job wrote: with the fewest steps over an LR grid at each target
(McCandlish et al. 2018 §2.2), B_crit(L) does not straighten; a law in the tokens E_min fits better than one in L.
"""
from collections import defaultdict

from scaling.analysis import bcrit
from tests.experiments import reference

RESULTS = "kaplan_cpu_lr_grid"


def load_bcrit():
    return reference.read_json(RESULTS, "noise", "bcrit.json")


def test_every_batch_of_both_sizes_ran_at_four_learning_rates():
    rows = reference.read_runs(RESULTS)
    assert rows and all(r["status"] == "finished" for r in rows)
    lrs = defaultdict(set)
    for r in rows:
        lrs[(r["model"], int(r["batch_size"]))].add(float(r["learning_rate"]))
    assert {b for _, b in lrs} == {2, 4, 8, 16, 32, 64} and {m for m, _ in lrs} == {"cpu_6k", "cpu_25k"}
    for (model, _), rates in lrs.items():
        assert len(rates) == 4
        ratios = sorted(x / min(rates) for x in rates)
        assert [round(x, 6) for x in ratios] == [1.0, 2.0, 4.0, 8.0], (model, ratios)   # 0.5x ... 4x eq. D.1


def test_the_fit_takes_the_fastest_lr_and_says_where_the_grid_ends():
    b = load_bcrit()
    assert len(b["lr_grid"]) == 12 and b["bracketed_fraction"] >= 0.8
    for g in b["lr_grid"]:
        assert len(g["learning_rates"]) == 4 and sum(g["fastest_at_targets"]) == 30
    at_top = [g for g in b["lr_grid"] if max(range(4), key=lambda i: g["fastest_at_targets"][i])
              == max(range(4), key=lambda i: g["learning_rates"][i])]
    assert len(at_top) >= 6   # the grid's top LR (4x) is the fastest at most (size, batch) pairs: not bracketed


def test_tuning_the_lr_does_not_straighten_b_crit_of_l():
    grid = load_bcrit()
    # The same scan at one LR, its warmup fixed in tokens as in the grid: the quick preset's until session 16.
    one_lr = reference.read_json("kaplan_cpu_scan_warmup", "quick_token_warmup", "bcrit.json")
    assert grid["alpha_B"] < one_lr["alpha_B"]          # steeper with the LR tuned per batch
    assert grid["pivot"]["B_crit"] > one_lr["pivot"]["B_crit"]
    shape = bcrit.bcrit_shape(grid["per_target"])
    assert shape["r2_vs_tokens"] > shape["r2_vs_loss"]
    assert shape["r2_vs_loss"] < bcrit.bcrit_shape(one_lr["per_target"])["r2_vs_loss"]
