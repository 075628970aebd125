"""Orbax checkpoints of the full training state, for exact resume (possibly on another mesh).

A checkpoint holds the train state pytree (state.TrainState: step, params, optimizer state) and a small
JSON record (data position = next step of the step-indexed loader, tokens seen, wall time, best eval
loss, and a checksum of the state). Saves are asynchronous; orbax writes each step to a temporary
directory and renames it on completion, so a crash mid-save never leaves a half-written checkpoint
that `latest_step` returns. Restoring takes a target tree of ShapeDtypeStructs *with shardings*, so a
checkpoint written on 8 devices restores on 1 (and back): orbax reads each shard it needs.

Reliability (tests/reliability/):
- `restore_latest_good` tries the newest step first; a step that fails to restore (truncated or
  garbled files, or a state whose checksum does not match the one recorded at save time) is reported
  on stderr, moved aside to ``<workdir>/checkpoints.corrupt/<step>-<UTC time>`` (never deleted) and
  the next older step is tried. If none restores it raises `NoGoodCheckpointError` unless the caller
  allows a fresh start.
- A checkpoint with non-finite parameters is never written (`NonFiniteStateError`).
- A failed write (disk full, permissions, ...) raises `CheckpointWriteError` naming the step and the
  last checkpoint that is intact on disk; orbax never touches the older steps on a failed save.
- Checkpoints of the earlier layout (a dict ``{step, params, opt_state, rng}``; ``rng`` was never used) restore:
  `Checkpointer.restore` reads them with that layout, checks their checksum and drops ``rng``
  (tests/train/test_train_state.py).

Workdir ownership and the data identity are workdir.py (its names are re-exported here).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from scaling.core import fileio
# Workdir ownership and data identity live in workdir.py; their names stay importable from here.
from scaling.train.workdir import (DATA_IDENTITY_KEYS, DATA_IDENTITY_PREFIX, DATA_IDENTITY_STRUCTURAL,  # noqa: F401
                                   FINGERPRINT_FILE, WorkdirConfigError, WorkdirNotWritableError, check_workdir,
                                   check_writable, claim_workdir, data_identity, fingerprint, has_outputs,
                                   local_workdir)

CORRUPT_DIR = "checkpoints.corrupt"
# Written beside checkpoints/ when no checkpoint restores; while it exists (and still nothing restores)
# every start is refused, so the next identical command does not silently train from step 0.
REFUSAL_FILE = "no_good_checkpoint.json"


class CheckpointWriteError(OSError):
    """Saving a checkpoint failed; the previous checkpoints on disk are intact."""

    def __init__(self, step: int, directory: str, cause: BaseException, last_good: int | None):
        self.step, self.last_good = step, last_good
        kept = (f"the last complete checkpoint is step {last_good}" if last_good is not None
                else "no earlier checkpoint exists")
        super().__init__(f"could not write checkpoint {step} in {directory}: {type(cause).__name__}: {cause}; "
                         f"{kept} (untouched). Free disk space / fix permissions and rerun the same command "
                         f"to resume from it.")


class NoGoodCheckpointError(RuntimeError):
    """Checkpoints exist but none restores; nothing is started unless a fresh start is allowed."""


class NonFiniteStateError(FloatingPointError):
    """Refused to write a checkpoint whose parameters contain NaN/Inf."""


def set_aside(path: str) -> str | None:
    """Renames a non-empty file to ``<path>.before-<UTC time>`` (nothing is deleted); returns the new name."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    target = f"{path}.before-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    os.replace(path, target)
    return target


def output_path(workdir: str, name: str) -> str:
    """``workdir/name`` for a run output, refusing names that would write outside the workdir.

    Names may come from configs (sweep run names, output file names): an absolute path, ``..`` or a
    symlink pointing out of the workdir is an error, never a silent write elsewhere.
    """
    if not name or os.path.isabs(name):
        raise ValueError(f"output name {name!r} must be a relative path inside the workdir {workdir}")
    root = os.path.realpath(workdir)
    path = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, path]) != root or path == root:
        raise ValueError(f"output name {name!r} escapes the workdir {workdir} (resolves to {path}); "
                         "use a plain relative name")
    return path


# --- state checks (on device, any sharding, any number of hosts) ----------------------------------

def _leaf_sum(x):
    """Wrapping uint32 sum of the bit patterns of a leaf: changes if any element's bits change."""
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    if size == 4:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif size == 2:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    elif size == 1:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
    else:  # 8-byte leaves (x64 mode): two uint32 words each
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    # Weight by position so that swapped elements are caught too (all arithmetic wraps mod 2**32).
    index = jnp.arange(bits.size, dtype=jnp.uint32).reshape(bits.shape) * jnp.uint32(2654435761)
    return jnp.sum(bits * (index | jnp.uint32(1)), dtype=jnp.uint32)


def _params(state):
    """The parameters of a TrainState or of a checkpoint in the earlier dict layout."""
    return state["params"] if isinstance(state, dict) else state.params


# The leaf the earlier checkpoint layout had beside step, params and opt_state (never used by training).
LEGACY_RNG_KEY = "rng"


# Integer and isfinite work only, so the result is the same at any XLA optimisation level: level 0 compiles it in
# ~0.6 s instead of ~1.9 s, once per model shape (every run of a sweep pays it at its first checkpoint).
@functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
def _inspect(state):
    params_finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(_params(state))
                                         if jnp.issubdtype(p.dtype, jnp.inexact)] or [True]))
    sums = jnp.stack([_leaf_sum(x) for x in jax.tree.leaves(state)])
    return params_finite, sums


def _fetch(x) -> np.ndarray:
    return np.asarray(jax.device_get(x.addressable_data(0)))


def inspect_state(state: Any) -> tuple[bool, str]:
    """(all parameters finite, checksum of the whole state). Same on every mesh and host count."""
    finite, sums = _inspect(state)
    return bool(_fetch(finite)), hashlib.sha256(_fetch(sums).astype("<u4").tobytes()).hexdigest()[:32]


def params_sha256(params: Any) -> str | None:
    """sha256 of every parameter's path, dtype, shape and bytes (single process only, else None)."""
    if jax.process_count() != 1:
        return None
    digest = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(params), key=lambda kv: jax.tree_util.keystr(kv[0])):
        value = np.asarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{value.dtype}|{value.shape}|".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


# --- the manager ---------------------------------------------------------------------------------

class Checkpointer:
    """keep-last-n, async orbax CheckpointManager under ``<workdir>/checkpoints``."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True,
                 data_identity: dict | None = None, resume_changed_config: bool = False):
        self.directory = os.path.abspath(directory)
        # The corpus / vocabulary hashes of this run (data_identity()): stored in every checkpoint's
        # record and compared on restore, so a checkpoint never resumes onto other data.
        self.data_identity = dict(data_identity or {})
        self.resume_changed_config = resume_changed_config
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            # The trainer decides when to save (every k steps, at the end, on SIGTERM).
            save_interval_steps=1,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._last_durable = self.latest_step()   # newest step known complete on disk
        self._in_flight: int | None = None
        self.discarded_steps: list[int] = []      # steps moved aside by restore_latest_good

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, record: dict) -> None:
        """Starts saving (asynchronously); `wait` blocks until it is on disk.

        Refuses non-finite parameters; stores a checksum of the state in the record so that a
        checkpoint garbled on disk is detected at restore time.
        """
        finite, checksum = inspect_state(state)
        if not finite:
            raise NonFiniteStateError(f"refusing to write checkpoint {step}: the parameters contain NaN/Inf; "
                                      f"the last good checkpoint is step {self._last_durable} in {self.directory}")
        self.wait()  # an error of the previous async save surfaces here, naming its step
        record = dict(record, state_checksum=checksum)
        if self.data_identity:
            record["data_identity"] = self.data_identity
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)), force=True)
        except Exception as e:  # noqa: BLE001  (any storage error: report it with what is intact)
            raise CheckpointWriteError(step, self.directory, e, self._last_durable) from e
        self._in_flight = step

    def wait(self) -> None:
        """Blocks until the pending save is on disk; a failed write raises CheckpointWriteError."""
        step, self._in_flight = self._in_flight, None
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as e:  # noqa: BLE001
            raise CheckpointWriteError(step if step is not None else -1, self.directory, e,
                                       self._last_durable) from e
        if step is not None:
            self._last_durable = step

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores ``step`` into the layout of ``abstract_state`` (ShapeDtypeStructs with shardings).

        Raises ValueError if the restored state does not match the checksum recorded at save time.
        """
        legacy = self._legacy_target(step, abstract_state)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state if legacy is None else legacy),
            record=ocp.args.JsonRestore()))
        state, record = restored["state"], dict(restored["record"])
        expected = record.get("state_checksum")
        if expected is not None:
            finite, checksum = inspect_state(state)
            if checksum != expected:
                raise ValueError(f"state checksum {checksum} != {expected} recorded when it was saved "
                                 "(the files were changed on disk)")
            if not finite:
                raise ValueError("the restored parameters contain NaN/Inf")
        if legacy is not None:  # checked in the layout it was saved in; the unused rng is dropped
            state = abstract_state.replace(step=state["step"], params=state["params"], opt_state=state["opt_state"])
        return state, record

    def saved_tree(self, step: int) -> Any:
        """The saved state's tree of array metadata (no array is read): its layout as written."""
        saved = ocp.StandardCheckpointHandler().metadata(
            ocp.path.step.build_step_path(self.directory, ocp.path.step.standard_name_format(), step) / "state")
        return getattr(saved, "tree", saved)

    def _legacy_target(self, step: int, abstract_state: Any) -> dict | None:
        """The restore target for a checkpoint of the earlier layout (a dict with ``rng``), else None.

        Same step, params and opt_state as ``abstract_state`` (a TrainState of ShapeDtypeStructs with shardings)
        plus the saved ``rng`` leaf, replicated like the step."""
        if isinstance(abstract_state, dict) or not hasattr(abstract_state, "replace"):
            return None
        try:
            tree = self.saved_tree(step)
        except Exception:  # noqa: BLE001  (unreadable metadata: the restore itself reports it)
            return None
        if not isinstance(tree, dict) or LEGACY_RNG_KEY not in tree:
            return None
        rng = tree[LEGACY_RNG_KEY]
        return {"step": abstract_state.step, "params": abstract_state.params, "opt_state": abstract_state.opt_state,
                LEGACY_RNG_KEY: jax.ShapeDtypeStruct(tuple(rng.shape), rng.dtype,
                                                     sharding=abstract_state.step.sharding)}

    def move_aside(self, step: int) -> str:
        """Moves a step's directory to checkpoints.corrupt/ (kept for inspection); returns where."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        parent = os.path.join(os.path.dirname(self.directory), CORRUPT_DIR)
        os.makedirs(parent, exist_ok=True)
        target = os.path.join(parent, f"{step}-{stamp}")
        suffix = 0
        while os.path.exists(target):
            suffix += 1
            target = os.path.join(parent, f"{step}-{stamp}-{suffix}")
        shutil.move(os.path.join(self.directory, str(step)), target)
        self.manager.reload()
        self._last_durable = self.latest_step()
        return target

    def restore_latest_good(self, abstract_state: Any, *, allow_fresh_start: bool = False,
                            warn: Callable[[str], None] | None = None) -> tuple[int, Any, dict] | None:
        """(step, state, record) of the newest step that restores; None if there is no checkpoint.

        Steps that fail are reported, moved aside (process 0) and skipped. If checkpoints existed but
        none restores: NoGoodCheckpointError, or None when ``allow_fresh_start``.
        """
        warn = warn or (lambda message: print(message, file=sys.stderr, flush=True))
        failures = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                state, record = self.restore(step, abstract_state)
            except Exception as e:  # noqa: BLE001  (truncated/garbled files fail in many ways)
                error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
                moved = self.move_aside(step) if jax.process_index() == 0 else "(left for process 0)"
                warn(f"WARNING: checkpoint step {step} in {self.directory} cannot be restored ({error}); "
                     f"moved it to {moved} and falling back to the previous checkpoint")
                failures.append((step, error))
                self.discarded_steps.append(step)
                continue
            self._check_data_identity(step, record)
            self._clear_refusal()
            return step, state, record
        if not failures:
            # The corrupt steps of an earlier session were moved aside: the refusal persists until the
            # user chooses (--from_scratch_if_corrupt, or --overwrite, which moves the marker away).
            refused = self._refusal()
            if refused is None:
                return None
            failures = [(s, e) for s, e in refused.get("failures", [])]
        listed = "; ".join(f"step {s}: {e}" for s, e in failures)
        if allow_fresh_start:
            warn(f"WARNING: no checkpoint in {self.directory} could be restored ({listed}); starting from "
                 f"scratch as requested (the corrupt ones are in {CORRUPT_DIR}/)")
            self._clear_refusal()
            return None
        self._record_refusal(failures)
        raise NoGoodCheckpointError(
            f"no checkpoint in {self.directory} can be restored ({listed}); they were moved to "
            f"{os.path.join(os.path.dirname(self.directory), CORRUPT_DIR)}. Refusing to start over silently "
            f"(this is repeated until you choose): rerun with --from_scratch_if_corrupt "
            f"(train(..., from_scratch_if_corrupt=True)) to train from step 0, or with --overwrite to move the "
            f"old outputs aside")

    # --- persistent refusal (a marker beside checkpoints/) ---

    @property
    def refusal_path(self) -> str:
        return os.path.join(os.path.dirname(self.directory), REFUSAL_FILE)

    def _refusal(self) -> dict | None:
        try:
            with open(self.refusal_path) as f:
                record = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            record = {}
        return record if isinstance(record, dict) else {}

    def _record_refusal(self, failures: list) -> None:
        if jax.process_index() != 0:
            return
        fileio.write_json_atomic(self.refusal_path, {
            "failures": [[s, e] for s, e in failures], "directory": self.directory,
            "since": (self._refusal() or {}).get("since") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    def _clear_refusal(self) -> None:
        if jax.process_index() == 0 and os.path.exists(self.refusal_path):
            os.remove(self.refusal_path)

    def _check_data_identity(self, step: int, record: dict) -> None:
        saved = record.get("data_identity")
        if not saved or not self.data_identity or saved == self.data_identity:
            return  # checkpoints written before data identities were recorded are accepted
        changed = sorted(k for k in set(saved) | set(self.data_identity) if saved.get(k) != self.data_identity.get(k))
        blocking = [k for k in changed if k.startswith(DATA_IDENTITY_STRUCTURAL)] if self.resume_changed_config \
            else changed
        if blocking:
            diff = "; ".join(f"{k}: {saved.get(k, '<unset>')!r} -> {self.data_identity.get(k, '<unset>')!r}"
                             for k in changed)
            raise WorkdirConfigError(
                f"checkpoint step {step} in {self.directory} was trained on other data ({diff}); refusing to "
                f"resume it onto this corpus/vocabulary: rerun with --overwrite to move the old outputs aside "
                f"and start fresh, or pick another --workdir")

    def close(self) -> None:
        self.wait()
        self.manager.close()
