"""Trainer benchmark (`python -m experiments.bench train --out=F.json`).

Figures:
  cpu_peak_matmul_flops       best float32 matmul FLOP/s on this host (also cached where
                              scaling/train/mfu.py reads it, so CPU runs report MFU against it)
  train_<rung>_tokens_per_sec train-step throughput (steady state, compile excluded) of a CPU ladder rung
  train_<rung>_mfu            Kaplan 6N+attention FLOPs/token x tokens/s / cpu_peak_matmul_flops
  train_<rung>_step_ms, train_<rung>_n_params_nonembedding, train_<rung>_compile_s
Rungs: small = gin/models/cpu_55k.gin, mid = gin/models/cpu_1m2.gin, batch 32 x n_ctx, vocab 4096,
random tokens (the data pipeline is benchmarked separately).
"""
from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from experiments.model_table import load_model_config

RUNGS = {"small": "gin/models/cpu_55k.gin", "mid": "gin/models/cpu_1m2.gin"}
BATCH = 32
VOCAB = 4096


class _RandomLoader:
    def __init__(self, n_ctx: int, batch: int):
        self.n_ctx, self.batch_size = n_ctx, batch
        self.windows_per_epoch = 10 ** 9

    def batch(self, step: int) -> np.ndarray:
        return np.random.default_rng(step).integers(0, VOCAB, (self.batch_size, self.n_ctx + 1)).astype(np.int32)


@dataclasses.dataclass
class _RandomData:
    train: _RandomLoader
    vocab_size: int = VOCAB
    eval_windows: np.ndarray = None
    eval_bytes_per_token: float = 1.0
    extra_evals: dict = dataclasses.field(default_factory=dict)
    manifest: dict = dataclasses.field(default_factory=dict)


def time_train_step(model_config, batch: int = BATCH, steps: int = 10) -> dict:
    """Steady-state seconds per step of the real (sharded, jitted) train step."""
    from models import accounting
    from scaling.train import partitioning, trainer
    from scaling.train.config import TrainConfig

    data = _RandomData(train=_RandomLoader(model_config.n_ctx, batch))
    config = TrainConfig(model=model_config, batch_size=batch, num_steps=steps + 2, learning_rate=1e-3,
                         warmup_steps=1, microbatches=1, noise_scale=False)
    run = trainer.setup(config, data=data)
    train_step, _, compile_s = trainer.compile_steps(run, with_eval=False)
    state = run.init_state()
    batches = [partitioning.global_batch(data.train.batch(i), run.batch_sharding, batch) for i in range(steps + 2)]
    for i in range(2):  # warm up
        state, m = train_step(state, batches[i])
    jax.block_until_ready(m)
    start = time.perf_counter()
    for i in range(2, steps + 2):
        state, m = train_step(state, batches[i])
    jax.block_until_ready((state, m))
    step_s = (time.perf_counter() - start) / steps
    fpt = accounting.flops_per_token(run.model_config, "kaplan", "train", include_context=True).flops
    return {"step_s": step_s, "tokens_per_sec": batch * model_config.n_ctx / step_s, "flops_per_token": fpt,
            "compile_s": compile_s, "n_params_nonembedding": run.n_nonembedding}


def run() -> dict:
    from scaling.train import mfu

    peak = max(mfu.measure_matmul_flops(n=n, repeats=5) for n in (512, 1024, 2048))
    path = mfu.write_cpu_peak(peak) if jax.devices()[0].platform == "cpu" else None
    figures = {"cpu_peak_matmul_flops": peak, "cpu_peak_cache": path or "not cpu"}
    for rung, gin_file in RUNGS.items():
        result = time_train_step(load_model_config(gin_file))
        figures[f"train_{rung}_tokens_per_sec"] = result["tokens_per_sec"]
        figures[f"train_{rung}_step_ms"] = 1e3 * result["step_s"]
        figures[f"train_{rung}_mfu"] = mfu.mfu(result["flops_per_token"], result["tokens_per_sec"], peak)
        figures[f"train_{rung}_compile_s"] = result["compile_s"]
        figures[f"train_{rung}_n_params_nonembedding"] = result["n_params_nonembedding"]
    return figures
