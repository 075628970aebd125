"""Smoke test of `python -m experiments.bench sweep` at tiny size: the figures' schema (not their values)."""
import json
import math
import os
import subprocess
import sys

from experiments import bench

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_sweep_schema(tmp_path):
    out = str(tmp_path / "bench.json")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)          # one CPU device per run (tests/conftest.py asks for 8 fake ones)
    done = subprocess.run([sys.executable, "-m", "experiments.bench", "sweep", "--tiny", f"--out={out}"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(out) as f:
        figures = json.load(f)
    for key in bench.REQUIRED_KEYS["sweep"]:
        assert key in figures, key
    assert figures["sweep_losses_equal"] is True            # the same gin and seed give the same run
    for key in ("sweep_utilisation", "sweep_utilisation_subprocess", "sweep_speedup_vs_subprocess",
                "sweep_overhead_fraction", "sweep_overhead_fraction_subprocess", "sweep_wall_s",
                "sweep_wall_s_subprocess", "sweep_model_flops", "sweep_peak_flops"):
        assert isinstance(figures[key], float) and math.isfinite(figures[key]) and figures[key] > 0, key
    assert figures["sweep_runs"] == 2 and figures["sweep_workers"] == 1
    assert figures["sweep_utilisation"] < 1 and figures["sweep_overhead_fraction"] < 1
    assert figures["sweep_speedup_vs_subprocess"] == figures["sweep_wall_s_subprocess"] / figures["sweep_wall_s"]
    # The steps' ceiling: the utilisation is that ceiling times the share of worker time inside training steps.
    for suffix in ("", "_subprocess"):
        assert math.isclose(figures[f"sweep_utilisation{suffix}"], figures[f"sweep_utilisation_ceiling{suffix}"]
                            * (1 - figures[f"sweep_overhead_fraction{suffix}"]), rel_tol=1e-9)
        assert figures[f"sweep_utilisation_ceiling{suffix}"] > figures[f"sweep_utilisation{suffix}"]
        assert 0 < figures[f"sweep_compile_fraction{suffix}"] < figures[f"sweep_overhead_fraction{suffix}"]
        assert 0 <= figures[f"sweep_idle_fraction{suffix}"] < figures[f"sweep_overhead_fraction{suffix}"]
    # The warm pass reads the programs the cold pass wrote: it compiles less, and trains the same runs.
    assert figures["sweep_compile_time_s_warm_cache"] < figures["sweep_compile_time_s"]
    assert figures["sweep_speedup_warm_cache_vs_subprocess"] == (figures["sweep_wall_s_subprocess"]
                                                                 / figures["sweep_wall_s_warm_cache"])
    assert "sweep utilisation" in open(str(tmp_path / "bench.md")).read()


def test_each_executor_compiles_under_its_own_cache_setting(tmp_path, monkeypatch):
    """The subprocess baseline must not read the compilation cache the in-process sweep has just filled (JAX reads
    JAX_COMPILATION_CACHE_DIR in every process): it runs with the cache off, the in-process one with a private one."""
    from experiments.bench import sweep as bench_sweep

    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/somewhere/warm")
    inprocess = bench_sweep._compilation_cache_env("inprocess", str(tmp_path))
    subproc = bench_sweep._compilation_cache_env("subprocess", str(tmp_path))
    assert inprocess["JAX_COMPILATION_CACHE_DIR"].startswith(str(tmp_path))
    with bench_sweep._environment(subproc):
        assert "JAX_COMPILATION_CACHE_DIR" not in os.environ and os.environ["JAX_ENABLE_COMPILATION_CACHE"] == "false"
        probe = subprocess.run([sys.executable, "-c", "import jax; print(jax.config.jax_enable_compilation_cache)"],
                               capture_output=True, text=True, timeout=300)
        assert probe.stdout.strip() == "False", probe.stderr[-2000:]
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == "/somewhere/warm"   # restored
    assert "JAX_ENABLE_COMPILATION_CACHE" not in os.environ
