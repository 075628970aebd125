"""Smoke tests of the benchmark suite at tiny sizes: the JSON schema, and MFU/FLOPs from models.accounting.

The figures themselves are measured by `python -m experiments.bench` (README "Benchmarks"), not tested.
"""
import json
import math
import os
import subprocess
import sys

import pytest

from experiments import bench
from experiments.bench import train as bench_train
from models import accounting

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tiny_figures():
    """matmul + train (with the torch reference) + noise at tiny sizes, with flops_per_token replaced by a
    sentinel: every MFU and model-FLOP/s figure must then be built from it."""
    real = accounting.flops_per_token
    calls = []

    def sentinel(config, convention="kaplan", mode="train", include_context=None):
        calls.append((convention, mode, include_context))
        return accounting.FlopsPerToken(flops=1234.5, convention=convention, mode=mode,
                                        include_context=bool(include_context))

    accounting.flops_per_token = sentinel
    try:
        figures = bench.run_sections(["matmul", "train", "noise"], tiny=True)
    finally:
        accounting.flops_per_token = real
    return figures, calls


def test_bench_writes_every_named_figure(tiny_figures):
    figures, _ = tiny_figures
    has_torch = figures["torch_reference"] == "measured"
    for section in ("matmul", "train", "noise"):
        for key in bench.REQUIRED_KEYS[section]:
            if not has_torch and "torch" in key:
                continue  # no torch installed (CI): see test_bench_without_torch_says_how_to_get_it
            assert key in figures, f"{section}: {key} missing"
            assert isinstance(figures[key], (int, float)) and math.isfinite(figures[key]), (key, figures[key])
    n_tiny = accounting.nonembedding_params(bench_train.tiny_model_config())
    for rung in bench.RUNGS:
        assert figures[f"train_{rung}_tokens_per_sec"] > 0 and figures[f"train_{rung}_k1_tokens_per_sec"] > 0
        assert figures[f"train_{rung}_n_params_nonembedding"] == n_tiny   # the trainer's real model ran
        if not has_torch:
            continue
        # The faster of torch eager / torch.compile is at least as fast as eager, so the speedup against it is
        # the smaller one; the per-round spread brackets the median.
        assert 0 < figures[f"speedup_vs_faster_torch_{rung}"] <= figures[f"speedup_vs_torch_eager_{rung}"] * (1 + 1e-12)
        assert (figures[f"speedup_vs_faster_torch_{rung}_rounds_min"] <= figures[f"speedup_vs_faster_torch_{rung}_rounds_median"]
                <= figures[f"speedup_vs_faster_torch_{rung}_rounds_max"])
    # The estimator's overhead is a fraction of the step it was measured on (the step cannot get 100% cheaper).
    assert figures["noise_overhead_fraction"] > -1 and figures["noise_step_ms_k4_on"] > 0
    # The flat object is valid strict JSON and the table names every rung.
    json.loads(json.dumps(figures, allow_nan=False))
    table = bench.markdown_table(figures)
    assert all(f"| {rung} |" in table for rung in bench.RUNGS) and "Machine:" in table


def test_mfu_comes_from_the_accounting_function(tiny_figures):
    figures, calls = tiny_figures
    assert ("kaplan", "train", True) in calls
    peak = figures["matmul_peak_flops"]
    for rung in bench.RUNGS:
        for step in ("", "_k1"):
            rate = figures[f"train_{rung}{step}_tokens_per_sec"]
            assert figures[f"train_{rung}{step}_model_flops_per_sec"] == pytest.approx(1234.5 * rate)
            assert figures[f"train_{rung}{step}_mfu"] == pytest.approx(1234.5 * rate / peak)


def test_torch_reference_matches_the_jax_model_size():
    torch = pytest.importorskip("torch", reason="the torch reference needs requirements-bench.txt")
    from experiments.bench import torch_reference as bench_torch
    import jax
    from models.transformer import Transformer
    config = bench_train.tiny_model_config()
    jax_params = Transformer(config).init(jax.random.PRNGKey(0), jax.numpy.zeros((1, config.n_ctx), "int32"))
    counts = accounting.param_counts(jax_params)
    model = bench_torch.build_model(config)
    assert sum(p.numel() for p in model.parameters()) == counts["total"]
    step, loss_fn = bench_torch.make_train_step(model)
    windows = torch.randint(0, config.vocab_size, (4, config.n_ctx + 1), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first = loss_fn(windows).item()
    assert first == pytest.approx(math.log(config.vocab_size), rel=0.05)   # near-uniform at init, like JAX
    for _ in range(5):
        step(windows)
    with torch.no_grad():
        assert loss_fn(windows).item() < first   # the Adam step trains


def test_markdown_table_states_goals_and_missing_figures():
    table = bench.markdown_table({"bench_cpu": "X", "bench_cpu_count": 2, "train_mid_tokens_per_sec": 1000.0,
                                  "train_mid_mfu": 0.5, "noise_overhead_fraction": 0.03})
    assert "| mid |" in table and "50.0%" in table and "≤ 5%" in table and "3.0%" in table
    assert "| small |" not in table


def test_memory_section_compares_the_chunked_and_whole_loss_of_the_same_step():
    from experiments.bench import memory as bench_memory
    figures = bench_memory.run(tiny=True)
    for key in bench.REQUIRED_KEYS["memory"]:
        assert isinstance(figures[key], (int, float)) and figures[key] > 0, key
    assert figures["memory_loss_chunked_over_whole"] == pytest.approx(
        figures["memory_loss_chunked_temp_bytes"] / figures["memory_loss_whole_temp_bytes"])
    assert "GB" in bench.markdown_table(figures)


def test_bench_rejects_an_unknown_section(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "experiments.bench", "tpu_pod", f"--out={out}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown section" in proc.stderr
    assert not out.exists()


def test_bench_without_torch_says_how_to_get_it(monkeypatch):
    from experiments.bench import torch_reference as bench_torch

    def missing():
        raise ImportError("the PyTorch reference needs torch (CPU build): "
                          ".venv/bin/pip install -r requirements-bench.txt")

    monkeypatch.setattr(bench_torch, "_torch", missing)
    figures = bench_train.run({"matmul_peak_flops": 1e11}, tiny=True)
    assert figures["torch_reference"].startswith("unavailable") and "requirements-bench.txt" in figures["torch_reference"]
    assert not any(k.startswith(("torch_eager", "torch_compile", "speedup_vs_torch")) for k in figures)
    assert all(figures[f"train_{rung}_tokens_per_sec"] > 0 for rung in bench.RUNGS)


def test_gpu_section_runs_the_trainer_step_in_bfloat16_and_takes_mfu_from_accounting(monkeypatch):
    """The accelerator section at tiny size on CPU: the same code path (trainer step, bf16 compute, scanned
    layers), its figures named as REQUIRED_KEYS says, MFU from models.accounting and the peak it reports."""
    from experiments.bench import gpu as bench_gpu
    calls = []
    real = accounting.mfu_flops_per_token

    def counting(config):
        calls.append(config)
        return real(config)

    monkeypatch.setattr(accounting, "mfu_flops_per_token", counting)
    figures = bench_gpu.run({"matmul_peak_flops": 1e11}, tiny=True)
    for key in bench.REQUIRED_KEYS["gpu"]:
        assert isinstance(figures[key], (int, float)) and math.isfinite(figures[key]) and figures[key] > 0, key
    assert calls and all(c.dtype == "bfloat16" and c.scan_layers for c in calls)
    for suffix in ("", "_k1"):
        rate = figures[f"gpu_gpt2_small{suffix}_tokens_per_sec"]
        assert figures[f"gpu_gpt2_small{suffix}_mfu"] == pytest.approx(real(calls[0]) * rate / 1e11)
        assert figures[f"gpu_gpt2_small{suffix}_mfu_vs_measured_peak"] == pytest.approx(
            real(calls[0]) * rate / figures["gpu_matmul_peak_flops_bfloat16"])
    assert figures["gpu_gpt2_small_n_params_nonembedding"] == accounting.nonembedding_params(calls[0])
    table = bench.markdown_table({**figures, "gpu_gpt2_small_unrolled_error": "XlaRuntimeError: out of memory"})
    assert "| K=1 step |" in table and "failed: XlaRuntimeError: out of memory" in table


def test_gpu_section_without_an_accelerator_says_how_to_run_it():
    from experiments.bench import gpu as bench_gpu
    figures = bench_gpu.run({}, tiny=False)
    assert set(figures) == {"gpu_skipped"} and "gpu_check.sh" in figures["gpu_skipped"]
    assert "GPU section: skipped" in bench.markdown_table(figures)


def test_gpu_config_is_gpt2_small_from_the_paper_gin():
    from experiments.bench import gpu as bench_gpu
    config, impl, _ = bench_gpu.base_model_config(tiny=False)
    assert (config.n_layer, config.d_model, config.n_heads, config.n_ctx, config.vocab_size) == (12, 768, 12, 1024, 50257)
    assert (config.dtype, config.param_dtype, config.remat_policy) == ("bfloat16", "float32", "none")
    assert impl == "xla" and config.attention_impl == "xla"   # cuDNN attention only on a GPU


def test_interleaved_rounds_pair_each_round_and_keep_the_best_window():
    class FakeTimer:
        def __init__(self, seconds, log, name):
            self.seconds, self.log, self.name = list(seconds), log, name

        def window(self, steps):
            self.log.append(self.name)
            return self.seconds.pop(0)

    log = []
    timers = {"": FakeTimer([2.0, 1.0, 4.0], log, "jax"), "torch": FakeTimer([3.0, 3.0, 2.0], log, "torch")}
    windows = bench_train.interleaved_windows(timers, steps=1, rounds=3)
    assert log == ["jax", "torch"] * 3   # one window of each per round, in turn
    assert windows == {"": [2.0, 1.0, 4.0], "torch": [3.0, 3.0, 2.0]}
    assert bench_train.paired_speedups(windows[""], windows["torch"]) == [1.5, 3.0, 0.5]
    assert bench_train.rounds_figures("s", [1.5, 3.0, 0.5]) == {"s_rounds_median": 1.5, "s_rounds_min": 0.5,
                                                                 "s_rounds_max": 3.0}
    figures = {"speedup_vs_faster_torch_mid_rounds_median": 1.5, "speedup_vs_faster_torch_mid_rounds_min": 0.5,
               "speedup_vs_faster_torch_mid_rounds_max": 3.0, "train_mid_tokens_per_sec": 10.0}
    assert "1.50× (0.50–3.00)" in bench.markdown_table(figures)
