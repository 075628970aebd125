"""Matmul peak (`python -m experiments.bench matmul`): the practical FLOP/s limit of this machine.

  matmul_peak_flops           best FLOP/s of large square jitted matmuls (n = 1024, 2048, 3072; best of
                              5 repeats each in each of 3 sweeps of the sizes) in float32, the CPU ladder's compute dtype, all cores.
                              On CPU it is cached where scaling/train/mfu.py reads it, so training runs
                              report MFU against it; the cache keeps the best figure measured on this
                              machine (load only lowers it) and matmul_peak_flops is that best figure
                              (matmul_peak_flops_this_run: this run's own).
  matmul_peak_flops_<n>       the best figure of each size
  matmul_peak_flops_bfloat16  the same for bfloat16 inputs (float32 accumulation), for the record:
                              whether bf16 compute would pay on this backend.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

SIZES = (1024, 2048, 3072)
TINY_SIZES = (128, 256)


def measure_peak(tiny: bool = False, dtype=jnp.float32, repeats: int = 5, rounds: int = 3) -> dict:
    """Best FLOP/s per size over ``rounds`` sweeps of the sizes (a transient slowdown of a shared VM hits one
    sweep, not all; seen here: one sweep's 1024² matmul at 110 GFLOP/s against 200+ in the others)."""
    from scaling.train import mfu
    name = jnp.dtype(dtype).name
    sizes = TINY_SIZES if tiny else SIZES
    per_size = {n: 0.0 for n in sizes}
    for _ in range(1 if tiny else rounds):
        for n in sizes:
            per_size[n] = max(per_size[n], mfu.measure_matmul_flops(n=n, repeats=2 if tiny else repeats, dtype=dtype))
    suffix = "" if jnp.dtype(dtype) == jnp.float32 else f"_{name}"
    out = {f"matmul_peak_flops{suffix}": max(per_size.values())}
    out.update({f"matmul_peak_flops{suffix}_{n}": flops for n, flops in per_size.items()})
    return out


def run(figures: dict | None = None, tiny: bool = False) -> dict:
    from scaling.train import mfu
    out = measure_peak(tiny)
    out.update(measure_peak(tiny, dtype=jnp.bfloat16))
    if jax.devices()[0].platform == "cpu" and not tiny:
        # A shared or busy machine only ever makes the measured peak lower: the machine's limit is the
        # best figure measured on it, so the cache keeps the maximum, and MFU is reported against that.
        out["matmul_peak_flops_this_run"] = out["matmul_peak_flops"]
        cached = mfu.read_cpu_peak()
        out["matmul_peak_flops"] = max(out["matmul_peak_flops"], cached or 0.0)
        out["matmul_peak_cache"] = mfu.write_cpu_peak(out["matmul_peak_flops"])
    return out
