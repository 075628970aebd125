"""Gin registration of the plain-Python config classes of models/ and data/.

models/ and data/ stay gin-free; this module makes their frozen config dataclasses
bindable from gin files (``TransformerConfig.d_model = 256``). Importing it is idempotent.
Each section is owned by the package it registers.
"""
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
