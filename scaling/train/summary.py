"""The run's written record: summary.json (the model fields: models.accounting.model_summary + the exact tree
counts; the finished run's record: run_summary), config.gin, and whether a workdir already holds a finished run
(scaling.core.records).
"""
from __future__ import annotations

import dataclasses
import os

import jax

from models import accounting
from scaling.core import fileio, formulas, records
from scaling.train import mfu as mfu_lib
from scaling.train.config import TrainConfig
from scaling.train.state import TrainSetup


def model_summary(run: TrainSetup) -> dict:
    """accounting.model_summary (the config's N and FLOPs, as the sweep plans them) + the exact tree counts."""
    return {**accounting.model_summary(run.model_config),
            "n_params_nonembedding_exact": run.param_counts["nonembedding"],
            "n_params_embedding": run.param_counts["embedding"],
            "n_params_total": run.param_counts["total"]}


def write_config(workdir: str, run: TrainSetup, operative: str | None) -> None:
    """config.gin: the operative gin text the entry point parsed, else the resolved TrainConfig values."""
    if jax.process_index() != 0:
        return
    if not (operative or "").strip():
        operative = "# TrainConfig built in Python (no gin); resolved values:\n" + "\n".join(
            f"# {k} = {v!r}" for k, v in dataclasses.asdict(run.config).items())
    fileio.write_text_atomic(os.path.join(workdir, "config.gin"), operative)


def finished_summary(workdir: str, config: TrainConfig) -> dict | None:
    """The summary of a run in ``workdir`` that already reached config.num_steps, else None."""
    summary = records.read_summary(workdir)
    return summary if records.is_finished(summary, config.num_steps) else None


def run_summary(run: TrainSetup, model_info: dict, *, steps: int, early_stopped: bool, last_eval: dict,
                final_train_loss: float, skipped_steps: int,
                best_eval_loss: float, best_eval_step: int | None, noise_ema, noise_skip: int, tokens_per_sec: float,
                peak, peak_source, compile_time: float, train_time: float, wall_time: float) -> dict:
    """summary.json of a finished run (fields: scaling.core.records.SUMMARY_FIELDS); ``steps`` is where it ended
    (num_steps, or the early-stopping step)."""
    config = run.config
    batch_tokens = config.batch_size * run.model_config.n_ctx
    flops_per_token, mfu_flops_per_token = model_info["flops_per_token"], model_info["flops_per_token_mfu"]
    tokens = steps * batch_tokens
    return records.summary_record({
        "status": "finished",
        **model_info,
        "steps": steps,
        "early_stopped": bool(early_stopped),
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
        "final_train_loss": final_train_loss,
        "skipped_steps": skipped_steps,
        "best_eval_loss": best_eval_loss,
        "best_eval_step": best_eval_step,
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
        "wall_time_sec": wall_time,
        "data": getattr(run.data, "manifest", None),
        "epochs": steps * config.batch_size / run.data.train.windows_per_epoch
        if getattr(run.data.train, "windows_per_epoch", None) else None,
    })
