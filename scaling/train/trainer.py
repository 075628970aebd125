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
exactly the batches (and, on the same mesh and the same CPU set, exactly the losses) of an uninterrupted one.

The run is split by responsibility (issue 18): step.py (the jitted step), state.py (TrainState, set-up and
compile), hooks.py (eval, checkpoint, non-finite policy, metrics window with the noise-scale EMA and throughput,
preemption), summary.py (summary.json, config.gin, finished runs); this module is the set-up of a session and
the loop that calls the hooks. Its names (setup, compile_steps, make_*_fn, NonFiniteLossError, TrainState, ...)
stay importable from here.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Sequence

import jax

from scaling.core import fileio
from scaling.noise import smoothing as noise_smoothing
from scaling.train import checkpointing, hooks, metrics as metrics_lib, mfu as mfu_lib, partitioning
from scaling.train import config as config_lib
from scaling.train.config import TrainConfig
from scaling.train.state import (_COMPILED, COMPILED_CACHE_SIZE, TrainSetup, TrainState,  # noqa: F401
                                 _default_data_config, build_data, checkpoint_params_sha256, compile_steps,
                                 configure_jax, setup)
from scaling.train.step import NonFiniteLossError, make_grad_fn, make_loss_fn, make_train_step  # noqa: F401
from scaling.train.summary import finished_summary, model_summary, run_summary, write_config  # noqa: F401


def _restore_or_init(run: TrainSetup, ckpt, metrics_log, eval_log, *, lead: bool, from_scratch_if_corrupt: bool):
    """(state, start step, restored step or None, checkpoint record, eval history up to the start step).

    A restored run cuts its logs back to the restored step (process 0; the others only read eval.jsonl: every
    process needs the same eval history, which decides whether the final eval, a collective, still runs);
    a fresh start sets earlier logs aside (never erased)."""
    target = partitioning.abstract_with_shardings(run.abstract_state, run.state_shardings)
    restored = ckpt.restore_latest_good(target, allow_fresh_start=from_scratch_if_corrupt)
    if restored is None:
        if lead:
            for log in (metrics_log, eval_log):
                checkpointing.set_aside(log.path)
                fileio.write_text_atomic(log.path, "")
        return run.init_state(), 0, None, {"wall_time": 0.0, "train_time": 0.0}, []
    latest, state, record = restored
    start_step = int(record["data_step"])
    if start_step != int(jax.device_get(state.step.addressable_data(0))):
        raise RuntimeError(f"checkpoint {latest}: data position {start_step} != optimizer step")
    history = eval_log.truncate_after(start_step) if lead else [
        r for r in metrics_lib.read_jsonl(eval_log.path) if r.get("step", 0) <= start_step]
    if lead:
        metrics_log.truncate_after(start_step)
    return state, start_step, latest, record, history


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

    Reliability (checkpointing.py, workdir.py, tests/reliability/): the workdir belongs to one configuration
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
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
                                      async_save=config.async_checkpointing, data_identity=data_identity,
                                      resume_changed_config=resume_changed_config)
    batch_tokens = config.batch_size * run.model_config.n_ctx
    model_info = model_summary(run)
    # MFU counts the attention FLOPs too (they are real work), as PaLM App. B does.
    peak, peak_source = mfu_lib.peak_flops(run.mesh.devices.flat, run.model_config.dtype)
    metrics_log = metrics_lib.JsonlLog(os.path.join(workdir, "metrics.jsonl"))
    eval_log = metrics_lib.JsonlLog(os.path.join(workdir, "eval.jsonl"))

    state, start_step, latest, record, history = _restore_or_init(
        run, ckpt, metrics_log, eval_log, lead=lead, from_scratch_if_corrupt=from_scratch_if_corrupt)
    noise_ema = noise_smoothing.NoiseScaleEMA(config.noise_scale_ema_tokens, run.model_config.n_ctx)
    if latest is not None:
        noise_ema.load_state_dict(record.get("noise_ema"))
    write_config(workdir, run, operative_config)
    train_step, eval_step, compile_time = compile_steps(run, cache=True)
    tb = metrics_lib.TensorBoard(os.path.join(workdir, "tensorboard")) if lead else None
    progress = metrics_lib.Progress(config.num_steps, start_step, enabled=config.progress_bar if lead else False)
    if start_step:
        progress.write(f"resuming {workdir} from step {start_step}")
        warning = hooks.cpu_cores_warning(record, run.mesh.devices.flat[0].platform, latest)
        if warning:
            progress.write(warning)

    evaluator = hooks.Evaluator(run, eval_step, flops_per_token=model_info["flops_per_token"], eval_log=eval_log,
                                tb=tb, progress=progress, lead=lead, history=history)
    policy = hooks.NonFinitePolicy(config, ckpt, progress, skipped_before=record.get("skipped_steps", 0))
    window = hooks.MetricsWindow(config, batch_tokens=batch_tokens, flops_per_token=model_info["flops_per_token"],
                                 mfu_flops_per_token=model_info["flops_per_token_mfu"], peak=peak,
                                 noise_ema=noise_ema, noise_skip=config.resolved_noise_scale_skip_steps,
                                 policy=policy, metrics_log=metrics_log, tb=tb, progress=progress, lead=lead)
    saver = hooks.Checkpointing(ckpt, batch_tokens=batch_tokens, previous=record, wall_start=wall_start,
                                evaluator=evaluator, window=window, policy=policy, logs=(metrics_log, eval_log),
                                tb=tb, lead=lead, last_saved=latest, after_checkpoint=after_checkpoint)

    # --- the loop ---
    status = "finished"
    step = start_step
    # A run restored at its early-stopping step (summary lost in a crash) trains no further.
    batches = run.data.train.iterate(start_step, 0 if evaluator.stopped else config.num_steps - start_step)
    try:
        with hooks.Preemption() as preemption:
            for data_step, rows in batches:
                step = data_step + 1
                batch = partitioning.global_batch(rows, run.batch_sharding, config.batch_size)
                state, step_metrics = train_step(state, batch)
                preemption.poll(step)
                window.add(step, step_metrics)
                if step == start_step + 1:
                    window.flush()  # the first step of a session pays one-off costs: time from the next one
                    window.restart_timing()
                elif len(window.pending) > config.log_every:
                    # No host sync per step: the metrics of up to log_every steps wait on the device and are
                    # read together (in step order, so the noise-scale EMA and the logs are unchanged), all
                    # but the newest step, which still runs. A NaN/Inf is seen at the latest at the next log,
                    # eval or checkpoint boundary (flush), before any checkpoint is written.
                    window.process_all_but_newest()
                at_log = step % config.log_every == 0 or step == config.num_steps
                at_eval = step % config.eval_every == 0 or step == config.num_steps
                at_ckpt = step % config.checkpoint_every == 0 or step == config.num_steps
                if at_log or at_eval or at_ckpt or preemption.requested:
                    window.flush()
                if at_log and window.last is not None:
                    window.log(step)
                    progress.update(step, window.last_loss, window.last_rate)
                elif progress.bar is not None and step % max(1, config.log_every // 10 or 1) == 0:
                    progress.update(step, window.last_loss, window.last_rate)
                t0 = time.perf_counter()
                if at_eval:
                    evaluator(step, state.params)
                if at_ckpt or preemption.requested or evaluator.stopped:
                    saver.save(step, state)
                window.exclude(time.perf_counter() - t0)
                if evaluator.stopped:   # early stopping (TrainConfig.early_stopping_patience): this eval was final
                    progress.write(f"early stopping at step {step} of {config.num_steps}")
                    break
                if preemption.requested and step < config.num_steps:
                    status = "preempted"
                    break
            window.flush()
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

    end_step = step if evaluator.stopped else config.num_steps
    # A run restored at its last step (summary lost in a crash) still needs its final eval.
    if not evaluator.done_at(end_step):
        evaluator(end_step, state.params)
    if saver.last_saved != end_step:
        saver.save(end_step, state)
        ckpt.wait()
    ckpt.close()

    steps_timed = end_step - start_step - 1  # the first step of each session is not timed
    if latest is not None or steps_timed <= 0:
        tokens_per_sec = window.last_rate
    else:
        tokens_per_sec = (steps_timed * batch_tokens / window.session_train_time if window.session_train_time > 0
                          else float("nan"))
    summary = run_summary(run, model_info, steps=end_step, early_stopped=evaluator.stopped,
                          last_eval=evaluator.last, final_train_loss=window.last_loss,
                          skipped_steps=policy.total, best_eval_loss=evaluator.best_loss,
                          best_eval_step=evaluator.best_step, noise_ema=noise_ema,
                          noise_skip=config.resolved_noise_scale_skip_steps, tokens_per_sec=tokens_per_sec,
                          peak=peak, peak_source=peak_source, compile_time=compile_time,
                          train_time=saver.train_time(), wall_time=saver.wall_time())
    if lead:
        metrics_log.close()
        eval_log.close()
        tb.close()
        fileio.write_json_atomic(os.path.join(workdir, "summary.json"), summary, sort_keys=True)
    return summary
