"""Gin registration of the plain-Python config classes of models/ and data/.

models/ and data/ stay gin-free; this module makes their frozen config dataclasses
bindable from gin files (``TransformerConfig.d_model = 256``). Importing it is idempotent.
Each section is owned by the package it registers.
"""
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
import os as _os

REPO_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))


def parse_gin(files, bindings=()):
    """Parses gin files/bindings; `include 'gin/...'` lines resolve against the repository root."""
    import scaling.train.config  # noqa: F401  (registers TrainConfig, which model files bind)

    gin.add_config_file_search_path(REPO_ROOT)
    gin.parse_config_files_and_bindings(list(files), list(bindings))


def bound_model_config():
    """The model config that the parsed gin binds to ``TrainConfig.model``, built with its bindings."""
    reference = gin.query_parameter("TrainConfig.model")
    return reference.configurable.wrapper()
