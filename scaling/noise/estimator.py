"""The in-step gradient-noise-scale estimator (McCandlish et al. 2018, App. A.1).

Spec: docs/noise-scale.md §1. At fixed parameters θ, K sub-batch gradients g_k (each the
gradient of the *mean* loss over b examples) give, with B = K·b and ḡ = mean_k g_k,

    S_small = mean_k |g_k|²          (the mean of squared norms, never the square of a mean norm)
    S_big   = |ḡ|²
    |G|²    ≈ (B·S_big − b·S_small) / (B − b)        unbiased
    trΣ     ≈ (S_small − S_big) / (1/b − 1/B)         unbiased

B_simple = trΣ/|G|² is a ratio, hence biased: average numerator and denominator separately first
(scaling.noise.smoothing, scaling.noise.offline). Norms are squared in float32 (float64 for float64
gradients in 64-bit mode: the scan carry follows the gradient dtype) and summed over every
leaf (with GSPMD the reduction over model shards is exact; nothing is reduced over `data` first).

Three ways to get the K sub-batch gradients, all returning (mean loss, mean grad, {gns_s_small, gns_s_big}):
  microbatch_value_and_grad    strided lax.scan over K microbatches; jit / GSPMD (the trainer's path)
  per_example_value_and_grad   vmap(grad) over the B examples (K = B, b = 1)
  data_parallel_value_and_grad shard_map over the 'data' axis, b = B/(D·K), free in data parallelism
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def accumulation_dtype(dtype) -> jnp.dtype:
    """float32 for bf16/fp16/float32 values, float64 for float64 ones (64-bit mode): never narrower than
    float32 (bf16/fp16 squares overflow or lose the noise), never narrower than the values."""
    return jnp.promote_types(dtype, jnp.float32)


def sqnorm(tree) -> jax.Array:
    """Σ x² over every leaf, in float32 or the leaves' wider dtype (bf16/fp16 squares overflow or lose the noise)."""
    leaves = jax.tree.leaves(tree)
    dtype = accumulation_dtype(jnp.result_type(*leaves)) if leaves else jnp.float32
    return sum(jnp.sum(jnp.square(x.astype(dtype))) for x in leaves)


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


def batch_rows(batch) -> int:
    """Leading dimension B shared by every leaf of a batch (an array or a pytree of arrays)."""
    rows = {x.shape[0] for x in jax.tree.leaves(batch)}
    if len(rows) != 1:
        raise ValueError(f"batch leaves disagree on the batch dimension: {sorted(rows)}")
    return rows.pop()


def strided_split(batch, microbatches: int):
    """[B, ...] -> [K, B/K, ...] with microbatch k = rows k, k+K, k+2K, ... (keeps data sharding)."""
    rows = batch_rows(batch)
    if rows % microbatches:
        raise ValueError(f"batch of {rows} rows is not divisible into {microbatches} microbatches")
    b = rows // microbatches
    return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(b, microbatches, *x.shape[1:]), 0, 1), batch)


def microbatch_value_and_grad(value_and_grad: Callable, microbatches: int, noise_sums: bool = True, *,
                              varying_axis: str | None = None) -> Callable:
    """(params, batch [B, ...]) -> (mean loss, mean grad (float32), {gns_s_small, gns_s_big}).

    The batch (an array, or a pytree of arrays sharing the leading dimension B) is split *strided* into K = microbatches parts (row i goes to microbatch i mod K, so
    each keeps the batch's data sharding) and a lax.scan sums their float32 gradients: the update is
    the whole batch's, in 1/K of the activation memory and the same FLOPs as one backward pass; the
    only extra work is K float32 squared-norm reductions. ``value_and_grad(params, microbatch)``
    must return the microbatch's *mean* loss and its gradient (noise-scale.md §3 T5: a loss summed
    or divided by K would need g_k rescaled). With K = 1 or ``noise_sums=False`` (the benchmark's
    baseline) no noise sums are computed or returned. ``varying_axis`` names the shard_map axis the
    local gradients vary over, when this runs per shard (data_parallel_value_and_grad).
    """

    def run(params, batch):
        if microbatches == 1:
            loss, g = value_and_grad(params, batch)
            return loss, jax.tree.map(lambda x: x.astype(accumulation_dtype(x.dtype)), g), {}
        split = strided_split(batch, microbatches)
        # The scan carry follows the dtypes of the loss and gradients (float32, or float64 in 64-bit mode):
        # a carry fixed to float32 fails against a float64 body output.
        shapes = jax.eval_shape(value_and_grad, params, jax.tree.map(lambda x: x[0], split))
        loss_dtype = accumulation_dtype(shapes[0].dtype)
        g_dtypes = jax.tree.map(lambda x: accumulation_dtype(x.dtype), shapes[1])
        sq_dtype = accumulation_dtype(jnp.result_type(*jax.tree.leaves(g_dtypes))) if jax.tree.leaves(g_dtypes) \
            else jnp.float32

        def body(carry, mb):
            loss_sum, g_sum, sq_sum = carry
            loss, g = value_and_grad(params, mb)
            g = jax.tree.map(lambda x, d: x.astype(d), g, g_dtypes)
            sq = sqnorm(g).astype(sq_dtype) if noise_sums else jnp.zeros((), sq_dtype)
            return (loss_sum + loss.astype(loss_dtype), jax.tree.map(jnp.add, g_sum, g), sq_sum + sq), None

        zeros = jax.tree.map(lambda x, d: jnp.zeros(x.shape, d), shapes[1], g_dtypes)
        init = (jnp.zeros((), loss_dtype), zeros, jnp.zeros((), sq_dtype))
        if varying_axis is not None:  # inside shard_map the carry must vary over the axis like the body's output
            init = jax.lax.pcast(init, varying_axis, to="varying")
        (loss_sum, g_sum, sq_sum), _ = jax.lax.scan(body, init, split)
        g = jax.tree.map(lambda s: s / microbatches, g_sum)
        if not noise_sums:
            return loss_sum / microbatches, g, {}
        return loss_sum / microbatches, g, {"gns_s_small": sq_sum / microbatches, "gns_s_big": sqnorm(g)}

    return run


def per_example_value_and_grad(value_and_grad: Callable) -> Callable:
    """(params, batch [B, ...]) -> (mean loss, mean grad (float32), {gns_s_small, gns_s_big}) with K = B.

    ``vmap`` of the gradient over single-example batches: S_small = mean_i |g_i|² is the per-example
    mean squared norm, the lowest-variance trΣ estimate at a given B (Gray et al. 2024), for B× the
    gradient memory. Pair the sums with b_small = 1, b_big = B.
    """

    def run(params, batch):
        rows = batch_rows(batch)
        check_gradient_samples(rows)
        singles = jax.tree.map(lambda x: x[:, None], batch)  # [B, 1, ...]: B batches of one example
        losses, grads = jax.vmap(value_and_grad, in_axes=(None, 0))(params, singles)
        grads = jax.tree.map(lambda x: x.astype(jnp.float32), grads)
        s_small = jnp.mean(jax.vmap(sqnorm)(grads))
        g = jax.tree.map(lambda x: jnp.mean(x, axis=0), grads)
        return jnp.mean(losses), g, {"gns_s_small": s_small, "gns_s_big": sqnorm(g)}

    return run


def data_parallel_value_and_grad(value_and_grad: Callable, mesh, microbatches: int = 1,
                                 axis: str = "data") -> Callable:
    """(params, batch [B, ...]) -> (mean loss, mean grad (float32), {gns_s_small, gns_s_big}) via shard_map.

    Each of the D shards of ``axis`` computes its local gradient g_d on B/D rows (with a local strided
    microbatch scan when ``microbatches`` = K > 1), so the small batch is b = B/(D·K) for free
    (MKAT18; noise-scale.md §1.3b):  S_small = pmean_d mean_k |g_dk|²,  S_big = |pmean_d g_d|².

    The check_vma trap: inside shard_map, jax.grad w.r.t. parameters that are *invariant* over
    ``axis`` (replicated, the default with check_vma=True) returns the gradient already psum'ed over
    the shards, so every "local" gradient is D·ḡ and S_small = D²·|ḡ|². Differentiating w.r.t.
    ``jax.lax.pcast(params, axis, to='varying')`` keeps the gradients local.

    params are replicated (P()), the batch is split over ``axis`` on its leading dimension; on a mesh
    whose axes are Explicit (jax.make_mesh's default) pass the batch already sharded that way.
    """
    shards = mesh.shape[axis]
    check_gradient_samples(microbatches, shards)
    local = microbatch_value_and_grad(value_and_grad, microbatches, varying_axis=axis)

    def per_shard(params, batch):
        varying = jax.lax.pcast(params, axis, to="varying")
        if microbatches > 1:
            loss, g, sums = local(varying, batch)
            s_local = sums["gns_s_small"]
        else:
            loss, g, _ = local(varying, batch)
            s_local = sqnorm(g)
        g = jax.lax.pmean(g, axis)
        sums = {"gns_s_small": jax.lax.pmean(s_local, axis), "gns_s_big": sqnorm(g)}
        return jax.lax.pmean(loss, axis), g, sums

    def run(params, batch):
        rows = batch_rows(batch)
        if rows % (shards * microbatches):
            raise ValueError(f"batch of {rows} rows is not divisible into {shards} '{axis}' shards x "
                             f"{microbatches} microbatches")
        batch_spec = jax.tree.map(lambda _: jax.sharding.PartitionSpec(axis), batch)
        return jax.shard_map(per_shard, mesh=mesh, in_specs=(jax.sharding.PartitionSpec(), batch_spec),
                             out_specs=jax.sharding.PartitionSpec())(params, batch)

    return run


def sample_batch_sizes(batch_size: int, microbatches: int = 1, data_shards: int = 1) -> tuple[int, int]:
    """(b_small, b_big) in examples for the sums of a step: b = B/(D·K), B."""
    check_gradient_samples(microbatches, data_shards)
    parts = microbatches * data_shards
    if batch_size % parts:
        raise ValueError(f"batch of {batch_size} is not divisible into D={data_shards} x K={microbatches} parts")
    return batch_size // parts, batch_size
