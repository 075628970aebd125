"""Model families (Flax Linen) and their accounting. Gin-free: configs are frozen dataclasses.

``build_model(config)`` returns the module for a config of any family; every module maps
int32 tokens [batch, length] to float32 logits [batch, length, vocab_size].
"""


def build_model(config):
    """Returns the Flax module for ``config`` (TransformerConfig, LSTMConfig or RecurrentTransformerConfig)."""
    from models import lstm, recurrent_transformer, transformer

    modules = {
        "transformer": transformer.Transformer,
        "lstm": lstm.LSTM,
        "recurrent_transformer": recurrent_transformer.RecurrentTransformer,
    }
    family = getattr(config, "family", None)
    if family not in modules:
        raise TypeError(f"build_model: unknown model config {type(config).__name__!r}; "
                        f"expected one of TransformerConfig, LSTMConfig, RecurrentTransformerConfig")
    return modules[family](config)
