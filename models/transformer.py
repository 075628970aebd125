"""Decoder-only Transformer language model, as in Kaplan et al. 2020 (GPT-2 style).

Pre-LayerNorm blocks, learned position embeddings, GELU MLP, final LayerNorm, tied (default) or
untied unembedding. Hyper-parameters use the paper's names: n_layer, d_model, d_ff, d_attn, n_heads,
n_ctx (Kaplan §2.1, Table 1).

Sharding follows the MaxText Linen idiom: every parameter is declared with
``nn.with_logical_partitioning`` (names in models/axes.py) and activations are constrained with the
separate ``activation_*`` names, so one rules table maps both onto the (data, fsdp, tensor) mesh.

Call interface shared by every model family: ``logits = model.apply(params, tokens)`` with tokens
int32 [batch, length <= n_ctx] and logits float32 [batch, length, vocab_size];
``features, unembedding = model.apply(params, tokens, features_only=True)`` returns the final
(LayerNormed) hidden states [batch, length, d_model] and the [vocab_size, d_model] unembedding matrix
instead (logits = features @ unembeddingᵀ), both in the compute dtype, for a loss that forms the
logits itself in slices (scaling.train.losses.chunked_cross_entropy).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import axes

REMAT_POLICIES = {
    "none": None,
    # Recompute everything in the backward pass: least memory.
    "full": jax.checkpoint_policies.nothing_saveable,
    # Keep matmul outputs, recompute the cheap elementwise work (LayerNorm, GELU, softmax).
    "dots": jax.checkpoint_policies.checkpoint_dots,
    # Keep only matmuls without batch dims (weights x activations); recompute attention scores.
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


# None, "xla", "cudnn": jax.nn.dot_product_attention with that implementation (None lets JAX choose:
# cuDNN's fused kernel on GPUs that have it). "heads_major": heads_major_attention below, the fastest
# on CPU. All compute the same causal softmax attention.
ATTENTION_IMPLS = (None, "xla", "cudnn", "heads_major")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of one Transformer size (one gin file per size in gin/models/)."""

    vocab_size: int = 4096
    n_ctx: int = 256
    n_layer: int = 4
    d_model: int = 128
    d_ff: int = 512          # Kaplan's default d_ff = 4 d_model
    d_attn: int = 128        # Kaplan's default d_attn = d_model
    n_heads: int = 4
    dtype: str = "float32"        # compute dtype ("bfloat16" on accelerators)
    param_dtype: str = "float32"  # storage dtype of the parameters (keep float32)
    tie_embeddings: bool = True   # GPT-2 ties the unembedding to the token embedding
    scan_layers: bool = False     # nn.scan over layers: O(1) compile time in n_layer
    remat_policy: str = "none"    # one of REMAT_POLICIES
    attention_impl: str | None = None  # one of ATTENTION_IMPLS (the CPU ladder uses "heads_major")
    init_std: float = 0.02        # GPT-2 initialiser
    layer_norm_epsilon: float = 1e-5
    # Dropout on the embeddings and on each residual branch's output (GPT-2's embd/resid dropout); Kaplan
    # §4 trains the L(N, D) runs with 10 %. Active only when the caller passes a 'dropout' rng (the train
    # step does; evaluation does not); at 0 no dropout op is traced at all.
    dropout_rate: float = 0.0

    family = "transformer"

    def __post_init__(self):
        for name in ("vocab_size", "n_ctx", "n_layer", "d_model", "d_ff", "d_attn", "n_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"TransformerConfig.{name} must be a positive int, got {value!r}")
        if self.d_attn % self.n_heads:
            raise ValueError(
                f"TransformerConfig.d_attn={self.d_attn} must be divisible by n_heads={self.n_heads}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"TransformerConfig.attention_impl={self.attention_impl!r}; choose one of {ATTENTION_IMPLS}")
        if not (isinstance(self.dropout_rate, (int, float)) and 0 <= self.dropout_rate < 1):
            raise ValueError(f"TransformerConfig.dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"TransformerConfig.remat_policy={self.remat_policy!r}; "
                             f"choose one of {sorted(REMAT_POLICIES)}")
        jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)  # raise early on a bad dtype name

    @property
    def head_dim(self) -> int:
        return self.d_attn // self.n_heads


def _dense_init(config: TransformerConfig, logical_axes, std: float | None = None):
    return nn.with_logical_partitioning(
        nn.initializers.normal(stddev=config.init_std if std is None else std), logical_axes)


def _zeros(logical_axes):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), logical_axes)


# --- LayerNorm and GELU with hand-written backward passes -----------------------------------------
# Same functions and parameters as nn.LayerNorm and nn.gelu(approximate=True); their backward passes are
# written out so that each keeps one tensor for the backward (LayerNorm x̂, GELU its input) and
# computes the gradient in one fused pass. Autodiff of the library versions keeps more intermediates;
# together the two make the mid CPU rung's step 2.2-2.8 % faster (four A/B runs; large and small: within noise).

@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def normalize(x, epsilon: float):
    """(x - mean) / sqrt(var + epsilon) over the last axis, statistics in float32, in x's dtype."""
    return _normalize_fwd(x, epsilon)[0]


def _normalize_fwd(x, epsilon):
    x32 = x.astype(jnp.float32)
    centered = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    inv_std = jax.lax.rsqrt(jnp.mean(centered * centered, axis=-1, keepdims=True) + epsilon)
    x_hat = centered * inv_std
    return x_hat.astype(x.dtype), (x_hat, inv_std)


def _normalize_bwd(epsilon, residuals, grad):
    x_hat, inv_std = residuals
    g = grad.astype(jnp.float32)
    # d x̂ / d x applied to g: (g - mean(g) - x̂ · mean(g · x̂)) / std.
    dx = inv_std * (g - jnp.mean(g, axis=-1, keepdims=True) - x_hat * jnp.mean(g * x_hat, axis=-1, keepdims=True))
    return (dx.astype(grad.dtype),)


normalize.defvjp(_normalize_fwd, _normalize_bwd)

_GELU_C = (2 / math.pi) ** 0.5


@jax.custom_vjp
def gelu_tanh(x):
    """GPT-2's tanh approximation of GELU: x/2 · (1 + tanh(√(2/π) (x + 0.044715 x³)))."""
    return 0.5 * x * (1 + jnp.tanh(_GELU_C * (x + 0.044715 * x ** 3)))


def _gelu_fwd(x):
    return gelu_tanh(x), x   # the backward recomputes tanh from x


def _gelu_bwd(x, grad):
    t = jnp.tanh(_GELU_C * (x + 0.044715 * x ** 3))
    dt_dx = (1 - t * t) * _GELU_C * (1 + 3 * 0.044715 * x ** 2)
    return (grad * (0.5 * (1 + t) + 0.5 * x * dt_dx),)


gelu_tanh.defvjp(_gelu_fwd, _gelu_bwd)


def dropout(module: nn.Module, x, rate: float):
    """Inverted dropout of ``x`` at ``rate`` when the caller passed a 'dropout' rng (training), else x."""
    if rate == 0 or not module.has_rng("dropout"):
        return x
    return nn.Dropout(rate, deterministic=False)(x)


class LayerNorm(nn.Module):
    """nn.LayerNorm's function and parameters (scale, bias over the last axis), via ``normalize``."""

    epsilon: float = 1e-5
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), (axes.NORM,)),
                           (features,), self.param_dtype)
        bias = self.param("bias", _zeros((axes.NORM,)), (features,), self.param_dtype)
        y = normalize(x.astype(self.dtype), self.epsilon)
        return y * scale.astype(self.dtype) + bias.astype(self.dtype)


def layer_norm(config: TransformerConfig, name: str) -> LayerNorm:
    return LayerNorm(epsilon=config.layer_norm_epsilon, dtype=config.dtype, param_dtype=config.param_dtype,
                     name=name)


class Projection(nn.Module):
    """A weight tensor of any rank applied with one einsum, plus a bias.

    nn.DenseGeneral would flatten multi-axis kernels to 2-D inside its initializer, where a 4-name
    logical constraint cannot apply; declaring the kernel at its full shape keeps every axis named.
    """

    config: TransformerConfig
    equation: str
    kernel_shape: tuple
    kernel_axes: tuple
    bias_shape: tuple
    bias_axes: tuple
    std: float | None = None

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        kernel = self.param("kernel", _dense_init(cfg, self.kernel_axes, self.std), self.kernel_shape,
                            cfg.param_dtype)
        bias = self.param("bias", _zeros(self.bias_axes), self.bias_shape, cfg.param_dtype)
        y = jnp.einsum(self.equation, x.astype(cfg.dtype), kernel.astype(cfg.dtype))
        return y + bias.astype(cfg.dtype)


def heads_major_attention(q, k, v, query_block: int = 64):
    """Causal softmax attention of q, k, v [batch, length, heads, head_dim], computed head-major.

    jax.nn.dot_product_attention's XLA path contracts q and k in their [B, T, N, H] layout, where one
    head's rows are N·H floats apart; on CPU its batched dots and softmax backward then run at about a
    quarter of the matmul peak. One transpose to [B, N, T, H] makes each head's [T, H] block contiguous,
    and queries are taken ``query_block`` positions at a time against only the keys they can see
    (causal: block i needs keys up to its own end), which skips the fully masked upper blocks, a quarter
    of the work at two blocks. Forward + backward at the mid CPU rung's shape (8 x 128 x 6 x 64): 2.0x
    faster than jax.nn.dot_product_attention (README benchmark notes). The softmax runs in float32
    whatever the compute dtype, as JAX's does.
    """
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))   # [B, N, T, H]
    q = q * q.shape[-1] ** -0.5
    length = q.shape[2]
    outputs = []
    for start in range(0, length, query_block):
        end = min(start + query_block, length)
        scores = jnp.einsum("bnth,bnsh->bnts", q[:, :, start:end], k[:, :, :end]).astype(jnp.float32)
        causal = jnp.arange(start, end)[:, None] >= jnp.arange(end)[None, :]   # query t sees keys s <= t
        probs = jax.nn.softmax(jnp.where(causal, scores, jnp.finfo(jnp.float32).min), axis=-1)
        outputs.append(jnp.einsum("bnts,bnsh->bnth", probs.astype(v.dtype), v[:, :, :end]))
    y = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=2)
    return jnp.swapaxes(y, 1, 2)


def causal_attention(q, k, v, impl: str | None):
    """[B, T, N, H] causal attention by one of ATTENTION_IMPLS."""
    if impl == "heads_major":
        return heads_major_attention(q, k, v)
    # is_causal masks future positions: logits at t depend only on tokens <= t.
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)


class CausalSelfAttention(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        # Residual-path projections are scaled by 1/sqrt(2 n_layer) (GPT-2 §2.3).
        out_std = cfg.init_std / (2 * cfg.n_layer) ** 0.5
        qkv = Projection(cfg, "btd,dkhe->btkhe", (cfg.d_model, 3, cfg.n_heads, cfg.head_dim),
                         (axes.EMBED, None, axes.HEADS, axes.KV), (3, cfg.n_heads, cfg.head_dim),
                         (None, axes.HEADS, axes.KV), name="qkv")(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        act_heads = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_HEADS, axes.ACT_KV)
        q, k, v = (nn.with_logical_constraint(t, act_heads) for t in (q, k, v))
        y = causal_attention(q, k, v, cfg.attention_impl)
        y = nn.with_logical_constraint(y, act_heads)
        y = Projection(cfg, "bthe,hed->btd", (cfg.n_heads, cfg.head_dim, cfg.d_model),
                       (axes.HEADS, axes.KV, axes.EMBED), (cfg.d_model,), (axes.EMBED,),
                       std=out_std, name="out")(y)
        return nn.with_logical_constraint(y, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))


class MLP(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        out_std = cfg.init_std / (2 * cfg.n_layer) ** 0.5
        lead = x.shape[:-1]
        # The dense layers see [batch·length, features] (free reshapes of row-major arrays): with a 3-D
        # input the weight gradients contract over two axes, which XLA:CPU runs as a transposing copy and
        # a slower dot; 2-D, the MLP's forward + backward runs ~8 % faster on CPU (mid step +4-6 %).
        h = nn.Dense(cfg.d_ff, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                     kernel_init=_dense_init(cfg, (axes.EMBED, axes.MLP)),
                     bias_init=_zeros((axes.MLP,)), name="wi")(x.reshape(-1, x.shape[-1]))
        h = nn.with_logical_constraint(h.reshape(*lead, cfg.d_ff), (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP))
        h = gelu_tanh(h)  # GPT-2's tanh GELU
        y = nn.Dense(cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                     kernel_init=_dense_init(cfg, (axes.MLP, axes.EMBED), std=out_std),
                     bias_init=_zeros((axes.EMBED,)), name="wo")(h.reshape(-1, cfg.d_ff))
        return nn.with_logical_constraint(y.reshape(*lead, cfg.d_model),
                                          (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))


class Block(nn.Module):
    """Pre-LN residual block: x + attn(LN(x)), then x + mlp(LN(x))."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x, _=None):
        cfg = self.config
        x = x + dropout(self, CausalSelfAttention(cfg, name="attn")(layer_norm(cfg, "ln_1")(x)), cfg.dropout_rate)
        x = x + dropout(self, MLP(cfg, name="mlp")(layer_norm(cfg, "ln_2")(x)), cfg.dropout_rate)
        x = nn.with_logical_constraint(x, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))
        # The (carry, output) signature lets the same block run under nn.scan.
        return x, None


def remat_block(config: TransformerConfig, block_cls=Block):
    """Wraps the block class in nn.remat according to config.remat_policy (identity for "none")."""
    if config.remat_policy == "none":
        return block_cls
    # prevent_cse is unnecessary (and slows things down) inside scan.
    return nn.remat(block_cls, policy=REMAT_POLICIES[config.remat_policy],
                    prevent_cse=not config.scan_layers)


class Embedder(nn.Module):
    """Token + learned position embedding, and the (tied) unembedding."""

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        self.token_embedding = nn.Embed(
            cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
            embedding_init=_dense_init(cfg, (axes.VOCAB, axes.EMBED)), name="wte")
        self.position_embedding = self.param(
            "wpe", _dense_init(cfg, (axes.POSITION, axes.EMBED), std=0.01),
            (cfg.n_ctx, cfg.d_model), cfg.param_dtype)
        if not cfg.tie_embeddings:
            self.unembedding = nn.Dense(
                cfg.vocab_size, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                kernel_init=_dense_init(cfg, (axes.EMBED, axes.VOCAB)), name="unembed")

    def embed(self, tokens):
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.position_embedding[:length].astype(self.config.dtype)
        return nn.with_logical_constraint(x, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))

    def unembedding_matrix(self):
        """[vocab_size, d_model] in the compute dtype: the logits are x @ matrixᵀ, as unembed computes them."""
        if self.config.tie_embeddings:
            matrix = self.token_embedding.embedding
        else:
            matrix = self.unembedding.variables["params"]["kernel"].T   # Dense kernel is [d_model, vocab]
        return matrix.astype(self.config.dtype)

    def unembed(self, x):
        logits = self.token_embedding.attend(x) if self.config.tie_embeddings else self.unembedding(x)
        # The loss is computed in float32 whatever the compute dtype.
        logits = logits.astype(jnp.float32)
        return nn.with_logical_constraint(logits, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_VOCAB))


def apply_layers(x, config: TransformerConfig, n_layers: int, block_cls=Block, name_prefix="h"):
    """Runs n_layers distinct blocks, unrolled or as one nn.scan (params stacked on a 'layers' axis)."""
    block = remat_block(config, block_cls)
    if config.scan_layers:
        scanned = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},   # each layer its own dropout mask
            length=n_layers,
            metadata_params={nn.PARTITION_NAME: axes.LAYERS},
        )
        x, _ = scanned(config, name=name_prefix)(x, None)
        return x
    for i in range(n_layers):
        x, _ = block(config, name=f"{name_prefix}_{i}")(x, None)
    return x


def check_tokens(tokens, n_ctx: int):
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
    if tokens.shape[1] > n_ctx:
        raise ValueError(f"sequence length {tokens.shape[1]} exceeds n_ctx={n_ctx}; "
                         f"raise n_ctx in the model config or feed shorter windows")


class Transformer(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, tokens, features_only: bool = False):
        cfg = self.config
        check_tokens(tokens, cfg.n_ctx)
        embedder = Embedder(cfg, name="embedder")
        x = dropout(self, embedder.embed(tokens), cfg.dropout_rate)
        x = apply_layers(x, cfg, cfg.n_layer)
        x = layer_norm(cfg, "ln_f")(x)
        if features_only:  # the loss forms the logits itself (module docstring)
            return x, embedder.unembedding_matrix()
        return embedder.unembed(x)

