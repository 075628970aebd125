"""Dropout (TransformerConfig.dropout_rate; Kaplan §4 trains L(N, D) with 10 %): active in the train step only,
its masks a pure function of (seed, step) -- same seed, same losses; a crash and resume gives the uninterrupted
losses -- and a rate of 0 changes nothing (same program, same fingerprint as before the field existed)."""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import build_model
from models.recurrent_transformer import RecurrentTransformerConfig
from models.transformer import TransformerConfig
from scaling.train import config as config_lib, step as step_lib, trainer
from scaling.train.config import MeshConfig, TrainConfig
from scaling.train.metrics import read_jsonl
from train_helpers import Crash, crash_after, step_losses

MODEL = TransformerConfig(vocab_size=64, n_ctx=32, n_layer=2, d_model=32, d_ff=64, d_attn=32, n_heads=4)


def make_config(**kw):
    base = dict(model=dataclasses.replace(MODEL, dropout_rate=0.1), batch_size=8, num_steps=12, learning_rate=3e-3,
                warmup_steps=2, log_every=1, eval_every=6, checkpoint_every=6, keep_checkpoints=2,
                progress_bar=False, microbatches=2, mesh=MeshConfig(data=1))
    base.update(kw)
    return TrainConfig(**base)


def _train(tmp_path, name, data, **kw):
    workdir = str(tmp_path / name)
    trainer.train(make_config(**kw), workdir, data=data, devices=jax.devices()[:1])
    return workdir, step_losses(workdir)


@pytest.mark.parametrize("config", [
    MODEL,
    dataclasses.replace(MODEL, scan_layers=True),
    RecurrentTransformerConfig(vocab_size=64, n_ctx=32, n_layer=1, d_model=32, d_ff=64, d_attn=32, n_heads=4),
], ids=["unrolled", "scan", "recurrent"])
def test_dropout_only_with_a_dropout_rng(config):
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (4, 32)), jnp.int32)
    plain_model = build_model(config)
    params = plain_model.init(jax.random.key(0), tokens)
    dropped_model = build_model(dataclasses.replace(config, dropout_rate=0.1))
    plain = plain_model.apply(params, tokens)
    # Without a 'dropout' rng (evaluation) the model is the plain one, bit for bit.
    np.testing.assert_array_equal(dropped_model.apply(params, tokens), plain)
    a = dropped_model.apply(params, tokens, rngs={"dropout": jax.random.PRNGKey(1)})
    b = dropped_model.apply(params, tokens, rngs={"dropout": jax.random.PRNGKey(1)})
    c = dropped_model.apply(params, tokens, rngs={"dropout": jax.random.PRNGKey(2)})
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, plain, atol=1e-4) and not np.allclose(a, c, atol=1e-4)
    # A rate of 0 with an rng is the plain model too: no dropout op is traced.
    np.testing.assert_array_equal(plain_model.apply(params, tokens, rngs={"dropout": jax.random.PRNGKey(1)}), plain)


def test_dropout_rate_is_checked():
    with pytest.raises(ValueError, match="dropout_rate"):
        dataclasses.replace(MODEL, dropout_rate=1.0)


def test_dropout_batch_keys_are_a_function_of_seed_and_step():
    windows = jnp.zeros((8, 33), jnp.int32)
    keys = lambda seed, step: np.asarray(step_lib.dropout_batch(windows, seed, step)["dropout_keys"])  # noqa: E731
    np.testing.assert_array_equal(keys(0, 5), keys(0, 5))
    assert len({tuple(k) for k in keys(0, 5)}) == 8  # every row (so every microbatch) its own key
    assert not np.array_equal(keys(0, 5), keys(0, 6)) and not np.array_equal(keys(0, 5), keys(1, 5))


def test_fingerprint_unchanged_at_rate_zero():
    plain = config_lib.fingerprint_fields(make_config(model=MODEL))
    assert "model.dropout_rate" not in plain  # a workdir written before the field existed still matches
    assert config_lib.fingerprint_fields(make_config())["model.dropout_rate"] == 0.1


def test_training_with_dropout_is_deterministic_and_resumes_exactly(tmp_path, synthetic_data):
    data = synthetic_data(vocab_size=64, n_ctx=32, batch_size=8)
    _, once = _train(tmp_path, "once", data)
    _, other_seed = _train(tmp_path, "seed1", data, seed=1)
    _, no_dropout = _train(tmp_path, "plain", data, model=MODEL)
    assert once[12] != other_seed[12]
    assert once[1] != no_dropout[1]  # the first step already sees the masks (same init, same batch)
    # Dropout regularises: the training loss is higher than without it on the same batches.
    assert np.mean([once[s] for s in range(7, 13)]) > np.mean([no_dropout[s] for s in range(7, 13)])

    workdir = str(tmp_path / "crashed")
    with pytest.raises(Crash):
        trainer.train(make_config(), workdir, data=data, devices=jax.devices()[:1], after_checkpoint=crash_after(6))
    trainer.train(make_config(), workdir, data=data, devices=jax.devices()[:1])
    assert step_losses(workdir) == once  # the same masks on the same seed: deterministic, and exact across a resume
    evals = read_jsonl(os.path.join(workdir, "eval.jsonl"))
    assert [e["step"] for e in evals] == [6, 12]
