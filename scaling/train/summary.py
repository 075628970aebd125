"""The run's written record: the model fields of summary.json (models.accounting.model_summary + the exact
tree counts), config.gin, and whether a workdir already holds a finished run (scaling.core.records).
"""
from __future__ import annotations

import dataclasses
import os

import jax

from models import accounting
from scaling.core import fileio, records
from scaling.train.config import TrainConfig
from scaling.train.state import TrainSetup


def model_summary(run: TrainSetup) -> dict:
    """accounting.model_summary (the config's N and FLOPs, as the sweep plans them) + the exact tree counts."""
    return {**accounting.model_summary(run.model_config),
            "n_params_nonembedding_exact": run.param_counts["nonembedding"],
            "n_params_embedding": run.param_counts["embedding"],
            "n_params_total": run.param_counts["total"]}


def write_config(workdir: str, run: TrainSetup, operative: str | None) -> None:
    """config.gin: the operative gin text the entry point parsed, else the resolved TrainConfig values."""
    if jax.process_index() != 0:
        return
    if not (operative or "").strip():
        operative = "# TrainConfig built in Python (no gin); resolved values:\n" + "\n".join(
            f"# {k} = {v!r}" for k, v in dataclasses.asdict(run.config).items())
    fileio.write_text_atomic(os.path.join(workdir, "config.gin"), operative)


def finished_summary(workdir: str, config: TrainConfig) -> dict | None:
    """The summary of a run in ``workdir`` that already reached config.num_steps, else None."""
    summary = records.read_summary(workdir)
    return summary if records.is_finished(summary, config.num_steps) else None
