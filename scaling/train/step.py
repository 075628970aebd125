"""The train step: the loss (whole or chunked logits), microbatched gradients with the raw gradient-noise
sums, clipping, the optimizer update and the non-finite decision, as pure functions jitted by state.py.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from scaling.noise import estimator as noise_estimator
from scaling.train import losses
from scaling.train.config import TrainConfig


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm became NaN/Inf; the last good checkpoint is kept."""


    def __init__(self, step: int, value: float, what: str, last_checkpoint: int | None, directory: str):
        self.step, self.value, self.last_checkpoint = step, value, last_checkpoint
        kept = (f"the last good checkpoint is step {last_checkpoint} in {directory}" if last_checkpoint is not None
                else "no checkpoint had been written yet")
        super().__init__(f"{what} became {value} at step {step}; training stopped and {kept}. "
                         f"Lower TrainConfig.learning_rate (or raise warmup_steps) and rerun with "
                         f"--resume_changed_config to resume from it, or set TrainConfig.nonfinite = 'skip'.")


def make_loss_fn(apply_fn: Callable, loss_chunk_length: int = 0) -> Callable:
    """(params, windows [B, n_ctx+1]) -> mean next-token cross-entropy (float32 nats).


    ``loss_chunk_length`` > 0 forms the logits slice by slice from the model's features and
    unembedding matrix (losses.chunked_cross_entropy) instead of all at once.
    """


    def loss_fn(params, windows):
        inputs, targets = windows[:, :-1], windows[:, 1:]
        if loss_chunk_length:
            features, unembedding = apply_fn(params, inputs, features_only=True)
            return losses.chunked_cross_entropy(features, unembedding, targets, loss_chunk_length)
        return losses.cross_entropy(apply_fn(params, inputs), targets)


    return loss_fn


def make_grad_fn(apply_fn: Callable, microbatches: int, noise_scale: bool = True,
                 loss_chunk_length: int = 0) -> Callable:
    """(params, windows [B, n_ctx+1]) -> (mean loss, mean gradient, noise-scale sums).


    With K = microbatches > 1 the batch is split strided into K microbatches whose mean-loss
    gradients a lax.scan sums in float32 (scaling.noise.estimator): the same update as the whole
    batch in 1/K of the activation memory, plus the raw sums of the gradient noise scale
    S_small = mean_k |g_k|² (b = B/K sequences) and S_big = |mean_k g_k|² (B sequences), taken
    before clipping (design/noise-scale.md §1.3a).
    """
    loss_fn = make_loss_fn(apply_fn, loss_chunk_length)
    run = noise_estimator.microbatch_value_and_grad(jax.value_and_grad(loss_fn), microbatches, noise_scale)


    def grads(params, windows):
        loss, g, gns = run(params, windows)
        return loss, jax.tree.map(lambda x, p: x.astype(p.dtype), g, params), gns


    return grads


def make_train_step(apply_fn: Callable, tx: optax.GradientTransformation, schedule: Callable,
                    microbatches: int, noise_scale: bool = True, skip_nonfinite: bool = False,
                    loss_chunk_length: int = 0) -> Callable:
    """state, windows -> new state, metrics. state: a state.TrainState (step, params, opt_state).


    ``skip_nonfinite`` (TrainConfig.nonfinite='skip'): if the loss or gradient norm is NaN/Inf the
    params and optimizer state are kept as they were (only the step counter advances, so the data
    position stays in step); metrics["skipped"] is 1 for such a step.
    """
    grads_fn = make_grad_fn(apply_fn, microbatches, noise_scale, loss_chunk_length)


    def train_step(state, windows):
        loss, grads, extra = grads_fn(state.params, windows)
        grad_norm = optax.global_norm(grads)  # before clipping
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        step_metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step), **extra}
        if skip_nonfinite:
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
            params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
            step_metrics["skipped"] = 1 - finite.astype(jnp.int32)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, step_metrics


    return train_step
