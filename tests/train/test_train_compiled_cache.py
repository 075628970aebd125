"""The trainer's compiled-step cache (runs of one process with the same program reuse its executables) and
the batched metric fetch (log_every > 1) change no number: the losses, noise-scale sums and final parameters
of a run are identical with the cache cold or warm and whatever log_every."""
import os

import jax
import pytest

from models.transformer import TransformerConfig
from scaling.train import trainer
from scaling.train.config import MeshConfig, TrainConfig
from scaling.train.metrics import read_jsonl

MODEL = TransformerConfig(vocab_size=64, n_ctx=32, n_layer=2, d_model=32, d_ff=64, d_attn=32, n_heads=4)


def make_config(**kw):
    base = dict(model=MODEL, batch_size=16, num_steps=12, learning_rate=3e-3, warmup_steps=3, log_every=1,
                eval_every=6, checkpoint_every=6, keep_checkpoints=1, progress_bar=False, microbatches=2,
                mesh=MeshConfig(data=1), async_checkpointing=False)
    base.update(kw)
    return TrainConfig(**base)


def per_step(workdir):
    return [(r["step"], r["loss"], r.get("gns_s_small")) for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


def test_cached_steps_and_batched_fetch_give_identical_runs(synthetic_data, tmp_path):
    data = synthetic_data(vocab_size=64, n_ctx=32, batch_size=16)
    devices = jax.devices()[:1]
    trainer._COMPILED.clear()
    cold = trainer.train(make_config(), str(tmp_path / "cold"), data=data, devices=devices)
    assert len(trainer._COMPILED) == 3                       # init, train step, eval step
    warm = trainer.train(make_config(seed=0, eval_every=4), str(tmp_path / "warm"), data=data, devices=devices)
    assert warm["compile_time_sec"] < 0.05 < cold["compile_time_sec"]
    assert len(trainer._COMPILED) == 3                       # eval cadence is not part of the program
    assert per_step(tmp_path / "cold") == per_step(tmp_path / "warm")
    assert warm["final_eval_loss"] == cold["final_eval_loss"]
    # Another program (a different learning rate) compiles anew.
    other = trainer.train(make_config(learning_rate=1e-3), str(tmp_path / "other"), data=data, devices=devices)
    assert other["compile_time_sec"] > 0.05
    # Metrics read every 4 steps instead of every step: the same logged numbers at the log steps.
    batched = trainer.train(make_config(log_every=4), str(tmp_path / "batched"), data=data, devices=devices)
    logged = {s: (loss, g) for s, loss, g in per_step(tmp_path / "batched")}
    assert sorted(logged) == [4, 8, 12]
    assert all(logged[s][0] == dict((t, l) for t, l, _ in per_step(tmp_path / "cold"))[s] for s in logged)
    assert batched["b_simple"] == cold["b_simple"]
    # Final parameters, restored from each run's last checkpoint (the summary carries no hash).
    sha = lambda name, **kw: trainer.checkpoint_params_sha256(make_config(**kw), str(tmp_path / name), data=data,
                                                              devices=devices)[1]
    cold_sha = sha("cold")
    assert cold_sha and sha("warm") == cold_sha and sha("batched", log_every=4) == cold_sha
    assert sha("other", learning_rate=1e-3) != cold_sha
