"""Parameter and FLOP accounting for every model family, as pure functions of the config.

Conventions (never silently mixed; every FLOP result names the one it used):
- ``kaplan``: N = non-embedding parameters excluding biases and LayerNorm,
  N = 2·d_model·n_layer·(2·d_attn + d_ff) (Kaplan et al. 2020, Table 1 / eq. 2.1).
  Forward FLOPs per token C_fwd = 2N + 2·n_layer·n_ctx·d_attn (Table 1, eq. 2.2); training ≈ 3·C_fwd,
  and Kaplan drops the context term: C ≈ 6N per token.
- ``chinchilla``: all parameters (embeddings included); FLOPs counted op by op as in Hoffmann et al.
  2022, Appendix F (embeddings, QKV, QK logits, softmax, AV, output projection, MLP, final logits).
- ``porian``: Kaplan's N plus the unembedding (vocab·d_model), as Porian et al. 2024 ("counting last-layer
  FLOPs", their first correction); optional attention term 2·n_layer·n_ctx·d_attn per forward token.

Training FLOPs are 3× forward (backward = 2× forward, Kaplan §2.1).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from scaling.core import formulas
from scaling.core.units import PF_DAY  # noqa: F401  (re-exported: accounting.PF_DAY)

CONVENTIONS = ("kaplan", "chinchilla", "porian")
MODES = ("forward", "train")


@dataclasses.dataclass(frozen=True)
class FlopsPerToken:
    flops: float
    convention: str
    mode: str
    include_context: bool

    def __float__(self) -> float:
        return float(self.flops)


def _family(config) -> str:
    family = getattr(config, "family", None)
    if family not in ("transformer", "lstm", "recurrent_transformer"):
        raise TypeError(f"no accounting for config type {type(config).__name__!r}")
    return family


_block_nonembedding = formulas.block_nonembedding_params  # Kaplan Table 1, per layer


def nonembedding_params(config) -> int:
    """Kaplan's N: non-embedding parameters without biases or LayerNorm."""
    family = _family(config)
    if family in ("transformer", "recurrent_transformer"):
        # A recurrent Transformer's blocks are shared across its n_recurrence applications:
        # their parameters are counted once.
        return config.n_layer * _block_nonembedding(config.d_model, config.d_attn, config.d_ff)
    # LSTM: per layer, 4 gates × (input + recurrent) d_model×d_model kernels.
    return config.n_layer * 8 * config.d_model * config.d_model


def embedding_params(config) -> int:
    """Token embedding (+ position embedding for Transformers, + untied unembedding)."""
    family = _family(config)
    count = config.vocab_size * config.d_model
    if family in ("transformer", "recurrent_transformer"):
        count += config.n_ctx * config.d_model
    if not config.tie_embeddings:
        count += config.vocab_size * config.d_model
    return count


def _layer_applications(config) -> int:
    """How many times a block runs per token (compute depth)."""
    if _family(config) == "recurrent_transformer":
        return config.n_layer * config.n_recurrence
    return config.n_layer


def _context_flops(config) -> float:
    """Kaplan's attention term 2·n_layer·n_ctx·d_attn per forward token (causal average of QK and AV)."""
    if _family(config) == "lstm":
        return 0.0
    return 2.0 * _layer_applications(config) * config.n_ctx * config.d_attn


def _kaplan_forward(config, include_context: bool) -> float:
    family = _family(config)
    if family == "recurrent_transformer":
        # Compute scales with applications, not with the shared parameter count.
        matmul = 2.0 * _layer_applications(config) * _block_nonembedding(
            config.d_model, config.d_attn, config.d_ff)
    else:
        matmul = 2.0 * nonembedding_params(config)
    return matmul + (_context_flops(config) if include_context else 0.0)


def _chinchilla_forward(config) -> float:
    """Hoffmann et al. 2022 Appendix F, divided by seq_len (per token)."""
    family = _family(config)
    d, v, t = config.d_model, config.vocab_size, config.n_ctx
    embeddings = 2.0 * v * d
    logits = 2.0 * d * v
    if family == "lstm":
        return embeddings + config.n_layer * 2.0 * 8 * d * d + logits
    d_attn, h = config.d_attn, config.n_heads
    attention = (2.0 * 3 * d * d_attn          # key, query, value projections
                 + 2.0 * t * d_attn            # key @ query logits
                 + 3.0 * h * t                 # softmax
                 + 2.0 * t * d_attn            # softmax @ value reductions
                 + 2.0 * d_attn * d)           # final linear
    dense = 2.0 * 2 * d * config.d_ff
    return embeddings + _layer_applications(config) * (attention + dense) + logits


def flops_per_token(config, convention: str = "kaplan", mode: str = "train",
                    include_context: bool | None = None) -> FlopsPerToken:
    """FLOPs per token in the named convention.

    Args:
      convention: "kaplan" | "chinchilla" | "porian".
      mode: "forward" or "train" (= 3 × forward).
      include_context: add the attention-over-context term. Default: Kaplan's own choice, i.e. True for
        the forward count (Table 1) and False for training (C ≈ 6N); Chinchilla always counts attention.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown FLOP convention {convention!r}; choose one of {CONVENTIONS}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    if include_context is None:
        include_context = mode == "forward" or convention == "chinchilla"
    if convention == "kaplan":
        forward = _kaplan_forward(config, include_context)
    elif convention == "porian":
        forward = _kaplan_forward(config, include_context) + 2.0 * config.vocab_size * config.d_model
    else:
        if not include_context:
            raise ValueError("the chinchilla convention always counts attention FLOPs; "
                             "use include_context=True (or None)")
        forward = _chinchilla_forward(config)
    factor = 3.0 if mode == "train" else 1.0
    return FlopsPerToken(flops=factor * forward, convention=convention, mode=mode,
                         include_context=include_context)


def mfu_flops_per_token(config) -> float:
    """Training FLOPs per token for MFU: every matmul the model runs, no recomputation.

    Kaplan's 6N leaves out the unembedding (6·d_model·vocab per token: 18 % of the 6 x 256 CPU rung's work at
    vocab 4096), which PaLM (App. B: 6N with N counting the tied embedding) and MaxText count; the attention
    term is Kaplan's causal one (6·n_layer·n_ctx·d_attn). That is the ``porian`` convention with context.
    """
    return flops_per_token(config, "porian", "train", include_context=True).flops


def params_for_convention(config, convention: str = "kaplan") -> int:
    """N as each convention defines it."""
    if convention == "kaplan":
        return nonembedding_params(config)
    if convention == "chinchilla":
        return nonembedding_params(config) + embedding_params(config)
    if convention == "porian":
        return nonembedding_params(config) + config.vocab_size * config.d_model
    raise ValueError(f"unknown convention {convention!r}; choose one of {CONVENTIONS}")


def training_compute(config, tokens: float, convention: str = "kaplan") -> dict[str, float]:
    """Total training compute C for ``tokens`` tokens, in FLOP and PF-days."""
    flops = flops_per_token(config, convention=convention, mode="train").flops * float(tokens)
    return {"flops": flops, "pf_days": formulas.pf_days(flops), "convention": convention}


def model_summary(config) -> dict[str, Any]:
    """What the config alone says of a model: the run record's model fields (scaling.core.records), used by
    the trainer's summary.json and by the sweep's plan of each run before it trains."""
    fpt = flops_per_token(config, convention="kaplan", mode="train", include_context=False)
    return {
        "model_family": config.family,
        "model": dataclasses.asdict(config),
        "n_ctx": config.n_ctx,
        "vocab_size": config.vocab_size,
        "n_params_nonembedding": nonembedding_params(config),   # Kaplan N (formula)
        "n_params_kaplan": params_for_convention(config, "kaplan"),
        "n_params_chinchilla": params_for_convention(config, "chinchilla"),
        "flops_per_token": fpt.flops,                                                           # C ≈ 6N
        "flops_per_token_with_context": flops_per_token(config, "kaplan", "train", include_context=True).flops,
        "flops_per_token_chinchilla": flops_per_token(config, "chinchilla", "train").flops,
        "flops_per_token_mfu": mfu_flops_per_token(config),   # + unembedding 6·d·V: all matmuls
        "flops_convention": fpt.convention,
    }


# --------------------------------------------------------------------------------------------------
# Exact counts from an initialised parameter tree.

_EMBEDDING_LEAVES = ("wte", "wpe", "unembed")


def _path_names(path) -> list[str]:
    names = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                names.append(str(getattr(entry, attr)))
                break
    return names


def param_counts(params: Mapping[str, Any]) -> dict[str, int]:
    """Counts parameters of an initialised tree (boxed or not, with or without a 'params' key).

    Returns ``total``, ``embedding`` (token/position embeddings and an untied unembedding),
    ``nonembedding`` (everything else, biases and LayerNorm included) and ``nonembedding_kernels``
    (only weight matrices: the quantity Kaplan's formula counts).
    """
    import jax  # local import keeps the pure formulas importable without jax

    counts = {"total": 0, "embedding": 0, "nonembedding": 0, "nonembedding_kernels": 0}
    leaves = jax.tree_util.tree_flatten_with_path(
        params, is_leaf=lambda x: hasattr(x, "unbox"))[0]
    for path, leaf in leaves:
        value = leaf.unbox() if hasattr(leaf, "unbox") else leaf
        size = int(np.prod(np.shape(value)))
        names = _path_names(path)
        counts["total"] += size
        if any(name in _EMBEDDING_LEAVES for name in names):
            counts["embedding"] += size
            continue
        counts["nonembedding"] += size
        if names and names[-1].endswith("kernel"):
            counts["nonembedding_kernels"] += size
    return counts
