"""Sweeps: expand a gin sweep file into named training runs, run them as subprocesses, collect runs.csv.

    python -m experiments.sweep --gin_file=gin/sweeps/smoke.gin --root=/tmp/smoke_sweep

Sweep file format (gin; only ``Sweep.*`` bindings)::

    Sweep.name = 'smoke'
    Sweep.base_gin_files = ['gin/data/embedded.gin', 'gin/optim/adam.gin']   # every run, after its model file
    Sweep.base_gin_params = {'TrainConfig.num_steps': 40}                     # every run
    Sweep.blocks = [
        {'group': 'ladder',                         # one of GROUPS (the runs.csv `group` column)
         'models': ['cpu_12k', 'cpu_55k'],          # gin/models/<name>.gin (or a path ending in .gin)
         'grid': {'TrainConfig.seed': [0, 1]},      # binding -> values; the cartesian product of all keys
         'params': {'TrainConfig.eval_every': 20},  # optional: fixed bindings of this block
         'gin_files': ['gin/optim/constant.gin'],   # optional: extra gin files of this block
         'tag': 'v2'},                              # optional: appended to the run names of this block
    ]

- A run's gin files are [its model file] + base_gin_files + the block's gin_files; its bindings are
  base_gin_params, then the block's params, then its grid point (later ones win).
- ``params`` / ``base_gin_params`` are a dict binding -> Python value (written as ``binding = repr(value)``)
  or a list of raw gin lines (for references such as ``"TrainConfig.model = @LSTMConfig()"``).
- A grid key naming several bindings separated by commas takes a list of tuples, and those bindings
  vary together (zipped), e.g. ``'TrainConfig.batch_size,TrainConfig.num_steps': [(8, 400), (16, 200)]``
  keeps tokens fixed along a batch-size scan. ``grid`` may be omitted (one run per model); a key with an
  empty list of values is an error (it would produce no runs).

Run names encode the model, the data budget D (tokens; ``Dall`` = the whole corpus), the batch size B
(sequences) and every other swept binding, e.g. ``cpu_55k-D262k-B16`` or ``cpu_12k-Dall-B8-S400``:
short, filesystem-safe, stable (a function of the sweep file only) and checked unique. Every run is
validated at expansion time by parsing its gin and building its TrainConfig, so a bad binding, an
unknown model file or a batch size that the microbatch count does not divide fails before any training.

Execution (``run_sweep``): each run is its own ``python -m experiments.train`` subprocess (gin is
global state, and a crashing run cannot take the launcher down) writing ``ROOT/runs/<name>/``, with its
output in ``ROOT/runs/<name>/launcher.log``. Runs whose summary.json reached their steps are skipped;
interrupted ones resume (the trainer restores its last checkpoint); a failed run is recorded and the rest
continue; a rerun retries the failed and unfinished runs. ``ROOT/.lock`` (flock) admits one launcher per
root. After every run ``ROOT/runs.csv`` is rewritten from the run directories (``collect_runs_csv``),
so it is always consistent and never holds duplicate rows. ``ROOT/sweep.json`` holds the expansion:
``{name, sweep_file, repo, swept_bindings, runs: [{name, group, model, gin_files, gin_params, knobs,
planned}]}``. Several runs go at once with ``workers`` > 1 (default: one per core, at most one per
2 GiB of memory), each pinned to its share of the cores (os.sched_setaffinity, which also sizes XLA's
thread pool), largest first. ``launcher`` (e.g. ``python -m experiments.launch --num_processes=2 --``)
prefixes every run's command, also in ``--dry_run`` output (``shell_command``).

Python API (experiments.reproduce): ``run_sweep(sweep_file, root, only=..., exclude=...)`` ->
SweepResult; ``expand(sweep_file)`` -> (Sweep, [Run]) with each run's planned N, tokens and C;
``collect_runs_csv(root)``.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import fcntl
import io
import itertools
import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import tokenize
from concurrent import futures
from typing import Any, Callable, Sequence

import gin

from scaling import fileio

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUPS = ("ladder", "data", "batch_scan", "lstm", "recurrent", "holdout")
BLOCK_KEYS = ("group", "models", "grid", "params", "gin_files", "tag")
BATCH_BINDING = "TrainConfig.batch_size"
DATA_BINDING = "DataConfig.data_budget_tokens"

# Short names of common knobs in run names; any other binding uses its field name.
KNOB_SHORT_NAMES = {
    "TrainConfig.num_steps": "S", "TrainConfig.learning_rate": "lr", "TrainConfig.seed": "seed",
    "TrainConfig.microbatches": "K", "TrainConfig.warmup_steps": "wu", "TrainConfig.schedule": "",
    "TrainConfig.eval_every": "ev",
    "TrainConfig.optimizer": "", "TransformerConfig.n_layer": "L", "TransformerConfig.d_model": "d",
    "TransformerConfig.n_ctx": "ctx", "DataConfig.subset_seed": "sub",
}

# runs.csv: the contract columns (/tmp/contracts.md), then extras, then one column per swept binding.
SUMMARY_COLUMNS = ("n_params_nonembedding", "n_params_total", "n_params_embedding", "flops_per_token", "tokens",
                   "steps", "batch_size", "batch_tokens", "compute_pf_days", "final_eval_loss", "best_eval_loss",
                   "tokens_per_sec", "mfu")
CSV_HEAD = ("run", "group", "status", "workdir", "error", "model", "model_family")
CSV_TAIL = ("n_ctx", "learning_rate", "data_budget_tokens", "b_simple", "final_eval_loss_wiki_mini", "epochs",
            "best_eval_step", "final_eval_bpb", "wall_time_sec")


class SweepError(ValueError):
    """A sweep file that cannot be expanded; the message names the file, the problem and the fix."""


class LockedError(RuntimeError):
    """Another launcher holds ROOT/.lock."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Sweep:
    """The contents of a sweep file (see the module docstring)."""
    name: str = gin.REQUIRED
    blocks: list = gin.REQUIRED
    base_gin_files: list = dataclasses.field(default_factory=list)
    base_gin_params: Any = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Run:
    """One expanded training run."""
    name: str
    group: str
    model: str                      # gin model name, e.g. cpu_55k
    gin_files: list[str]            # relative to the repository root (or absolute)
    gin_params: list[str]
    knobs: dict[str, Any]           # swept binding -> value (resolved for every binding swept anywhere)
    planned: dict[str, Any]         # known before training: N, FLOPs/token, steps, batch, D, ...

    def record(self) -> dict:
        return dataclasses.asdict(self)


# --- expansion ---------------------------------------------------------------------------------------

def load_sweep(sweep_file: str) -> Sweep:
    """Parses a sweep gin file into a Sweep (gin is cleared before and after)."""
    if not os.path.exists(sweep_file):
        raise SweepError(f"sweep file {sweep_file!r} not found (paths are relative to the repository root, "
                         f"e.g. gin/sweeps/smoke.gin)")
    gin.clear_config()
    try:
        gin.parse_config_file(sweep_file)
        sweep = Sweep()
    except Exception as e:  # pylint: disable=broad-except  (any parse failure is the sweep file's)
        raise SweepError(f"sweep file {sweep_file}: cannot parse it: {type(e).__name__}: {e}; a sweep file binds "
                         f"only Sweep.name, Sweep.blocks, Sweep.base_gin_files and Sweep.base_gin_params "
                         f"(see scaling/sweep.py)") from None
    finally:
        gin.clear_config()
    return sweep


def _bindings(value, where: str, sweep_file: str) -> list[str]:
    """A params dict (binding -> Python value) or list of raw gin lines -> gin lines."""
    if value is None:
        return []
    if isinstance(value, dict):
        for key in value:
            _check_binding_name(key, where, sweep_file)
        return [f"{key}={_gin_literal(v)}" for key, v in value.items()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        for line in value:
            try:   # unbalanced brackets/quotes would otherwise surface as an anonymous tokenizer error
                list(tokenize.generate_tokens(io.StringIO(line).readline))
            except (tokenize.TokenError, SyntaxError) as e:
                raise SweepError(f"sweep file {sweep_file}: {where}: gin line {line!r} does not parse ({e}); "
                                 f"write it as 'Class.field = value'") from None
        return list(value)
    raise SweepError(f"sweep file {sweep_file}: {where} must be a dict {{'Class.field': value}} or a list of gin "
                     f"lines ('Class.field = value'), got {value!r}")


def _gin_literal(value) -> str:
    if isinstance(value, str) and value.startswith(("@", "%")):
        return value   # a gin reference or macro, e.g. '@LSTMConfig()'
    return repr(value)


def _check_binding_name(key, where: str, sweep_file: str) -> None:
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][\w.]*\.[A-Za-z_]\w*", key):
        raise SweepError(f"sweep file {sweep_file}: {where}: {key!r} is not a gin binding name; write it as "
                         f"'Class.field', e.g. 'TrainConfig.batch_size'")


def _model_file(model: str, where: str, sweep_file: str) -> tuple[str, str]:
    """(model name, gin path) for a model entry: a gin/models/ name or a path ending in .gin."""
    if not isinstance(model, str) or not model:
        raise SweepError(f"sweep file {sweep_file}: {where}: model entries are names of gin/models/*.gin files, "
                         f"got {model!r}")
    if model.endswith(".gin"):
        path = model if os.path.isabs(model) else os.path.join(REPO_ROOT, model)
        if not os.path.exists(path) and os.path.exists(os.path.abspath(model)):
            path = os.path.abspath(model)
        if not os.path.exists(path):
            raise SweepError(f"sweep file {sweep_file}: {where}: model file {model!r} not found")
        name = os.path.splitext(os.path.basename(model))[0]
        return name, _repo_relative(path)
    path = os.path.join(REPO_ROOT, "gin", "models", f"{model}.gin")
    if not os.path.exists(path):
        known = sorted(f[:-4] for f in os.listdir(os.path.join(REPO_ROOT, "gin", "models"))
                       if f.endswith(".gin") and not f.endswith("base.gin"))
        raise SweepError(f"sweep file {sweep_file}: {where}: unknown model {model!r} (no gin/models/{model}.gin); "
                         f"known models: {', '.join(known)}")
    return model, _repo_relative(path)


def _repo_relative(path: str) -> str:
    path = os.path.abspath(path)
    rel = os.path.relpath(path, REPO_ROOT)
    return path if rel.startswith("..") else rel


def _gin_file(path: str, where: str, sweep_file: str) -> str:
    full = path if os.path.isabs(path) else os.path.join(REPO_ROOT, path)
    if not os.path.exists(full):
        raise SweepError(f"sweep file {sweep_file}: {where}: gin file {path!r} not found (paths are relative "
                         f"to the repository root)")
    return _repo_relative(full)


def _grid_points(grid, where: str, sweep_file: str) -> list[list[tuple[str, Any]]]:
    """The cartesian product of the grid keys; a comma-joined key zips its bindings."""
    if grid is None:
        grid = {}
    if not isinstance(grid, dict):
        raise SweepError(f"sweep file {sweep_file}: {where}: 'grid' must be a dict binding -> list of values, "
                         f"got {grid!r}")
    axes = []
    for key, values in grid.items():
        names = [k.strip() for k in key.split(",")] if isinstance(key, str) else [key]
        for name in names:
            _check_binding_name(name, f"{where} grid", sweep_file)
        if not isinstance(values, (list, tuple)) or not values:
            raise SweepError(f"sweep file {sweep_file}: {where}: grid[{key!r}] is empty or not a list ({values!r}); "
                             f"give at least one value, e.g. {{'{names[0]}': [1, 2]}}, or remove the key")
        axis = []
        for value in values:
            if len(names) > 1:
                if not isinstance(value, (list, tuple)) or len(value) != len(names):
                    raise SweepError(f"sweep file {sweep_file}: {where}: grid[{key!r}] zips {len(names)} bindings, "
                                     f"so each value must be a tuple of {len(names)}, got {value!r}")
                axis.append(list(zip(names, value)))
            else:
                axis.append([(names[0], value)])
        axes.append(axis)
    return [sum(point, []) for point in itertools.product(*axes)]


def compact_number(value) -> str:
    """Short filesystem-safe numbers in the model-name style: 262144 -> 262k, 2211840 -> 2m21, 0.001 -> 0.001."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        if abs(value) < 1000:
            return str(value)
        for suffix, scale in (("g", 10 ** 9), ("m", 10 ** 6), ("k", 10 ** 3)):
            if abs(value) >= scale:
                digits = f"{value / scale:.3g}"
                if "e" in digits:
                    return f"{value:.3g}".replace("+", "")
                return digits.replace(".", suffix) if "." in digits else digits + suffix
    if isinstance(value, float):
        return f"{value:.3g}".replace("+", "")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(value)).strip("_") or "none"


def run_name(model: str, data_budget, batch_size, knobs: Sequence[tuple[str, Any]], tag: str | None) -> str:
    parts = [model, "Dall" if data_budget is None else f"D{compact_number(data_budget)}",
             f"B{compact_number(batch_size)}"]
    for binding, value in knobs:
        if binding in (BATCH_BINDING, DATA_BINDING):
            continue
        short = KNOB_SHORT_NAMES.get(binding, binding.rsplit(".", 1)[-1])
        parts.append(f"{short}{compact_number(value)}")
    if tag:
        parts.append(compact_number(tag))
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts))


def _resolved(binding: str, config) -> Any:
    """The value a parsed gin config gives ``binding`` (bound, or the class default) for the knob columns."""
    try:
        value = gin.query_parameter(binding)
        return value if isinstance(value, (int, float, str, bool, type(None), list, tuple)) else str(value)
    except (ValueError, KeyError):
        pass
    cls, _, field = binding.rpartition(".")
    objects = {"TrainConfig": config, "DataConfig": config.data, "MeshConfig": config.mesh,
               type(config.model).__name__: config.model}
    obj = objects.get(cls.rsplit(".", 1)[-1])
    return getattr(obj, field, None) if obj is not None else None


def _plan(config) -> dict:
    """What is known of a run before it trains (runs.csv fills these for pending/failed runs)."""
    from models import accounting  # pylint: disable=import-outside-toplevel
    from scaling.train import optimizers  # pylint: disable=import-outside-toplevel
    model = config.model
    n = accounting.nonembedding_params(model)
    fpt = accounting.flops_per_token(model, convention="kaplan", mode="train", include_context=False).flops
    data = config.data
    tokens = config.num_steps * config.batch_size * model.n_ctx
    return {"model_family": model.family, "n_params_nonembedding": n, "flops_per_token": fpt,
            "n_ctx": model.n_ctx, "steps": config.num_steps, "eval_every": config.eval_every,
            "batch_size": config.batch_size,
            "batch_tokens": config.batch_size * model.n_ctx, "tokens": tokens,
            "compute_pf_days": fpt * tokens / accounting.PF_DAY,
            "data_budget_tokens": getattr(data, "data_budget_tokens", None),
            "learning_rate": config.learning_rate or optimizers.kaplan_learning_rate(n)}


def expand(sweep_file: str) -> tuple[Sweep, list[Run]]:
    """Expands and validates a sweep file; raises SweepError naming the file, the run and the fix."""
    from scaling import configurables  # pylint: disable=import-outside-toplevel  (registers the configs)
    from scaling.train.config import TrainConfig  # pylint: disable=import-outside-toplevel

    sweep = load_sweep(sweep_file)
    if not isinstance(sweep.name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", sweep.name):
        raise SweepError(f"sweep file {sweep_file}: Sweep.name must be a short name of letters, digits, '._-', "
                         f"got {sweep.name!r}")
    if not isinstance(sweep.blocks, (list, tuple)) or not sweep.blocks:
        raise SweepError(f"sweep file {sweep_file}: Sweep.blocks must be a non-empty list of blocks "
                         f"{{'group': ..., 'models': [...], 'grid': {{...}}}}")
    base_files = [_gin_file(f, "Sweep.base_gin_files", sweep_file) for f in sweep.base_gin_files]
    base_params = _bindings(sweep.base_gin_params, "Sweep.base_gin_params", sweep_file)

    pending = []   # (block index, group, model, files, params, knob items, tag)
    swept: list[str] = []
    for index, block in enumerate(sweep.blocks):
        where = f"block {index}"
        if not isinstance(block, dict):
            raise SweepError(f"sweep file {sweep_file}: {where} must be a dict with keys {BLOCK_KEYS}, got {block!r}")
        unknown = sorted(set(block) - set(BLOCK_KEYS))
        if unknown:
            raise SweepError(f"sweep file {sweep_file}: {where}: unknown key(s) {unknown}; a block has "
                             f"{', '.join(BLOCK_KEYS)}")
        group = block.get("group")
        where = f"block {index} (group {group!r})"
        if group not in GROUPS:
            raise SweepError(f"sweep file {sweep_file}: {where}: unknown group {group!r}; use one of "
                             f"{', '.join(GROUPS)}")
        models = block.get("models")
        if not isinstance(models, (list, tuple)) or not models:
            raise SweepError(f"sweep file {sweep_file}: {where}: 'models' must be a non-empty list of "
                             f"gin/models/ names, e.g. ['cpu_12k', 'cpu_55k']")
        files = [_gin_file(f, f"{where} gin_files", sweep_file) for f in block.get("gin_files") or []]
        params = _bindings(block.get("params"), f"{where} params", sweep_file)
        points = _grid_points(block.get("grid"), where, sweep_file)
        for point in points:
            for binding, _ in point:
                if binding not in swept:
                    swept.append(binding)
        for model in models:
            model_name, model_path = _model_file(model, where, sweep_file)
            for point in points:
                pending.append((index, group, model_name, [model_path, *base_files, *files],
                                [*base_params, *params, *(f"{b}={_gin_literal(v)}" for b, v in point)],
                                point, block.get("tag")))

    runs: list[Run] = []
    origin: dict[str, int] = {}
    try:
        for index, group, model, files, params, point, tag in pending:
            label = f"{model} {dict(point)}" if point else model
            try:
                configurables.parse_gin([os.path.join(REPO_ROOT, f) for f in files], params)
                config = TrainConfig()
                knobs = {b: _resolved(b, config) for b in swept}
                plan = _plan(config)
            except Exception as e:  # pylint: disable=broad-except  (gin raises many kinds; all are the file's)
                raise SweepError(f"sweep file {sweep_file}: block {index} (group {group!r}), run {label}: "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; fix that binding "
                                 f"or value in the sweep file") from None
            name = run_name(model, plan["data_budget_tokens"], plan["batch_size"], point, tag)
            if name in origin:
                raise SweepError(f"sweep file {sweep_file}: run name {name!r} is produced twice (blocks "
                                 f"{origin[name]} and {index}); give one of the blocks a 'tag', or make their "
                                 f"models or swept bindings differ")
            origin[name] = index
            runs.append(Run(name=name, group=group, model=model, gin_files=files, gin_params=params,
                            knobs=knobs, planned=plan))
    finally:
        gin.clear_config()
    return sweep, runs


def select(runs: Sequence[Run], only: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[Run]:
    """The runs of the groups in ``only`` (all if empty) minus those in ``exclude``."""
    for group in [*only, *exclude]:
        if group not in GROUPS:
            raise SweepError(f"unknown group {group!r} in --only/--exclude_group; groups are {', '.join(GROUPS)}")
    return [r for r in runs if (not only or r.group in only) and r.group not in exclude]


# --- commands ----------------------------------------------------------------------------------------

def train_command(run: Run, root: str, launcher: str | None = None, python: str | None = None) -> list[str]:
    """argv of one run: [launcher ...] python -m experiments.train --gin_file=... --gin_param=... --workdir=..."""
    cmd = [python or sys.executable, "-m", "experiments.train"]
    cmd += [f"--gin_file={f}" for f in run.gin_files]
    cmd += [f"--gin_param={p}" for p in run.gin_params]
    cmd.append(f"--workdir={os.path.join(os.path.abspath(root), 'runs', run.name)}")
    if not launcher:
        return cmd
    prefix = shlex.split(launcher)
    if prefix and prefix[0] in ("python", "python3"):
        prefix[0] = cmd[0]   # the launcher runs in this interpreter (the project's venv), like the run itself
    return [*prefix, *cmd]


def shell_command(run: Run, root: str, launcher: str | None = None) -> str:
    """One self-contained shell line (cd to the repository, exact quoted flags) for any scheduler."""
    return f"cd {shlex.quote(REPO_ROOT)} && {shlex.join(train_command(run, root, launcher))}"


# --- run state and runs.csv --------------------------------------------------------------------------


def run_dir(root: str, name: str) -> str:
    return os.path.join(root, "runs", name)


def run_status(root: str, run: dict) -> tuple[str, dict | None, str]:
    """(finished|failed|pending, summary or None, error) of one sweep.json run record, from its directory."""
    workdir = run_dir(root, run["name"])
    summary = fileio.read_json_object(os.path.join(workdir, "summary.json"))
    if summary and summary.get("steps", -1) >= run["planned"]["steps"] and summary.get("final_eval_loss") is not None:
        return "finished", summary, ""
    state = fileio.read_json_object(os.path.join(workdir, "launcher.json")) or {}
    if state.get("status") == "failed":
        return "failed", None, state.get("error", "")
    return "pending", None, ""


def _row(root: str, run: dict) -> dict:
    status, summary, error = run_status(root, run)
    planned = run["planned"]
    row = {"run": run["name"], "group": run["group"], "status": status,
           "workdir": os.path.join("runs", run["name"]), "error": error, "model": run["model"],
           "model_family": planned.get("model_family")}
    source = summary or planned
    for column in SUMMARY_COLUMNS + ("n_ctx", "learning_rate", "b_simple", "epochs", "best_eval_step",
                                     "final_eval_bpb", "wall_time_sec"):
        row[column] = source.get(column)
    data = (summary or {}).get("data") or {}
    row["data_budget_tokens"] = data.get("data_budget_tokens", planned.get("data_budget_tokens"))
    extras = (summary or {}).get("final_extra_eval") or {}
    row["final_eval_loss_wiki_mini"] = extras.get("eval_loss_wiki_mini")
    for key, value in extras.items():
        if key.startswith("eval_loss_"):
            row[f"final_{key}"] = value
    row.update(run["knobs"])
    return row


def _csv_text(rows: list[dict], knob_columns: Sequence[str]) -> str:
    extra = sorted({k for r in rows for k in r} - set(CSV_HEAD) - set(SUMMARY_COLUMNS) - set(CSV_TAIL)
                   - set(knob_columns))
    columns = [*CSV_HEAD, *SUMMARY_COLUMNS, *CSV_TAIL, *extra, *knob_columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    return out.getvalue()


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(fileio.json_safe(value))
    return value


def collect_runs_csv(root: str) -> str:
    """Rewrites ROOT/runs.csv from ROOT/sweep.json and each run's directory; returns its path.

    One row per run of the sweep (in sweep order), status finished|failed|pending; finished rows take
    their numbers from summary.json, the others show what was planned.
    """
    sweep = fileio.read_json_object(os.path.join(root, "sweep.json"))
    if sweep is None:
        raise FileNotFoundError(f"{os.path.join(root, 'sweep.json')} not found: run `python -m experiments.sweep "
                                f"--gin_file=gin/sweeps/X.gin --root={root}` first")
    rows = [_row(root, run) for run in sweep["runs"]]
    path = os.path.join(root, "runs.csv")
    fileio.write_text_atomic(path, _csv_text(rows, sweep.get("swept_bindings", [])))
    return path


def write_sweep_json(root: str, sweep: Sweep, sweep_file: str, runs: Sequence[Run]) -> str:
    swept = list(runs[0].knobs) if runs else []
    path = os.path.join(root, "sweep.json")
    fileio.write_json_atomic(path, {"name": sweep.name, "sweep_file": _repo_relative(sweep_file),
                                    "repo": REPO_ROOT, "swept_bindings": swept,
                                    "runs": [r.record() for r in runs]})
    return path


# --- lock --------------------------------------------------------------------------------------------

class RootLock:
    """An exclusive flock on ROOT/.lock holding the launcher's pid and host.

    flock is released by the kernel when the holder dies, so a lock left by a killed launcher never
    blocks. The training subprocesses inherit the locked descriptor: the root stays locked until the
    last of them has exited (a killed launcher's runs get SIGTERM, checkpoint and exit).
    """

    def __init__(self, root: str):
        self.path = os.path.join(root, ".lock")
        self.fd: int | None = None

    def acquire(self) -> "RootLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(f"sweep root {os.path.dirname(self.path)} is in use by another launcher ({holder}); "
                              f"wait for it to finish or use another --root. If that launcher was killed, its "
                              f"training processes release the lock once they have checkpointed and exited "
                              f"(`fuser {self.path}` lists them).") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since "
                      f"{datetime.datetime.now().isoformat(timespec='seconds')}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# --- executor ----------------------------------------------------------------------------------------

def available_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def default_workers(cores_per_run: int = 1, gib_per_run: float = 2.0) -> int:
    """Runs at a time, sized to the machine: cores // cores_per_run, at most one per gib_per_run of
    memory, at least 1. One core per run is the default because small CPU models gain little from a
    second thread while a run's start-up (imports, data, compile) is mostly single-threaded."""
    workers = len(available_cores()) // max(1, cores_per_run)
    try:
        memory_gib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2 ** 30
        workers = min(workers, int(memory_gib // gib_per_run))
    except (ValueError, OSError, AttributeError):
        pass
    return max(1, workers)


def core_slots(workers: int) -> list[list[int] | None]:
    """Each worker's share of the cores (None = no pinning when there is one worker)."""
    cores = available_cores()
    if workers <= 1 or len(cores) < workers:
        return [None] * max(1, workers)
    share = len(cores) // workers
    return [cores[i * share:(i + 1) * share] for i in range(workers)]


def _child_setup(cores: list[int] | None) -> Callable[[], None]:
    # Runs start in their own session, so a Ctrl-C reaches only the launcher, which forwards SIGTERM
    # (the trainer checkpoints on SIGTERM) and starts no more runs.
    def setup():
        # Die with the launcher: a killed launcher must not leave runs writing into the root.
        try:
            import ctypes  # pylint: disable=import-outside-toplevel
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if cores:
            os.sched_setaffinity(0, cores)
    return setup


def _error_tail(log_path: str, lines: int = 4, limit: int = 600) -> str:
    """The last meaningful lines of a run's output (absl INFO/WARNING noise dropped)."""
    try:
        with open(log_path, errors="replace") as f:
            text = f.read()[-20000:]
    except OSError:
        return ""
    kept = [l.strip() for l in text.splitlines()
            if l.strip() and not re.match(r"^[IW]\d{4} |^WARNING: All log messages", l.strip())]
    return " | ".join(kept[-lines:])[-limit:]


@dataclasses.dataclass
class Outcome:
    run: Run
    status: str          # finished | failed | interrupted (signalled; resumes on the next launch)
    seconds: float = 0.0
    error: str = ""
    summary: dict | None = None
    cpu_seconds: float = 0.0     # user + system CPU time of the run's processes


def execute_run(run: Run, root: str, *, launcher: str | None = None, cores: list[int] | None = None,
                lock_fd: int | None = None, env: dict | None = None,
                register: Callable[[subprocess.Popen | None], None] = lambda p: None) -> Outcome:
    """Trains one run in a subprocess; records launcher.json (running -> finished|failed) and launcher.log."""
    workdir = run_dir(root, run.name)
    os.makedirs(workdir, exist_ok=True)
    state_path = os.path.join(workdir, "launcher.json")
    log_path = os.path.join(workdir, "launcher.log")
    cmd = train_command(run, root, launcher)
    started = time.time()
    state = {"status": "running", "pid": os.getpid(), "host": socket.gethostname(),
             "started": datetime.datetime.now().isoformat(timespec="seconds"), "command": shlex.join(cmd)}
    fileio.write_json_atomic(state_path, state)
    with open(log_path, "ab") as log:
        log.write(f"\n=== {state['started']} {shlex.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, preexec_fn=_child_setup(cores), start_new_session=True,
                                pass_fds=(lock_fd,) if lock_fd is not None else ())
        register(proc)
        try:
            # wait4 also gives the CPU time of the run (and of its waited-for children, e.g. a launcher's).
            _, wait_status, usage = os.wait4(proc.pid, 0)
            code = proc.returncode = os.waitstatus_to_exitcode(wait_status)
        finally:
            register(None)
    seconds = time.time() - started
    cpu_seconds = usage.ru_utime + usage.ru_stime
    summary = fileio.read_json_object(os.path.join(workdir, "summary.json"))
    finished = (code == 0 and summary is not None and summary.get("steps", -1) >= run.planned["steps"])
    if finished:
        status, error = "finished", ""
    elif code in (0, -signal.SIGTERM, -signal.SIGINT, 143, 130):
        status, error = "interrupted", ""   # preempted: it checkpointed; the next launch resumes it
    else:
        status, error = "failed", _error_tail(log_path) or f"exit status {code}"
    fileio.write_json_atomic(state_path, dict(state, status=status if status != "interrupted" else "pending",
                                              returncode=code, seconds=seconds, cpu_seconds=cpu_seconds,
                                              error=error))
    return Outcome(run, status, seconds, error, summary if finished else None, cpu_seconds)


class Progress:
    """Runs done/total, ETA and the current runs: a tqdm bar on a terminal, plain lines otherwise."""

    def __init__(self, todo: Sequence[Run], total: int, done: int, workers: int, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.done = total, done
        self.workers = max(1, workers)
        self.remaining = {r.name: _run_flops(r) for r in todo}
        self.timings: list[tuple[float, float]] = []   # (planned FLOPs, seconds) of runs finished now
        self.current: list[str] = []
        self.bar = None
        if self.stream.isatty():
            try:
                from tqdm import tqdm  # pylint: disable=import-outside-toplevel
                self.bar = tqdm(total=total, initial=done, unit="run", file=self.stream, dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def eta_seconds(self) -> float | None:
        """Remaining time if each run costs a fixed start-up a (imports, data, compile) plus b per
        planned training FLOP, with a and b fitted (non-negative least squares) to the runs finished in
        this launch; rough while few runs have finished."""
        if not self.timings:
            return None
        flops = [f for f, _ in self.timings]
        secs = [t for _, t in self.timings]
        a, b = sum(secs) / len(secs), 0.0
        if len(self.timings) >= 2 and max(flops) > min(flops):
            mf, ms = sum(flops) / len(flops), sum(secs) / len(secs)
            b = max(0.0, sum((f - mf) * (t - ms) for f, t in self.timings) / sum((f - mf) ** 2 for f in flops))
            a = max(0.0, ms - b * mf)
        serial = sum(a + b * f for f in self.remaining.values())
        return serial / min(self.workers, max(1, len(self.remaining)))

    def _status(self) -> str:
        eta = self.eta_seconds()
        return (f"{self.done}/{self.total} runs done, ETA {_duration(eta) if eta is not None else '?'}; "
                f"running {', '.join(self.current) or '-'}")

    def start(self, run: Run) -> None:
        self.current.append(run.name)
        if self.bar is not None:
            self.bar.set_postfix_str(f"ETA {_duration(self.eta_seconds())} | {', '.join(self.current)}", refresh=True)
        else:
            print(f"[sweep] {self._status()}", file=self.stream, flush=True)

    def finish(self, outcome: Outcome) -> None:
        run = outcome.run
        if run.name in self.current:
            self.current.remove(run.name)
        self.remaining.pop(run.name, None)
        if outcome.status == "finished":
            self.done += 1
            self.timings.append((_run_flops(run), outcome.seconds))
            s = outcome.summary or {}
            line = (f"finished {run.name} ({run.group}): eval loss {s.get('final_eval_loss', float('nan')):.4f}, "
                    f"{_duration(outcome.seconds)} wall, {outcome.cpu_seconds:.0f} s CPU")
        elif outcome.status == "failed":
            line = f"FAILED {run.name} ({run.group}) after {_duration(outcome.seconds)}: {outcome.error}"
        else:
            line = f"interrupted {run.name} ({run.group}); it resumes on the next launch"
        if self.bar is not None:
            self.bar.write(f"[sweep] {line}")
            if outcome.status == "finished":
                self.bar.update(1)
            self.bar.set_postfix_str(f"ETA {_duration(self.eta_seconds())} | {', '.join(self.current)}", refresh=True)
        else:
            print(f"[sweep] {line}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run_flops(run: Run) -> float:
    return float(run.planned["flops_per_token"]) * float(run.planned["tokens"])


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


@dataclasses.dataclass
class SweepResult:
    root: str
    runs: list[Run]                  # the selected runs
    outcomes: list[Outcome]          # of the runs launched now, in completion order
    counts: dict[str, int]           # status -> runs of the selected set, after the launch
    seconds: float
    runs_csv: str

    @property
    def ok(self) -> bool:
        return self.counts.get("failed", 0) == 0 and self.counts.get("pending", 0) == 0


def run_sweep(sweep_file: str, root: str, *, workers: int | None = None, cores_per_run: int = 1,
              launcher: str | None = None, only: Sequence[str] = (), exclude: Sequence[str] = (),
              retry_failed: bool = True, env: dict | None = None, stream=None,
              executor: Callable[..., list[Outcome]] | None = None) -> SweepResult:
    """Expands ``sweep_file`` and trains its (selected) runs under ``root``; returns what happened.

    Resumable and failure-tolerant (see the module docstring). ``workers`` runs at a time (default:
    cores // cores_per_run); with several workers each run is pinned to its share of the cores, which
    also sizes XLA's and the tokenizer's thread pools, and the runs start largest-first (planned FLOPs)
    so that no big run is left alone at the end; runs.csv keeps the sweep's order. A single remaining
    run is not pinned. ``env`` is the runs' environment (default: ours). ``executor(todo, root, workers,
    lock_fd, progress) -> [Outcome]`` trains the runs instead of the subprocess executor (e.g.
    experiments/sweep_inprocess.py, which trains them in long-lived processes).
    """
    stream = stream or sys.stderr
    root = os.path.abspath(root)
    sweep, runs = expand(sweep_file)
    selected = select(runs, only, exclude)
    if not selected:
        raise SweepError(f"sweep file {sweep_file}: no runs left after --only={list(only)} "
                         f"--exclude_group={list(exclude)}")
    workers = workers or default_workers(cores_per_run)
    start = time.time()
    with RootLock(root) as lock:
        write_sweep_json(root, sweep, sweep_file, runs)
        records = {r.name: r.record() for r in runs}
        todo, finished, failed_kept = [], 0, 0
        for run in selected:
            status, _, _ = run_status(root, records[run.name])
            if status == "finished":
                finished += 1
            elif status == "failed" and not retry_failed:
                failed_kept += 1
            else:
                todo.append(run)
        collect_runs_csv(root)
        done = len(selected) - len(todo)
        kept = f", {failed_kept} failed and not retried" if failed_kept else ""
        print(f"[sweep] {sweep.name}: {len(selected)} runs selected of {len(runs)}, {finished} already finished"
              f"{kept}, {len(todo)} to run with {min(workers, max(1, len(todo)))} worker(s); root {root}",
              file=stream, flush=True)
        if min(workers, len(todo)) > 1:
            todo.sort(key=_run_flops, reverse=True)
        progress = Progress(todo, len(selected), done, workers, stream)
        if executor is not None:
            outcomes = executor(todo, root, workers, lock.fd, progress)
        else:
            outcomes = _execute(todo, root, workers, launcher, lock.fd, env, progress)
        csv_path = collect_runs_csv(root)
    counts: dict[str, int] = {}
    for run in selected:
        status = run_status(root, records[run.name])[0]
        counts[status] = counts.get(status, 0) + 1
    seconds = time.time() - start
    print(f"[sweep] {sweep.name}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
          + f" in {_duration(seconds)}; {csv_path}", file=stream, flush=True)
    return SweepResult(root, selected, outcomes, counts, seconds, csv_path)


def _execute(todo: list[Run], root: str, workers: int, launcher, lock_fd, env, progress: Progress) -> list[Outcome]:
    outcomes: list[Outcome] = []
    if not todo:
        progress.close()
        return outcomes
    slots = core_slots(min(workers, len(todo)))
    free_slots = list(range(len(slots)))
    slot_lock = threading.Lock()
    live: set[subprocess.Popen] = set()
    stopping = threading.Event()

    def one(run: Run) -> Outcome:
        if stopping.is_set():
            return Outcome(run, "interrupted")
        with slot_lock:
            slot = free_slots.pop(0)
        mine: list[subprocess.Popen] = []

        def track(proc):
            with slot_lock:
                if proc is None:
                    for p in mine:
                        live.discard(p)
                    mine.clear()
                else:
                    mine.append(proc)
                    live.add(proc)
        try:
            return execute_run(run, root, launcher=launcher, cores=slots[slot], lock_fd=lock_fd, env=env,
                               register=track)
        finally:
            with slot_lock:
                free_slots.append(slot)

    def forward(signum, frame):  # SIGTERM/SIGINT: let the runs checkpoint, start no more
        del frame
        stopping.set()
        with slot_lock:
            for proc in live:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, forward)
    try:
        with futures.ThreadPoolExecutor(max_workers=len(slots)) as pool:
            pending = {}
            for run in todo:
                pending[pool.submit(one, run)] = run
            started: set[str] = set()
            # Report starts as they happen (the pool starts up to len(slots) runs at once).
            for run in todo[:len(slots)]:
                progress.start(run)
                started.add(run.name)
            for future in futures.as_completed(pending):
                outcome = future.result()
                outcomes.append(outcome)
                if outcome.status != "interrupted" or not stopping.is_set():
                    progress.finish(outcome)
                collect_runs_csv(root)
                nxt = next((r for r in todo if r.name not in started), None)
                if nxt is not None and not stopping.is_set():
                    progress.start(nxt)
                    started.add(nxt.name)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        progress.close()
    if stopping.is_set():
        raise KeyboardInterrupt("sweep stopped by a signal; the runs checkpointed, rerun the same command to resume")
    return outcomes
