"""Optimizers and learning-rate schedules (optax), with Kaplan et al. 2020's defaults.

Kaplan App. D.6 / §2.2: Adam with β1 = 0.9, β2 = 0.95, global-norm clipping at 1.0, a linear warmup
(3000 steps) then cosine decay to zero over the run; Adafactor for the largest models. The default
peak learning rate follows eq. D.1, LR(N) ≈ 0.003239 − 0.0001395·log N.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from scaling.train.config import TrainConfig

Schedule = Callable[[jax.Array], jax.Array]


def kaplan_learning_rate(n_nonembedding: int) -> float:
    """Kaplan eq. D.1: LR(N) ≈ 0.003239 − 0.0001395·ln N (fit over their Adam runs, N non-embedding)."""
    if n_nonembedding <= 0:
        raise ValueError(f"kaplan_learning_rate: N must be positive, got {n_nonembedding}")
    lr = 0.003239 - 0.0001395 * math.log(n_nonembedding)
    if lr <= 0:
        raise ValueError(f"Kaplan eq. D.1 gives a non-positive learning rate ({lr:.3g}) for N={n_nonembedding:.3g} "
                         f"(the fit only covers N up to ~1e9); set TrainConfig.learning_rate explicitly")
    return lr


def make_schedule(kind: str, peak: float, num_steps: int, warmup_steps: int, *,
                  decay_fraction: float = 0.2, final_fraction: float = 0.0) -> Schedule:
    """LR as a function of the (0-based) optimizer step.

    Warmup is linear and reaches ``peak`` at step warmup_steps − 1, so step 0 already moves
    (lr = peak / warmup_steps). Then:
      cosine:   cosine from peak to final_fraction·peak over the remaining steps of the run;
      constant: peak until the end;
      wsd:      warmup-stable-decay: peak until the last decay_fraction of the run, then linear to
                final_fraction·peak at the end of the run.
    """
    if kind not in ("cosine", "constant", "wsd"):
        raise ValueError(f"unknown schedule {kind!r}; choose cosine, constant or wsd")
    # optax's schedules, composed to give the formulas above (tests/train/test_train_schedules.py checks
    # them against the written-out formulas): warmup = linear from peak/W at step 0 to peak at step W-1.
    final = peak * final_fraction
    warmup_steps = max(0, min(warmup_steps, num_steps))
    warmup = optax.linear_schedule(peak / max(1, warmup_steps), peak, max(0, warmup_steps - 1))
    if kind == "constant":
        after = optax.constant_schedule(peak)
    elif kind == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps=max(1, num_steps - warmup_steps), alpha=final_fraction)
    else:
        wsd_decay = max(1, round(decay_fraction * num_steps))
        # The decay starts at an absolute step (it may begin inside a long warmup): join_schedules hands
        # the second schedule step - warmup_steps, so shift it back.
        decay = optax.linear_schedule(peak, final, wsd_decay, transition_begin=num_steps - wsd_decay)
        after = lambda count: decay(count + warmup_steps)  # noqa: E731
    joined = optax.join_schedules([warmup, after], [warmup_steps])
    return lambda step: jnp.asarray(joined(jnp.asarray(step, jnp.int32)), jnp.float32)


# Decoupled weight decay is applied by parameter *name*, not rank: with nn.scan over layers every bias
# and LayerNorm scale gains a leading [n_layer] axis, and the attention's qkv bias is [3, heads, head_dim],
# so a rank test (ndim >= 2) decays them. Decayed: weight matrices (flax "kernel"; the LSTM's
# "input_kernel" / "recurrent_kernel") and, as a documented choice (GPT-2 / nanoGPT practice), the token
# and position embeddings ("embedding", "wpe"; the tied unembedding is the token embedding). Not decayed:
# "bias" and LayerNorm "scale". Any other name is an error, so a new family states its choice here.
DECAYED_NAMES = frozenset({"kernel", "input_kernel", "recurrent_kernel", "embedding", "wpe"})
NOT_DECAYED_NAMES = frozenset({"bias", "scale"})


def _leaf_name(path) -> str:
    last = path[-1]
    for attr in ("key", "name", "idx"):
        if hasattr(last, attr):
            return str(getattr(last, attr))
    return str(last)


def decay_mask(params):
    """True for the parameters weight decay applies to (see DECAYED_NAMES), by path; same tree as params."""
    def decide(path, _):
        name = _leaf_name(path)
        if name in DECAYED_NAMES:
            return True
        if name in NOT_DECAYED_NAMES:
            return False
        raise ValueError(f"weight decay mask: parameter {jax.tree_util.keystr(path)} is neither a kernel / "
                         f"embedding ({sorted(DECAYED_NAMES)}) nor a bias / LayerNorm scale "
                         f"({sorted(NOT_DECAYED_NAMES)}); add its name to one of the sets in "
                         f"scaling/train/optimizers.py")
    return jax.tree_util.tree_map_with_path(decide, params)


_decay_mask = decay_mask


def make_optimizer(config: TrainConfig, schedule: Schedule) -> optax.GradientTransformation:
    """The optax transformation for TrainConfig.optimizer; global-norm clipping comes first."""
    clip = optax.clip_by_global_norm(config.grad_clip) if config.grad_clip else optax.identity()
    if config.optimizer in ("adam", "adamw"):
        if config.optimizer == "adam" and config.weight_decay:
            raise ValueError("TrainConfig.weight_decay is set but optimizer='adam'; use optimizer='adamw' "
                             "for decoupled weight decay")
        parts = [clip, optax.scale_by_adam(b1=config.beta1, b2=config.beta2, eps=config.eps)]
        if config.weight_decay:
            parts.append(optax.add_decayed_weights(config.weight_decay, mask=_decay_mask))
        parts.append(optax.scale_by_learning_rate(schedule))
        return optax.chain(*parts)
    # Adafactor (Shazeer & Stern 2018): factored second moment for matrices whose two largest dims are
    # >= adafactor_min_dim_to_factor. Without parameter-scale multiplication its LR is on Adam's scale,
    # so eq. D.1 stays a sensible default. Its factored state is sharded by partitioning.opt_state_specs.
    return optax.chain(
        clip,
        optax.adafactor(
            learning_rate=schedule,
            min_dim_size_to_factor=config.adafactor_min_dim_to_factor,
            multiply_by_parameter_scale=False,
            clipping_threshold=1.0,
            weight_decay_rate=config.weight_decay or None,
            weight_decay_mask=_decay_mask if config.weight_decay else None,
        ),
    )
