"""Early stopping on the held-out loss (Kaplan et al. 2020 §4: L(N, D) is measured at the early-stopped loss).

A run stops once `patience` consecutive evaluations have failed to improve the best held-out loss by more than
`min_delta` (relative: a new loss counts as better when it is below best·(1 − min_delta)). The decision is a
pure function of the eval history, so a resumed run (which re-reads eval.jsonl) decides exactly as an
uninterrupted one. `patience = 0` disables it (the default).
"""
from __future__ import annotations

import math
from typing import Sequence


def evals_since_best(losses: Sequence[float], min_delta: float = 0.0) -> int:
    """How many evaluations have passed since the last one that improved the best loss by > min_delta (relative)."""
    best, since = math.inf, 0
    for loss in losses:
        if loss is None or not math.isfinite(loss):
            since += 1
            continue
        if loss < best * (1.0 - min_delta) or best == math.inf:
            best, since = loss, 0
        else:
            since += 1
    return since


def should_stop(losses: Sequence[float], patience: int, min_delta: float = 0.0) -> bool:
    """True when the last `patience` evaluations all failed to improve the best loss (patience 0: never)."""
    if patience <= 0:
        return False
    return evals_since_best(losses, min_delta) >= patience
