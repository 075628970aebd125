"""Run a sweep of training runs: `python -m experiments.sweep --gin_file=gin/sweeps/smoke.gin --root=DIR`.

Expands the sweep file (format: scaling/sweep.py; executor: experiments/sweep_executor.py) into named runs and
trains them under DIR/runs/<name>/ (by default in-process: long-lived Python processes train the runs back to
back, experiments/sweep_inprocess.py; --executor=subprocess or a --launcher: each run its own
`python -m experiments.train`), then keeps DIR/runs.csv (one row per
run) and DIR/sweep.json up to date. Rerunning the same command skips finished runs, resumes
interrupted ones and retries failed ones. One launcher per root (DIR/.lock).

    --executor=inprocess|subprocess   how runs train (default inprocess; a --launcher implies subprocess)
    --workers=N                runs at a time (default: cores // --cores_per_run (1), at most one per 2 GiB of
                               memory, at least 1); with N > 1 each run is pinned to its share of the cores
    --dry_run                  print one self-contained shell command per run (for any scheduler); trains nothing
    --launcher='python -m experiments.launch --num_processes=2 --'   prefix of every run's command (a leading
                               `python` becomes this interpreter, so the launcher runs in the project's venv)
    --only=ladder,data         only these groups;  --exclude_group=holdout  all but these
    --noretry_failed           leave failed runs alone (default: retry them)
    --collect                  only rewrite runs.csv from the run directories (after a --dry_run + scheduler)
    --backend=local|ray|slurm  where the runs train (README "Scaling out"): local (default; this machine),
                               ray (one Ray task per run; --address=HOST:PORT joins a cluster, default a local
                               head), slurm (one submitit job array; --slurm_partition, --slurm_time_min);
                               --accelerator=cpu|gpu|tpu sizes each run's request from its mesh

Exit status: 0 when every selected run finished, 1 when some failed (or were interrupted), 2 for a bad
sweep file or flags, 3 when another launcher holds the root.
"""
import os
import sys

from absl import app, flags

_GIN_FILE = flags.DEFINE_string("gin_file", None, "Sweep file, e.g. gin/sweeps/smoke.gin.")
_ROOT = flags.DEFINE_string("root", None, "Sweep root: runs/<name>/, runs.csv, sweep.json, .lock.")
_WORKERS = flags.DEFINE_integer("workers", None, "Runs at a time (default: cores // cores_per_run, >= 1).")
_CORES_PER_RUN = flags.DEFINE_integer("cores_per_run", 1, "Cores per run when sizing the default worker count.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print one shell command per run and exit.")
_LAUNCHER = flags.DEFINE_string("launcher", None, "Command prefix for every run (also in --dry_run output).")
_ONLY = flags.DEFINE_list("only", [], "Only runs of these groups.")
_EXCLUDE = flags.DEFINE_list("exclude_group", [], "Skip runs of these groups.")
_RETRY_FAILED = flags.DEFINE_bool("retry_failed", True, "Retry runs that failed in an earlier launch.")
_EXECUTOR = flags.DEFINE_enum("executor", "inprocess", ["inprocess", "subprocess"],
                              "inprocess: long-lived processes train the runs back to back (no re-import, compiled "
                              "steps reused); subprocess: one `python -m experiments.train` per run (always so "
                              "with --launcher).")
_COLLECT = flags.DEFINE_bool("collect", False, "Only (re)write sweep.json and runs.csv; train nothing.")
_BACKEND = flags.DEFINE_enum("backend", "local", ["local", "ray", "slurm"],
                             "Where runs train: local (this machine: --executor), ray (one Ray task per run), slurm "
                             "(one submitit job array per sweep); README \"Scaling out\".")
_ADDRESS = flags.DEFINE_string("address", None, "ray: HOST:PORT of the cluster to join (or 'auto'); default: start a "
                               "Ray head on this machine.")
_ACCELERATOR = flags.DEFINE_enum("accelerator", "cpu", ["cpu", "gpu", "tpu"],
                                 "ray/slurm: what a run's mesh devices are when requesting resources.")
_MAX_RETRIES = flags.DEFINE_integer("max_retries", 3, "ray/slurm: resubmissions of a run whose worker/node died or "
                                    "whose training was preempted, within one call.")
_HOSTS_PER_RUN = flags.DEFINE_integer("hosts_per_run", 1, "ray/slurm: hosts one run spans (only 1 is supported).")
_CONNECT_TIMEOUT = flags.DEFINE_float("connect_timeout", 30.0, "ray: seconds to wait for --address to answer.")
_SLURM_PARTITION = flags.DEFINE_string("slurm_partition", None, "slurm: partition of the job array.")
_SLURM_TIME_MIN = flags.DEFINE_integer("slurm_time_min", 24 * 60, "slurm: time limit of each array task, minutes.")
_SLURM_CLUSTER = flags.DEFINE_enum("slurm_cluster", "slurm", ["slurm", "local"],
                                   "slurm: 'local' runs the array's jobs as local processes (submitit's local "
                                   "executor; tests, a machine without SLURM).")


def fail(message: str, code: int = 2) -> None:
    print(f"sweep: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _backend():
    """The ray / slurm backend object (run_sweep's preflight and executor), or None for the local one."""
    if _BACKEND.value == "local":
        for flag in ("address", "hosts_per_run", "slurm_partition"):
            if flags.FLAGS[flag].present:
                fail(f"--{flag} is for --backend=ray or --backend=slurm")
        return None
    common = dict(accelerator=_ACCELERATOR.value, cores_per_run=_CORES_PER_RUN.value, launcher=_LAUNCHER.value,
                  workers=_WORKERS.value, max_retries=_MAX_RETRIES.value, hosts_per_run=_HOSTS_PER_RUN.value)
    if _BACKEND.value == "ray":
        from experiments import sweep_ray  # pylint: disable=import-outside-toplevel
        return sweep_ray.RayBackend(address=_ADDRESS.value, connect_timeout=_CONNECT_TIMEOUT.value, **common)
    if _ADDRESS.present:
        fail("--address is for --backend=ray")
    from experiments import sweep_slurm  # pylint: disable=import-outside-toplevel
    return sweep_slurm.SlurmBackend(cluster=_SLURM_CLUSTER.value, partition=_SLURM_PARTITION.value,
                                    time_min=_SLURM_TIME_MIN.value, **common)


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; use --gin_file=gin/sweeps/X.gin --root=DIR")
    if not _GIN_FILE.value:
        fail("--gin_file is required (a sweep file, e.g. gin/sweeps/smoke.gin)")
    if not _ROOT.value and not _DRY_RUN.value:
        fail("--root is required (the directory that receives runs/, runs.csv and sweep.json)")
    if _WORKERS.value is not None and _WORKERS.value < 1:
        fail(f"--workers must be >= 1, got {_WORKERS.value}")
    from experiments import sweep_executor as executor  # pylint: disable=import-outside-toplevel
    from experiments import sweep_inprocess  # pylint: disable=import-outside-toplevel
    from scaling import sweep  # pylint: disable=import-outside-toplevel
    from scaling.train import checkpointing  # pylint: disable=import-outside-toplevel

    root = _ROOT.value or "runs/sweep"
    try:
        if _DRY_RUN.value or _COLLECT.value:
            spec, runs = sweep.expand(_GIN_FILE.value)
            selected = sweep.select(runs, _ONLY.value, _EXCLUDE.value)
            if _DRY_RUN.value:
                for run in selected:
                    print(executor.shell_command(run, root, _LAUNCHER.value), flush=True)
                print(f"sweep: {len(selected)} of {len(runs)} runs of {spec.name} (dry run; nothing trained)",
                      file=sys.stderr)
                return
            with executor.RootLock(root):
                sweep.write_sweep_json(os.path.abspath(root), spec, _GIN_FILE.value, runs)
                print(sweep.collect_runs_csv(root))
            return
        backend = _backend()
        result = executor.run_sweep(_GIN_FILE.value, root, workers=_WORKERS.value, cores_per_run=_CORES_PER_RUN.value,
                                    launcher=_LAUNCHER.value, only=_ONLY.value, exclude=_EXCLUDE.value,
                                    retry_failed=_RETRY_FAILED.value,
                                    executor=backend.execute if backend else
                                    sweep_inprocess.executor_for(_EXECUTOR.value, _LAUNCHER.value),
                                    preflight=backend.preflight if backend else None)
    except (sweep.SweepError, checkpointing.WorkdirNotWritableError) as e:
        fail(str(e))
    except executor.LockedError as e:
        fail(str(e), code=3)
    except KeyboardInterrupt as e:
        fail(str(e) or "interrupted; rerun the same command to resume", code=1)
    if not result.ok:
        failed = [o.run.name for o in result.outcomes if o.status == "failed"]
        fail(f"{result.counts.get('failed', 0)} run(s) failed{' (' + ', '.join(failed) + ')' if failed else ''}, "
             f"{result.counts.get('pending', 0)} pending; see runs/<name>/launcher.log under {result.root}; "
             f"rerun the same command to retry them", code=1)


if __name__ == "__main__":
    app.run(main)
