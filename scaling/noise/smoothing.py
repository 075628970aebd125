"""Online smoothing of the noise-scale estimates: B_simple = EMA(trΣ) / EMA(|G|²).

noise-scale.md §1.4. Per-step estimates of |G|² are often negative and the ratio is biased, so the
numerator and denominator get *separate* bias-corrected EMAs and only the final ratio is formed
(and clamped). The decay is set per token, β = exp(−B_tokens/τ_tokens), so runs at different batch
sizes average over the same number of tokens; the effective window is ≈ 2τ tokens.
"""
from __future__ import annotations

import math

from scaling.noise import estimator


class NoiseScaleEMA:
    """Bias-corrected EMAs of |G|² and trΣ; ``b_simple`` in sequences (examples) and tokens."""

    def __init__(self, tau_tokens: float, n_ctx: int, *, eps: float = 1e-30):
        if not tau_tokens > 0:
            raise ValueError(f"the noise-scale EMA horizon must be > 0 tokens, got {tau_tokens}")
        self.tau_tokens = float(tau_tokens)
        self.n_ctx = int(n_ctx)
        self.eps = eps
        self.g2 = 0.0      # raw (not bias-corrected) EMA accumulators
        self.trace = 0.0
        self.weight = 0.0  # 1 − Π β: the bias correction
        self.updates = 0

    def update(self, s_small: float, s_big: float, b_small: int, b_big: int) -> None:
        """One step's raw sums at batch sizes b_small < b_big (sequences)."""
        g2, trace = estimator.unbiased_estimates(s_small, s_big, b_small, b_big)
        if not (math.isfinite(g2) and math.isfinite(trace)):
            return  # skip non-finite steps (AdaptDL), never poison the averages
        beta = math.exp(-b_big * self.n_ctx / self.tau_tokens)
        self.g2 = beta * self.g2 + (1 - beta) * g2
        self.trace = beta * self.trace + (1 - beta) * trace
        self.weight = beta * self.weight + (1 - beta)
        self.updates += 1

    @property
    def g2_mean(self) -> float:
        return self.g2 / self.weight if self.weight else float("nan")

    @property
    def trace_mean(self) -> float:
        return self.trace / self.weight if self.weight else float("nan")

    @property
    def b_simple_sequences(self) -> float:
        """EMA(trΣ)/EMA(|G|²) in sequences; the denominator is clamped at eps (only the final ratio)."""
        if not self.weight:
            return float("nan")
        return self.trace_mean / max(self.g2_mean, self.eps)

    @property
    def b_simple_tokens(self) -> float:
        return self.b_simple_sequences * self.n_ctx

    def state_dict(self) -> dict:
        return {"g2": self.g2, "trace": self.trace, "weight": self.weight, "updates": self.updates,
                "tau_tokens": self.tau_tokens}

    def load_state_dict(self, state: dict | None) -> None:
        if not state:
            return
        self.g2, self.trace = float(state["g2"]), float(state["trace"])
        self.weight, self.updates = float(state["weight"]), int(state["updates"])
