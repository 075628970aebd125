"""Model FLOPs utilisation: model FLOPs/s ÷ peak FLOPs/s of the devices the run uses.

Peaks are dense (no sparsity) per chip, from vendor data sheets. On CPU there is no meaningful data
sheet figure, so the peak is the best matmul throughput measured on this machine by
``python -m experiments.bench matmul`` (cached in a JSON file, `cpu_peak_path`) or, when no cached
figure matches this machine, a short measured probe. `peak_flops` says which in its ``source`` string
(written to summary.json).
"""
from __future__ import annotations

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from scaling.core import fileio

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Dense peak FLOP/s per chip: (bfloat16, float32 matmuls). On GPUs float32 matmuls run as TF32 by
# default in XLA; on TPUs float32 matmuls use bf16 passes at default precision, so the bf16 peak applies.
# Keys are matched as substrings of the lower-cased jax device_kind, most specific first.
PEAK_FLOPS = (
    ("tpu v5p", 459e12, 459e12),
    ("tpu v5 lite", 197e12, 197e12),   # v5e reports "TPU v5 lite"
    ("tpu v5e", 197e12, 197e12),
    ("tpu v5", 459e12, 459e12),        # v5p also reports "TPU v5"
    ("tpu v4", 275e12, 275e12),
    ("h200", 989e12, 494e12),
    ("h100 pcie", 756e12, 378e12),
    ("h100", 989e12, 494e12),          # SXM
    ("a100", 312e12, 156e12),
)


def chip_peak(device_kind: str, dtype: str = "bfloat16") -> float | None:
    """Vendor dense peak FLOP/s of one chip, or None when the device kind is not in the table."""
    kind = device_kind.lower()
    for key, bf16, fp32 in PEAK_FLOPS:
        if key in kind:
            return bf16 if jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else fp32
    return None


def cpu_peak_path() -> str:
    cache = os.environ.get("SCALING_CACHE_DIR", os.path.join(REPO_ROOT, ".cache", "scaling"))
    return os.path.join(cache, "cpu_peak_flops.json")


def cpu_identity() -> dict:
    """What a cached CPU peak must match to be reused: the processor and the core count."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu_model": model, "cpu_count": os.cpu_count()}


def measure_matmul_flops(n: int = 1024, repeats: int = 5, dtype=jnp.float32) -> float:
    """Best-of-``repeats`` FLOP/s of an n×n×n matmul on the default device (2n³ FLOPs each)."""
    device = jax.devices()[0]
    a = jax.device_put(jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype), device)
    b = jax.device_put(jnp.asarray(np.random.default_rng(1).standard_normal((n, n)), dtype), device)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 / best


def write_cpu_peak(flops: float, path: str | None = None) -> str:
    """Stores the measured CPU peak where `peak_flops` reads it (atomic write)."""
    path = path or cpu_peak_path()
    record = {"cpu_peak_flops": float(flops), **cpu_identity(), "measured_at": time.time(),
              "how": "best jitted float32 square matmul measured on this machine (experiments.bench matmul)"}
    fileio.write_json_atomic(path, record)
    return path


def read_cpu_peak(path: str | None = None) -> float | None:
    path = path or cpu_peak_path()
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    identity = cpu_identity()
    if any(record.get(k) != v for k, v in identity.items()):
        return None  # measured on another machine
    return float(record["cpu_peak_flops"])


def peak_flops(devices, dtype: str = "float32") -> tuple[float, str]:
    """(total peak FLOP/s of ``devices``, source) for MFU.

    Accelerators: per-chip table × number of chips. CPU: fake devices share the host's cores, so the
    host's measured peak is the total whatever the device count.
    """
    devices = list(devices)
    kind = devices[0].device_kind
    if devices[0].platform == "cpu":
        cached = read_cpu_peak()
        if cached is not None:
            return cached, f"measured: experiments.bench matmul ({cpu_peak_path()})"
        return measure_matmul_flops(n=512, repeats=3), "measured: short matmul probe at start of run"
    per_chip = chip_peak(kind, dtype)
    if per_chip is None:
        return float("nan"), f"unknown: {kind!r} not in scaling/train/mfu.py PEAK_FLOPS"
    return per_chip * len(devices), f"table: {kind} {jnp.dtype(dtype).name} dense peak {per_chip:.3g} x {len(devices)}"


def mfu(model_flops_per_token: float, tokens_per_sec: float, peak: float) -> float:
    """Model FLOPs utilisation (PaLM App. B): achieved model FLOP/s over peak FLOP/s."""
    if not peak or not np.isfinite(peak):
        return float("nan")
    return model_flops_per_token * tokens_per_sec / peak
