"""Held-out evaluation: loss in nats/token, bits per byte, and loss per token position (Kaplan Fig. 20).

Every held-out window has n_ctx+1 tokens and contributes one prediction at each position 1..n_ctx,
so the per-position mean vector has n_ctx entries and its mean is exactly the eval loss.
The window set is fixed (data.eval_windows), so evals at different steps are comparable; the best
one is Kaplan's early-stopped loss for L(N, D).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scaling.train import losses


@dataclasses.dataclass(frozen=True)
class EvalResult:
    loss: float                    # mean cross-entropy, nats per token
    bits_per_byte: float           # loss / ln 2 / (UTF-8 bytes per token)
    loss_per_position: np.ndarray  # [n_ctx] mean loss at each position; its mean is `loss`
    n_windows: int


def make_eval_step(apply_fn: Callable, loss_chunk_length: int = 0) -> Callable:
    """(params, windows [E, n_ctx+1], weights [E]) -> (weighted loss sum per position [n_ctx], weight sum).

    ``loss_chunk_length`` > 0 (TrainConfig.loss_chunk_length) forms the logits from the model's
    features and unembedding one slice of that many positions at a time, as the training loss does
    (losses.chunked_cross_entropy), so evaluation never holds the whole [E, n_ctx, V] logits either.
    """

    def nll_sums(logits, targets, weights):
        nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
        return jnp.sum(nll * weights[:, None], axis=0)

    def eval_step(params, windows, weights):
        inputs, targets = windows[:, :-1], windows[:, 1:]
        if not loss_chunk_length:
            return nll_sums(apply_fn(params, inputs), targets, weights), jnp.sum(weights)
        features, unembedding = apply_fn(params, inputs, features_only=True)
        batch, length, d_model = features.shape
        losses.check_chunk_length(loss_chunk_length, length)
        n_chunks = length // loss_chunk_length
        f = jnp.swapaxes(features.reshape(batch, n_chunks, loss_chunk_length, d_model), 0, 1)
        t = jnp.swapaxes(targets.reshape(batch, n_chunks, loss_chunk_length), 0, 1)

        def body(carry, xs):
            f_slice, t_slice = xs
            logits = jnp.einsum("bcd,vd->bcv", f_slice, unembedding.astype(f_slice.dtype))
            return carry, nll_sums(logits, t_slice, weights)

        _, per_slice = jax.lax.scan(body, None, (f, t))        # [n_chunks, chunk]
        return per_slice.reshape(length), jnp.sum(weights)

    return eval_step


def padded_batches(windows: np.ndarray, batch_size: int):
    """Yields (windows, weights) batches of exactly batch_size rows; padding rows have weight 0."""
    n = len(windows)
    for start in range(0, n, batch_size):
        chunk = windows[start:start + batch_size]
        weights = np.ones(len(chunk), np.float32)
        if len(chunk) < batch_size:
            pad = batch_size - len(chunk)
            chunk = np.concatenate([chunk, np.zeros((pad, chunk.shape[1]), chunk.dtype)])
            weights = np.concatenate([weights, np.zeros(pad, np.float32)])
        yield chunk, weights


def evaluate(eval_step, params, windows: np.ndarray, bytes_per_token: float, batch_size: int,
             put: Callable) -> EvalResult:
    """Runs the compiled ``eval_step`` over all ``windows``; ``put`` places a host batch on the mesh."""
    if len(windows) == 0:
        raise ValueError("evaluate: no held-out windows; raise DataConfig.eval_tokens or use a longer validation split")
    # The steps are dispatched back to back; their (replicated) results are fetched once at the end,
    # not after every batch (each fetch would wait for its step and stall the dispatch).
    results = [eval_step(params, *put(rows, weights))
               for rows, weights in padded_batches(np.asarray(windows, np.int32), batch_size)]
    fetched = jax.device_get([(sums.addressable_data(0), n.addressable_data(0)) for sums, n in results])
    position_sums = np.sum([np.asarray(sums, np.float64) for sums, _ in fetched], axis=0)
    count = float(sum(float(n) for _, n in fetched))
    per_position = position_sums / count
    loss = float(per_position.mean())
    bpb = loss / math.log(2) / bytes_per_token if bytes_per_token and bytes_per_token > 0 else float("nan")
    return EvalResult(loss=loss, bits_per_byte=bpb, loss_per_position=per_position, n_windows=int(count))
