"""Sweeps: expand a gin sweep file into named training runs and collect their runs.csv (experiments/ runs them).

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

Running the runs (lock, worker pool, one `python -m experiments.train` subprocess each) is
experiments/sweep_executor.py: the library plans, the entry points launch.

Python API: ``expand(sweep_file)`` -> (SweepFile, [SweepRun]) with each run's planned N, tokens and C
(models.accounting.model_summary, as the trainer's summary.json writes them); ``select``; ``run_status``
(finished by scaling.core.records.is_finished); ``collect_runs_csv(root)`` (columns:
scaling.core.records.RUNS_CSV_*); ``write_sweep_json``.

Size (~420 lines): most of it is validation with messages that name the sweep file, the block and the fix;
the module docstring is the format's reference.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import os
import re
import tokenize
from typing import Any, Sequence

from scaling.core import fileio, formulas, records

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

# runs.csv columns: scaling.core.records (RUNS_CSV_*; the run record's schema).


class SweepError(ValueError):
    """A sweep file that cannot be expanded; the message names the file, the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class SweepFile:
    """The contents of a sweep file (see the module docstring); gin binds it as ``Sweep`` (scaling.configurables)."""
    name: str
    blocks: list
    base_gin_files: list = dataclasses.field(default_factory=list)
    base_gin_params: Any = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class SweepRun:
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

def load_sweep(sweep_file: str) -> SweepFile:
    """Parses a sweep gin file into a SweepFile (gin is cleared before and after)."""
    if not os.path.exists(sweep_file):
        raise SweepError(f"sweep file {sweep_file!r} not found (paths are relative to the repository root, "
                         f"e.g. gin/sweeps/smoke.gin)")
    from scaling import configurables  # pylint: disable=import-outside-toplevel
    try:
        sweep = configurables.parse_sweep_file(sweep_file)
    except Exception as e:  # pylint: disable=broad-except  (any parse failure is the sweep file's)
        raise SweepError(f"sweep file {sweep_file}: cannot parse it: {type(e).__name__}: {e}; a sweep file binds "
                         f"only Sweep.name, Sweep.blocks, Sweep.base_gin_files and Sweep.base_gin_params "
                         f"(see scaling/sweep.py)") from None
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
    from scaling import configurables  # pylint: disable=import-outside-toplevel
    try:
        value = configurables.resolved_binding(binding)
        return value if isinstance(value, (int, float, str, bool, type(None), list, tuple)) else str(value)
    except LookupError:
        pass
    cls, _, field = binding.rpartition(".")
    objects = {"TrainConfig": config, "DataConfig": config.data, "MeshConfig": config.mesh,
               type(config.model).__name__: config.model}
    obj = objects.get(cls.rsplit(".", 1)[-1])
    return getattr(obj, field, None) if obj is not None else None


def _plan(config) -> dict:
    """What is known of a run before it trains (runs.csv fills these for pending/failed runs): the model
    fields of its summary (models.accounting.model_summary, as the trainer writes them) and the run's size."""
    from models import accounting  # pylint: disable=import-outside-toplevel
    from scaling.train import optimizers  # pylint: disable=import-outside-toplevel
    model = accounting.model_summary(config.model)
    n, fpt, n_ctx = model["n_params_nonembedding"], model["flops_per_token"], model["n_ctx"]
    tokens = config.num_steps * config.batch_size * n_ctx
    return {"model_family": model["model_family"], "n_params_nonembedding": n, "flops_per_token": fpt,
            "n_ctx": n_ctx, "steps": config.num_steps, "eval_every": config.eval_every,
            "batch_size": config.batch_size,
            "batch_tokens": config.batch_size * n_ctx, "tokens": tokens,
            "compute_pf_days": formulas.pf_days(fpt * tokens),
            "data_budget_tokens": getattr(config.data, "data_budget_tokens", None),
            "learning_rate": config.learning_rate or optimizers.kaplan_learning_rate(n),
            "mesh": [config.mesh.data, config.mesh.fsdp, config.mesh.tensor]}


def expand(sweep_file: str) -> tuple[SweepFile, list[SweepRun]]:
    """Expands and validates a sweep file; raises SweepError naming the file, the run and the fix."""
    from scaling import configurables  # pylint: disable=import-outside-toplevel  (registers the configs)

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

    runs: list[SweepRun] = []
    origin: dict[str, int] = {}
    try:
        for index, group, model, files, params, point, tag in pending:
            label = f"{model} {dict(point)}" if point else model
            try:
                config, _ = configurables.build_train_config([os.path.join(REPO_ROOT, f) for f in files], params,
                                                             resolve_data=False)
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
            runs.append(SweepRun(name=name, group=group, model=model, gin_files=files, gin_params=params,
                            knobs=knobs, planned=plan))
    finally:
        configurables.clear()
    return sweep, runs


def select(runs: Sequence[SweepRun], only: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[SweepRun]:
    """The runs of the groups in ``only`` (all if empty) minus those in ``exclude``."""
    for group in [*only, *exclude]:
        if group not in GROUPS:
            raise SweepError(f"unknown group {group!r} in --only/--exclude_group; groups are {', '.join(GROUPS)}")
    return [r for r in runs if (not only or r.group in only) and r.group not in exclude]


# --- run state and runs.csv --------------------------------------------------------------------------


def run_dir(root: str, name: str) -> str:
    return os.path.join(root, "runs", name)


def run_status(root: str, run: dict) -> tuple[str, dict | None, str]:
    """(finished|failed|pending, summary or None, error) of one sweep.json run record, from its directory."""
    workdir = run_dir(root, run["name"])
    summary = records.read_summary(workdir)
    if records.is_finished(summary, run["planned"]["steps"]):
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
    row.update(records.runs_csv_row(summary, planned))
    row.update(run["knobs"])
    return row


def _csv_text(rows: list[dict], knob_columns: Sequence[str]) -> str:
    columns = records.runs_csv_columns(rows, knob_columns)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: records.csv_value(row.get(k)) for k in columns})
    return out.getvalue()


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


def write_sweep_json(root: str, sweep: SweepFile, sweep_file: str, runs: Sequence[SweepRun]) -> str:
    swept = list(runs[0].knobs) if runs else []
    path = os.path.join(root, "sweep.json")
    fileio.write_json_atomic(path, {"name": sweep.name, "sweep_file": _repo_relative(sweep_file),
                                    "repo": REPO_ROOT, "swept_bindings": swept,
                                    "runs": [r.record() for r in runs]})
    return path
