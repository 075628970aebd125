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


def fail(message: str, code: int = 2) -> None:
    print(f"sweep: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


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
        result = executor.run_sweep(_GIN_FILE.value, root, workers=_WORKERS.value, cores_per_run=_CORES_PER_RUN.value,
                                    launcher=_LAUNCHER.value, only=_ONLY.value, exclude=_EXCLUDE.value,
                                    retry_failed=_RETRY_FAILED.value,
                                    executor=sweep_inprocess.executor_for(_EXECUTOR.value, _LAUNCHER.value))
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
