"""Model FLOPs utilisation: model FLOPs/s ÷ peak FLOPs/s of the devices the run uses.

Peaks are dense (no sparsity) per chip, from vendor data sheets. On CPU there is no meaningful data
sheet figure, so the peak is a measured matmul throughput, and it is the peak *of the cores the run may
use*: a process pinned to k of the machine's n cores (a sweep worker, os.sched_setaffinity) gets k/n of
the whole machine's figure (matmuls are FMA-bound, so per core the peak is the same), so a run's MFU
compares it with what its own cores could do. In order of preference:

1. the best matmul ever measured on this machine by ``python -m experiments.bench matmul`` (cached in a
   JSON file, `cpu_peak_path`, with the machine's identity `cpu_identity` and the cores it ran on),
   scaled to the process's cores;
2. a per-core figure the sweep launcher measured once before any of its runs started
   (experiments/sweep_executor.py ``cpu_peak_for_runs``: a matmul on one worker's core slot, every
   other core idle as far as the sweep goes), handed to its runs in the environment variable
   `PEAK_ENV`, scaled to the process's cores;
3. a short matmul probe at the start of the run, on its own cores (a run started on its own; inside a
   sweep it would run while other runs train, read a low peak and MFU > 1).

`peak_flops` says which in its ``source`` string (written to summary.json as ``mfu_peak_source``).
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

# FLOP/s per core measured by the sweep launcher (experiments/sweep_executor.py cpu_peak_for_runs) for its runs.
PEAK_ENV = "SCALING_CPU_PEAK_FLOPS_PER_CORE"

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


def process_cores() -> int:
    """Cores this process may run on (its affinity: a pinned sweep worker's share), which also sizes XLA's
    CPU thread pool."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # no affinity API on this platform
        return os.cpu_count() or 1


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


def measure_cpu_peak(sizes: tuple = (1024, 2048), repeats: int = 5) -> float:
    """Best float32 matmul FLOP/s over ``sizes`` on this process's cores (a few seconds): the sweep
    launcher's one measurement (experiments.bench matmul measures longer, over three sweeps of sizes)."""
    return max(measure_matmul_flops(n=n, repeats=repeats) for n in sizes)


def write_cpu_peak(flops: float, path: str | None = None) -> str:
    """Stores the measured CPU peak where `peak_flops` reads it (atomic write)."""
    path = path or cpu_peak_path()
    record = {"cpu_peak_flops": float(flops), **cpu_identity(), "cores": process_cores(), "measured_at": time.time(),
              "how": "best jitted float32 square matmul measured on this machine (experiments.bench matmul)"}
    fileio.write_json_atomic(path, record)
    return path


def read_cpu_peak_record(path: str | None = None) -> dict | None:
    """The cached CPU peak record when it was measured on this machine (`cpu_identity`), else None."""
    path = path or cpu_peak_path()
    try:
        with open(path) as f:
            record = json.load(f)
        float(record["cpu_peak_flops"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    identity = cpu_identity()
    if any(record.get(k) != v for k, v in identity.items()):
        return None  # measured on another machine
    return record


def read_cpu_peak(path: str | None = None) -> float | None:
    """The cached whole-machine CPU peak (FLOP/s on the cores experiments.bench matmul ran on), or None."""
    record = read_cpu_peak_record(path)
    return None if record is None else float(record["cpu_peak_flops"])


def launcher_peak_per_core() -> float | None:
    """The sweep launcher's per-core figure (`PEAK_ENV`), or None when unset or not a positive number."""
    try:
        value = float(os.environ.get(PEAK_ENV, ""))
    except ValueError:
        return None
    return value if np.isfinite(value) and value > 0 else None


def peak_flops(devices, dtype: str = "float32") -> tuple[float, str]:
    """(total peak FLOP/s of ``devices``, source) for MFU.

    Accelerators: per-chip table × number of chips. CPU: fake devices share the host's cores, so the
    peak is that of the cores this process may run on whatever the device count: the cached
    machine peak scaled to them, else the sweep launcher's per-core figure times them, else a probe
    (the module docstring).
    """
    devices = list(devices)
    kind = devices[0].device_kind
    if devices[0].platform == "cpu":
        cores = process_cores()
        record = read_cpu_peak_record()
        if record is not None:
            measured_on = int(record.get("cores") or record["cpu_count"])
            total = float(record["cpu_peak_flops"])
            if cores == measured_on:
                return total, f"measured: experiments.bench matmul ({cpu_peak_path()})"
            return total * cores / measured_on, (f"measured: experiments.bench matmul ({cpu_peak_path()}): "
                                                 f"{total:.4g} FLOP/s on {measured_on} cores x {cores}/{measured_on}"
                                                 f" (the cores this process may run on)")
        per_core = launcher_peak_per_core()
        if per_core is not None:
            return per_core * cores, (f"measured: the sweep launcher's matmul on one worker's cores before its runs "
                                      f"started ({PEAK_ENV}={per_core:.6g} FLOP/s per core) x {cores} core(s)")
        return (measure_matmul_flops(n=512, repeats=3),
                f"measured: short matmul probe at start of run (on the {cores} core(s) this process may run on)")
    per_chip = chip_peak(kind, dtype)
    if per_chip is None:
        return float("nan"), f"unknown: {kind!r} not in scaling/train/mfu.py PEAK_FLOPS"
    return per_chip * len(devices), f"table: {kind} {jnp.dtype(dtype).name} dense peak {per_chip:.3g} x {len(devices)}"


def mfu(model_flops_per_token: float, tokens_per_sec: float, peak: float) -> float:
    """Model FLOPs utilisation (PaLM App. B): achieved model FLOP/s over peak FLOP/s."""
    if not peak or not np.isfinite(peak):
        return float("nan")
    return model_flops_per_token * tokens_per_sec / peak
