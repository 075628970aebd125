"""Trainer benchmark (`python -m experiments.bench train`): the real jitted train step vs a PyTorch reference.

For each rung (small = gin/models/cpu_55k.gin, 2 x 48; mid = cpu_10m6.gin, 6 x 384 as the performance
issue names it; large = cpu_25m.gin, 8 x 512, the largest CPU rung), batch 32 x n_ctx, vocab 4096, random
tokens (the data pipeline is benchmarked separately):
  train_<rung>_tokens_per_sec   steady-state tokens/s of scaling.train.trainer's compiled step as every run
                                executes it by default (K = 4 strided microbatches + the noise-scale
                                estimator; compile excluded; the best of 5 timed windows, interleaved
                                round by round with the K = 1 step's and the torch reference's)
  train_<rung>_k1_*             the same for the plain step (K = 1, no estimator): the torch step's algorithm
  train_<rung>_mfu              model FLOPs/token (models.accounting.mfu_flops_per_token: every matmul,
                                i.e. Kaplan 6N + causal attention + the 6·d·V unembedding) x tokens/s
                                / peak: the measured matmul peak on CPU, the platform table on accelerators
  train_<rung>_mfu_kaplan       the same with Kaplan 6N + attention only (no unembedding), as before
  train_<rung>_mfu_vs_this_run_peak   MFU against the matmul peak measured in this run (the default MFU
                                uses the best peak ever measured on the machine, the stricter figure)
  train_<rung>_compile_s        AOT compile time of the step
  torch_eager_<rung>_tokens_per_sec, torch_compile_<rung>_tokens_per_sec
                                experiments.bench.torch_reference: the same model, batch, sequence and Adam step
  speedup_vs_torch_eager_<rung>, speedup_vs_torch_compile_<rung>   JAX (default step) tokens/s over torch's
  speedup_k1_vs_torch_<mode>_<rung>                                  the same with the plain K = 1 step
  speedup_vs_torch_<mode>_<rung>_rounds_{median,min,max}   the ratio of each round's windows (paired, the
                                same minute of the machine's drift): the spread behind the best-window ratio
  speedup_vs_faster_torch_<rung>[_rounds_*]   the same against the faster of the two references (the goal)
The torch step is the whole batch at once (PyTorch's usual step). The default JAX step does more work (the
estimator's norms) on smaller microbatches, whose working sets fit the caches better on CPU;
experiments/bench/noise.py separates the two effects.
"""
from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np

RUNGS = {"small": "gin/models/cpu_55k.gin", "mid": "gin/models/cpu_10m6.gin", "large": "gin/models/cpu_25m.gin"}
BATCH = 32
VOCAB = 4096
STEPS = {"small": 20, "mid": 3, "large": 2}   # steps per timed window (WINDOWS rounds each)
DEFAULT_MICROBATCHES = 4   # TrainConfig.microbatches' default: the step every training run executes
WINDOWS = 5   # rounds: the best window gives tokens/s; the round-by-round ratios their spread
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_model_config():
    """The smoke test's model: seconds to compile, same code path."""
    from models.transformer import TransformerConfig
    return TransformerConfig(vocab_size=256, n_ctx=16, n_layer=2, d_model=32, d_ff=128, d_attn=32, n_heads=2)


def rung_configs(tiny: bool = False) -> dict:
    """{rung: model config} of the benchmarked rungs (the tiny config for every rung in smoke tests)."""
    if tiny:
        return {rung: tiny_model_config() for rung in RUNGS}
    from experiments.model_table import load_model_config
    return {rung: dataclasses.replace(load_model_config(os.path.join(REPO_ROOT, path)), vocab_size=VOCAB)
            for rung, path in RUNGS.items()}


class _RandomLoader:
    def __init__(self, n_ctx: int, batch: int, vocab: int):
        self.n_ctx, self.batch_size, self.vocab = n_ctx, batch, vocab
        self.windows_per_epoch = 10 ** 9

    def batch(self, step: int) -> np.ndarray:
        rng = np.random.default_rng(step)
        return rng.integers(0, self.vocab, (self.batch_size, self.n_ctx + 1)).astype(np.int32)


@dataclasses.dataclass
class _RandomData:
    train: _RandomLoader
    vocab_size: int
    eval_windows: np.ndarray = None
    eval_bytes_per_token: float = 1.0
    extra_evals: dict = dataclasses.field(default_factory=dict)
    manifest: dict = dataclasses.field(default_factory=dict)


def bench_devices():
    """One CPU device (fake CPU devices share the same cores, so more would only add collectives);
    every device on an accelerator."""
    devices = jax.devices()
    return devices[:1] if devices[0].platform == "cpu" else devices


_COMPILED: dict = {}


def compiled_step(model_config, batch: int, microbatches: int, noise_scale: bool):
    """(run, compiled train step, compile seconds), compiled once per distinct configuration in this process
    (the noise section re-times the train section's K = 1 step; the smoke test's rungs share one shape)."""
    from scaling.train import trainer
    from scaling.train.config import TrainConfig
    key = (model_config, batch, microbatches, noise_scale)
    if key not in _COMPILED:
        data = _RandomData(train=_RandomLoader(model_config.n_ctx, batch, model_config.vocab_size),
                           vocab_size=model_config.vocab_size)
        config = TrainConfig(model=model_config, batch_size=batch, num_steps=10 ** 6, learning_rate=1e-3,
                             warmup_steps=1, microbatches=microbatches, noise_scale=noise_scale)
        run = trainer.setup(config, data=data, devices=bench_devices())
        train_step, _, compile_s = trainer.compile_steps(run, with_eval=False)
        _COMPILED[key] = (run, train_step, compile_s)
    return _COMPILED[key]


class StepTimer:
    """A compiled trainer step with its state and batches, timed in windows of steps (steady state)."""

    def __init__(self, model_config, batch: int, microbatches: int = 1, noise_scale: bool = False):
        from scaling.train import partitioning
        self.run, self.step, self.compile_s = compiled_step(model_config, batch, microbatches, noise_scale)
        self.batch, self.n_ctx = batch, model_config.n_ctx
        self.state = self.run.init_state()
        self.batches = [partitioning.global_batch(self.run.data.train.batch(i), self.run.batch_sharding, batch)
                        for i in range(4)]
        self.i, self.metrics = 0, None
        self.steps(2)  # warm up: first executions allocate and fill caches

    def steps(self, n: int) -> None:
        """Runs n steps and blocks until they are done."""
        state, m = self.state, None
        for _ in range(n):
            state, m = self.step(state, self.batches[self.i % len(self.batches)])
            self.i += 1
        jax.block_until_ready((state, m))
        self.state, self.metrics = state, m

    def window(self, n: int) -> float:
        """Seconds per step over one window of n steps."""
        start = time.perf_counter()
        self.steps(n)
        return (time.perf_counter() - start) / n


def interleaved_windows(timers: dict, steps: int, rounds: int = WINDOWS) -> dict:
    """{name: [seconds per step in round r]}: every round runs one window of ``steps`` steps of each timer
    in turn. Interleaving puts the JAX and torch steps under the same load on a shared machine whose speed
    drifts over minutes, so their ratio is measured side by side rather than minutes apart."""
    windows = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            windows[name].append(timer.window(steps))
    return windows


def interleaved_best_seconds(timers: dict, steps: int, rounds: int = WINDOWS) -> dict:
    """{name: seconds per step}: the best window of each timer over interleaved rounds."""
    return {name: min(w) for name, w in interleaved_windows(timers, steps, rounds).items()}


def paired_speedups(fast: list[float], slow: list[float]) -> list[float]:
    """Round-by-round speedups of the ``fast`` windows over the ``slow`` ones (slow's window time / fast's in
    the same round): their spread says how far the best-window ratio can be trusted on a noisy machine."""
    return [s / f for f, s in zip(fast, slow)]


def rounds_figures(key: str, paired: list[float]) -> dict:
    """{key_rounds_median, key_rounds_min, key_rounds_max} of round-by-round speedups."""
    return {f"{key}_rounds_median": float(np.median(paired)), f"{key}_rounds_min": min(paired),
            f"{key}_rounds_max": max(paired)}


def step_figures(timer: StepTimer, step_s: float) -> dict:
    """tokens/s and the model FLOPs/token (models.accounting) of one timed trainer step."""
    from models import accounting
    run = timer.run
    return {"step_s": step_s, "tokens_per_sec": timer.batch * timer.n_ctx / step_s,
            "flops_per_token": accounting.mfu_flops_per_token(run.model_config),
            "flops_per_token_kaplan": accounting.flops_per_token(run.model_config, "kaplan", "train",
                                                                 include_context=True).flops,
            "compile_s": timer.compile_s, "n_params_nonembedding": run.n_nonembedding,
            "loss": float(jax.device_get(timer.metrics["loss"])), "devices": run.mesh.devices.size}


def peak_for_mfu(figures: dict) -> tuple[float, str]:
    """The MFU denominator: this run's measured matmul peak on CPU (from the matmul section when it ran,
    else measured now), the platform table on accelerators (scaling.train.mfu)."""
    from scaling.train import mfu
    devices = bench_devices()
    if devices[0].platform != "cpu":
        return mfu.peak_flops(devices)
    if "matmul_peak_flops" in figures:
        return figures["matmul_peak_flops"], "matmul section (best of this run and the cached best on this machine)"
    from experiments.bench import matmul as bench_matmul
    return bench_matmul.measure_peak(tiny=False)["matmul_peak_flops"], "measured by the train section"


def run(figures: dict | None = None, tiny: bool = False, torch_reference: bool = True) -> dict:
    from scaling.train import mfu
    from experiments.bench import torch_reference as bench_torch

    figures = dict(figures or {})
    if torch_reference:
        try:
            bench_torch._torch()  # pylint: disable=protected-access
        except ImportError as e:
            # CI and plain installs have no torch: the JAX figures still come, the reference says why not.
            print(f"  [torch reference skipped] {e}", flush=True)
            torch_reference = False
            torch_missing = str(e)
        else:
            torch_missing = None
    else:
        torch_missing = "not requested"
    if tiny and "matmul_peak_flops" not in figures:
        from experiments.bench import matmul as bench_matmul
        figures.update(bench_matmul.run(tiny=True))
    peak, peak_source = peak_for_mfu(figures)
    batch = 8 if tiny else BATCH
    out = {"train_batch_sequences": batch, "train_microbatches": DEFAULT_MICROBATCHES,
           "train_mfu_peak_source": peak_source,
           "torch_reference": f"unavailable: {torch_missing}" if torch_missing else "measured"}
    for rung, model_config in rung_configs(tiny).items():
        steps, rounds = (2, 1) if tiny else (STEPS[rung], WINDOWS)
        out[f"train_{rung}_shape"] = f"{model_config.n_layer}x{model_config.d_model} n_ctx {model_config.n_ctx}"
        # The trainer's default step (K microbatches + the noise-scale estimator), the plain one, and the
        # torch reference in this same process (each one's threads idle while another runs).
        timers = {"": StepTimer(model_config, batch, DEFAULT_MICROBATCHES, True),
                  "_k1": StepTimer(model_config, batch, 1, False)}
        if torch_reference:
            for mode in ("eager", "compile"):
                timers[mode] = bench_torch.TorchStepTimer(model_config, batch, compile=mode == "compile",
                                                          backend="eager" if tiny else "inductor")
        windows = interleaved_windows(timers, steps, rounds)
        best = {name: min(w) for name, w in windows.items()}
        for suffix in ("", "_k1"):
            result = step_figures(timers[suffix], best[suffix])
            rate = result["tokens_per_sec"]
            out[f"train_{rung}{suffix}_tokens_per_sec"] = rate
            out[f"train_{rung}{suffix}_step_ms"] = 1e3 * result["step_s"]
            out[f"train_{rung}{suffix}_mfu"] = mfu.mfu(result["flops_per_token"], rate, peak)
            out[f"train_{rung}{suffix}_mfu_kaplan"] = mfu.mfu(result["flops_per_token_kaplan"], rate, peak)
            if "matmul_peak_flops_this_run" in figures:
                # Side by side: against the matmul peak measured in this same run (the cached best-ever
                # figure above is the stricter denominator on a VM whose speed drifts with its neighbours).
                out[f"train_{rung}{suffix}_mfu_vs_this_run_peak"] = mfu.mfu(
                    result["flops_per_token"], rate, figures["matmul_peak_flops_this_run"])
            out[f"train_{rung}{suffix}_model_flops_per_sec"] = result["flops_per_token"] * rate
            out[f"train_{rung}{suffix}_compile_s"] = result["compile_s"]
            print(f"  [{rung}{suffix or ' default'}] {rate:,.0f} tokens/s, MFU {out[f'train_{rung}{suffix}_mfu']:.3f}",
                  flush=True)
        out[f"train_{rung}_n_params_nonembedding"] = result["n_params_nonembedding"]
        for mode in ("eager", "compile") if torch_reference else ():
            ref = timers[mode]
            rate = batch * model_config.n_ctx / best[mode]
            out[f"torch_{mode}_{rung}_tokens_per_sec"] = rate
            out[f"torch_{mode}_{rung}_warmup_s"] = ref.warmup_s
            out[f"speedup_vs_torch_{mode}_{rung}"] = out[f"train_{rung}_tokens_per_sec"] / rate
            out[f"speedup_k1_vs_torch_{mode}_{rung}"] = out[f"train_{rung}_k1_tokens_per_sec"] / rate
            out.update(rounds_figures(f"speedup_vs_torch_{mode}_{rung}", paired_speedups(windows[""], windows[mode])))
            out["torch_version"] = ref.torch_version
            print(f"  [{rung} torch {mode}] {rate:,.0f} tokens/s", flush=True)
        if torch_reference:
            # The goal's statistic: the default step against the faster of the two references.
            faster = [min(e, c) for e, c in zip(windows["eager"], windows["compile"])]
            out[f"speedup_vs_faster_torch_{rung}"] = min(best["eager"], best["compile"]) / best[""]
            out.update(rounds_figures(f"speedup_vs_faster_torch_{rung}", paired_speedups(windows[""], faster)))
        del timers
    return out
