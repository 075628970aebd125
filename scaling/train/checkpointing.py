"""Orbax checkpoints of the full training state, for exact resume (possibly on another mesh).

A checkpoint holds the train state pytree (step, params, optimizer state, RNG key data) and a small
JSON record (data position = next step of the step-indexed loader, tokens seen, wall time, best eval
loss). Saves are asynchronous; orbax writes each step to a temporary directory and renames it on
completion, so a crash mid-save never leaves a half-written checkpoint that `latest_step` returns.
Restoring takes a target tree of ShapeDtypeStructs *with shardings*, so a checkpoint written on 8
devices restores on 1 (and back): orbax reads each shard it needs from the saved arrays.
"""
from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


class Checkpointer:
    """keep-last-n, async orbax CheckpointManager under ``<workdir>/checkpoints``."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            # The trainer decides when to save (every k steps, at the end, on SIGTERM).
            save_interval_steps=1,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, record: dict) -> None:
        """Starts saving (asynchronously); `wait` blocks until it is on disk."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)), force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores ``step`` into the layout of ``abstract_state`` (ShapeDtypeStructs with shardings)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["record"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
