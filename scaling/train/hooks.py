"""The training loop's hooks (trainer.train calls them; each owns its own state, nothing is shared by closure):

- `Evaluator`: the held-out evals (eval.jsonl, TensorBoard eval/), the best and the last eval.
- `NonFinitePolicy`: TrainConfig.nonfinite: a NaN/Inf loss or gradient norm stops the run
  (NonFiniteLossError naming the step and the last good checkpoint) or, with 'skip', counts skipped steps
  (in a row / in total) up to TrainConfig.max_skipped_steps.
- `MetricsWindow`: the device metrics waiting to be read (no host sync per step), the timing window
  (steps between two log boundaries minus eval/checkpoint time), the noise-scale EMA update, metrics.jsonl /
  TensorBoard train/ lines and the progress bar.
- `Checkpointing`: saves the state with the record a resume needs (data position, times, best eval, noise EMA,
  skipped steps), flushes the logs first, calls ``after_checkpoint``.
- `Preemption`: SIGTERM -> checkpoint and exit at the next step (multi-process: JAX's preemption sync point).

Only process 0 (``lead``) writes logs; every process computes the same values.
"""
from __future__ import annotations

import math
import signal
import threading
import time
from typing import Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from scaling.core import formulas
from scaling.train import eval as eval_lib, mfu as mfu_lib, partitioning
from scaling.train.step import NonFiniteLossError


def host(tree):
    """Fetches replicated device scalars (works multi-host: reads this process's replica)."""
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x.addressable_data(0))), tree)


def local_rows(rows: np.ndarray) -> np.ndarray:
    """This process's contiguous share of a global host batch (all of it on one host)."""
    n = len(rows) // jax.process_count()
    return rows[jax.process_index() * n:(jax.process_index() + 1) * n]


def cpu_cores_warning(record: dict, platform: str, step: int) -> str | None:
    """A warning when a CPU run resumes with another number of cores than the session that saved ``record``.

    XLA sizes its CPU thread pool from the cores a process may use, and some reductions split their work by
    thread count: at tiny widths (d_model 16) float32 losses then differ in the last digit from an uninterrupted
    run (tests/train/test_train_state.py). The resumed run is still correct; it is only not bit-identical."""
    saved, now = record.get("cpu_cores"), mfu_lib.process_cores()   # the cores that size XLA's CPU thread pool
    if platform != "cpu" or saved is None or int(saved) == now:
        return None
    return (f"WARNING: checkpoint {step} was written by a session on {saved} CPU cores, this one runs on {now}: "
            f"XLA's CPU thread pool is sized from them, so the losses from here on may differ from an "
            f"uninterrupted run in the last float32 digit; run on {saved} cores (e.g. taskset) for a "
            f"bit-identical resume")


class Evaluator:
    """Scores the parameters on the held-out windows (and the extra / position evals) and logs eval.jsonl.

    ``history`` is eval.jsonl's records up to the restored step: the best and last eval carry over a resume.
    With TrainConfig.early_stopping_patience = P, the eval that is the P-th in a row without a new best sets
    ``stopped``: it is scored as the final eval (the final-only evals included) and the loop ends there."""

    def __init__(self, run, eval_step, *, flops_per_token: float, eval_log, tb, progress, lead: bool,
                 history: list[dict]):
        self.run, self.config, self.eval_step = run, run.config, eval_step
        self.batch_tokens = self.config.batch_size * run.model_config.n_ctx
        self.flops_per_token = flops_per_token
        self.eval_log, self.tb, self.progress, self.lead = eval_log, tb, progress, lead
        best = min(history, key=lambda r: r["eval_loss"], default=None)
        self.best_loss = best["eval_loss"] if best else float("inf")
        self.best_step = best["step"] if best else None
        self.last = history[-1] if history else None
        # Evals since the best one: a pure function of the history, so a resume decides to stop as the
        # uninterrupted run did (and one restored at its stop step does not train on).
        self.since_best = sum(1 for r in history if best is not None and r["step"] > best["step"])
        self.stopped = bool(history) and bool(history[-1].get("early_stopped"))
        self._rows_sharding = NamedSharding(run.mesh, P(run.batch_sharding.spec[0]))

    def done_at(self, step: int) -> bool:
        return self.last is not None and self.last["step"] == step

    def _put(self, rows, weights):
        return (partitioning.global_batch(local_rows(rows), self.run.batch_sharding, len(rows)),
                partitioning.global_batch(local_rows(weights), self._rows_sharding, len(weights)))

    def _evaluate(self, params, windows, bytes_per_token):
        return eval_lib.evaluate(self.eval_step, params, windows, bytes_per_token,
                                 self.config.resolved_eval_batch_size, self._put)

    def __call__(self, step: int, params) -> dict:
        config, data = self.config, self.run.data
        windows = data.eval_windows
        if config.eval_max_windows:
            windows = windows[:config.eval_max_windows]
        result = self._evaluate(params, windows, data.eval_bytes_per_token)
        rec = {"step": step, "tokens": step * self.batch_tokens, "eval_loss": result.loss,
               "eval_bpb": result.bits_per_byte, "loss_per_position": result.loss_per_position.tolist(),
               "eval_windows": result.n_windows,
               "compute_pf_days": formulas.pf_days(self.flops_per_token * step * self.batch_tokens)}
        if result.loss < self.best_loss:
            self.best_loss, self.best_step, self.since_best = result.loss, step, 0
        else:
            self.since_best += 1
        patience = config.early_stopping_patience
        if patience and self.since_best >= patience and step < config.num_steps:
            self.stopped = True
            rec["early_stopped"] = True
        final = step == config.num_steps or self.stopped
        extra_evals = getattr(data, "extra_evals", None) or {}
        if config.extra_eval_final_only and not final:
            extra_evals = {}
        for name, (extra_windows, extra_bpt) in extra_evals.items():
            if config.eval_max_windows:
                extra_windows = extra_windows[:config.eval_max_windows]
            extra = self._evaluate(params, extra_windows, extra_bpt)
            rec[f"eval_loss_{name}"] = extra.loss
            rec[f"eval_bpb_{name}"] = extra.bits_per_byte
        position_windows = getattr(data, "position_eval_windows", None)
        if final and position_windows is not None:
            # The final eval's loss per position on stride-1 windows (data.loader.position_eval_windows): the
            # Fig. 20 curve without the per-position sampling noise of the disjoint eval windows above.
            paired = self._evaluate(params, position_windows, float("nan"))
            rec.update(position_eval_loss=paired.loss, position_eval_windows=paired.n_windows,
                       position_eval_loss_per_position=paired.loss_per_position.tolist())
        rec["best_eval_loss"], rec["best_eval_step"] = self.best_loss, self.best_step
        if self.lead:
            self.eval_log.append(rec)
            self.tb.scalars(step, {k: v for k, v in rec.items() if k.startswith("eval_")}, prefix="eval/")
            self.progress.write(f"step {step}: eval loss {result.loss:.4f} nats/token, "
                                f"{result.bits_per_byte:.4f} bits/byte" + (
                                    f"; early stopping: {self.since_best} evals without a new best "
                                    f"(best {self.best_loss:.4f} at step {self.best_step})" if self.stopped else ""))
        self.last = rec
        return rec


class NonFinitePolicy:
    """TrainConfig.nonfinite: 'stop' raises NonFiniteLossError; 'skip' (the jitted step already kept the old
    state) counts the skipped steps and stops after max_skipped_steps in a row. ``total`` survives a resume
    (the checkpoint record's skipped_steps)."""

    def __init__(self, config, checkpointer, progress, skipped_before: int = 0):
        self.max_in_a_row = config.max_skipped_steps
        self.checkpointer, self.progress = checkpointer, progress
        self.total, self.in_a_row = int(skipped_before), 0

    def accept(self, step: int, values: dict) -> bool:
        """True for a finite step; False for a skipped one; raises NonFiniteLossError when the run must stop."""
        for value, what in ((float(values["loss"]), "the training loss"),
                            (float(values["grad_norm"]), "the gradient norm")):
            if math.isfinite(value):
                continue
            if int(values.get("skipped", 0)):  # nonfinite='skip': the step already kept the old state
                self.total += 1
                self.in_a_row += 1
                self.progress.write(f"WARNING: {what} became {value} at step {step}; update skipped "
                                    f"(TrainConfig.nonfinite='skip'; {self.in_a_row} in a row, "
                                    f"{self.total} in total)")
                if self.in_a_row < self.max_in_a_row:
                    return False
                what = f"{what} ({self.in_a_row} consecutive skipped steps = TrainConfig.max_skipped_steps)"
            self.checkpointer.wait()
            raise NonFiniteLossError(step, value, what, self.checkpointer.latest_step(), self.checkpointer.directory)
        self.in_a_row = 0
        return True


class MetricsWindow:
    """The metrics of the steps since the last log line: read from the device in step order, timed, logged.

    Steps' device metrics wait in ``pending`` until ``process``/``flush`` reads them (the noise-scale EMA is
    updated in step order, so batching the reads changes no number). ``log`` writes one metrics.jsonl line for
    the window and starts the next; time spent in evals and checkpoints is ``exclude``d from its step time."""

    def __init__(self, config, *, batch_tokens: int, flops_per_token: float, mfu_flops_per_token: float, peak,
                 noise_ema, noise_skip: int, policy: NonFinitePolicy, metrics_log, tb, progress, lead: bool):
        self.config, self.batch_tokens = config, batch_tokens
        self.flops_per_token, self.mfu_flops_per_token, self.peak = flops_per_token, mfu_flops_per_token, peak
        self.noise_ema, self.noise_skip, self.policy = noise_ema, noise_skip, policy
        self.b_small, self.b_big = config.batch_size // config.microbatches, config.batch_size
        self.metrics_log, self.tb, self.progress, self.lead = metrics_log, tb, progress, lead
        self.pending: list[tuple[int, dict]] = []
        self.session_train_time = 0.0   # this session's timed training seconds (summed windows)
        self.last_rate = float("nan")   # tokens/s of the last window that had one
        self.last_loss = float("nan")   # the newest finite training loss read
        self.last: dict | None = None   # the newest step's host metrics (a skipped step's too)
        self._reset()

    def _reset(self) -> None:
        self.start, self.steps, self.excluded = time.perf_counter(), 0, 0.0
        self.losses: list[float] = []
        self.gns: list[tuple[float, float]] = []

    def add(self, step: int, device_metrics: dict) -> None:
        self.pending.append((step, device_metrics))
        self.steps += 1

    def restart_timing(self) -> None:
        """The first step of a session pays one-off costs (compilation, restore): time from the next one."""
        self.start, self.steps = time.perf_counter(), 0

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds

    def process(self, step: int, device_metrics: dict) -> None:
        values = host(device_metrics)
        values["_step"] = step
        if not self.policy.accept(step, values):
            self.last = values
            return
        loss = float(values["loss"])
        self.last_loss = loss
        self.losses.append(loss)
        if "gns_s_small" in values:
            s_small, s_big = float(values["gns_s_small"]), float(values["gns_s_big"])
            self.gns.append((s_small, s_big))
            if step > self.noise_skip:  # the warm-up transient is flushed (noise-scale.md §1.4)
                self.noise_ema.update(s_small, s_big, self.b_small, self.b_big)
        self.last = values

    def process_all_but_newest(self) -> None:
        """Reads the waiting steps except the newest, which may still run on the device."""
        while len(self.pending) > 1:
            self.process(*self.pending.pop(0))

    def flush(self) -> None:
        while self.pending:
            self.process(*self.pending.pop(0))

    def log(self, step: int) -> dict:
        elapsed = time.perf_counter() - self.start - self.excluded
        steps = self.steps
        self.session_train_time += elapsed
        tokens_per_sec = steps * self.batch_tokens / elapsed if elapsed > 0 and steps else float("nan")
        self.last_rate = tokens_per_sec if math.isfinite(tokens_per_sec) else self.last_rate
        values = self.last
        rec = {"step": step, "tokens": step * self.batch_tokens, "loss": float(values["loss"]),
               "loss_avg": float(np.mean(self.losses)) if self.losses else float("nan"),
               "lr": float(values["lr"]),
               "grad_norm": float(values["grad_norm"]), "tokens_per_sec": tokens_per_sec,
               "mfu": mfu_lib.mfu(self.mfu_flops_per_token, tokens_per_sec, self.peak),
               "step_time": elapsed / steps if steps else float("nan"),
               "compute_pf_days": formulas.pf_days(self.flops_per_token * step * self.batch_tokens)}
        if self.config.nonfinite == "skip":
            rec["skipped_steps"] = self.policy.total
        if self.gns:
            # Raw noise-scale sums averaged over the logged window (ratio of averages downstream),
            # with their batch sizes in sequences.
            rec["gns_s_small"] = float(np.mean([s for s, _ in self.gns]))
            rec["gns_s_big"] = float(np.mean([b for _, b in self.gns]))
            rec["gns_b_small"] = self.b_small
            rec["gns_b_big"] = self.b_big
            rec["gns_steps"] = len(self.gns)
            # Smoothed: EMA(trΣ)/EMA(|G|²), a ratio of averages (null until the EMA has started).
            rec["gns_g2_ema"] = self.noise_ema.g2_mean
            rec["gns_trace_ema"] = self.noise_ema.trace_mean
            rec["b_simple"] = self.noise_ema.b_simple_tokens
            rec["b_simple_sequences"] = self.noise_ema.b_simple_sequences
        if self.lead:  # the metrics are global: process 0 reports them for all
            self.metrics_log.append(rec)
            self.tb.scalars(step, {k: v for k, v in rec.items() if k != "step"}, prefix="train/")
            self.progress.log_line(step, rec)
        self._reset()
        return rec


class Checkpointing:
    """Saves the state with the record a resume needs; ``last_saved`` is the newest step saved (or restored).

    The record: data position, tokens, wall and train time (this session's added to ``previous``'s), the best
    eval, the noise-scale EMA state, the skipped-step count and the CPU cores of the session (cpu_cores_warning). The logs are fsynced first, so a checkpoint
    never covers a metric line that a crash could lose; ``after_checkpoint(step)`` runs once it is on disk."""

    def __init__(self, checkpointer, *, batch_tokens: int, previous: dict, wall_start: float,
                 evaluator: Evaluator, window: MetricsWindow, policy: NonFinitePolicy, logs: tuple, tb,
                 lead: bool, last_saved: int | None, after_checkpoint: Callable[[int], None] | None = None):
        self.checkpointer, self.batch_tokens = checkpointer, batch_tokens
        self.previous, self.wall_start = previous, wall_start
        self.evaluator, self.window, self.policy = evaluator, window, policy
        self.logs, self.tb, self.lead = logs, tb, lead
        self.last_saved, self.after_checkpoint = last_saved, after_checkpoint

    def wall_time(self) -> float:
        return self.previous["wall_time"] + time.time() - self.wall_start

    def train_time(self) -> float:
        return self.previous["train_time"] + self.window.session_train_time

    def save(self, step: int, state) -> None:
        best = self.evaluator.best_loss
        rec = {"data_step": step, "tokens": step * self.batch_tokens,
               "wall_time": self.wall_time(), "train_time": self.train_time(),
               "best_eval_loss": best if math.isfinite(best) else None,
               "best_eval_step": self.evaluator.best_step, "noise_ema": self.window.noise_ema.state_dict(),
               "skipped_steps": self.policy.total, "cpu_cores": mfu_lib.process_cores()}
        if self.lead:
            for log in self.logs:
                log.sync()
        self.checkpointer.save(step, state, rec)
        self.last_saved = step
        if self.tb is not None:
            self.tb.flush()  # a kill -9 after a checkpoint loses no TensorBoard point it covers
        if self.after_checkpoint is not None:
            self.checkpointer.wait()
            self.after_checkpoint(step)


class Preemption:
    """SIGTERM sets a flag; the loop saves a checkpoint and exits cleanly at the next step.

    With several processes the signal reaches them at different steps, but they must stop at the
    same one (saving is collective): JAX's preemption sync manager (started by jax.distributed)
    catches SIGTERM and ``poll`` reports it on every process at one agreed step. A Python handler
    would hide the signal from it, so none is installed then.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._multi_process = jax.process_count() > 1

    def __enter__(self):
        if not self._multi_process and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def poll(self, step: int) -> bool:
        if self._multi_process and not self.requested:
            from jax.experimental import multihost_utils
            self.requested = bool(multihost_utils.reached_preemption_sync_point(step))
        return self.requested

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
