"""LSTM language model for Kaplan et al. 2020's Transformer-vs-LSTM comparison (§3.2.1, Fig. 7).

Token embedding → n_layer LSTM layers (hidden size d_model, residual connections between layers) →
LayerNorm → (tied) unembedding. Same interface as the Transformer: tokens [B, T] → logits [B, T, V].
Non-embedding parameters (Kaplan's N, biases excluded) = n_layer · 8 · d_model² (4 gates × input and
recurrent kernels).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import axes
from models.transformer import check_tokens


@dataclasses.dataclass(frozen=True)
class LSTMConfig:
    vocab_size: int = 4096
    n_ctx: int = 256        # longest sequence fed (no positional parameters; only validates input)
    n_layer: int = 2
    d_model: int = 128
    dtype: str = "float32"
    param_dtype: str = "float32"
    tie_embeddings: bool = True
    init_std: float = 0.02
    layer_norm_epsilon: float = 1e-5

    family = "lstm"

    def __post_init__(self):
        for name in ("vocab_size", "n_ctx", "n_layer", "d_model"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"LSTMConfig.{name} must be a positive int, got {value!r}")


class LSTMLayer(nn.Module):
    config: LSTMConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        d = cfg.d_model
        init = nn.initializers.normal(stddev=cfg.init_std)
        w_input = self.param("input_kernel", nn.with_logical_partitioning(init, (axes.EMBED, axes.GATES, axes.MLP)),
                             (d, 4, d), cfg.param_dtype)
        w_recurrent = self.param("recurrent_kernel", nn.with_logical_partitioning(init, (None, axes.GATES, axes.MLP)),
                                 (d, 4, d), cfg.param_dtype)

        def bias_init(key, shape, dtype):
            # Forget-gate bias 1 (Gers et al. 2000; Jozefowicz et al. 2015): remember by default.
            return jnp.zeros(shape, dtype).at[1].set(1.0)

        bias = self.param("bias", nn.with_logical_partitioning(bias_init, (axes.GATES, axes.MLP)), (4, d), cfg.param_dtype)
        dtype = jnp.dtype(cfg.dtype)
        # The input contribution of every time step is one big matmul; only h @ W_h is sequential.
        x_gates = jnp.einsum("btd,dgh->btgh", x.astype(dtype), w_input.astype(dtype)) + bias.astype(dtype)
        batch = x.shape[0]

        def step(carry, xg):
            c, h = carry
            gates = xg + jnp.einsum("bd,dgh->bgh", h, w_recurrent.astype(dtype))
            i, f, g, o = (gates[:, k] for k in range(4))
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (c, h), h

        zeros = jnp.zeros((batch, d), dtype)
        _, hs = jax.lax.scan(step, (zeros, zeros), jnp.swapaxes(x_gates, 0, 1))
        return jnp.swapaxes(hs, 0, 1)


class LSTM(nn.Module):
    config: LSTMConfig

    @nn.compact
    def __call__(self, tokens, features_only: bool = False):
        cfg = self.config
        check_tokens(tokens, cfg.n_ctx)
        embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                         embedding_init=nn.with_logical_partitioning(
                             nn.initializers.normal(stddev=cfg.init_std), (axes.VOCAB, axes.EMBED)),
                         name="wte")
        x = embed(tokens)
        for i in range(cfg.n_layer):
            # Residual connection between stacked LSTM layers keeps deep stacks trainable.
            x = x + LSTMLayer(cfg, name=f"lstm_{i}")(x)
            x = nn.with_logical_constraint(x, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))
        x = nn.LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                         scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (axes.NORM,)),
                         bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes.NORM,)),
                         name="ln_f")(x)
        if cfg.tie_embeddings:
            unembed, unembedding = embed.attend, lambda: embed.embedding
        else:
            dense = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                             kernel_init=nn.with_logical_partitioning(
                                 nn.initializers.normal(stddev=cfg.init_std), (axes.EMBED, axes.VOCAB)),
                             name="unembed")
            unembed, unembedding = dense, lambda: self.variables["params"]["unembed"]["kernel"].T
        if features_only:  # the call interface of models/transformer.py
            return x, unembedding().astype(cfg.dtype)
        logits = unembed(x)
        logits = logits.astype(jnp.float32)
        return nn.with_logical_constraint(logits, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_VOCAB))
