"""The training loop: one jitted, sharded step over a (data, fsdp, tensor) mesh; eval; checkpoints; logs.

Data flow of a run (see WORKSPACE.md):

    TrainConfig --> data.pipeline.build_data --> LMData (step-indexed loader, fixed eval windows)
                --> models.build_model (vocab from the data) --> sharded init / orbax restore
                --> loop: batch(step) -> train_step -> metrics.jsonl / TensorBoard / progress bar
                          every eval_every: eval.jsonl (loss, bpb, loss per position, extra evals)
                          every checkpoint_every and at the end: orbax checkpoint (async)
                --> summary.json (N both conventions, FLOPs/token, tokens, C in PF-days, best eval, MFU)

Steps are optimizer steps. Step s (1-based) consumes ``loader.batch(s - 1)``; a checkpoint at s holds
the state after s updates and resumes with batch(s), so an interrupted and resumed run replays
exactly the batches (and, on the same mesh, exactly the losses) of an uninterrupted one.

The run is split by responsibility: step.py (the jitted step), state.py (set-up and compile), summary.py
(summary.json's model fields, config.gin, finished runs); this module is the loop and its host-side
helpers. Its names (setup, compile_steps, make_*_fn, NonFiniteLossError, ...) stay importable from here.
Size (~400 lines): train()'s hooks (eval, checkpoint, non-finite policy, noise EMA, throughput) are still
closures sharing the loop's state; moving them out is the remaining step of issue 18.
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time
from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from scaling.core import fileio, formulas, records
from scaling.noise import smoothing as noise_smoothing
from scaling.train import checkpointing, metrics as metrics_lib, mfu as mfu_lib, partitioning
from scaling.train import eval as eval_lib
from scaling.train import config as config_lib
from scaling.train.config import TrainConfig
from scaling.train.state import (_COMPILED, COMPILED_CACHE_SIZE, TrainSetup, _default_data_config,  # noqa: F401
                                 build_data, checkpoint_params_sha256, compile_steps, configure_jax, setup)
from scaling.train.step import NonFiniteLossError, make_grad_fn, make_loss_fn, make_train_step  # noqa: F401
from scaling.train.summary import finished_summary, model_summary, write_config  # noqa: F401


# --- host helpers --------------------------------------------------------------------------------

def _host(tree):
    """Fetches replicated device scalars (works multi-host: reads this process's replica)."""
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x.addressable_data(0))), tree)


def _local_rows(rows: np.ndarray) -> np.ndarray:
    """This process's contiguous share of a global host batch (all of it on one host)."""
    n = len(rows) // jax.process_count()
    return rows[jax.process_index() * n:(jax.process_index() + 1) * n]


class _Preemption:
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


# --- the loop ------------------------------------------------------------------------------------

def train(config: TrainConfig, workdir: str, *, data=None, devices: Sequence[jax.Device] | None = None,
          after_checkpoint: Callable[[int], None] | None = None, overwrite: bool = False,
          resume_changed_config: bool = False, from_scratch_if_corrupt: bool = False,
          operative_config: str | None = None) -> dict:
    """Trains (or resumes) the run in ``workdir``; returns its summary.

    ``config`` is the whole run (the trainer reads no gin state); ``operative_config`` is the gin text it came
    from, written to config.gin (scaling.configurables.build_train_config returns both).

    ``data`` (an LMData) and ``devices`` may be injected (tests); by default the data comes from
    TrainConfig.data and the mesh spans all devices. ``after_checkpoint(step)`` is called once a
    checkpoint is durably written (used by the crash-resume test).
    Returns the summary dict; ``status`` is "finished", "already_finished" or "preempted".

    Reliability (checkpointing.py, tests/reliability/): the workdir belongs to one configuration
    (run_fingerprint.json); a different one is refused unless ``overwrite`` (old outputs moved to
    previous-<time>/, fresh start) or ``resume_changed_config`` (same model/optimizer, changed
    hyperparameters). A checkpoint that fails to restore is moved aside and the previous one is used;
    if none restores the run refuses to start unless ``from_scratch_if_corrupt``.
    """
    wall_start = time.time()
    workdir = checkpointing.local_workdir(workdir)  # a gs:// URL is refused, naming it
    fingerprint_fields = config_lib.fingerprint_fields(
        config, None if config.data is not None or data is not None else _default_data_config())
    checkpointing.check_workdir(workdir, fingerprint_fields, overwrite=overwrite,
                                resume_changed_config=resume_changed_config,
                                structural=config_lib.FINGERPRINT_STRUCTURAL)
    finished = None if overwrite else finished_summary(workdir, config)
    if finished is not None:
        print(f"{workdir}: already finished ({finished['steps']} steps); summary.json holds the results", flush=True)
        return dict(finished, status="already_finished")
    run = setup(config, data=data, devices=devices)  # config errors surface before anything is written
    data_identity = checkpointing.data_identity(run.data)  # corpus and vocabulary hashes: refused if changed
    fingerprint_fields = dict(fingerprint_fields, **data_identity)
    checkpointing.check_workdir(workdir, fingerprint_fields, overwrite=overwrite,
                                resume_changed_config=resume_changed_config,
                                structural=config_lib.FINGERPRINT_STRUCTURAL)
    lead = jax.process_index() == 0
    checkpointing.claim_workdir(workdir, fingerprint_fields, overwrite=overwrite,
                                resume_changed_config=resume_changed_config, lead=lead)
    summary_path = os.path.join(workdir, "summary.json")
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
                                      async_save=config.async_checkpointing, data_identity=data_identity,
                                      resume_changed_config=resume_changed_config)

    n_ctx = run.model_config.n_ctx
    batch_tokens = config.batch_size * n_ctx
    model_info = model_summary(run)
    flops_per_token = model_info["flops_per_token"]
    # MFU counts the attention FLOPs too (they are real work), as PaLM App. B does.
    mfu_flops_per_token = model_info["flops_per_token_mfu"]
    peak, peak_source = mfu_lib.peak_flops(run.mesh.devices.flat, run.model_config.dtype)

    metrics_log = metrics_lib.JsonlLog(os.path.join(workdir, "metrics.jsonl"))
    eval_log = metrics_lib.JsonlLog(os.path.join(workdir, "eval.jsonl"))

    # Restore or initialise.
    record = {"wall_time": 0.0, "train_time": 0.0}
    b_small, b_big = config.batch_size // config.microbatches, config.batch_size
    noise_ema = noise_smoothing.NoiseScaleEMA(config.noise_scale_ema_tokens, n_ctx)
    noise_skip = config.resolved_noise_scale_skip_steps
    target = partitioning.abstract_with_shardings(run.abstract_state, run.state_shardings)
    restored = ckpt.restore_latest_good(target, allow_fresh_start=from_scratch_if_corrupt)
    latest = restored[0] if restored is not None else None
    if latest is not None:
        _, state, record = restored
        noise_ema.load_state_dict(record.get("noise_ema"))
        start_step = int(record["data_step"])
        if start_step != int(jax.device_get(state["step"].addressable_data(0))):
            raise RuntimeError(f"checkpoint {latest}: data position {start_step} != optimizer step")
        # Every process needs the same eval history (it decides whether the final eval still runs,
        # a collective); process 0 also cuts the log back, the others only read it.
        eval_records = eval_log.truncate_after(start_step) if lead else [
            r for r in metrics_lib.read_jsonl(eval_log.path) if r.get("step", 0) <= start_step]
        if lead:
            metrics_log.truncate_after(start_step)
    else:
        state = run.init_state()
        start_step = 0
        eval_records = []
        if lead:
            for log in (metrics_log, eval_log):
                checkpointing.set_aside(log.path)  # a fresh start never erases an earlier log
                fileio.write_text_atomic(log.path, "")
    write_config(workdir, run, operative_config)
    best = min(eval_records, key=lambda r: r["eval_loss"], default=None)
    best_loss = best["eval_loss"] if best else float("inf")
    best_step = best["step"] if best else None
    last_eval = eval_records[-1] if eval_records else None

    train_step, eval_step, compile_time = compile_steps(run, cache=True)
    tb = metrics_lib.TensorBoard(os.path.join(workdir, "tensorboard")) if lead else None
    progress = metrics_lib.Progress(config.num_steps, start_step, enabled=config.progress_bar if lead else False)
    if start_step:
        progress.write(f"resuming {workdir} from step {start_step}")

    rows_sharding = NamedSharding(run.mesh, P(run.batch_sharding.spec[0]))

    def put_eval(rows, weights):
        return (partitioning.global_batch(_local_rows(rows), run.batch_sharding, len(rows)),
                partitioning.global_batch(_local_rows(weights), rows_sharding, len(weights)))

    def run_eval(step: int) -> dict:
        nonlocal best_loss, best_step, last_eval
        windows = run.data.eval_windows
        if config.eval_max_windows:
            windows = windows[:config.eval_max_windows]
        result = eval_lib.evaluate(eval_step, state["params"], windows, run.data.eval_bytes_per_token,
                                   config.resolved_eval_batch_size, put_eval)
        rec = {"step": step, "tokens": step * batch_tokens, "eval_loss": result.loss,
               "eval_bpb": result.bits_per_byte, "loss_per_position": result.loss_per_position.tolist(),
               "eval_windows": result.n_windows,
               "compute_pf_days": formulas.pf_days(flops_per_token * step * batch_tokens)}
        extra_evals = getattr(run.data, "extra_evals", None) or {}
        if config.extra_eval_final_only and step != config.num_steps:
            extra_evals = {}
        for name, (extra_windows, extra_bpt) in extra_evals.items():
            if config.eval_max_windows:
                extra_windows = extra_windows[:config.eval_max_windows]
            extra = eval_lib.evaluate(eval_step, state["params"], extra_windows, extra_bpt,
                                      config.resolved_eval_batch_size, put_eval)
            rec[f"eval_loss_{name}"] = extra.loss
            rec[f"eval_bpb_{name}"] = extra.bits_per_byte
        position_windows = getattr(run.data, "position_eval_windows", None)
        if step == config.num_steps and position_windows is not None:
            # The final eval's loss per position on stride-1 windows (data.loader.position_eval_windows): the
            # Fig. 20 curve without the per-position sampling noise of the disjoint eval windows above.
            paired = eval_lib.evaluate(eval_step, state["params"], position_windows, float("nan"),
                                       config.resolved_eval_batch_size, put_eval)
            rec.update(position_eval_loss=paired.loss, position_eval_windows=paired.n_windows,
                       position_eval_loss_per_position=paired.loss_per_position.tolist())
        if result.loss < best_loss:
            best_loss, best_step = result.loss, step
        rec["best_eval_loss"], rec["best_eval_step"] = best_loss, best_step
        if lead:
            eval_log.append(rec)
            tb.scalars(step, {k: v for k, v in rec.items() if k.startswith("eval_")}, prefix="eval/")
        if lead:
            progress.write(f"step {step}: eval loss {result.loss:.4f} nats/token, {result.bits_per_byte:.4f} bits/byte")
        last_eval = rec
        return rec

    # Timing: a window is the steps between two log boundaries, minus eval/checkpoint time.
    session_train_time = 0.0
    window = {"start": time.perf_counter(), "steps": 0, "excluded": 0.0, "losses": [], "gns": []}
    pending: list[tuple[int, dict]] = []
    last_saved = latest
    last_loss = float("nan")
    skips = {"total": int(record.get("skipped_steps", 0)), "in_a_row": 0}  # nonfinite='skip'
    last_rate = float("nan")

    def process(step: int, m: dict) -> None:
        nonlocal last_loss
        values = _host(m)
        loss, grad_norm = float(values["loss"]), float(values["grad_norm"])
        for value, what in ((loss, "the training loss"), (grad_norm, "the gradient norm")):
            if not math.isfinite(value):
                if int(values.get("skipped", 0)):  # nonfinite='skip': the step already kept the old state
                    skips["total"] += 1
                    skips["in_a_row"] += 1
                    progress.write(f"WARNING: {what} became {value} at step {step}; update skipped "
                                   f"(TrainConfig.nonfinite='skip'; {skips['in_a_row']} in a row, "
                                   f"{skips['total']} in total)")
                    if skips["in_a_row"] < config.max_skipped_steps:
                        values["_step"] = step
                        window["last"] = values
                        return
                    what = f"{what} ({skips['in_a_row']} consecutive skipped steps = TrainConfig.max_skipped_steps)"
                ckpt.wait()
                raise NonFiniteLossError(step, value, what, ckpt.latest_step(), ckpt.directory)
        skips["in_a_row"] = 0
        last_loss = loss
        window["losses"].append(loss)
        if "gns_s_small" in values:
            s_small, s_big = float(values["gns_s_small"]), float(values["gns_s_big"])
            window["gns"].append((s_small, s_big))
            if step > noise_skip:  # the warm-up transient is flushed (noise-scale.md §1.4)
                noise_ema.update(s_small, s_big, b_small, b_big)
        values["_step"] = step
        window["last"] = values

    def flush() -> None:
        while pending:
            process(*pending.pop(0))

    def log(step: int) -> None:
        nonlocal session_train_time, last_rate
        elapsed = time.perf_counter() - window["start"] - window["excluded"]
        steps = window["steps"]
        session_train_time += elapsed
        tokens_per_sec = steps * batch_tokens / elapsed if elapsed > 0 and steps else float("nan")
        last_rate = tokens_per_sec if math.isfinite(tokens_per_sec) else last_rate
        values = window["last"]
        rec = {"step": step, "tokens": step * batch_tokens, "loss": float(values["loss"]),
               "loss_avg": float(np.mean(window["losses"])) if window["losses"] else float("nan"),
               "lr": float(values["lr"]),
               "grad_norm": float(values["grad_norm"]), "tokens_per_sec": tokens_per_sec,
               "mfu": mfu_lib.mfu(mfu_flops_per_token, tokens_per_sec, peak),
               "step_time": elapsed / steps if steps else float("nan"),
               "compute_pf_days": formulas.pf_days(flops_per_token * step * batch_tokens)}
        if config.nonfinite == "skip":
            rec["skipped_steps"] = skips["total"]
        if window["gns"]:
            # Raw noise-scale sums averaged over the logged window (ratio of averages downstream),
            # with their batch sizes in sequences.
            rec["gns_s_small"] = float(np.mean([s for s, _ in window["gns"]]))
            rec["gns_s_big"] = float(np.mean([b for _, b in window["gns"]]))
            rec["gns_b_small"] = b_small
            rec["gns_b_big"] = b_big
            rec["gns_steps"] = len(window["gns"])
            # Smoothed: EMA(trΣ)/EMA(|G|²), a ratio of averages (null until the EMA has started).
            rec["gns_g2_ema"] = noise_ema.g2_mean
            rec["gns_trace_ema"] = noise_ema.trace_mean
            rec["b_simple"] = noise_ema.b_simple_tokens
            rec["b_simple_sequences"] = noise_ema.b_simple_sequences
        if lead:
            metrics_log.append(rec)
            tb.scalars(step, {k: v for k, v in rec.items() if k != "step"}, prefix="train/")
        if lead:  # the metrics are global: process 0 reports them for all
            progress.log_line(step, rec)
        window.update(start=time.perf_counter(), steps=0, excluded=0.0, losses=[], gns=[])

    def save(step: int) -> None:
        nonlocal last_saved
        rec = {"data_step": step, "tokens": step * batch_tokens,
               "wall_time": record["wall_time"] + time.time() - wall_start,
               "train_time": record["train_time"] + session_train_time,
               "best_eval_loss": best_loss if math.isfinite(best_loss) else None,
               "best_eval_step": best_step, "noise_ema": noise_ema.state_dict(),
               "skipped_steps": skips["total"]}
        if lead:
            metrics_log.sync()
            eval_log.sync()
        ckpt.save(step, state, rec)
        last_saved = step
        if tb is not None:
            tb.flush()  # a kill -9 after a checkpoint loses no TensorBoard point it covers
        if after_checkpoint is not None:
            ckpt.wait()
            after_checkpoint(step)

    status = "finished"
    step = start_step
    batches = run.data.train.iterate(start_step, config.num_steps - start_step)
    try:
        with _Preemption() as preemption:
            for data_step, rows in batches:
                step = data_step + 1
                batch = partitioning.global_batch(rows, run.batch_sharding, config.batch_size)
                state, step_metrics = train_step(state, batch)
                preemption.poll(step)
                pending.append((step, step_metrics))
                window["steps"] += 1
                if step == start_step + 1:
                    # The first step of a session pays one-off costs: time from the next one.
                    flush()
                    window.update(start=time.perf_counter(), steps=0)
                elif len(pending) > config.log_every:
                    # No host sync per step: the metrics of up to log_every steps wait on the device and are
                    # read together (in step order, so the noise-scale EMA and the logs are unchanged), all
                    # but the newest step, which still runs. A NaN/Inf is seen at the latest at the next log,
                    # eval or checkpoint boundary (flush), before any checkpoint is written.
                    while len(pending) > 1:
                        process(*pending.pop(0))
                at_log = step % config.log_every == 0 or step == config.num_steps
                at_eval = step % config.eval_every == 0 or step == config.num_steps
                at_ckpt = step % config.checkpoint_every == 0 or step == config.num_steps
                if at_log or at_eval or at_ckpt or preemption.requested:
                    flush()
                if at_log and "last" in window:
                    log(step)
                    progress.update(step, last_loss, last_rate)
                elif progress.bar is not None and step % max(1, config.log_every // 10 or 1) == 0:
                    progress.update(step, last_loss, last_rate)
                t0 = time.perf_counter()
                if at_eval:
                    run_eval(step)
                if at_ckpt or preemption.requested:
                    save(step)
                window["excluded"] += time.perf_counter() - t0
                if preemption.requested and step < config.num_steps:
                    status = "preempted"
                    break
            flush()
    finally:
        batches.close()
        ckpt.wait()
        progress.close()
        if tb is not None:
            tb.flush()

    if status == "preempted":
        ckpt.close()
        if lead:
            metrics_log.close()
            eval_log.close()
            tb.close()
        print(f"preempted (SIGTERM): saved checkpoint at step {step} in {ckpt.directory}; "
              f"rerun the same command to resume", flush=True)
        return {"status": "preempted", "steps": step, "workdir": workdir}

    # A run restored at its last step (summary lost in a crash) still needs its final eval.
    if last_eval is None or last_eval["step"] != config.num_steps:
        run_eval(config.num_steps)
    if last_saved != config.num_steps:
        save(config.num_steps)
        ckpt.wait()
    ckpt.close()

    train_time = record["train_time"] + session_train_time
    steps_timed = config.num_steps - start_step - 1  # the first step of each session is not timed
    if latest is not None or steps_timed <= 0:
        tokens_per_sec = last_rate
    else:
        tokens_per_sec = steps_timed * batch_tokens / session_train_time if session_train_time > 0 else float("nan")
    tokens = config.num_steps * batch_tokens
    summary = records.summary_record({
        "status": "finished",
        **model_info,
        "steps": config.num_steps,
        "tokens": tokens,
        "batch_size": config.batch_size,
        "batch_tokens": batch_tokens,
        "microbatches": config.microbatches,
        "b_simple": noise_ema.b_simple_tokens if config.noise_scale else None,
        "b_simple_sequences": noise_ema.b_simple_sequences if config.noise_scale else None,
        "noise_scale_skip_steps": noise_skip if config.noise_scale else None,
        "noise_scale_ema_tokens": config.noise_scale_ema_tokens if config.noise_scale else None,
        "compute_flops": flops_per_token * tokens,
        "compute_pf_days": formulas.pf_days(flops_per_token * tokens),
        "compute_pf_days_with_context": formulas.pf_days(model_info["flops_per_token_with_context"] * tokens),
        "final_eval_loss": last_eval["eval_loss"],
        "final_eval_bpb": last_eval["eval_bpb"],
        "final_train_loss": last_loss,
        "skipped_steps": skips["total"],
        "best_eval_loss": best_loss,
        "best_eval_step": best_step,
        "final_extra_eval": {k: v for k, v in last_eval.items() if k.startswith(("eval_loss_", "eval_bpb_"))},
        "tokens_per_sec": tokens_per_sec,
        "mfu": mfu_lib.mfu(mfu_flops_per_token, tokens_per_sec, peak),
        "mfu_flops_per_token": mfu_flops_per_token,
        "mfu_peak_flops": peak,
        "mfu_peak_source": peak_source,
        "optimizer": config.optimizer,
        "learning_rate": run.learning_rate,
        "learning_rate_source": "TrainConfig.learning_rate" if config.learning_rate else "Kaplan eq. D.1",
        "schedule": config.schedule,
        "warmup_steps": run.warmup_steps,
        "seed": config.seed,
        "mesh": dict(run.mesh.shape),
        "n_devices": int(run.mesh.devices.size),
        "device_kind": run.mesh.devices.flat[0].device_kind,
        "platform": run.mesh.devices.flat[0].platform,
        "compile_time_sec": compile_time,
        "train_time_sec": train_time,
        "wall_time_sec": record["wall_time"] + time.time() - wall_start,
        "data": getattr(run.data, "manifest", None),
        "epochs": config.num_steps * config.batch_size / run.data.train.windows_per_epoch
        if getattr(run.data.train, "windows_per_epoch", None) else None,
    })
    if lead:
        metrics_log.close()
        eval_log.close()
        tb.close()
        fileio.write_json_atomic(summary_path, summary, sort_keys=True)
    return summary


# --- test aid ------------------------------------------------------------------------------------

