"""XLA CPU flags for the benchmarks, in one place; applied only when the user has not set XLA_FLAGS."""
from __future__ import annotations

import os

# Chosen by measurement; empty = XLA's defaults were the fastest tried. Tried on the mid rung (2-core AMD EPYC,
# CPU seconds per K=1 step, A/B in separate processes): --xla_cpu_prefer_vector_width=512 3.00 s vs 3.02 s
# default (within noise). XLA:CPU already runs the dots through YNNPACK fusions (73% of the step's time in the
# profile) on one thread per core. Also within noise on the 6 x 256 rung (K = 4 and 8, tokens/s):
# --xla_cpu_experimental_ynn_fusion_type= (Eigen dots), --xla_cpu_use_onednn=true,
# --xla_cpu_enable_concurrency_optimized_scheduler=true.
DEFAULT_CPU_FLAGS: tuple[str, ...] = ()


def configure() -> str:
    """Sets XLA_FLAGS to DEFAULT_CPU_FLAGS unless the user set XLA_FLAGS; returns the value in effect.

    Must run before jax creates its CPU client (flags are read once)."""
    if "XLA_FLAGS" not in os.environ and DEFAULT_CPU_FLAGS:
        os.environ["XLA_FLAGS"] = " ".join(DEFAULT_CPU_FLAGS)
    return os.environ.get("XLA_FLAGS", "")
