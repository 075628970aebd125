"""Compile time vs depth (`python -m experiments.bench compile`): nn.scan over layers vs unrolled layers.

  compile_scan_<L>_s, compile_unrolled_<L>_s   AOT compile seconds of the trainer step (K = 1) for
                                               L = 6 and 24 layers of the mid rung's width
  compile_scan_24_over_6, compile_unrolled_24_over_6   growth with depth (scan: roughly flat)
"""
from __future__ import annotations

import dataclasses

from experiments.bench import train as bench_train

DEPTHS = (6, 24)


def compile_seconds(model_config, batch: int) -> float:
    from scaling.train import trainer
    from scaling.train.config import TrainConfig
    data = bench_train._RandomData(                       # pylint: disable=protected-access
        train=bench_train._RandomLoader(model_config.n_ctx, batch, model_config.vocab_size),
        vocab_size=model_config.vocab_size)
    config = TrainConfig(model=model_config, batch_size=batch, num_steps=100, learning_rate=1e-3,
                         warmup_steps=1, microbatches=1, noise_scale=False)
    run = trainer.setup(config, data=data, devices=bench_train.bench_devices())
    return trainer.compile_steps(run, with_eval=False)[2]


def run(figures: dict | None = None, tiny: bool = False) -> dict:
    base = bench_train.rung_configs(tiny)["mid"]
    batch = 8 if tiny else bench_train.BATCH
    depths = (1, 4) if tiny else DEPTHS
    out = {}
    for scan in (True, False):
        name = "scan" if scan else "unrolled"
        for depth in depths:
            config = dataclasses.replace(base, n_layer=depth, scan_layers=scan)
            out[f"compile_{name}_{depth}_s"] = compile_seconds(config, batch)
        out[f"compile_{name}_{depths[1]}_over_{depths[0]}"] = (
            out[f"compile_{name}_{depths[1]}_s"] / out[f"compile_{name}_{depths[0]}_s"])
    return out
