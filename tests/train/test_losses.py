"""Chunked cross-entropy: the same loss and gradients as the whole-sequence loss, in a fraction of the memory."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models.lstm import LSTMConfig
from models.recurrent_transformer import RecurrentTransformerConfig
from models.transformer import TransformerConfig
from scaling.train import config as config_lib, losses, trainer
from scaling.train.config import TrainConfig

TINY = TransformerConfig(vocab_size=97, n_ctx=16, n_layer=2, d_model=32, d_ff=64, d_attn=32, n_heads=2)


def _random_problem(batch=3, length=16, d_model=8, vocab=50, seed=0):
    rng = np.random.default_rng(seed)
    features = jnp.asarray(rng.normal(size=(batch, length, d_model)), jnp.float32)
    unembedding = jnp.asarray(rng.normal(size=(vocab, d_model)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, vocab, (batch, length)), jnp.int32)
    return features, unembedding, targets


@pytest.mark.parametrize("chunk_length", [1, 4, 16])
def test_chunked_loss_and_gradients_equal_the_whole_sequence_loss(chunk_length):
    features, unembedding, targets = _random_problem()
    whole = lambda f, w: losses.cross_entropy(jnp.einsum("btd,vd->btv", f, w), targets)  # noqa: E731
    chunked = lambda f, w: losses.chunked_cross_entropy(f, w, targets, chunk_length)  # noqa: E731
    (l_whole, g_whole), (l_chunked, g_chunked) = (jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(features, unembedding)
                                                  for fn in (whole, chunked))
    assert float(l_chunked) == pytest.approx(float(l_whole), rel=1e-6)
    for a, b in zip(g_chunked, g_whole):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("chunk_length", [0, 5, -4, 2.0])
def test_a_chunk_length_that_does_not_divide_the_sequence_is_refused(chunk_length):
    features, unembedding, targets = _random_problem()
    with pytest.raises(ValueError, match="loss_chunk_length"):
        losses.chunked_cross_entropy(features, unembedding, targets, chunk_length)


@pytest.mark.parametrize("model_config", [
    TINY,
    dataclasses.replace(TINY, tie_embeddings=False),
    RecurrentTransformerConfig(vocab_size=97, n_ctx=16, n_layer=2, d_model=32, d_ff=64, d_attn=32, n_heads=2,
                               n_recurrence=2),
    LSTMConfig(vocab_size=97, n_ctx=16, n_layer=1, d_model=32),
    LSTMConfig(vocab_size=97, n_ctx=16, n_layer=1, d_model=32, tie_embeddings=False),
], ids=["transformer", "transformer-untied", "recurrent", "lstm", "lstm-untied"])
def test_every_model_family_returns_features_whose_product_with_the_unembedding_is_its_logits(model_config):
    model = models.build_model(model_config)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 97, (2, 16)), jnp.int32)
    params = nn.unbox(model.init(jax.random.key(0), tokens))
    logits = model.apply(params, tokens)
    features, unembedding = model.apply(params, tokens, features_only=True)
    assert features.shape == (2, 16, model_config.d_model) and unembedding.shape == (97, model_config.d_model)
    np.testing.assert_allclose(np.asarray(features @ unembedding.T), np.asarray(logits), rtol=1e-5, atol=1e-5)


def _tiny_params_and_windows(model_config, batch=4, seed=0):
    model = models.build_model(model_config)
    windows = np.random.default_rng(seed).integers(0, model_config.vocab_size, (batch, model_config.n_ctx + 1))
    params = nn.unbox(model.init(jax.random.key(seed), jnp.zeros((1, model_config.n_ctx), jnp.int32)))["params"]
    apply_fn = lambda p, x, **kw: model.apply({"params": p}, x, **kw)  # noqa: E731
    return params, jnp.asarray(windows, jnp.int32), apply_fn


def test_trainer_gradients_with_the_chunked_loss_equal_the_whole_loss():
    params, windows, apply_fn = _tiny_params_and_windows(TINY)
    loss, grads, gns = jax.jit(trainer.make_grad_fn(apply_fn, 2))(params, windows)
    loss_c, grads_c, gns_c = jax.jit(trainer.make_grad_fn(apply_fn, 2, loss_chunk_length=4))(params, windows)
    assert float(loss_c) == pytest.approx(float(loss), rel=1e-6)
    assert float(gns_c["gns_s_small"]) == pytest.approx(float(gns["gns_s_small"]), rel=1e-4)
    for a, b in zip(jax.tree.leaves(grads_c), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)


def _grad_temp_bytes(model_config, loss_chunk_length):
    params, windows, apply_fn = _tiny_params_and_windows(model_config, batch=8)
    grad_fn = jax.jit(jax.grad(trainer.make_loss_fn(apply_fn, loss_chunk_length)))
    return grad_fn.lower(params, windows).compile().memory_analysis().temp_size_in_bytes


def test_the_chunked_loss_never_holds_the_whole_logits():
    # A vocabulary large against the model, as GPT-2's 50,257 is against small models: the logits and their
    # gradient dominate the temporaries of the whole-sequence loss.
    config = dataclasses.replace(TINY, vocab_size=8192, n_ctx=64)
    logits_bytes = 8 * 64 * 8192 * 4
    whole = _grad_temp_bytes(config, 0)
    chunked = {c: _grad_temp_bytes(config, c) for c in (4, 8, 16)}
    assert whole >= 2 * logits_bytes         # the whole [B, T, V] logits and their gradient are held...
    assert chunked[8] < whole / 3            # ... the chunked loss holds one [B, 8, V] slice at a time:
    assert chunked[4] < chunked[8] < chunked[16] < whole / 2   # its memory follows the slice, not T


def test_train_config_checks_the_chunk_length_and_leaves_it_out_of_the_run_fingerprint():
    with pytest.raises(ValueError, match="loss_chunk_length"):
        TrainConfig(model=TINY, loss_chunk_length=-1)
    fields = config_lib.fingerprint_fields(TrainConfig(model=TINY, loss_chunk_length=4))
    assert "loss_chunk_length" not in fields
    with pytest.raises(ValueError, match="divisor of n_ctx"):
        trainer.setup(TrainConfig(model=TINY, loss_chunk_length=5, batch_size=4, microbatches=2),
                      data=_TinyData(), devices=jax.devices()[:1])


class _TinyData:
    vocab_size = 97
