"""Pure formulas shared by models.accounting, scaling.analysis, scaling.noise and the report.

Kaplan et al. 2020 (arXiv 2001.08361) symbols: N = non-embedding parameters, D = tokens, B = batch in tokens,
L = loss in nats/token. Every function works on Python floats, numpy arrays and jax arrays (only ``*``, ``/``,
``**``), so the fitters can differentiate the same code the planner and the report evaluate.
"""
from __future__ import annotations

from scaling.core.units import KAPLAN_TABLE5, PF_DAY

TRAIN_FLOPS_PER_PARAM_TOKEN = 6.0  # forward 2N + backward 4N per token (Kaplan §2.1, context term dropped)


def block_nonembedding_params(d_model, d_attn, d_ff):
    """One Transformer block's Kaplan N (Table 1): QKV 3·d·d_attn + output d_attn·d + MLP 2·d·d_ff."""
    return 2 * d_model * (2 * d_attn + d_ff)


def kaplan_nonembedding_params(n_layer, d_model, d_attn, d_ff):
    """Kaplan's N = 2·d_model·n_layer·(2·d_attn + d_ff): block weight matrices, no biases or LayerNorm."""
    return n_layer * block_nonembedding_params(d_model, d_attn, d_ff)


def training_flops(n_params, tokens, flops_per_param_token=TRAIN_FLOPS_PER_PARAM_TOKEN):
    """C = 6·N·D training FLOPs (Kaplan's convention)."""
    return flops_per_param_token * n_params * tokens


def pf_days(flops):
    """FLOPs in PF-days."""
    return flops / PF_DAY


def critical_batch(L, B_star=KAPLAN_TABLE5["B_star"], alpha_B=KAPLAN_TABLE5["alpha_B"]):
    """Kaplan eq 1.4 / 5.3: B_crit(L) = B*/L^(1/α_B), in tokens (B* in tokens, L in nats/token)."""
    return B_star / L ** (1.0 / alpha_B)
