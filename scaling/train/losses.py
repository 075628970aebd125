"""Next-token cross-entropy, whole or in sequence chunks that never hold the full logits.

The logits are the widest activation of a language model with a real vocabulary: at the paper's
shapes (n_ctx 1024, GPT-2's 50,257 tokens) one sequence's float32 logits take 206 MB (65x its
residual stream at d_model 768), 1.6 GB for a microbatch of 8, and the backward pass holds their
gradient as well. ``chunked_cross_entropy`` takes the final hidden states and the unembedding matrix instead and
scans over ``chunk_length``-position slices of the sequence: each slice's logits are formed, reduced to
its summed loss, and recomputed in the backward pass (``jax.checkpoint``), so the step holds one
slice's logits at a time. This is Levanter's blockwise cross-entropy idea (the loss takes the LM
head, not the logits), done with a scan and remat rather than a custom kernel: the same FLOPs plus
one recomputed unembedding matmul (2·d·V per token, a third of the unembedding's 6·d·V).

Both functions return the mean over all B·T positions in float32, whatever the compute dtype.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits, targets):
    """Mean next-token cross-entropy in nats (float32 whatever the compute dtype)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets).mean()


def check_chunk_length(chunk_length: int, length: int) -> None:
    if not isinstance(chunk_length, int) or chunk_length <= 0 or length % chunk_length:
        raise ValueError(f"loss chunk length {chunk_length!r} must be a positive int dividing the sequence "
                         f"length {length}; set TrainConfig.loss_chunk_length to a divisor of n_ctx "
                         f"(or 0 for the whole-sequence loss)")


def chunked_cross_entropy(features, unembedding, targets, chunk_length: int):
    """Mean next-token cross-entropy from features [B, T, d] and unembedding [V, d] (logits = f @ Wᵀ).

    Equal to ``cross_entropy(features @ unembedding.T, targets)`` up to float rounding, in the memory
    of one [B, chunk_length, V] slice of logits instead of all T positions (see the module docstring).
    The batch axis stays whole in every slice, so the data sharding of features is kept.
    """
    batch, length, d_model = features.shape
    check_chunk_length(chunk_length, length)
    n_chunks = length // chunk_length
    # [n_chunks, B, chunk, ...]: scan over sequence slices, batch (and its sharding) untouched.
    f = jnp.swapaxes(features.reshape(batch, n_chunks, chunk_length, d_model), 0, 1)
    t = jnp.swapaxes(targets.reshape(batch, n_chunks, chunk_length), 0, 1)

    @jax.checkpoint  # keep only the slice's features; its logits are recomputed in the backward pass
    def slice_loss(f_slice, t_slice):
        logits = jnp.einsum("bcd,vd->bcv", f_slice, unembedding.astype(f_slice.dtype))
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), t_slice).sum()

    def body(total, xs):
        return total + slice_loss(*xs), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (f, t))
    return total / (batch * length)
