"""The library's one gin module: registration of the plain-Python config classes, and gin parsing.

models/ and data/ stay gin-free; this module makes their frozen config dataclasses
bindable from gin files (``TransformerConfig.d_model = 256``). Importing it is idempotent.
Each section is owned by the package it registers. (TrainConfig / MeshConfig are registered by
scaling/train/config.py itself.)

Everything else in the library takes config objects: the entry points (experiments/) call
`build_train_config` (gin files + bindings -> TrainConfig, every part resolved, and the operative gin
text) and hand the result to `scaling.train.trainer.train`; the sweep validates its runs through
`build_train_config` / `resolved_binding` / `parse_sweep_file`. tests/test_layering.py checks that no other
library module imports gin.
"""
import dataclasses
import os
from typing import Sequence

import gin

# --- models -----------------------------------------------------------------
from models import lstm, recurrent_transformer, transformer

TransformerConfig = gin.external_configurable(transformer.TransformerConfig, "TransformerConfig")
LSTMConfig = gin.external_configurable(lstm.LSTMConfig, "LSTMConfig")
RecurrentTransformerConfig = gin.external_configurable(
    recurrent_transformer.RecurrentTransformerConfig, "RecurrentTransformerConfig")

# --- data ---------------------------------------------------------------------
# (owned by data/: register DataConfig and any other data-side config classes here)
from data import pipeline as data_pipeline

DataConfig = gin.external_configurable(data_pipeline.DataConfig, "DataConfig")

# --- sweep files (scaling/sweep.py) ----------------------------------------------
from scaling import sweep as sweep_lib  # noqa: E402  (gin-free; imports this module only inside functions)

SweepFile = gin.external_configurable(sweep_lib.SweepFile, "Sweep")

# --- loading helpers ----------------------------------------------------------

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_gin(gin_files: Sequence[str], gin_params: Sequence[str] = ()) -> None:
    """Parses gin files and bindings; an unknown or bad binding raises ValueError naming it and its file."""
    import scaling.train.config  # noqa: F401  (registers TrainConfig, MeshConfig)
    for path in gin_files:
        if not os.path.exists(path):
            raise FileNotFoundError(f"gin file {path!r} not found (cwd {os.getcwd()!r}); paths are relative to "
                                    f"the repository root")
    gin.clear_config()
    # `include 'gin/...'` lines resolve against the repository root whatever the cwd.
    if REPO_ROOT not in getattr(gin.config, "_LOCATION_PREFIXES", ()):
        gin.add_config_file_search_path(REPO_ROOT)
    for path in gin_files:
        try:
            gin.parse_config_file(path)
        except (ValueError, KeyError, SyntaxError) as e:
            raise ValueError(f"gin file {path}: {e}") from None
    for binding in gin_params:
        try:
            gin.parse_config(binding)
        except (ValueError, KeyError, SyntaxError) as e:
            raise ValueError(f"--gin_param {binding!r}: {e}") from None
    gin.finalize()


def bound_model_config():
    """The model config that the parsed gin binds to ``TrainConfig.model``, built with its bindings."""
    reference = gin.query_parameter("TrainConfig.model")
    return reference.configurable.wrapper()


def build_train_config(gin_files: Sequence[str], gin_params: Sequence[str] = (), *, resolve_data: bool = True):
    """(TrainConfig, operative gin text) from gin files and bindings.

    With ``resolve_data`` an unbound ``TrainConfig.data`` becomes the gin-bound ``DataConfig()`` (the trainer
    reads no gin state, so its data config must arrive resolved). Bad values raise ValueError naming them.
    """
    from scaling.train.config import TrainConfig  # pylint: disable=import-outside-toplevel
    parse_gin(gin_files, gin_params)
    try:
        config = TrainConfig()
    except (ValueError, TypeError) as e:
        raise ValueError(f"bad gin configuration: {e}") from None
    if resolve_data and config.data is None:
        config = dataclasses.replace(config, data=DataConfig())
    return config, gin.operative_config_str()


def resolved_binding(binding: str):
    """The value the parsed gin config binds to ``binding``; LookupError when it binds none."""
    try:
        return gin.query_parameter(binding)
    except (ValueError, KeyError) as e:
        raise LookupError(binding) from e


def clear() -> None:
    """Forgets every gin binding (after a parse that only validated)."""
    gin.clear_config()


def parse_sweep_file(path: str):
    """A sweep file's ``Sweep.*`` bindings as a `scaling.sweep.SweepFile` (gin is cleared before and after)."""
    gin.clear_config()
    try:
        gin.parse_config_file(path)
        return SweepFile()
    finally:
        gin.clear_config()
