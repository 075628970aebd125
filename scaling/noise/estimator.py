"""The in-step gradient-noise-scale estimator (McCandlish et al. 2018, App. A.1).

Spec: ../shared/design/noise-scale.md §1. At fixed parameters θ, K sub-batch gradients g_k (each the
gradient of the *mean* loss over b examples) give, with B = K·b and ḡ = mean_k g_k,

    S_small = mean_k |g_k|²          (the mean of squared norms, never the square of a mean norm)
    S_big   = |ḡ|²
    |G|²    ≈ (B·S_big − b·S_small) / (B − b)        unbiased
    trΣ     ≈ (S_small − S_big) / (1/b − 1/B)         unbiased

B_simple = trΣ/|G|² is a ratio, hence biased: average numerator and denominator separately first
(scaling.noise.smoothing, scaling.noise.offline). Norms are squared in float32 and summed over every
leaf (with GSPMD the reduction over model shards is exact; nothing is reduced over `data` first).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def sqnorm(tree) -> jax.Array:
    """Σ x² over every leaf, in float32 (bf16/fp16 squares overflow or lose the noise)."""
    return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree))


def check_gradient_samples(microbatches: int, data_shards: int = 1) -> None:
    """K·D = 1 gives one gradient sample: trΣ is 0/0 (mesh-transformer-jax issue #95)."""
    if microbatches * data_shards < 2:
        raise ValueError(
            "the gradient noise scale needs at least 2 gradient samples per step, but "
            f"microbatches K={microbatches} x data shards D={data_shards} = {microbatches * data_shards}; "
            "set TrainConfig.microbatches >= 2 (e.g. 4) or turn the estimator off with "
            "TrainConfig.noise_scale = False")


def unbiased_estimates(s_small, s_big, b_small, b_big):
    """(|G|², trΣ) from the raw sums; b_small < b_big are the two batch sizes (in examples).

    Works on floats, numpy arrays and jax arrays (elementwise).
    """
    if not b_big > b_small:
        raise ValueError(f"need b_big > b_small, got b_small={b_small}, b_big={b_big}")
    g2 = (b_big * s_big - b_small * s_small) / (b_big - b_small)
    trace = (s_small - s_big) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace


def microbatch_value_and_grad(value_and_grad: Callable, microbatches: int, noise_sums: bool = True) -> Callable:
    """(params, batch [B, ...]) -> (mean loss, mean grad (float32), {gns_s_small, gns_s_big}).

    The batch is split *strided* into K = microbatches parts (row i goes to microbatch i mod K, so
    each keeps the batch's data sharding) and a lax.scan sums their float32 gradients: the update is
    the whole batch's, in 1/K of the activation memory and the same FLOPs as one backward pass; the
    only extra work is K float32 squared-norm reductions. ``value_and_grad(params, microbatch)``
    must return the microbatch's *mean* loss and its gradient (noise-scale.md §3 T5: a loss summed
    or divided by K would need g_k rescaled). With K = 1 or ``noise_sums=False`` (the benchmark's
    baseline) no noise sums are computed or returned.
    """

    def run(params, batch):
        if microbatches == 1:
            loss, g = value_and_grad(params, batch)
            return loss, jax.tree.map(lambda x: x.astype(jnp.float32), g), {}
        rows = batch.shape[0]
        if rows % microbatches:
            raise ValueError(f"batch of {rows} rows is not divisible into {microbatches} microbatches")
        b = rows // microbatches
        # [B, ...] -> [K, b, ...], microbatch k = rows k, k+K, k+2K, ...
        split = jnp.swapaxes(batch.reshape(b, microbatches, *batch.shape[1:]), 0, 1)

        def body(carry, mb):
            loss_sum, g_sum, sq_sum = carry
            loss, g = value_and_grad(params, mb)
            g = jax.tree.map(lambda x: x.astype(jnp.float32), g)
            sq = sqnorm(g) if noise_sums else jnp.zeros((), jnp.float32)
            return (loss_sum + loss, jax.tree.map(jnp.add, g_sum, g), sq_sum + sq), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        init = (jnp.zeros((), jnp.float32), zeros, jnp.zeros((), jnp.float32))
        (loss_sum, g_sum, sq_sum), _ = jax.lax.scan(body, init, split)
        g = jax.tree.map(lambda s: s / microbatches, g_sum)
        if not noise_sums:
            return loss_sum / microbatches, g, {}
        return loss_sum / microbatches, g, {"gns_s_small": sq_sum / microbatches, "gns_s_big": sqnorm(g)}

    return run
