"""Parameter-shared ("universal" / recurrent) Transformer, Kaplan et al. 2020 §3.2.1 and Fig. 17.

The stack of ``n_layer`` distinct blocks (the paper's case is one block) is re-applied
``n_recurrence`` times with the *same* parameters, so parameters stay at n_layer blocks while compute
grows with n_layer·n_recurrence. Same interface as models/transformer.py (tokens → logits).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn

from models import axes
from models.transformer import Embedder, TransformerConfig, check_tokens, dropout, layer_norm, remat_block


@dataclasses.dataclass(frozen=True)
class RecurrentTransformerConfig(TransformerConfig):
    n_layer: int = 1          # distinct (shared) blocks
    n_recurrence: int = 2     # how many times the shared stack is applied

    family = "recurrent_transformer"

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.n_recurrence, int) or self.n_recurrence <= 0:
            raise ValueError(f"RecurrentTransformerConfig.n_recurrence must be a positive int, "
                             f"got {self.n_recurrence!r}")


class SharedStack(nn.Module):
    """The n_layer distinct blocks that are re-applied; (carry, _) signature for nn.scan."""

    config: RecurrentTransformerConfig

    @nn.compact
    def __call__(self, x, _=None):
        block = remat_block(self.config)
        for i in range(self.config.n_layer):
            x, _ = block(self.config, name=f"h_{i}")(x, None)
        return x, None


class RecurrentTransformer(nn.Module):
    config: RecurrentTransformerConfig

    @nn.compact
    def __call__(self, tokens, features_only: bool = False):
        cfg = self.config
        check_tokens(tokens, cfg.n_ctx)
        embedder = Embedder(cfg, name="embedder")
        x = dropout(self, embedder.embed(tokens), cfg.dropout_rate)
        if cfg.scan_layers:
            # One compiled body whatever n_recurrence; the stack's parameters are broadcast (shared)
            # across the scan steps rather than stacked.
            stack = nn.scan(SharedStack, variable_broadcast="params",
                            split_rngs={"params": False, "dropout": True},
                            length=cfg.n_recurrence)(cfg, name="stack")
            x, _ = stack(x, None)
        else:
            stack = SharedStack(cfg, name="stack")
            for _ in range(cfg.n_recurrence):
                x, _ = stack(x, None)
        x = nn.with_logical_constraint(x, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))
        x = layer_norm(cfg, "ln_f")(x)
        if features_only:  # the call interface of models/transformer.py
            return x, embedder.unembedding_matrix()
        return embedder.unembed(x)
