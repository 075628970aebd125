"""Noise-scale estimator cost (`python -m experiments.bench noise`), at the mid rung, side by side in one run.

  noise_step_ms_k1              the plain step (microbatches K = 1, no estimator)
  noise_step_ms_k4_off          K = 4 strided microbatches, estimator off (noise_scale=False)
  noise_step_ms_k4_on           K = 4 with the estimator: the trainer's default step
  noise_overhead_fraction       k4_on / k4_off - 1: the estimator's own cost (goal <= 0.05)
  microbatch_overhead_fraction  k4_off / k1 - 1: what splitting the batch into K = 4 costs (smaller matmuls,
                                a scan, float32 gradient accumulation; negative = a gain: on CPU the
                                microbatches' activations and logits fit the caches better)
The three compiled steps are timed in interleaved rounds (one window of each per round; best window per
step) so that load from other processes on a shared machine hits all three alike.
"""
from __future__ import annotations

from experiments.bench import train as bench_train

RUNG = "mid"
MICROBATCHES = 4
ROUNDS = 4


def run(figures: dict | None = None, tiny: bool = False) -> dict:
    model_config = bench_train.rung_configs(tiny)[RUNG]
    batch = 8 if tiny else bench_train.BATCH
    steps = 2 if tiny else bench_train.STEPS[RUNG]
    rounds = 1 if tiny else ROUNDS
    timers = {name: bench_train.StepTimer(model_config, batch, k, noise)
              for name, k, noise in (("k1", 1, False), ("k4_off", MICROBATCHES, False),
                                     ("k4_on", MICROBATCHES, True))}
    best = {name: float("inf") for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            best[name] = min(best[name], timer.window(steps))
    return {
        "noise_rung": RUNG,
        "noise_microbatches": MICROBATCHES,
        **{f"noise_step_ms_{name}": 1e3 * seconds for name, seconds in best.items()},
        "noise_overhead_fraction": best["k4_on"] / best["k4_off"] - 1.0,
        "microbatch_overhead_fraction": best["k4_off"] / best["k1"] - 1.0,
    }
