"""Behaviour of the three model families: causality, scan/remat equivalence, shared parameters."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn
from flax.core import meta

from models import build_model
from models.lstm import LSTMConfig
from models.recurrent_transformer import RecurrentTransformerConfig
from models.transformer import TransformerConfig

TINY = dict(vocab_size=97, n_ctx=16, n_layer=2, d_model=32, d_ff=64, d_attn=32, n_heads=4)

FAMILIES = {
    "transformer": TransformerConfig(**TINY),
    "transformer_scan_remat": TransformerConfig(**TINY, scan_layers=True, remat_policy="full"),
    "transformer_heads_major": TransformerConfig(**TINY, attention_impl="heads_major"),
    "recurrent": RecurrentTransformerConfig(**{**TINY, "n_layer": 1}, n_recurrence=3),
    "recurrent_scan": RecurrentTransformerConfig(**{**TINY, "n_layer": 1}, n_recurrence=3, scan_layers=True),
    "lstm": LSTMConfig(vocab_size=97, n_ctx=16, n_layer=2, d_model=32),
}


def init(config, batch=2):
    model = build_model(config)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (batch, config.n_ctx), 0, config.vocab_size)
    params = meta.unbox(model.init(jax.random.PRNGKey(0), tokens))
    return model, params, tokens


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_logits_at_t_ignore_tokens_after_t(name):
    model, params, tokens = init(FAMILIES[name])
    logits = model.apply(params, tokens)
    assert logits.shape == (2, 16, 97) and logits.dtype == jnp.float32
    t = 7
    changed = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 5) % 97)
    logits_changed = model.apply(params, changed)
    np.testing.assert_allclose(logits_changed[:, :t + 1], logits[:, :t + 1], rtol=1e-5, atol=1e-6)
    # ...and the future positions do react, so the check above is not vacuous.
    assert float(jnp.max(jnp.abs(logits_changed[:, t + 1:] - logits[:, t + 1:]))) > 1e-4
    # Changing token t itself changes the logits at t.
    changed_t = tokens.at[:, t].set((tokens[:, t] + 1) % 97)
    assert float(jnp.max(jnp.abs(model.apply(params, changed_t)[:, t] - logits[:, t]))) > 1e-4


def test_scan_over_layers_equals_unrolled_layers():
    unrolled_cfg = TransformerConfig(**TINY)
    scanned_cfg = TransformerConfig(**TINY, scan_layers=True)
    model, params, tokens = init(unrolled_cfg)
    p = params["params"]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[p[f"h_{i}"] for i in range(TINY["n_layer"])])
    scanned_params = {"params": {"embedder": p["embedder"], "ln_f": p["ln_f"], "h": stacked}}
    np.testing.assert_allclose(build_model(scanned_cfg).apply(scanned_params, tokens),
                               model.apply(params, tokens), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("policy", ["full", "dots", "dots_with_no_batch_dims"])
def test_remat_policies_give_identical_gradients(policy):
    model, params, tokens = init(TransformerConfig(**TINY))
    remat_model = build_model(TransformerConfig(**TINY, remat_policy=policy))

    def loss(m, p):
        return jnp.mean(jax.nn.logsumexp(m.apply(p, tokens), axis=-1))

    g_plain = jax.grad(lambda p: loss(model, p))(params)
    g_remat = jax.grad(lambda p: loss(remat_model, p))(params)
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _as_transformer_params(recurrent_params, n_layer, n_recurrence):
    p = recurrent_params["params"]
    blocks = {f"h_{r * n_layer + i}": p["stack"][f"h_{i}"] for r in range(n_recurrence) for i in range(n_layer)}
    return {"params": {"embedder": p["embedder"], "ln_f": p["ln_f"], **blocks}}


@pytest.mark.parametrize("scan", [False, True])
def test_recurrent_transformer_equals_deep_transformer_with_copied_blocks(scan):
    cfg = RecurrentTransformerConfig(**{**TINY, "n_layer": 2}, n_recurrence=2, scan_layers=scan)
    model, params, tokens = init(cfg)
    # One set of shared blocks: parameters do not grow with n_recurrence.
    assert sorted(params["params"]["stack"]) == ["h_0", "h_1"]
    deep = build_model(TransformerConfig(**{**TINY, "n_layer": 4}))
    np.testing.assert_allclose(model.apply(params, tokens),
                               deep.apply(_as_transformer_params(params, 2, 2), tokens), rtol=2e-5, atol=2e-5)


def test_lstm_carries_information_across_the_whole_context():
    model, params, tokens = init(FAMILIES["lstm"])
    changed = tokens.at[:, 0].set((tokens[:, 0] + 1) % 97)
    # The first token influences the last position's prediction through the recurrent state.
    delta = jnp.abs(model.apply(params, changed)[:, -1] - model.apply(params, tokens)[:, -1])
    assert float(jnp.max(delta)) > 1e-6


def test_sequence_longer_than_context_is_a_clear_error():
    model, params, _ = init(FAMILIES["transformer"])
    with pytest.raises(ValueError, match="exceeds n_ctx=16"):
        model.apply(params, jnp.zeros((1, 17), jnp.int32))


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        TransformerConfig(**{**TINY, "n_heads": 5})
    with pytest.raises(ValueError, match="remat_policy"):
        TransformerConfig(**TINY, remat_policy="sometimes")
    with pytest.raises(ValueError, match="attention_impl"):
        TransformerConfig(**TINY, attention_impl="flash")
    with pytest.raises(TypeError, match="unknown model config"):
        build_model(object())


@pytest.mark.parametrize("dtype, tol", [("float32", 2e-5), ("bfloat16", 3e-2)])
def test_heads_major_attention_equals_jax_dot_product_attention(dtype, tol):
    # Same loss and gradients as jax.nn.dot_product_attention (the default implementation), so the
    # CPU ladder's faster attention is the same model.
    model, params, tokens = init(TransformerConfig(**TINY, dtype=dtype))
    heads_major = build_model(TransformerConfig(**TINY, dtype=dtype, attention_impl="heads_major"))

    def loss(p, m):
        logits = m.apply(p, tokens[:, :-1])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))

    (l_ref, g_ref), (l_hm, g_hm) = (jax.value_and_grad(loss)(params, m) for m in (model, heads_major))
    assert float(l_hm) == pytest.approx(float(l_ref), rel=tol)
    for a, b in zip(jax.tree.leaves(g_hm), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("length, query_block", [(12, 4), (10, 4), (8, 64)])
def test_heads_major_query_blocks_skip_only_masked_work(length, query_block):
    # Query blocks (the last one partial when length % query_block != 0) see only the keys up to their
    # own end: outputs and gradients equal full causal attention.
    from models.transformer import heads_major_attention
    q, k, v, w = (jax.random.normal(jax.random.key(i), (2, length, 3, 8)) for i in range(4))
    ref = lambda q, k, v: jnp.sum(w * jax.nn.dot_product_attention(q, k, v, is_causal=True))  # noqa: E731
    ours = lambda q, k, v: jnp.sum(w * heads_major_attention(q, k, v, query_block=query_block))  # noqa: E731
    for a, b in zip(jax.grad(ours, argnums=(0, 1, 2))(q, k, v), jax.grad(ref, argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(ours(q, k, v)), float(ref(q, k, v)), rtol=1e-5)


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_hand_written_layer_norm_and_gelu_equal_flax_in_value_and_gradient(dtype, tol):
    from models.transformer import LayerNorm, gelu_tanh
    x = (3 * jax.random.normal(jax.random.key(0), (4, 16, 32)) + 1).astype(dtype)
    w = jax.random.normal(jax.random.key(1), (4, 16, 32))
    ours, ref = LayerNorm(1e-5, dtype=dtype), nn.LayerNorm(1e-5, dtype=dtype)
    params = jax.tree.map(lambda a: a + jax.random.normal(jax.random.key(2), a.shape), ref.init(jax.random.key(3), x))
    assert jax.tree.structure(meta.unbox(ours.init(jax.random.key(3), x))) == jax.tree.structure(params)
    for f_ours, f_ref, args in (
            (lambda p, x: jnp.sum(w * ours.apply(p, x)), lambda p, x: jnp.sum(w * ref.apply(p, x)), (params, x)),
            (lambda x: jnp.sum(w * gelu_tanh(x)), lambda x: jnp.sum(w * nn.gelu(x, approximate=True)), (x,))):
        argnums = tuple(range(len(args)))
        for a, b in zip(jax.tree.leaves(jax.grad(f_ours, argnums)(*args)), jax.tree.leaves(jax.grad(f_ref, argnums)(*args))):
            scale = float(jnp.max(jnp.abs(b.astype(jnp.float32))))
            np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol * scale, rtol=0)
        assert float(f_ours(*args)) == pytest.approx(float(f_ref(*args)), rel=tol, abs=tol)


def test_mlp_on_flattened_tokens_equals_the_per_position_dense_layers():
    """MLP reshapes [B, T, d] to [B·T, d] for its dense layers (a CPU speed change): the same function and
    gradients as the 3-D formulation, and the same parameter tree as before (checkpoints still load)."""
    from models.transformer import MLP, gelu_tanh
    cfg = TransformerConfig(**TINY)
    x = jax.random.normal(jax.random.key(0), (3, 16, cfg.d_model))
    w = jax.random.normal(jax.random.key(1), (3, 16, cfg.d_model))
    mlp = MLP(cfg)
    params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape),
                          meta.unbox(mlp.init(jax.random.key(3), x)))
    assert {k: v.shape for k, v in params["params"]["wi"].items()} == {"kernel": (32, 64), "bias": (64,)}

    def reference(p, x):
        p = p["params"]
        h = gelu_tanh(jnp.einsum("btd,df->btf", x, p["wi"]["kernel"]) + p["wi"]["bias"])
        return jnp.einsum("btf,fd->btd", h, p["wo"]["kernel"]) + p["wo"]["bias"]

    ours = lambda p, x: jnp.sum(w * mlp.apply(p, x))  # noqa: E731
    ref = lambda p, x: jnp.sum(w * reference(p, x))  # noqa: E731
    np.testing.assert_allclose(np.asarray(mlp.apply(params, x)), np.asarray(reference(params, x)), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(jax.grad(ours, (0, 1))(params, x)), jax.tree.leaves(jax.grad(ref, (0, 1))(params, x))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    cfg = TransformerConfig(**TINY, dtype="bfloat16")
    model, params, tokens = init(cfg)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    assert model.apply(params, tokens).dtype == jnp.float32
