"""Helpers shared by the trainer tests (imported as `train_helpers`: pytest puts this folder on sys.path).

The crash-after-checkpoint pattern: ``trainer.train(..., after_checkpoint=crash_after(6))`` raises `Crash` right
after the step-6 checkpoint is on disk, so a second `train` call resumes from it.
"""
import os

from scaling.train.metrics import read_jsonl


class Crash(Exception):
    """Raised by `crash_after`'s callback: a run that dies after a checkpoint, with everything before it saved."""


def crash_after(step: int):
    """An ``after_checkpoint`` callback that raises `Crash` once the checkpoint of ``step`` is written."""
    def callback(saved: int):
        if saved == step:
            raise Crash(f"crash after the checkpoint of step {step}")
    return callback


def step_losses(workdir: str) -> dict:
    """{step: training loss} from the run's metrics.jsonl."""
    return {r["step"]: r["loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))}
