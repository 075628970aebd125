"""Accelerator benchmark (`python -m experiments.bench gpu`): the GPT-2-small shape through the trainer's step.

The performance issue's GPU goal: GPT-2-small (12 × 768, n_ctx 1024, GPT-2's vocabulary 50,257) in
bfloat16 compute with float32 parameters, Adam state and loss, >= 50 % MFU on an H100/H200, with the
code path every run uses (scaling.train.trainer's compiled step, the model from gin/models/paper_85m.gin,
which is Kaplan's 85M grid point with exactly that shape). `experiments/gpu_check.sh` runs this section
and the 8-fake-device sharding tests in one device call.

Variants, timed in interleaved rounds like the CPU train section (best window each):
  gpu_gpt2_small_*            the default step (K = 4 strided microbatches + the noise-scale estimator),
                              layers scanned (paper_base.gin), no rematerialisation (an H100/H200 holds
                              the activations of these microbatches), cuDNN flash attention
  gpu_gpt2_small_k1_*         the plain step (K = 1, no estimator)
  gpu_gpt2_small_unrolled_*   the default step with unrolled layers
  gpu_gpt2_small_remat_*      the default step with paper_base.gin's remat policy (dots saved), the setting
                              for the paper grid's larger models; MFU counts model FLOPs only, so the
                              recomputation shows as lower MFU
Each reports tokens_per_sec, step_ms, mfu (model FLOPs/token from models.accounting.mfu_flops_per_token
x tokens/s / the platform table's dense bf16 peak, scaling.train.mfu), mfu_kaplan (6N + attention only),
mfu_vs_measured_peak (against gpu_matmul_peak_flops_bfloat16, a 16k x 16k x 16k bf16 matmul measured
here), compile_s and the final loss; a variant that fails to compile or run reports `_error` instead, and
the others still run. Without an accelerator the section reports `gpu_skipped` (with --tiny it runs the
tiny model in bfloat16 on the CPU through the same code, for the smoke test).
"""
from __future__ import annotations

import dataclasses
import os
import traceback

import jax
import jax.numpy as jnp

from experiments.bench import train as bench_train

GIN = "gin/models/paper_85m.gin"
BATCH_PER_DEVICE = 64        # sequences per step and device: 65,536 tokens, 16 sequences per microbatch at K = 4
STEPS_PER_WINDOW = 10
ROUNDS = 3
MATMUL_N = 16384             # 2 n^3 = 8.8 TFLOP: ~11 ms at the H200's ~800 TFLOP/s, far above launch overhead
VARIANTS = (   # (suffix, microbatches, noise_scale, model config changes)
    ("", 4, True, {}),
    ("_k1", 1, False, {}),
    ("_unrolled", 4, True, {"scan_layers": False}),
    ("_remat", 4, True, {"remat_policy": "dots_with_no_batch_dims"}),
)


def on_accelerator() -> bool:
    return jax.devices()[0].platform != "cpu"


def attention_impl() -> tuple[str, str]:
    """('cudnn', why) when cuDNN's fused attention compiles here for this shape and dtype, else ('xla', why)."""
    if jax.devices()[0].platform != "gpu":
        return "xla", f"{jax.devices()[0].platform}: cuDNN attention is GPU-only"
    q = jnp.zeros((2, 1024, 12, 64), jnp.bfloat16)
    try:
        jax.jit(lambda q: jax.nn.dot_product_attention(q, q, q, is_causal=True, implementation="cudnn")
                ).lower(q).compile()
    except Exception as e:  # pylint: disable=broad-except
        return "xla", f"cuDNN attention unavailable ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    return "cudnn", "cuDNN fused (flash) attention"


def base_model_config(tiny: bool):
    """GPT-2-small from gin/models/paper_85m.gin (bf16 compute, scanned layers), remat off, the fastest
    attention available; the smoke test's tiny model in the same dtypes on CPU."""
    if tiny:
        return dataclasses.replace(bench_train.tiny_model_config(), dtype="bfloat16", param_dtype="float32",
                                   scan_layers=True), "xla", "tiny smoke-test model on CPU"
    from experiments.model_table import load_model_config
    config = load_model_config(os.path.join(bench_train.REPO_ROOT, GIN))
    impl, why = attention_impl()
    return dataclasses.replace(config, remat_policy="none", attention_impl=impl), impl, why


def run(figures: dict | None = None, tiny: bool = False) -> dict:
    from scaling.train import mfu
    if not on_accelerator() and not tiny:
        return {"gpu_skipped": f"no accelerator (jax.devices() are {jax.devices()[0].platform}); run "
                               "experiments/gpu_check.sh on a GPU machine"}
    devices = bench_train.bench_devices()
    config, impl, why = base_model_config(tiny)
    batch = (4 if tiny else BATCH_PER_DEVICE) * len(devices)
    steps, rounds = (2, 1) if tiny else (STEPS_PER_WINDOW, ROUNDS)
    peak, peak_source = (figures or {}).get("matmul_peak_flops"), "matmul section"
    if on_accelerator():
        peak, peak_source = mfu.peak_flops(devices, "bfloat16")
    elif peak is None:
        peak, peak_source = mfu.measure_matmul_flops(n=256, repeats=2), "measured now (tiny)"
    measured = mfu.measure_matmul_flops(n=256 if tiny else MATMUL_N, repeats=2 if tiny else 10, dtype=jnp.bfloat16)
    out = {"gpu_device": devices[0].device_kind, "gpu_devices": len(devices), "gpu_jax_version": jax.__version__,
           "gpu_gpt2_small_shape": f"{config.n_layer}x{config.d_model} n_ctx {config.n_ctx} vocab {config.vocab_size}",
           "gpu_batch_sequences": batch, "gpu_dtype": f"{config.dtype} compute, {config.param_dtype} parameters",
           "gpu_attention_impl": impl, "gpu_attention_note": why, "gpu_peak_flops": peak,
           "gpu_peak_source": peak_source, "gpu_matmul_peak_flops_bfloat16": measured}
    timers = {}
    for suffix, microbatches, noise_scale, changes in VARIANTS[:2] if tiny else VARIANTS:
        name = f"gpu_gpt2_small{suffix}"
        print(f"  [{name}] compiling and warming up (K={microbatches}, {changes or 'defaults'})", flush=True)
        try:
            timers[suffix] = bench_train.StepTimer(dataclasses.replace(config, **changes), batch, microbatches,
                                                   noise_scale)
        except Exception as e:  # pylint: disable=broad-except
            # One variant that does not compile (memory, an unsupported kernel) must not cost the others.
            out[f"{name}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            traceback.print_exc()
            print(f"  [{name}] failed: {out[f'{name}_error']}", flush=True)
    best = bench_train.interleaved_best_seconds(timers, steps, rounds)
    for suffix, timer in timers.items():
        name = f"gpu_gpt2_small{suffix}"
        result = bench_train.step_figures(timer, best[suffix])
        rate = result["tokens_per_sec"]
        out.update({f"{name}_tokens_per_sec": rate, f"{name}_step_ms": 1e3 * result["step_s"],
                    f"{name}_mfu": mfu.mfu(result["flops_per_token"], rate, peak),
                    f"{name}_mfu_kaplan": mfu.mfu(result["flops_per_token_kaplan"], rate, peak),
                    f"{name}_mfu_vs_measured_peak": mfu.mfu(result["flops_per_token"], rate, measured),
                    f"{name}_model_flops_per_sec": result["flops_per_token"] * rate,
                    f"{name}_compile_s": result["compile_s"], f"{name}_loss": result["loss"]})
        print(f"  [{name}] {rate:,.0f} tokens/s, MFU {out[f'{name}_mfu']:.3f}", flush=True)
    if timers:
        out["gpu_gpt2_small_n_params_nonembedding"] = next(iter(timers.values())).run.n_nonembedding
    return out
