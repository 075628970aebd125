"""Gin-configurable settings of one training run: `TrainConfig` (the run) and `MeshConfig` (devices).

Gin files bind ``TrainConfig.model = @TransformerConfig()``, ``TrainConfig.batch_size = 64``, ... (see
gin/smoke.gin, gin/optim/*.gin). Everything the trainer does is a pure function of these two frozen
dataclasses plus the data; the operative config is written to ``config.gin`` in the workdir.
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import gin

OPTIMIZERS = ("adam", "adamw", "adafactor")
SCHEDULES = ("cosine", "constant", "wsd")
NONFINITE = ("stop", "skip")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the ('data', 'fsdp', 'tensor') device mesh; exactly one may be -1 (= the remaining devices).

    The batch is split over data × fsdp (activation_batch -> ('data', 'fsdp')); fsdp also shards the
    weights' embed dimension and tensor the wide ones (mlp, heads, vocab); see models/axes.py.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    # Extra (logical name, mesh axis | tuple | None) pairs that override models.axes.DEFAULT_RULES.
    rules_override: tuple = ()


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run. Steps are optimizer steps; batch_size is global, in sequences of n_ctx tokens."""

    model: Any = None               # a model config (TransformerConfig, LSTMConfig, ...); required
    data: Any = None                # data.pipeline.DataConfig; None = its defaults
    batch_size: int = 32            # global batch in sequences (B_tokens = batch_size * n_ctx)
    num_steps: int = 1000           # optimizer steps S
    seed: int = 0                   # parameter init and data order

    # Optimizer (Kaplan §2.2 / App. D.6): Adam β1 0.9, β2 0.95, clip 1.0, warmup then cosine to zero.
    optimizer: str = "adam"         # one of OPTIMIZERS
    learning_rate: float | None = None  # peak LR; None = Kaplan eq. D.1 from N
    warmup_steps: int | None = None     # None = min(3000, num_steps // 10) (Kaplan: 3000 steps)
    schedule: str = "cosine"        # one of SCHEDULES
    decay_fraction: float = 0.2     # wsd: fraction of the run spent decaying linearly to zero
    final_lr_fraction: float = 0.0  # cosine/wsd decay to this fraction of the peak (Kaplan: 0)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0       # adamw / adafactor decoupled weight decay
    grad_clip: float = 1.0          # global-norm clipping (Adam); Adafactor uses update clipping too
    adafactor_min_dim_to_factor: int = 128  # factor the second moment of matrices with both dims >= this
    microbatches: int = 4           # K: the batch is split (strided) into K microbatches whose
                                    # gradients are accumulated; K >= 2 feeds the noise-scale estimator
    loss_chunk_length: int = 0      # > 0: the cross-entropy scans over slices of this many positions and
                                    # never holds the full [batch, n_ctx, vocab] logits (must divide n_ctx;
                                    # scaling/train/losses.py); 0: the whole-sequence loss

    # Gradient noise scale (design/noise-scale.md): raw sums every step, B_simple from per-token EMAs.
    noise_scale: bool = True        # log gns_s_small/gns_s_big and the smoothed b_simple (needs K >= 2)
    noise_scale_ema_tokens: float = 2.0 ** 18  # EMA horizon τ in tokens: β = exp(-batch_tokens/τ)
    noise_scale_skip_steps: int | None = None  # steps before the EMA starts (None = the warmup)

    # Evaluation, logging, checkpointing (all in optimizer steps).
    eval_every: int = 500
    eval_batch_size: int | None = None  # None = batch_size
    eval_max_windows: int | None = None  # cap on held-out windows per eval (None = all of them)
    extra_eval_final_only: bool = False  # the extra evals (DataConfig.extra_eval_tasks, e.g. the transfer
                                         # corpus) at the final eval only: the report reads only their final
                                         # value, and at every eval they double its cost
    # Early stopping (Kaplan §4: the L(N, D) runs train "until early stopping"): stop once this many evals in a
    # row brought no new best eval loss; 0 = train all num_steps. The stop step's eval is then the final one
    # (with the final-only evals); the run counts as finished, its best eval loss is the early-stopped value.
    early_stopping_patience: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    async_checkpointing: bool = True
    progress_bar: bool | None = None    # None = only when stderr is a terminal

    # Non-finite loss or gradient norm: "stop" raises NonFiniteLossError naming the step and the last
    # good checkpoint; "skip" leaves params and optimizer state unchanged for that step (decided inside
    # the jitted step, so it is deterministic), counts it (metrics skipped_steps) and stops after
    # max_skipped_steps consecutive skips. A checkpoint with non-finite parameters is never written.
    nonfinite: str = "stop"             # one of NONFINITE
    max_skipped_steps: int = 10

    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)

    def __post_init__(self):
        def positive(name):
            value = getattr(self, name)
            # bool is an int subclass: num_steps=True would silently mean 1.
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}")

        def number(name, optional=False):
            value = getattr(self, name)
            if value is None and optional:
                return
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"TrainConfig.{name} must be a number{' (or None)' if optional else ''}, "
                                 f"got {value!r} ({type(value).__name__})")

        def integer(name, optional=False):
            value = getattr(self, name)
            if value is None and optional:
                return
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"TrainConfig.{name} must be an int{' (or None)' if optional else ''}, "
                                 f"got {value!r} ({type(value).__name__})")

        for name in ("batch_size", "num_steps", "microbatches", "eval_every", "log_every",
                     "checkpoint_every", "keep_checkpoints", "max_skipped_steps"):
            positive(name)
        for name in ("learning_rate",):
            number(name, optional=True)
        for name in ("decay_fraction", "final_lr_fraction", "beta1", "beta2", "eps", "weight_decay", "grad_clip",
                     "noise_scale_ema_tokens"):
            number(name)
        for name in ("seed", "adafactor_min_dim_to_factor", "early_stopping_patience"):
            integer(name)
        if self.early_stopping_patience < 0:
            raise ValueError(f"TrainConfig.early_stopping_patience must be >= 0 (0 = off), "
                             f"got {self.early_stopping_patience}")
        for name in ("warmup_steps", "noise_scale_skip_steps", "eval_batch_size", "eval_max_windows"):
            integer(name, optional=True)
        if self.nonfinite not in NONFINITE:
            raise ValueError(f"TrainConfig.nonfinite={self.nonfinite!r}; choose one of {NONFINITE}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer={self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule={self.schedule!r}; choose one of {SCHEDULES}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"TrainConfig.learning_rate must be > 0 (or None for Kaplan eq. D.1), "
                             f"got {self.learning_rate!r}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ValueError(f"TrainConfig.decay_fraction must be in [0, 1], got {self.decay_fraction}")
        if self.batch_size % self.microbatches:
            raise ValueError(f"TrainConfig.batch_size={self.batch_size} is not divisible by "
                             f"TrainConfig.microbatches={self.microbatches}")
        if not isinstance(self.loss_chunk_length, int) or self.loss_chunk_length < 0:
            raise ValueError(f"TrainConfig.loss_chunk_length must be an int >= 0 (0 = whole-sequence loss), "
                             f"got {self.loss_chunk_length!r}")
        if self.noise_scale:
            from scaling.noise import estimator
            estimator.check_gradient_samples(self.microbatches)
        if not self.noise_scale_ema_tokens > 0:
            raise ValueError(f"TrainConfig.noise_scale_ema_tokens must be > 0, got {self.noise_scale_ema_tokens}")
        if self.noise_scale_skip_steps is not None and self.noise_scale_skip_steps < 0:
            raise ValueError(f"TrainConfig.noise_scale_skip_steps must be >= 0, got {self.noise_scale_skip_steps}")
        if self.eval_batch_size is not None and self.eval_batch_size <= 0:
            raise ValueError(f"TrainConfig.eval_batch_size must be positive, got {self.eval_batch_size}")

    @property
    def resolved_warmup_steps(self) -> int:
        if self.warmup_steps is not None:
            return min(self.warmup_steps, self.num_steps)
        return min(3000, self.num_steps // 10)

    @property
    def resolved_noise_scale_skip_steps(self) -> int:
        if self.noise_scale_skip_steps is not None:
            return self.noise_scale_skip_steps
        return self.resolved_warmup_steps

    @property
    def resolved_eval_batch_size(self) -> int:
        return self.eval_batch_size or self.batch_size


# --- workdir ownership ---------------------------------------------------------------------------

# Knobs that may change between sessions of one run without mixing two different runs: logging,
# evaluation cadence, checkpoint cadence/retention, the device mesh (a checkpoint restores on any
# topology), the non-finite policy, and num_steps -- so a finished run can be continued longer (note
# that the cosine/wsd schedule and a warmup_steps=None default are functions of num_steps, so the
# LR from the resume point on follows the new length; that is what "continue longer" means here).
# loss_chunk_length and model.attention_impl only change how the same loss is computed (equal up to
# float rounding: how much of the logits is held at once, which attention kernel), like the mesh.
# DataConfig knobs that do not change the data (workers, prefetch, where caches live) likewise.
FINGERPRINT_EXCLUDED = frozenset({
    "num_steps", "progress_bar", "log_every", "eval_every", "eval_batch_size", "eval_max_windows",
    "extra_eval_final_only", "early_stopping_patience",  # where the run ends, like num_steps
    "checkpoint_every", "keep_checkpoints", "async_checkpointing", "mesh", "nonfinite", "max_skipped_steps",
    "loss_chunk_length", "model.attention_impl",
    "data.num_workers", "data.prefetch", "data.cache_dir", "data.tfds_data_dir",
    "data.position_eval_windows", "data.position_eval_regions",  # evaluation only: training is unchanged
})
# Changes that make the saved state unusable (shapes/structure of params or optimizer state): refused
# even with resume_changed_config.
FINGERPRINT_STRUCTURAL = ("model.", "optimizer", "adafactor_min_dim_to_factor", "data.vocabulary",
                          "data.vocab_size", "data.task")


def _flatten(prefix: str, value: Any, out: dict) -> None:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out[f"{prefix}_class"] = type(value).__name__
        for field in dataclasses.fields(value):
            _flatten(f"{prefix}{field.name}.", getattr(value, field.name), out)
    elif isinstance(value, (list, tuple)):
        out[prefix[:-1]] = repr(tuple(value))
    elif value is None or isinstance(value, (bool, int, float, str)):
        out[prefix[:-1]] = value
    else:
        out[prefix[:-1]] = repr(value)


# Fields added after workdirs began recording fingerprints, with the value every earlier run had: left out of
# the fingerprint at that value, so an older workdir still matches its own configuration.
FINGERPRINT_OMITTED_AT_DEFAULT = {"model.dropout_rate": 0.0}


def fingerprint_fields(config: TrainConfig, data_config: Any = None) -> dict:
    """The run-defining settings as a flat {dotted.name: value} dict (FINGERPRINT_EXCLUDED left out, and the
    FINGERPRINT_OMITTED_AT_DEFAULT fields at their default)."""
    flat: dict = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name == "data" and value is None:
            value = data_config
        _flatten(f"{field.name}.", value, flat)
    return {k: v for k, v in sorted(flat.items())
            if k not in FINGERPRINT_EXCLUDED and not any(k.startswith(f"{x}.") for x in FINGERPRINT_EXCLUDED)
            and not (k in FINGERPRINT_OMITTED_AT_DEFAULT and v == FINGERPRINT_OMITTED_AT_DEFAULT[k])}
