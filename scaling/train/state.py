"""The train state (TrainState), the set-up of a run (TrainSetup: data, model, mesh, shardings, optimizer, abstract
state) and the AOT compile of its steps; checkpoint_params_sha256 restores a run's final state (a test aid, off
the training path).

The process's compiled-step cache (``_COMPILED``) lives here: the runs of a sweep trained in one process
(experiments/sweep_inprocess.py) that share a program reuse its jitted init and compiled executables.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

import models
from models import accounting
from scaling.train import checkpointing, distributed, optimizers, partitioning
from scaling.train import eval as eval_lib, losses
from scaling.train.config import TrainConfig
from scaling.train.step import make_train_step


@flax.struct.dataclass
class TrainState:
    """What a step updates and a checkpoint holds: the optimizer step count (int32 scalar), the parameters and
    the optimizer state. A JAX pytree (its shardings are a TrainState of NamedShardings). Checkpoints written
    before it (a dict that also held an unused ``rng``) still restore: checkpointing.py maps them."""

    step: Any
    params: Any
    opt_state: Any


def configure_jax() -> None:
    """Process-wide JAX settings the trainer relies on; setup() calls it (idempotent, never at import).


    Identical random init whatever the mesh: partitionable threefry draws the same numbers sharded or not
    (the default in recent JAX; set explicitly so sharded and unsharded runs agree).
    """
    jax.config.update("jax_threefry_partitionable", True)


@dataclasses.dataclass
class TrainSetup:
    """Everything built once per run from TrainConfig, data and devices."""


    config: TrainConfig
    model_config: Any
    model: nn.Module
    mesh: jax.sharding.Mesh
    rules: tuple
    data: Any
    learning_rate: float
    warmup_steps: int
    schedule: Callable
    tx: optax.GradientTransformation
    abstract_state: Any
    state_shardings: Any
    batch_sharding: NamedSharding
    init_state: Callable
    n_nonembedding: int
    param_counts: dict


def _default_data_config():
    from data import pipeline  # pylint: disable=import-outside-toplevel
    return pipeline.DataConfig()


def build_data(config: TrainConfig, n_ctx: int):
    """LMData for the run from TrainConfig.data (a DataConfig; None = DataConfig's defaults; the entry points
    resolve gin's DataConfig.* bindings into TrainConfig.data: scaling.configurables.build_train_config)."""
    from data import pipeline  # data/ is imported lazily: tests may inject their own LMData
    data_config = config.data if config.data is not None else pipeline.DataConfig()
    build = lambda: pipeline.build_data(data_config, n_ctx=n_ctx, global_batch_size=config.batch_size,  # noqa: E731
                                        seed=config.seed, process_index=jax.process_index(),
                                        process_count=jax.process_count())
    if jax.process_count() == 1:
        return build()
    # Multi-process: process 0 tokenizes (all cores) while the others wait, then they load its cache
    # (on hosts without a shared filesystem they build their own, after the barrier).
    if jax.process_index() == 0:
        data = build()
        distributed.sync("data-cache-ready")
        return data
    distributed.sync("data-cache-ready")
    return build()


# Compiled steps (and jitted inits) of this process, keyed by everything that determines the program:
# the runs of a sweep trained in one process (experiments/sweep_inprocess.py) that share a model shape,
# optimizer, schedule, batch and mesh reuse them instead of tracing and compiling again. Least recently
# used first out; a few entries (each holds an executable, not the run's state).
_COMPILED: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()
COMPILED_CACHE_SIZE = 16
# How the parameter init compiles on CPU (see `setup`): the same bits as the default level, in a third of the time.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}
# TrainConfig fields that do not enter the step, the eval step or the init program.
_NOT_IN_PROGRAM = ("model", "data", "seed", "eval_every", "eval_max_windows", "log_every", "checkpoint_every",
                   "early_stopping_patience",
                   "keep_checkpoints", "async_checkpointing", "progress_bar", "max_skipped_steps",
                   "noise_scale_ema_tokens", "noise_scale_skip_steps")


def _cached(key: tuple, build: Callable[[], Any]) -> Any:
    if key in _COMPILED:
        _COMPILED.move_to_end(key)
        return _COMPILED[key]
    value = build()
    _COMPILED[key] = value
    while len(_COMPILED) > COMPILED_CACHE_SIZE:
        _COMPILED.popitem(last=False)
    return value


def _optimizer_key(config: TrainConfig) -> str:
    return repr(tuple((f.name, getattr(config, f.name)) for f in dataclasses.fields(config)
                      if f.name not in _NOT_IN_PROGRAM))


def _mesh_key(mesh, rules) -> tuple:
    return (tuple(mesh.shape.items()), tuple(d.id for d in mesh.devices.flat), repr(rules))


def setup(config: TrainConfig, *, data=None, devices: Sequence[jax.Device] | None = None) -> TrainSetup:
    configure_jax()
    if config.model is None:
        raise ValueError("TrainConfig.model is not set; include a model gin file (e.g. gin/models/cpu_55k.gin) "
                         "or bind TrainConfig.model = @TransformerConfig()")
    mesh = partitioning.make_mesh(config.mesh, devices)
    rules = partitioning.logical_rules(config.mesh)
    partitioning.check_batch_divisible(config.batch_size, mesh, rules)
    if config.microbatches > 1:
        partitioning.check_batch_divisible(config.batch_size // config.microbatches, mesh, rules,
                                           what=f"the microbatch size (batch_size {config.batch_size} / "
                                                f"microbatches {config.microbatches})")
    partitioning.check_batch_divisible(config.resolved_eval_batch_size, mesh, rules,
                                       what="TrainConfig.eval_batch_size")


    n_ctx = config.model.n_ctx
    if config.loss_chunk_length:
        losses.check_chunk_length(config.loss_chunk_length, n_ctx)
    if data is None:
        data = build_data(config, n_ctx)
    model_config = dataclasses.replace(config.model, vocab_size=int(data.vocab_size))
    model = models.build_model(model_config)


    # Abstract init: shapes and logical annotations only, no FLOPs.
    tokens = jnp.zeros((1, n_ctx), jnp.int32)
    abstract_vars = jax.eval_shape(model.init, jax.random.key(0), tokens)
    if set(abstract_vars) != {"params"}:
        raise ValueError(f"model has variable collections {sorted(abstract_vars)}; the trainer expects only 'params'")
    specs = partitioning.param_specs(abstract_vars, rules)["params"]
    abstract_params = nn.unbox(abstract_vars)["params"]


    n_nonembedding = accounting.nonembedding_params(model_config)
    learning_rate = config.learning_rate or optimizers.kaplan_learning_rate(n_nonembedding)
    warmup = config.resolved_warmup_steps
    schedule = optimizers.make_schedule(config.schedule, learning_rate, config.num_steps, warmup,
                                        decay_fraction=config.decay_fraction,
                                        final_fraction=config.final_lr_fraction)
    tx = optimizers.make_optimizer(config, schedule)


    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_specs = partitioning.opt_state_specs(abstract_opt, specs, abstract_params,
                                             config.adafactor_min_dim_to_factor)
    state_specs = TrainState(step=P(), params=specs, opt_state=opt_specs)
    state_shardings = partitioning.to_shardings(state_specs, mesh)


    def init_state(seed: int):
        key = jax.random.key(seed)
        # Split as before the state lost its unused ``rng`` half: the same init key, so the same parameters
        # (the committed reference results reproduce).
        init_key, _ = jax.random.split(key)
        params = nn.unbox(model.init(init_key, tokens))["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


    abstract_state = jax.eval_shape(init_state, config.seed)
    # Parameters are created directly in their shards (no host copy of the full model). The init runs
    # outside the mesh context: the shardings come from out_shardings. The jitted init is shared by the
    # runs of one process with the same model, optimizer and mesh (the in-process sweep executor).
    # XLA optimisation level 1 on CPU: the init is the threefry hash (integer work) and a few elementwise transforms,
    # so it compiles in ~1.5 s instead of ~4-5 s (every distinct model pays it once) with the same parameters, bit
    # for bit (measured on every model of the quick preset; tests/train/test_train_state.py). Level 0 changes them.
    # Other backends keep their default compile (the identity is measured on CPU only).
    on_cpu = all(d.platform == "cpu" for d in mesh.devices.flat)
    jit_init = _cached(("init", repr(model_config), _optimizer_key(config), _mesh_key(mesh, rules)),
                       lambda: jax.jit(init_state, static_argnums=0, out_shardings=state_shardings,
                                       compiler_options=INIT_COMPILER_OPTIONS if on_cpu else None))


    return TrainSetup(config=config, model_config=model_config, model=model, mesh=mesh, rules=rules,
               data=data, learning_rate=float(learning_rate),
               warmup_steps=warmup, schedule=schedule, tx=tx, abstract_state=abstract_state,
               state_shardings=state_shardings, batch_sharding=partitioning.batch_sharding(mesh, rules),
               init_state=lambda: jit_init(config.seed), n_nonembedding=n_nonembedding,
               param_counts=accounting.param_counts(abstract_params))


def compile_steps(run: TrainSetup, with_eval: bool = True, cache: bool = False):
    """AOT-compiles the train (and eval) steps inside the mesh/rules context; returns (train, eval, seconds).

    ``cache`` (what `train` uses): a run whose programs this process has already compiled (same model,
    optimizer, schedule, batch and mesh: ``_optimizer_key``) gets those executables back (``_COMPILED``)."""
    if not cache:
        return _compile_steps(run, with_eval)
    start = time.perf_counter()
    mesh_key = _mesh_key(run.mesh, run.rules)
    model_key = repr(run.model_config)
    train_key = ("train", model_key, _optimizer_key(run.config), run.learning_rate, run.warmup_steps, mesh_key,
                 _dropout_seed(run))  # with dropout the seed enters the step (its masks)
    eval_key = ("eval", model_key, run.config.resolved_eval_batch_size, run.config.loss_chunk_length, mesh_key)
    hit = train_key in _COMPILED and (not with_eval or eval_key in _COMPILED)
    if not hit:
        train_compiled, eval_compiled, _ = _compile_steps(run, with_eval)
        _cached(train_key, lambda: train_compiled)
        if with_eval:
            _cached(eval_key, lambda: eval_compiled)
    train_compiled = _cached(train_key, lambda: None)
    eval_compiled = _cached(eval_key, lambda: None) if with_eval else None
    return train_compiled, eval_compiled, time.perf_counter() - start


def _dropout_seed(run: TrainSetup) -> int | None:
    """The seed of the dropout masks when the model has dropout (a family without the field has none)."""
    return run.config.seed if getattr(run.model_config, "dropout_rate", 0) else None


def _compile_steps(run: TrainSetup, with_eval: bool = True):
    config = run.config
    n_ctx = run.model_config.n_ctx


    def apply_fn(params, inputs, **kwargs):
        return run.model.apply({"params": params}, inputs, **kwargs)


    replicated = NamedSharding(run.mesh, P())
    rows_sharding = NamedSharding(run.mesh, P(run.batch_sharding.spec[0]))
    train_step = jax.jit(
        make_train_step(apply_fn, run.tx, run.schedule, config.microbatches, config.noise_scale,
                        skip_nonfinite=config.nonfinite == "skip", loss_chunk_length=config.loss_chunk_length,
                        dropout_seed=_dropout_seed(run)),
        in_shardings=(run.state_shardings, run.batch_sharding),
        out_shardings=(run.state_shardings, replicated),
        donate_argnums=0)
    eval_step = jax.jit(
        eval_lib.make_eval_step(apply_fn, config.loss_chunk_length),
        in_shardings=(run.state_shardings.params, run.batch_sharding, rows_sharding),
        out_shardings=(replicated, replicated))
    window = lambda rows: jax.ShapeDtypeStruct((rows, n_ctx + 1), jnp.int32)
    start = time.perf_counter()
    with partitioning.model_context(run.mesh, run.rules):
        train_compiled = train_step.lower(run.abstract_state, window(config.batch_size)).compile()
        eval_rows = config.resolved_eval_batch_size
        eval_compiled = eval_step.lower(run.abstract_state.params, window(eval_rows),
                                        jax.ShapeDtypeStruct((eval_rows,), jnp.float32)).compile() if with_eval else None
    return train_compiled, eval_compiled, time.perf_counter() - start


def checkpoint_params_sha256(config: TrainConfig, workdir: str, *, data=None,
                             devices: Sequence[jax.Device] | None = None) -> tuple[int, str | None]:
    """(step, sha256 of the parameters) of the latest good checkpoint in ``workdir``: the bit-level identity
    of a run's final parameters, which the reliability tests compare. Not on the training path (it copies
    every parameter to the host)."""
    run = setup(config, data=data, devices=devices)
    target = partitioning.abstract_with_shardings(run.abstract_state, run.state_shardings)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        step, state, _ = ckpt.restore_latest_good(target)
    finally:
        ckpt.close()
    return step, checkpointing.params_sha256(state.params)
