"""Fig. 10's batch axis follows the central values, not the intervals (scaling/noise/plots.py)."""
import json
import os

import numpy as np

from scaling.noise import plots

REFERENCE = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "results", "kaplan_cpu_quick", "noise")


def scan_result(b_simple_rows):
    per = [{"model": "m", "target_loss": L, "B_crit": 1000.0 * (5.0 / L) ** 6, "B_crit_lo": 800.0,
            "B_crit_hi": 1300.0, "bracketed": True} for L in np.linspace(4.8, 5.4, 10)]
    return {"per_target": per, "B_star": 1000.0 * 5.0 ** 6, "alpha_B": 1 / 6,
            "paper": {"B_star": 2.1e8, "alpha_B": 0.21}, "b_simple_vs_loss": b_simple_rows}


def test_one_bin_with_an_18_decade_interval_does_not_set_the_axis(tmp_path):
    rows = [{"run": "r", "loss": 5.0, "b_simple": 3000.0, "lo": 1e-6, "hi": 1e12},
            {"run": "r", "loss": 5.2, "b_simple": 2500.0, "lo": 2000.0, "hi": 3100.0}]
    result = scan_result(rows)
    result["per_target"][0]["B_crit_hi"] = None       # a bound the bootstrap could not set, read back from JSON
    grid = np.geomspace(4.8, 5.4, 50)
    lo, hi = plots.bcrit_ylim(result, grid)
    paper_top = 2.1e8 / 4.8 ** (1 / 0.21)
    assert lo == min(p["B_crit"] for p in result["per_target"]) / 2.0
    assert hi == paper_top * 2.0 and hi < 1e7                  # the paper's line is the highest central value
    path = plots.plot_bcrit(result, str(tmp_path / "bcrit.png"))
    assert os.path.getsize(path) > 0


def test_the_reference_figure_spans_at_most_four_decades():
    with open(os.path.join(REFERENCE, "bcrit.json")) as f:
        result = json.load(f)
    losses = [p["target_loss"] for p in result["per_target"]] + [r["loss"] for r in result["b_simple_vs_loss"]]
    lo, hi = plots.bcrit_ylim(result, np.geomspace(min(losses), max(losses), 100))
    assert np.log10(hi / lo) < 4 and lo <= min(p["B_crit"] for p in result["per_target"])
