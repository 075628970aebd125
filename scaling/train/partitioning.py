"""Device mesh, logical-axis rules and the shardings of parameters, optimizer state and batches.

The t5x/MaxText pattern: modules name the logical axes of every parameter and activation
(models/axes.py); one rules table maps logical names onto the mesh axes ('data', 'fsdp', 'tensor').
Parameter shardings come from the model's own annotations (``nn.get_partition_spec``); optimizer
state shardings are derived from the parameters', including Adafactor's factored second moment,
which no public optax/pjit code shards (t5x: "Optimizers that aim to save memory by factoring states,
e.g., Adafactor, SM3, are not supported currently").
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from models import axes
from scaling.train.config import MeshConfig


# --- mesh ------------------------------------------------------------------------------------------

def mesh_shape(config: MeshConfig, n_devices: int) -> tuple[int, int, int]:
    """Resolves (data, fsdp, tensor) sizes; one -1 takes the devices the others leave."""
    sizes = [config.data, config.fsdp, config.tensor]
    names = axes.MESH_AXES
    if sizes.count(-1) > 1:
        raise ValueError(f"MeshConfig: at most one of data/fsdp/tensor may be -1, got {dict(zip(names, sizes))}")
    for name, size in zip(names, sizes):
        if size != -1 and (not isinstance(size, int) or size <= 0):
            raise ValueError(f"MeshConfig.{name} must be a positive int or -1, got {size!r}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % known:
            raise ValueError(f"MeshConfig {dict(zip(names, sizes))}: {n_devices} devices are not divisible "
                             f"by the fixed axes' product {known}")
        sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) != n_devices:
        raise ValueError(f"MeshConfig {dict(zip(names, sizes))} needs {math.prod(sizes)} devices but "
                         f"{n_devices} are available; set one axis to -1 or change the sizes")
    return tuple(sizes)


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over ``devices`` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(config, len(devices))
    # Auto axes: GSPMD propagates shardings from the in/out shardings and the logical constraints
    # (JAX 0.10's make_mesh defaults to Explicit axes otherwise).
    return jax.make_mesh(shape, axes.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def logical_rules(config: MeshConfig) -> tuple:
    """models.axes.DEFAULT_RULES with MeshConfig.rules_override entries replacing same-named ones."""
    overrides = {}
    for entry in config.rules_override:
        if len(entry) != 2:
            raise ValueError(f"MeshConfig.rules_override entries must be (logical_name, mesh_axes), got {entry!r}")
        name, target = entry
        targets = target if isinstance(target, (tuple, list)) else (target,)
        for t in targets:
            if t is not None and t not in axes.MESH_AXES:
                raise ValueError(f"MeshConfig.rules_override: {name!r} -> {target!r}; mesh axes are {axes.MESH_AXES}")
        overrides[name] = tuple(target) if isinstance(target, list) else target
    known = {name for name, _ in axes.DEFAULT_RULES}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"MeshConfig.rules_override: unknown logical axis names {unknown}; known: {sorted(known)}")
    return tuple((name, overrides.get(name, target)) for name, target in axes.DEFAULT_RULES)


def data_parallel_size(mesh: Mesh, rules) -> int:
    """Number of ways the batch is split: the product of the mesh axes activation_batch maps to."""
    spec = nn.logical_to_mesh_axes((axes.ACT_BATCH,), rules)
    target = spec[0]
    if target is None:
        return 1
    targets = target if isinstance(target, tuple) else (target,)
    return math.prod(mesh.shape[t] for t in targets)


def check_batch_divisible(batch_size: int, mesh: Mesh, rules, what: str = "TrainConfig.batch_size") -> None:
    dp = data_parallel_size(mesh, rules)
    if batch_size % dp:
        raise ValueError(
            f"{what}={batch_size} is not divisible by the data-parallel size {dp} "
            f"(mesh {dict(mesh.shape)}; the batch is split over data x fsdp); "
            f"choose a batch size that is a multiple of {dp} or change MeshConfig")


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
    """Sharding of a [batch, length] token array: rows over the data-parallel axes."""
    spec = nn.logical_to_mesh_axes((axes.ACT_BATCH, axes.ACT_LENGTH), rules)
    return NamedSharding(mesh, spec)


def global_batch(local_rows: np.ndarray, sharding: NamedSharding, global_rows: int) -> jax.Array:
    """Assembles the global [global_rows, ...] array from this process's rows (multi-host safe)."""
    global_shape = (global_rows,) + tuple(local_rows.shape[1:])
    return jax.make_array_from_process_local_data(sharding, local_rows, global_shape)


@contextlib.contextmanager
def model_context(mesh: Mesh, rules):
    """Context for tracing model code: logical rules, and the mesh so activation constraints apply."""
    with nn.logical_axis_rules(rules), jax.set_mesh(mesh):
        yield


# --- parameter and optimizer-state shardings -----------------------------------------------------

def param_specs(abstract_variables, rules) -> Any:
    """Unboxed tree of mesh PartitionSpecs for the model's boxed (nn.Partitioned) variables."""
    logical = nn.get_partition_spec(abstract_variables)
    return nn.logical_to_mesh(logical, rules)


def _is_spec(x) -> bool:
    return isinstance(x, P)


def _padded(spec: P, ndim: int) -> list:
    entries = list(spec)
    return entries + [None] * (ndim - len(entries))


def _same_shape_spec(leaf, spec: P, param) -> P:
    # A state leaf shaped like its parameter (Adam's mu/nu) is sharded like it; anything else
    # (scalars, Adafactor's (1,) placeholders) is replicated.
    return spec if tuple(leaf.shape) == tuple(param.shape) else P()


def factored_dims(shape, min_dim_size_to_factor: int) -> tuple[int, int] | None:
    """(second largest dim d1, largest dim d0) that optax's Adafactor factors a parameter of ``shape`` over,
    or None when it keeps a full second moment (fewer than 2 dims, or d1 smaller than the threshold).

    optax keeps this rule private (``optax._src.factorized._factored_dims``); it is restated here and
    tests/train/test_train_sharding.py::test_factored_dims_match_optax checks it against the shapes of the
    state optax's public ``scale_by_factored_rms`` actually creates, so an optax change fails that test.
    """
    if len(shape) < 2:
        return None
    sorted_dims = np.argsort(shape)
    if shape[sorted_dims[-2]] < min_dim_size_to_factor:
        return None
    return int(sorted_dims[-2]), int(sorted_dims[-1])


def factored_state_specs(state: optax.FactoredState, specs, params, min_dim_size_to_factor: int):
    """Shardings of optax's Adafactor ``FactoredState`` from the parameter shardings.

    For a factored parameter optax keeps ``v_row`` = mean of g² over the largest dim d0 and ``v_col``
    = mean over the second largest d1 (`factored_dims`); each keeps the parameter's
    sharding on the dims that survive. Unfactored parameters keep a full ``v`` sharded like the
    parameter; the (1,) placeholders are replicated.
    """
    def reduced(which: int):
        # which = 1: v_row drops d0 (the largest dim); which = 0: v_col drops d1.
        def spec_of(leaf, spec, param):
            dims = factored_dims(param.shape, min_dim_size_to_factor)
            if dims is None or leaf.ndim != param.ndim - 1:
                return P()
            entries = _padded(spec, param.ndim)
            del entries[dims[which]]
            return P(*entries)
        return spec_of

    return optax.FactoredState(
        count=P(),
        v_row=jax.tree.map(reduced(1), state.v_row, specs, params),
        v_col=jax.tree.map(reduced(0), state.v_col, specs, params),
        v=jax.tree.map(_same_shape_spec, state.v, specs, params),
    )


def opt_state_specs(abstract_state, specs, abstract_params, min_dim_size_to_factor: int = 128):
    """PartitionSpecs for any optax state built from ``abstract_params``.

    Walks the state: sub-trees with the parameters' structure (Adam's mu, nu; momentum) are sharded
    like the parameters leaf by leaf; Adafactor's FactoredState uses `factored_state_specs`; every
    other leaf (counts, injected hyper-parameters) is replicated.
    """
    params_def = jax.tree.structure(abstract_params)

    def walk(node):
        if isinstance(node, optax.FactoredState):
            return factored_state_specs(node, specs, abstract_params, min_dim_size_to_factor)
        if jax.tree.structure(node) == params_def:
            return jax.tree.map(_same_shape_spec, node, specs, abstract_params)
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return type(node)(*(walk(child) for child in node))
        if isinstance(node, (tuple, list)):
            return type(node)(walk(child) for child in node)
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if hasattr(node, "shape"):
            return P()
        if node is None:
            return None
        # Any other registered pytree node: rebuild it from walked children.
        children, treedef = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
        return jax.tree_util.tree_unflatten(treedef, [walk(c) for c in children])

    return walk(abstract_state)


def to_shardings(specs, mesh: Mesh):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=_is_spec)


def abstract_with_shardings(abstract_tree, shardings):
    """ShapeDtypeStructs carrying shardings: the target layout for restoring a checkpoint."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_tree, shardings)
