"""The run record: what a finished run writes to summary.json, what the sweep collects into runs.csv, and
the one check of whether a run is finished. The trainer writes it (`summary_record`), the sweep collects it
(`runs_csv_row`, `RUNS_CSV_COLUMNS`), the report and experiments.reproduce read it (`read_summary`,
`is_finished`, `merge_summary`): each through this module.

summary.json (one JSON object, keys sorted; NaN/inf written as null):
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

from scaling.core import fileio

# --- summary.json -------------------------------------------------------------------------------------
# name -> meaning. The trainer's summary must have exactly these keys (summary_record checks it).
SUMMARY_FIELDS: dict[str, str] = {
    "status": "'finished' (summary.json is written only when a run reaches its last step)",
    # the model (scaling.train.trainer.model_summary: the same fields the sweep plans with)
    "model_family": "transformer | lstm | recurrent_transformer",
    "model": "the model config as a dict",
    "n_ctx": "context length (tokens)",
    "vocab_size": "vocabulary size",
    "n_params_nonembedding": "Kaplan N (formula: block weight matrices, no biases/LayerNorm)",
    "n_params_nonembedding_exact": "non-embedding parameters counted in the tree (biases, LayerNorm included)",
    "n_params_embedding": "embedding parameters counted in the tree",
    "n_params_total": "all parameters counted in the tree",
    "n_params_kaplan": "N in the kaplan convention",
    "n_params_chinchilla": "N in the chinchilla convention (all parameters)",
    "flops_per_token": "Kaplan training FLOPs per token (6N, context term dropped)",
    "flops_per_token_with_context": "6N + 6·n_layer·n_ctx·d_attn",
    "flops_per_token_chinchilla": "Hoffmann App. F op count ×3",
    "flops_per_token_mfu": "every matmul (6N + attention + unembedding), the MFU numerator",
    "flops_convention": "the convention of flops_per_token ('kaplan')",
    # the run
    "steps": "optimizer steps", "tokens": "training tokens = steps × batch_tokens",
    "early_stopped": "true when TrainConfig.early_stopping_patience ended the run before num_steps",
    "batch_size": "sequences per step", "batch_tokens": "tokens per step", "microbatches": "K of the step",
    "b_simple": "B_simple at the end (tokens; None without the noise estimator)",
    "b_simple_sequences": "B_simple in sequences", "noise_scale_skip_steps": "steps before the EMA starts",
    "noise_scale_ema_tokens": "EMA decay length in tokens",
    "compute_flops": "flops_per_token × tokens", "compute_pf_days": "compute_flops in PF-days",
    "compute_pf_days_with_context": "with the context term",
    "final_eval_loss": "eval loss (nats/token) at the last step", "final_eval_bpb": "bits per byte at the last step",
    "final_train_loss": "last logged train loss", "skipped_steps": "non-finite steps skipped (nonfinite='skip')",
    "best_eval_loss": "lowest eval loss of the run (early stopping)", "best_eval_step": "its step",
    "final_extra_eval": "{eval_loss_<name>, eval_bpb_<name>} of the extra eval distributions",
    "tokens_per_sec": "training throughput", "mfu": "model FLOPs utilisation",
    "mfu_flops_per_token": "= flops_per_token_mfu", "mfu_peak_flops": "peak FLOP/s of the devices",
    "mfu_peak_source": "where the peak came from",
    "optimizer": "optimizer name", "learning_rate": "peak learning rate",
    "learning_rate_source": "TrainConfig.learning_rate or Kaplan eq. D.1", "schedule": "schedule name",
    "warmup_steps": "warmup steps", "seed": "TrainConfig.seed",
    "mesh": "{axis: size}", "n_devices": "devices", "device_kind": "device kind", "platform": "cpu | gpu | tpu",
    "compile_time_sec": "step compile time", "train_time_sec": "time in training steps (all sessions)",
    "wall_time_sec": "wall time (all sessions)", "data": "the data manifest", "epochs": "epochs over the train windows",
}
__doc__ += "".join(f"\n- ``{k}``: {v}" for k, v in SUMMARY_FIELDS.items())


def summary_record(values: Mapping[str, Any]) -> dict:
    """``values`` as a summary.json record; an error names any key missing from or unknown to SUMMARY_FIELDS."""
    missing, unknown = sorted(set(SUMMARY_FIELDS) - set(values)), sorted(set(values) - set(SUMMARY_FIELDS))
    if missing or unknown:
        raise KeyError(f"summary record does not match scaling.core.records.SUMMARY_FIELDS: missing {missing}, "
                       f"unknown {unknown}")
    return dict(values)


def read_summary(workdir: str) -> dict | None:
    """The run's summary.json as a dict, None when missing, unreadable or not an object."""
    return fileio.read_json_object(os.path.join(workdir, "summary.json"))


def is_finished(summary: Mapping[str, Any] | None, num_steps: int | None = None) -> bool:
    """Whether a summary.json is a finished run (of at least ``num_steps`` steps when given).

    The one check the trainer (skip a finished workdir), the sweep (runs.csv status) and
    experiments.reproduce use.
    """
    if not summary:
        return False
    if summary.get("status", "finished") != "finished":
        return False
    steps = summary.get("steps")
    # An early-stopped run is finished whatever num_steps asks: it stopped because its eval loss stopped improving.
    if num_steps is not None and not summary.get("early_stopped") and not (
            isinstance(steps, (int, float)) and steps >= num_steps):
        return False
    return summary.get("final_eval_loss") is not None


# --- runs.csv -----------------------------------------------------------------------------------------
# One row per run of a sweep (in sweep order): the head, the summary columns, the tail, any other
# final_eval_loss_<name> columns (sorted), then one column per swept binding.
RUNS_CSV_HEAD = ("run", "group", "status", "workdir", "error", "model", "model_family")
RUNS_CSV_SUMMARY = ("n_params_nonembedding", "n_params_total", "n_params_embedding", "flops_per_token", "tokens",
                    "steps", "batch_size", "batch_tokens", "compute_pf_days", "final_eval_loss", "best_eval_loss",
                    "tokens_per_sec", "mfu")
RUNS_CSV_TAIL = ("n_ctx", "learning_rate", "data_budget_tokens", "b_simple", "final_eval_loss_wiki_mini", "epochs",
                 "best_eval_step", "final_eval_bpb", "wall_time_sec")
# summary (or planned) keys copied as they are into the row
_COPIED = RUNS_CSV_SUMMARY + ("n_ctx", "learning_rate", "b_simple", "epochs", "best_eval_step", "final_eval_bpb",
                              "wall_time_sec")


def runs_csv_row(summary: Mapping[str, Any] | None, planned: Mapping[str, Any]) -> dict:
    """The summary columns of a run's runs.csv row: from its summary when finished, else what was planned."""
    source = summary or planned
    row = {column: source.get(column) for column in _COPIED}
    data = (summary or {}).get("data") or {}
    row["data_budget_tokens"] = data.get("data_budget_tokens", planned.get("data_budget_tokens"))
    extras = (summary or {}).get("final_extra_eval") or {}
    row["final_eval_loss_wiki_mini"] = extras.get("eval_loss_wiki_mini")
    for key, value in extras.items():
        if key.startswith("eval_loss_"):
            row[f"final_{key}"] = value
    return row


def runs_csv_columns(rows: list[dict], knob_columns) -> list[str]:
    extra = sorted({k for r in rows for k in r} - set(RUNS_CSV_HEAD) - set(RUNS_CSV_SUMMARY) - set(RUNS_CSV_TAIL)
                   - set(knob_columns))
    return [*RUNS_CSV_HEAD, *RUNS_CSV_SUMMARY, *RUNS_CSV_TAIL, *extra, *knob_columns]


def csv_value(value):
    """A runs.csv cell: None and non-finite floats empty, containers as JSON."""
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(fileio.json_safe(value))
    return value


def merge_summary(row: dict, summary: Mapping[str, Any] | None) -> dict:
    """A parsed runs.csv row completed from its summary.json (the report's reading): the CSV wins, the
    summary's numbers fill what it lacks, the wiki-mini transfer loss from final_extra_eval, and a row
    without a status gets the summary's."""
    s = summary or {}
    for k, v in s.items():
        if row.get(k) is None and isinstance(v, (int, float)) and not isinstance(v, bool):
            row[k] = float(v)
    if row.get("final_eval_loss_wiki_mini") is None:
        extra = (s.get("final_extra_eval") or {}).get("eval_loss_wiki_mini")
        if isinstance(extra, (int, float)):
            row["final_eval_loss_wiki_mini"] = float(extra)
    if not row.get("status"):
        row["status"] = s.get("status") or ("finished" if s else "pending")
    return row
