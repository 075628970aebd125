"""train_from_gin: gin files + bindings -> a trained (or resumed) run, in-process (no flags defined here).

The entry points' one way from gin to the trainer: scaling.configurables.build_train_config parses the gin
into a TrainConfig (data resolved) and its operative text; scaling.train.trainer.train takes both.
"""
from __future__ import annotations

from typing import Sequence


def train_from_gin(gin_files: Sequence[str], gin_params: Sequence[str], workdir: str, **kwargs) -> dict:
    """Parses gin and trains (or resumes) the run in ``workdir``; returns its summary."""
    from scaling import configurables  # pylint: disable=import-outside-toplevel
    from scaling.train import trainer  # pylint: disable=import-outside-toplevel
    config, operative = configurables.build_train_config(list(gin_files), list(gin_params))
    return trainer.train(config, workdir, operative_config=operative, **kwargs)
