"""Step memory (`python -m experiments.bench memory`): the chunked cross-entropy at a real vocabulary.

Compile-only (XLA's buffer assignment, no step is run, so the figures do not depend on the machine's
load): the trainer step of the mid rung's model (6 x 384) at the paper's context and vocabulary
(n_ctx 1024, GPT-2's 50,257 tokens) with its memory settings (scanned layers, remat policy
dots_with_no_batch_dims), 8 sequences per microbatch (K = 1), float32:
  memory_loss_whole_temp_bytes     XLA temporaries of the step with the whole-sequence loss
                                   (TrainConfig.loss_chunk_length = 0: all [8, 1024, 50257] logits)
  memory_loss_chunked_temp_bytes   the same with loss_chunk_length = 128 (scaling/train/losses.py)
  memory_loss_chunked_over_whole   their ratio
  memory_logits_bytes              one float32 copy of the microbatch's whole logits, for scale
"""
from __future__ import annotations

import dataclasses

from experiments.bench import train as bench_train

VOCAB, N_CTX, BATCH, CHUNK = 50257, 1024, 8, 128


def step_temp_bytes(model_config, batch: int, loss_chunk_length: int) -> int:
    """XLA temporary bytes of the compiled trainer step (K = 1, no estimator) of model_config."""
    from scaling.train import trainer
    from scaling.train.config import TrainConfig
    data = bench_train._RandomData(                       # pylint: disable=protected-access
        train=bench_train._RandomLoader(model_config.n_ctx, batch, model_config.vocab_size),
        vocab_size=model_config.vocab_size)
    config = TrainConfig(model=model_config, batch_size=batch, num_steps=100, learning_rate=1e-3,
                         warmup_steps=1, microbatches=1, noise_scale=False, loss_chunk_length=loss_chunk_length)
    run = trainer.setup(config, data=data, devices=bench_train.bench_devices())
    return int(trainer.compile_steps(run, with_eval=False)[0].memory_analysis().temp_size_in_bytes)


def run(figures: dict | None = None, tiny: bool = False) -> dict:
    base = bench_train.rung_configs(tiny)["mid"]
    vocab, n_ctx, batch, chunk = (base.vocab_size, base.n_ctx, 8, 4) if tiny else (VOCAB, N_CTX, BATCH, CHUNK)
    # The paper grid's memory settings (gin/models/paper_base.gin): scanned, rematerialised layers.
    config = dataclasses.replace(base, vocab_size=vocab, n_ctx=n_ctx, scan_layers=True,
                                 remat_policy="dots_with_no_batch_dims")
    whole = step_temp_bytes(config, batch, 0)
    chunked = step_temp_bytes(config, batch, chunk)
    return {"memory_shape": f"{config.n_layer}x{config.d_model} n_ctx {n_ctx} vocab {vocab} batch {batch} "
                            f"chunk {chunk}",
            "memory_loss_whole_temp_bytes": whole, "memory_loss_chunked_temp_bytes": chunked,
            "memory_loss_chunked_over_whole": chunked / whole,
            "memory_logits_bytes": batch * n_ctx * vocab * 4}
