"""The benchmark entry points run (their numbers are reported by `python -m experiments.bench`, not tested)."""
import os
import subprocess
import sys

from experiments import bench_train
from experiments.model_table import load_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_train_bench_times_a_real_rung():
    result = bench_train.time_train_step(load_model_config(os.path.join(ROOT, "gin/models/cpu_12k.gin")),
                                         batch=8, steps=2)
    assert result["n_params_nonembedding"] == 12_288
    assert result["tokens_per_sec"] > 0 and result["step_s"] > 0
    assert result["flops_per_token"] > 6 * 12_288  # 6N plus the attention term


def test_bench_rejects_an_unknown_section(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "experiments.bench", "gpu", f"--out={out}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown section" in proc.stderr
    assert not out.exists()
