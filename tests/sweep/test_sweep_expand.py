"""Sweep files: grid expansion, run naming and validation (no training)."""
import glob
import os
import subprocess
import sys

import pytest

from scaling import sweep

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write(tmp_path, text, name="s.gin"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BASE = """
Sweep.name = 'unit'
Sweep.base_gin_files = ['gin/data/embedded.gin', 'gin/optim/adam.gin']
Sweep.base_gin_params = {'TrainConfig.num_steps': 10, 'TrainConfig.batch_size': 16}
"""


def test_grid_is_cartesian_and_names_encode_model_d_b_and_knobs(tmp_path):
    path = write(tmp_path, BASE + """
Sweep.blocks = [
    {'group': 'data', 'models': ['cpu_12k', 'cpu_55k'],
     'grid': {'DataConfig.data_budget_tokens': [65536, 262144], 'TrainConfig.seed': [0, 1]}},
    {'group': 'batch_scan', 'models': ['cpu_12k'], 'gin_files': ['gin/optim/constant.gin'],
     'grid': {'TrainConfig.batch_size,TrainConfig.num_steps': [(8, 40), (16, 20), (32, 10)]},
     'params': {'TrainConfig.learning_rate': 0.001}},
    {'group': 'ladder', 'models': ['cpu_98k']},
]
""")
    spec, runs = sweep.expand(path)
    assert spec.name == "unit"
    names = [r.name for r in runs]
    assert names == [
        "cpu_12k-D65k5-B16-seed0", "cpu_12k-D65k5-B16-seed1", "cpu_12k-D262k-B16-seed0", "cpu_12k-D262k-B16-seed1",
        "cpu_55k-D65k5-B16-seed0", "cpu_55k-D65k5-B16-seed1", "cpu_55k-D262k-B16-seed0", "cpu_55k-D262k-B16-seed1",
        "cpu_12k-Dall-B8-S40", "cpu_12k-Dall-B16-S20", "cpu_12k-Dall-B32-S10",
        "cpu_98k-Dall-B16",
    ]
    assert len(set(names)) == len(names)
    assert all(sweep.re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names)
    scan = [r for r in runs if r.group == "batch_scan"]
    # Zipped bindings vary together; later bindings (grid) override base params; block files are added.
    assert [(r.planned["batch_size"], r.planned["steps"]) for r in scan] == [(8, 40), (16, 20), (32, 10)]
    assert scan[0].gin_files == ["gin/models/cpu_12k.gin", "gin/data/embedded.gin", "gin/optim/adam.gin",
                                 "gin/optim/constant.gin"]
    assert scan[0].gin_params[-2:] == ["TrainConfig.batch_size=8", "TrainConfig.num_steps=40"]
    assert all(r.planned["learning_rate"] == 0.001 for r in scan)
    # Every run carries a value for every binding swept anywhere (resolved from gin when not swept).
    ladder = runs[-1]
    assert ladder.knobs == {"DataConfig.data_budget_tokens": None, "TrainConfig.seed": 0,
                            "TrainConfig.batch_size": 16, "TrainConfig.num_steps": 10}
    assert runs[0].knobs["DataConfig.data_budget_tokens"] == 65536
    assert ladder.planned["n_params_nonembedding"] == 98304
    assert ladder.planned["tokens"] == 10 * 16 * 128
    # Expansion is stable.
    assert [r.record() for r in sweep.expand(path)[1]] == [r.record() for r in runs]


def test_select_filters_groups(tmp_path):
    path = write(tmp_path, BASE + """
Sweep.blocks = [{'group': 'ladder', 'models': ['cpu_12k', 'cpu_55k']}, {'group': 'holdout', 'models': ['cpu_98k']}]
""")
    _, runs = sweep.expand(path)
    assert [r.name for r in sweep.select(runs, exclude=["holdout"])] == ["cpu_12k-Dall-B16", "cpu_55k-Dall-B16"]
    assert [r.name for r in sweep.select(runs, only=["holdout"])] == ["cpu_98k-Dall-B16"]
    with pytest.raises(sweep.SweepError, match="unknown group 'ladders'"):
        sweep.select(runs, only=["ladders"])


def test_compact_numbers():
    assert sweep.compact_number(16) == "16"
    assert sweep.compact_number(262144) == "262k"
    assert sweep.compact_number(2211840) == "2m21"
    assert sweep.compact_number(1500) == "1k5"
    assert sweep.compact_number(0.001) == "0.001"
    assert sweep.compact_number("a b/c") == "a_b_c"


@pytest.mark.parametrize("blocks, message", [
    ("[{'group': 'ladder', 'models': ['cpu_7']}]", "unknown model 'cpu_7'"),
    ("[{'group': 'ladders', 'models': ['cpu_12k']}]", "unknown group 'ladders'"),
    ("[{'group': 'ladder', 'models': ['cpu_12k'], 'grid': {'TrainConfig.seed': []}}]", "is empty"),
    ("[{'group': 'ladder', 'models': ['cpu_12k']}, {'group': 'holdout', 'models': ['cpu_12k']}]",
     "produced twice"),
    ("[{'group': 'ladder', 'models': ['cpu_12k'], 'grid': {'TrainConfig.batch_sise': [8]}}]", "batch_sise"),
    ("[{'group': 'ladder', 'models': ['cpu_12k'], 'grid': {'TrainConfig.batch_size': [6]}}]",
     "not divisible by TrainConfig.microbatches"),
    ("[{'group': 'ladder', 'models': ['cpu_12k'], 'colour': 1}]", "unknown key"),
    ("[{'group': 'ladder', 'models': ['cpu_12k'], 'params': ['TrainConfig.batch_size = (']}]",
     "gin line 'TrainConfig.batch_size = (' does not parse"),
    ("[{'group': 'ladder', 'models': ['cpu_12k'], 'params': {'TrainConfig.optimizer': 'sgd'}}]", "optimizer"),
    ("[]", "non-empty list"),
])
def test_invalid_sweeps_fail_with_the_file_and_the_problem(tmp_path, blocks, message):
    path = write(tmp_path, BASE + f"Sweep.blocks = {blocks}\n")
    with pytest.raises(sweep.SweepError) as info:
        sweep.expand(path)
    assert path in str(info.value) and message in str(info.value)


def test_malformed_file_is_a_clear_cli_error(tmp_path):
    path = write(tmp_path, "Sweep.name = 'broken'\nSweep.blocks = [{'group': 'ladder', 'models': ['cpu_12k']\n")
    proc = subprocess.run([sys.executable, "-m", "experiments.sweep", f"--gin_file={path}",
                           f"--root={tmp_path / 'root'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "sweep: error: sweep file" in proc.stderr and path in proc.stderr and "cannot parse" in proc.stderr
    assert not (tmp_path / "root").exists()


def test_every_shipped_sweep_expands():
    files = sorted(glob.glob(os.path.join(REPO, "gin", "sweeps", "*.gin")))
    assert {"smoke.gin", "kaplan_cpu_quick.gin", "kaplan_cpu_full.gin", "kaplan_paper.gin", "bcrit_cpu.gin"} <= {
        os.path.basename(f) for f in files}
    for path in files:
        spec, runs = sweep.expand(path)
        assert runs, path
        groups = {r.group for r in runs}
        if "batch_scan" in groups:
            scan = [r for r in runs if r.group == "batch_scan"]
            for model in {r.model for r in scan}:
                sizes = sorted(r.planned["batch_size"] for r in scan if r.model == model)
                assert len(sizes) >= 5 and all(b & (b - 1) == 0 for b in sizes), (path, model, sizes)
            # B_crit needs every scan run's eval curve (>= 2 evaluations after step 0).
            assert all(r.planned["steps"] // r.planned["eval_every"] >= 2 for r in scan), path
        if "ladder" in groups and "holdout" in groups:
            ladder_n = max(r.planned["n_params_nonembedding"] for r in runs if r.group == "ladder")
            assert all(r.planned["n_params_nonembedding"] > ladder_n for r in runs if r.group == "holdout"), path
