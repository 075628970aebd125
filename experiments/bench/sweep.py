"""Sweep throughput (`python -m experiments.bench sweep`): one fixed sweep trained by both executors.

The sweep (``SWEEP``) is a scaled-down mix of the main study, gin/sweeps/kaplan_cpu_quick.gin, with its settings:
books_20m (SentencePiece 1,024, n_ctx 128), Adam with a constant LR after warmup, batch 8 in 4 microbatches,
logs every 10 steps, an eval every 100 (16,384 held-out tokens in 16-window batches plus the wiki_mini eval at
the final eval) and the final 2,048-window loss-per-position eval, checkpoints every 1,000 steps (keep 1,
asynchronous; the preset's since session 13, so only the final one in these runs). Runs:
  ladder      cpu_6k (1,000 steps), cpu_25k (800), cpu_98k (1,000), cpu_221k (800): the mid rungs last >= 30 s
  data        cpu_25k at D = 65,536 tokens, 600 steps, the preset's data-block evals
  batch_scan  cpu_25k at B = 4, 16, 64 sequences (half the preset's steps for each B), its scan settings
              (microbatches of at most 4 sequences: K = 2, 4, 16)
Expected time on 2 idle cores (2 workers): about 2-3 minutes per pass, 8-10 minutes for the whole
section (the matmul peak, the three passes, the final parameters of every run restored for the comparison).
The vocabulary and token caches are built (or found) first, untimed. The sweep is then trained three times in this
invocation, into three fresh roots, with the default worker count: first by the in-process executor
(experiments/sweep_inprocess.py; a fresh, empty JAX compilation cache, so the figure does not depend on
earlier runs), then by the subprocess executor (one `python -m experiments.train` per run) as it runs without
the in-process executor's means: no persistent compilation cache, every run compiling its programs
(`_compilation_cache_env`; until session 13 its runs inherited the cache the first sweep had just filled, and
compiled almost nothing). Between the two, the in-process executor trains the sweep a second time into a fresh
root with the cache its first pass filled (`PASSES`): what re-running a sweep's shapes costs (the *_warm_cache
figures). All three hand their
runs the peak measured here (scaling/train/mfu.py PEAK_ENV, per core; a cached peak of this machine still
wins), so none measures one of its own. Figures:

  sweep_utilisation                 Σ over runs of model FLOPs (models.accounting.mfu_flops_per_token × tokens,
                                    the summaries' flops_per_token_mfu) ÷ (in-process sweep wall time × the
                                    float32 matmul peak measured in this invocation)
  sweep_utilisation_subprocess      the same for the subprocess executor
  sweep_utilisation_vs_best_peak    the in-process figure against the best peak ever measured on this machine
  sweep_speedup_vs_subprocess       subprocess wall time ÷ in-process wall time
  sweep_overhead_fraction           share of the in-process executor's wall time outside training steps:
                                    1 − Σ train_time_sec ÷ (wall × workers)
                                    (evaluation counts as outside: the preset's evals, the final 2,048-window
                                    one above all, cost a ladder run roughly half as much time as its steps)
  sweep_overhead_fraction_subprocess  the same for the subprocess executor
  sweep_run_overhead_fraction[_subprocess]  1 − Σ train_time_sec ÷ Σ run wall_time_sec (the runs alone)
  sweep_utilisation_ceiling[_subprocess]  Σ model FLOPs × workers ÷ (Σ train_time_sec × matmul peak): the
                                    utilisation with no time at all outside training steps (each worker's steps
                                    against the peak of its share of the cores), so that
                                    sweep_utilisation = ceiling × (1 − sweep_overhead_fraction): what the steps
                                    themselves allow, whatever an executor does around them
  sweep_compile_fraction[_subprocess]  Σ compile_time_sec ÷ (wall × workers): the part of the overhead that is
                                    compiling the train and eval steps
  sweep_idle_fraction[_subprocess]  1 − Σ run wall_time_sec ÷ (wall × workers): worker time inside no run
                                    (process start, imports before a run's clock, the sweep's tail)
  sweep_losses_equal                every run's logged training losses, final eval loss and final parameters
                                    (params_sha256) identical under both executors (and the warm pass)
  sweep_wall_s[_subprocess], sweep_runs, sweep_workers, sweep_model_flops, sweep_peak_flops
  sweep_compile_time_s[_subprocess]  Σ over runs of the train/eval-step compile time (summaries' compile_time_sec)
  sweep_{wall_s,compile_time_s,utilisation,overhead_fraction}_warm_cache  the same for the warm in-process pass
  sweep_speedup_warm_cache_vs_subprocess  subprocess wall time ÷ the warm in-process pass's

``tiny``: two 6-step runs of a tiny model (the schema; the figures mean nothing).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

SWEEP = """
Sweep.name = 'bench_sweep'
Sweep.base_gin_files = ['gin/data/books_20m.gin', 'gin/optim/adam.gin', 'gin/optim/constant.gin']
Sweep.base_gin_params = {
    'TrainConfig.batch_size': 8, 'TrainConfig.num_steps': 800, 'TrainConfig.warmup_steps': 50,
    'TrainConfig.microbatches': 4, 'TrainConfig.log_every': 10, 'TrainConfig.eval_every': 100,
    'TrainConfig.checkpoint_every': 1000, 'TrainConfig.keep_checkpoints': 1,
    'DataConfig.eval_tokens': 16384, 'TrainConfig.eval_batch_size': 16, 'TrainConfig.extra_eval_final_only': True,
    'DataConfig.position_eval_windows': 2048,
}
Sweep.blocks = [
    {'group': 'ladder', 'models': ['cpu_6k'], 'params': {'TrainConfig.num_steps': 1000}},
    {'group': 'ladder', 'models': ['cpu_25k']},
    {'group': 'ladder', 'models': ['cpu_98k'], 'params': {'TrainConfig.num_steps': 1000}},
    {'group': 'ladder', 'models': ['cpu_221k']},
    {'group': 'data', 'models': ['cpu_25k'],
     'params': {'TrainConfig.num_steps': 600, 'DataConfig.eval_tokens': 16384, 'DataConfig.extra_eval_tasks': (),
                'DataConfig.position_eval_windows': 0},
     'grid': {'DataConfig.data_budget_tokens': [65536]}},
    {'group': 'batch_scan', 'models': ['cpu_25k'],
     'params': {'TrainConfig.log_every': 2, 'DataConfig.eval_tokens': 16384,
                'DataConfig.extra_eval_tasks': (), 'DataConfig.position_eval_windows': 0},
     'grid': {'TrainConfig.batch_size,TrainConfig.num_steps,TrainConfig.eval_every,TrainConfig.warmup_steps,'
              'TrainConfig.microbatches': [(4, 850, 85, 50, 2), (16, 425, 42, 12, 4), (64, 212, 21, 3, 16)]}},
]
"""

TINY_SWEEP = """
Sweep.name = 'bench_sweep_tiny'
Sweep.base_gin_files = ['gin/data/embedded.gin', 'gin/optim/adam.gin', 'gin/optim/constant.gin']
Sweep.base_gin_params = {
    'TransformerConfig.n_ctx': 32, 'TransformerConfig.d_ff': 64, 'TransformerConfig.n_heads': 2,
    'TrainConfig.batch_size': 8, 'TrainConfig.microbatches': 2, 'TrainConfig.num_steps': 6,
    'TrainConfig.warmup_steps': 1, 'TrainConfig.log_every': 2, 'TrainConfig.eval_every': 3,
    'TrainConfig.checkpoint_every': 3, 'TrainConfig.keep_checkpoints': 1, 'DataConfig.eval_tokens': 1024,
}
Sweep.blocks = [
    {'group': 'ladder', 'models': ['cpu_12k'],
     'grid': {'TransformerConfig.d_model,TransformerConfig.d_attn': [(16, 16), (24, 24)]}},
]
"""


def _read(path: str):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _final_params_sha256(root: str, name: str) -> str | None:
    """sha256 of a run's final parameters, restored from its last checkpoint (summary.json carries no hash:
    scaling.train.trainer.checkpoint_params_sha256, off the training path)."""
    from scaling import configurables, sweep
    from scaling.train import trainer
    record = next((r for r in json.loads(_read(os.path.join(root, "sweep.json")) or "{}").get("runs", [])
                   if r.get("name") == name), None)
    if record is None:
        return None
    try:
        config, _ = configurables.build_train_config([os.path.join(sweep.REPO_ROOT, f) for f in record["gin_files"]],
                                                     record["gin_params"])
    finally:
        configurables.clear()
    return trainer.checkpoint_params_sha256(config, os.path.join(root, "runs", name))[1]


def _run_record(root: str, name: str) -> dict:
    workdir = os.path.join(root, "runs", name)
    summary = json.loads(_read(os.path.join(workdir, "summary.json")) or "{}")
    losses = [(r.get("step"), r.get("loss")) for r in map(json.loads, (_read(os.path.join(workdir, "metrics.jsonl"))
                                                                        or "").splitlines()) if r]
    return {"summary": summary, "losses": losses, "params_sha256": _final_params_sha256(root, name)}


def _warm_data(sweep_file: str) -> None:
    """Builds the sweep's vocabulary and token caches (the corpus and every eval set of its first run, which the
    others share) before anything is timed: tokenizing is a one-off of the study, not an executor's cost."""
    from scaling import configurables, sweep
    from scaling.train import state
    run = sweep.expand(sweep_file)[1][0]
    try:
        config, _ = configurables.build_train_config([os.path.join(sweep.REPO_ROOT, f) for f in run.gin_files],
                                                     run.gin_params)
    finally:
        configurables.clear()
    state.build_data(config, config.model.n_ctx)


def _compilation_cache_env(executor_name: str, workdir: str) -> dict:
    """The environment each executor's sweep runs under (None: unset). In-process: a cold private JAX persistent
    compilation cache, one of its means (identical programs compile once across its worker processes). Subprocess:
    the executor as it was, no persistent cache, so its runs do not read the programs the in-process sweep has
    just written (JAX reads both variables in every process the sweep starts)."""
    if executor_name == "inprocess":
        return {"JAX_COMPILATION_CACHE_DIR": os.path.join(workdir, "jax_compilation_cache"),
                "JAX_ENABLE_COMPILATION_CACHE": None}
    return {"JAX_COMPILATION_CACHE_DIR": None, "JAX_ENABLE_COMPILATION_CACHE": "false"}


def _set_environment(values: dict) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def _environment(changes: dict):
    """os.environ with ``changes`` applied (None: unset) inside the block, as it was after it."""
    saved = {k: os.environ.get(k) for k in changes}
    try:
        _set_environment(changes)
        yield
    finally:
        _set_environment(saved)


def _train(executor_name: str, sweep_file: str, root: str, workers: int | None) -> dict:
    from experiments import sweep_executor, sweep_inprocess
    result = sweep_executor.run_sweep(sweep_file, root, workers=workers,
                                      executor=sweep_inprocess.executor_for(executor_name))
    if not result.ok:
        failed = [f"{o.run.name}: {o.error}" for o in result.outcomes if o.status != "finished"]
        raise RuntimeError(f"bench sweep ({executor_name}) did not finish: {failed}")
    runs = {r.name: _run_record(root, r.name) for r in result.runs}
    used = min(workers or sweep_executor.default_workers(), len(result.runs))
    return {"wall": result.seconds, "runs": runs, "workers": used}


def _figures(measured: dict, peak: float) -> dict:
    runs = measured["runs"].values()
    flops = sum(float(r["summary"]["flops_per_token_mfu"]) * float(r["summary"]["tokens"]) for r in runs)
    train = sum(float(r["summary"]["train_time_sec"]) for r in runs)
    run_wall = sum(float(r["summary"]["wall_time_sec"]) for r in runs)
    wall = measured["wall"]
    compile_time = sum(float(r["summary"].get("compile_time_sec") or 0.0) for r in runs)
    workers = measured["workers"]
    # What the training steps alone allow: the utilisation the sweep would reach with no time outside its steps
    # (no compile, eval, init, checkpoint or idle worker). Each worker's steps run on 1/workers of the cores, so
    # their peak is peak / workers; utilisation = this × (1 − overhead_fraction), exactly.
    step_ceiling = flops * workers / (train * peak)
    return {"utilisation": flops / (wall * peak), "overhead_fraction": 1.0 - train / (wall * workers),
            "run_overhead_fraction": 1.0 - train / run_wall, "wall_s": wall, "model_flops": flops,
            "train_time_s": train, "compile_time_s": compile_time, "utilisation_ceiling": step_ceiling,
            "compile_fraction": compile_time / (wall * workers), "idle_fraction": 1.0 - run_wall / (wall * workers)}


# (pass name, executor): the order they train in. The warm pass follows the cold one it reads the cache of.
PASSES = (("inprocess", "inprocess"), ("inprocess_warm", "inprocess"), ("subprocess", "subprocess"))


def _same_runs(a: dict, b: dict) -> bool:
    """The same run names, and per run the same logged training losses, final parameters and final eval loss."""
    return a["runs"].keys() == b["runs"].keys() and all(
        r["losses"] == b["runs"][name]["losses"] and len(r["losses"]) > 0
        and r["params_sha256"] is not None and r["params_sha256"] == b["runs"][name]["params_sha256"]
        and r["summary"].get("final_eval_loss") == b["runs"][name]["summary"].get("final_eval_loss")
        for name, r in a["runs"].items())


def run(previous: dict | None = None, tiny: bool = False) -> dict:
    from experiments.bench import matmul as bench_matmul
    from scaling.train import mfu

    previous = previous or {}
    peak = previous.get("matmul_peak_flops_this_run") or previous.get("matmul_peak_flops")
    if not peak or tiny:
        peak = bench_matmul.measure_peak(tiny)["matmul_peak_flops"]
    workdir = tempfile.mkdtemp(prefix="bench_sweep-")
    try:
        sweep_file = os.path.join(workdir, "bench_sweep.gin")
        with open(sweep_file, "w") as f:
            f.write(TINY_SWEEP if tiny else SWEEP)
        # The runs' MFU peak: this invocation's, per core (the executors then measure none of their own).
        with _environment({mfu.PEAK_ENV: repr(float(peak) / mfu.process_cores())}):
            _warm_data(sweep_file)
            workers = 1 if tiny else None
            trained = {}
            # "inprocess_warm": the in-process executor again, into a fresh root, reading the cache the first pass
            # filled: what a re-run of a sweep's shapes (a new seed, a resumed or repeated study) costs.
            for name, executor_name in PASSES:
                with _environment(_compilation_cache_env(executor_name, workdir)):
                    trained[name] = _train(executor_name, sweep_file, os.path.join(workdir, name), workers)
        inprocess, warm, subproc = trained["inprocess"], trained["inprocess_warm"], trained["subprocess"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    fast, hot, slow = _figures(inprocess, peak), _figures(warm, peak), _figures(subproc, peak)
    equal = _same_runs(inprocess, subproc) and _same_runs(warm, subproc)
    long_runs = [r["summary"] for r in inprocess["runs"].values() if float(r["summary"]["wall_time_sec"]) >= 30]
    out = {
        "sweep_utilisation": fast["utilisation"],
        "sweep_utilisation_subprocess": slow["utilisation"],
        "sweep_speedup_vs_subprocess": slow["wall_s"] / fast["wall_s"],
        "sweep_overhead_fraction": fast["overhead_fraction"],
        "sweep_overhead_fraction_subprocess": slow["overhead_fraction"],
        "sweep_utilisation_ceiling": fast["utilisation_ceiling"],
        "sweep_utilisation_ceiling_subprocess": slow["utilisation_ceiling"],
        "sweep_compile_fraction": fast["compile_fraction"],
        "sweep_compile_fraction_subprocess": slow["compile_fraction"],
        "sweep_idle_fraction": fast["idle_fraction"],
        "sweep_idle_fraction_subprocess": slow["idle_fraction"],
        "sweep_run_overhead_fraction": fast["run_overhead_fraction"],
        "sweep_run_overhead_fraction_subprocess": slow["run_overhead_fraction"],
        "sweep_losses_equal": bool(equal),
        "sweep_wall_s": fast["wall_s"],
        "sweep_wall_s_subprocess": slow["wall_s"],
        "sweep_train_time_s": fast["train_time_s"],
        "sweep_train_time_s_subprocess": slow["train_time_s"],
        "sweep_compile_time_s": fast["compile_time_s"],
        "sweep_compile_time_s_subprocess": slow["compile_time_s"],
        "sweep_wall_s_warm_cache": hot["wall_s"],
        "sweep_compile_time_s_warm_cache": hot["compile_time_s"],
        "sweep_utilisation_warm_cache": hot["utilisation"],
        "sweep_overhead_fraction_warm_cache": hot["overhead_fraction"],
        "sweep_speedup_warm_cache_vs_subprocess": slow["wall_s"] / hot["wall_s"],
        "sweep_runs": len(inprocess["runs"]),
        "sweep_workers": inprocess["workers"],
        "sweep_model_flops": fast["model_flops"],
        "sweep_peak_flops": float(peak),
    }
    best = mfu.read_cpu_peak() if not tiny else None
    if best:   # the best peak ever measured on this machine (what the trainer's MFU uses): load only lowers it
        out["sweep_utilisation_vs_best_peak"] = fast["model_flops"] / (fast["wall_s"] * max(best, float(peak)))
    if long_runs:
        out["sweep_overhead_fraction_runs_over_30s"] = 1.0 - sum(s["train_time_sec"] for s in long_runs) / sum(
            s["wall_time_sec"] for s in long_runs)
    return out
