"""Weight decay masks by parameter path (issue 21 item 9): kernels and embeddings are decayed, biases and
LayerNorm scales are not, in scanned and unrolled trees of every model family."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import models
from models.lstm import LSTMConfig
from models.recurrent_transformer import RecurrentTransformerConfig
from models.transformer import TransformerConfig
from scaling.train import optimizers
from scaling.train.config import TrainConfig

SHAPE = dict(vocab_size=64, n_ctx=16, d_model=16)
TRANSFORMER = dict(SHAPE, n_layer=2, d_ff=32, d_attn=16, n_heads=2)
CONFIGS = {
    "transformer": TransformerConfig(**TRANSFORMER),
    "transformer_scan": TransformerConfig(**TRANSFORMER, scan_layers=True),
    "transformer_untied": TransformerConfig(**TRANSFORMER, tie_embeddings=False),
    "recurrent": RecurrentTransformerConfig(**TRANSFORMER, n_recurrence=2, tie_embeddings=False),
    "recurrent_scan": RecurrentTransformerConfig(**TRANSFORMER, n_recurrence=2, scan_layers=True),
    "lstm": LSTMConfig(**SHAPE, n_layer=2),
    "lstm_untied": LSTMConfig(**SHAPE, n_layer=2, tie_embeddings=False),
}


def abstract_params(config):
    model = models.build_model(config)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, config.n_ctx), jnp.int32))
    return nn.unbox(variables)["params"]


def expected(path):
    name = jax.tree_util.keystr(path)
    return name.endswith(("kernel']", "['embedding']", "['wpe']"))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_mask_by_path_in_every_family(name):
    params = abstract_params(CONFIGS[name])
    mask = optimizers.decay_mask(params)
    leaves = jax.tree_util.tree_leaves_with_path(mask)
    decided = {jax.tree_util.keystr(p): m for p, m in leaves}
    assert decided == {jax.tree_util.keystr(p): expected(p) for p, _ in leaves}
    assert any(decided.values()) and not all(decided.values())
    # What the rank rule got wrong: a bias or LayerNorm parameter with ndim >= 2 (qkv bias [3, N, H];
    # every stacked bias / scale with nn.scan; the LSTM's [4, d] gate bias) is not decayed.
    shapes = {jax.tree_util.keystr(p): leaf.shape for p, leaf in jax.tree_util.tree_leaves_with_path(params)}
    wrongly_decayed_before = [k for k, v in decided.items() if not v and len(shapes[k]) >= 2]
    if name in ("transformer", "transformer_scan", "recurrent", "recurrent_scan", "lstm"):
        assert wrongly_decayed_before, shapes
    if name == "transformer_scan":
        assert any("ln_1']['scale" in k for k in wrongly_decayed_before)


def test_unknown_parameter_name_is_an_error():
    with pytest.raises(ValueError, match=r"\['gate'\].*optimizers.py"):
        optimizers.decay_mask({"block": {"gate": jnp.zeros((2, 2))}})


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_decay_reaches_exactly_the_masked_leaves(optimizer):
    """With zero gradients the update is the decay alone: kernels/embeddings shrink, the rest stays."""
    config = CONFIGS["transformer_scan"]
    model = models.build_model(config)
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, config.n_ctx), jnp.int32)))["params"]
    params = jax.tree.map(lambda p: p + 0.5, params)  # no zero-valued leaves
    train = TrainConfig(model=config, optimizer=optimizer, weight_decay=0.1, learning_rate=1e-2, num_steps=10,
                        warmup_steps=0, schedule="constant", adafactor_min_dim_to_factor=8)
    tx = optimizers.make_optimizer(train, optimizers.make_schedule("constant", 1e-2, 10, 0))
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    mask = optimizers.decay_mask(params)
    for (path, u), m in zip(jax.tree_util.tree_leaves_with_path(updates), jax.tree.leaves(mask)):
        moved = bool(np.any(np.asarray(u) != 0))
        assert moved == m, (jax.tree_util.keystr(path), optimizer)


def test_masks_are_identical_for_scanned_and_unrolled_layers():
    unrolled = optimizers.decay_mask(abstract_params(CONFIGS["transformer"]))
    scanned = optimizers.decay_mask(abstract_params(CONFIGS["transformer_scan"]))
    per_layer = lambda tree: sorted(  # noqa: E731
        (jax.tree_util.keystr(p).replace("['h_0']", "['h']").replace("['h_1']", "['h']"), v)
        for p, v in jax.tree_util.tree_leaves_with_path(tree))
    assert sorted(set(per_layer(unrolled))) == sorted(set(per_layer(scanned)))
    assert dataclasses.replace(CONFIGS["transformer"], scan_layers=True) == CONFIGS["transformer_scan"]
    assert optax is not None
