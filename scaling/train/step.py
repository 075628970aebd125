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


# Batch keys of a training batch with dropout: the windows and one PRNG key per row (dropout_batch).
WINDOWS, DROPOUT_KEYS = "windows", "dropout_keys"


def dropout_batch(windows, seed: int, step):
    """{windows, one dropout key per row}: the keys are a pure function of (seed, step), so a resumed run draws
    the masks of an uninterrupted one. Rows carry keys (not the batch one key) so that the microbatch split
    (strided, like the rows) gives every microbatch, and every data shard, its own: each uses its first row's."""
    step_key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _DROPOUT_STREAM), step)
    return {WINDOWS: windows, DROPOUT_KEYS: jax.random.split(step_key, windows.shape[0])}


_DROPOUT_STREAM = 0x64726f70  # "drop": keeps the masks' stream apart from the init key of the same seed


def make_loss_fn(apply_fn: Callable, loss_chunk_length: int = 0) -> Callable:
    """(params, windows [B, n_ctx+1] or dropout_batch(...)) -> mean next-token cross-entropy (float32 nats).


    ``loss_chunk_length`` > 0 forms the logits slice by slice from the model's features and
    unembedding matrix (losses.chunked_cross_entropy) instead of all at once. A dropout_batch applies the
    model with its first row's key as the 'dropout' rng (training); plain windows apply it deterministically.
    """


    def loss_fn(params, batch):
        if isinstance(batch, dict):
            windows, kwargs = batch[WINDOWS], {"rngs": {"dropout": batch[DROPOUT_KEYS][0]}}
        else:
            windows, kwargs = batch, {}
        inputs, targets = windows[:, :-1], windows[:, 1:]
        if loss_chunk_length:
            features, unembedding = apply_fn(params, inputs, features_only=True, **kwargs)
            return losses.chunked_cross_entropy(features, unembedding, targets, loss_chunk_length)
        return losses.cross_entropy(apply_fn(params, inputs, **kwargs), targets)


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
                    loss_chunk_length: int = 0, dropout_seed: int | None = None) -> Callable:
    """state, windows -> new state, metrics. state: a state.TrainState (step, params, opt_state).

    ``dropout_seed`` (set when the model has dropout): the step's forward passes draw their dropout masks
    from (dropout_seed, state.step) (dropout_batch); None applies the model deterministically.


    ``skip_nonfinite`` (TrainConfig.nonfinite='skip'): if the loss or gradient norm is NaN/Inf the
    params and optimizer state are kept as they were (only the step counter advances, so the data
    position stays in step); metrics["skipped"] is 1 for such a step.
    """
    grads_fn = make_grad_fn(apply_fn, microbatches, noise_scale, loss_chunk_length)


    def train_step(state, windows):
        batch = windows if dropout_seed is None else dropout_batch(windows, dropout_seed, state.step)
        loss, grads, extra = grads_fn(state.params, batch)
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
