"""The in-process sweep executor: long-lived Python processes train a sweep's runs back to back.

The subprocess executor (experiments/sweep_executor.py ``execute_run``) starts a fresh
``python -m experiments.train`` per run: every run pays the imports, a cold compilation and its own process
start-up. This executor keeps the process: one run after another goes through
``experiments.train_gin.train_from_gin`` (gin -> TrainConfig -> ``scaling.train.trainer.train``) in the same
interpreter, so imports happen once, steps of identical shapes reuse their compiled executables
(the trainer's compiled-step cache, scaling/train/state.py), and JAX's persistent compilation cache
(``.cache/scaling/jax_compilation_cache``) serves identical programs across processes and sweeps.

- ``workers == 1``: the runs train in this process (the launcher's), on all of its cores.
- ``workers > 1``: that many worker processes (``python -m experiments.sweep_inprocess --worker``),
  each pinned to its share of the cores (which sizes XLA's thread pool) and each training runs back
  to back; the runs are handed out largest first, like the subprocess executor. A run keeps its worker's
  share also when fewer runs than workers are left (its losses are bit-identical only at a fixed thread count).

The CPU matmul peak the runs' MFU is measured against is measured once, before any run or worker starts
(experiments.sweep_executor.cpu_peak_for_runs; scaling/train/mfu.py), unless a cached one exists.

Each run's gin is parsed in isolation (cleared before and after; ``scaling.configurables.build_train_config``
of its own files and bindings), its output goes to ``ROOT/runs/<name>/launcher.log`` and its status to
``launcher.json`` (``executor: inprocess``), exactly as with the subprocess executor.

Failure isolation: a run that raises (a bad configuration, a NaN/Inf loss, XLA's RESOURCE_EXHAUSTED,
MemoryError) is recorded as failed with its error, the next runs continue, and the next launch
retries it. A worker process that dies (e.g. killed by the kernel's OOM killer) fails its run and is
replaced. SIGKILL of the launcher leaves every finished run intact (their summary.json is final) and
the interrupted run resumes exactly from its last checkpoint on the next launch (the trainer's
guarantee); the workers die with the launcher (PR_SET_PDEATHSIG: SIGTERM, they checkpoint and exit)
and hold ``ROOT/.lock`` until they have. SIGTERM/SIGINT of the launcher: the running runs checkpoint,
no more start, and the sweep stops with KeyboardInterrupt (rerun to resume).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from typing import Sequence

from experiments import sweep_executor
from scaling import sweep
from scaling.core import fileio, records

COMPILATION_CACHE_DIR = os.path.join(".cache", "scaling", "jax_compilation_cache")


def enable_compilation_cache(path: str | None = None) -> str | None:
    """JAX's persistent compilation cache (identical programs compile once across processes); returns the
    directory, or None when this JAX cannot use it. JAX_COMPILATION_CACHE_DIR, when set, wins."""
    import jax  # pylint: disable=import-outside-toplevel
    path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or path or os.path.join(sweep.REPO_ROOT, COMPILATION_CACHE_DIR)
    try:
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    except (AttributeError, ValueError, OSError):
        return None
    return path


@contextlib.contextmanager
def _output_to(log_path: str):
    """Points this process's stdout and stderr (file descriptors 1 and 2) at the run's log."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        yield
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in (*saved, log_fd):
                os.close(fd)


def _error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " | ")
    return text[:600]


def train_one(record: dict, root: str) -> dict:
    """Trains (or resumes) one run of ``sweep.json``'s records in this process; returns an outcome dict
    {status: finished|failed|interrupted, seconds, cpu_seconds, error}. Never raises for a failed run;
    KeyboardInterrupt / SystemExit propagate after the run's state is recorded."""
    from experiments import train_gin  # pylint: disable=import-outside-toplevel
    from scaling import configurables  # pylint: disable=import-outside-toplevel

    name = record["name"]
    workdir = sweep.run_dir(root, name)
    os.makedirs(workdir, exist_ok=True)
    state_path = os.path.join(workdir, "launcher.json")
    log_path = os.path.join(workdir, "launcher.log")
    run = sweep.SweepRun(**record)
    command = shlex.join(sweep_executor.train_command(run, root))
    started = time.time()
    cpu_start = time.process_time()
    state = {"status": "running", "executor": "inprocess", "pid": os.getpid(), "host": socket.gethostname(),
             "started": datetime.datetime.now().isoformat(timespec="seconds"), "command": command}
    fileio.write_json_atomic(state_path, state)
    with open(log_path, "a") as log:
        log.write(f"\n=== {state['started']} (in-process, pid {os.getpid()}) {command}\n")
    status, error, summary = "failed", "", None
    try:
        with _output_to(log_path):
            try:
                summary = train_gin.train_from_gin([os.path.join(sweep.REPO_ROOT, f) for f in record["gin_files"]],
                                                   record["gin_params"], workdir)
                if summary.get("status") == "preempted":
                    status = "interrupted"
                elif records.is_finished(summary, record["planned"]["steps"]):   # all steps, or early-stopped
                    status = "finished"
                else:
                    error = f"the run stopped at step {summary.get('steps')} of {record['planned']['steps']}"
            except (KeyboardInterrupt, SystemExit):
                status = "interrupted"
                raise
            except BaseException as e:  # pylint: disable=broad-except  (isolation: any failure is the run's)
                sys.stderr.flush()
                os.write(2, traceback.format_exc().encode(errors="replace"))   # fd 2 is the run's log
                status, error = "failed", _error_text(e)
            finally:
                configurables.clear()
    finally:
        seconds = time.time() - started
        cpu_seconds = time.process_time() - cpu_start
        fileio.write_json_atomic(state_path, dict(
            state, status="pending" if status == "interrupted" else status,
            returncode=0 if status == "finished" else 1, seconds=seconds, cpu_seconds=cpu_seconds, error=error))
    return {"status": status, "seconds": seconds, "cpu_seconds": cpu_seconds, "error": error}


# --- the executor (experiments.sweep_executor.run_sweep's ``executor``) ------------------------------

def execute(todo: list, root: str, workers: int, lock_fd: int | None, progress: sweep_executor.SweepProgress) -> list:
    """Trains ``todo`` (sweep.SweepRun) under ``root``; returns their Outcomes in completion order."""
    if not todo:
        progress.close()
        return []
    if workers <= 1:
        return _execute_here(todo, root, progress)
    # A run gets its slot's cores even when it is the last one left: its thread count, and so its float rounding
    # (XLA's CPU matmuls split their work by thread), must not depend on what else the sweep still has to do.
    return _execute_pool(todo, root, workers, lock_fd, progress)


def _quiet() -> None:
    from absl import logging  # pylint: disable=import-outside-toplevel
    logging.set_verbosity(logging.WARNING)   # as experiments.train: no orbax INFO lines in the logs


def _execute_here(todo: list, root: str, progress: sweep_executor.SweepProgress) -> list:
    _quiet()
    enable_compilation_cache()
    stopping = threading.Event()

    def stop(signum, frame):   # between runs; during one the trainer's own SIGTERM handler checkpoints
        del signum, frame
        stopping.set()

    outcomes = []
    with sweep_executor.signals_stop_sweep(stop, (signal.SIGTERM,), progress, stopping), \
            sweep_executor.cpu_peak_for_runs([None], progress.stream, here=True):
        for run in todo:
            if stopping.is_set():
                break
            progress.start(run)
            try:
                result = train_one(run.record(), root)
            except KeyboardInterrupt:
                progress.finish(sweep_executor.Outcome(run, "interrupted"))
                raise KeyboardInterrupt("sweep stopped by a signal; rerun the same command to resume") from None
            outcome = sweep_executor.Outcome.from_result(run, root, result)
            outcomes.append(outcome)
            progress.finish(outcome)
            sweep.collect_runs_csv(root)
            if outcome.status == "interrupted":
                stopping.set()
    return outcomes


class _Worker:
    """One worker process: JSON lines in on stdin ({"run": record, "root": root}), out on its stdout."""

    def __init__(self, cores: list[int] | None, lock_fd: int | None):
        self.cores, self.lock_fd = cores, lock_fd
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "experiments.sweep_inprocess", "--worker"], cwd=sweep.REPO_ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, text=True, bufsize=1,
            preexec_fn=sweep_executor._child_setup(self.cores), start_new_session=True,  # pylint: disable=protected-access
            pass_fds=(self.lock_fd,) if self.lock_fd is not None else ())

    def train(self, run: sweep.SweepRun, root: str) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        try:
            self.proc.stdin.write(json.dumps({"run": run.record(), "root": root}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if line:
            return json.loads(line)
        code = self.proc.wait()
        self.proc = None
        log_path = os.path.join(sweep.run_dir(root, run.name), "launcher.log")
        if code in (-signal.SIGTERM, -signal.SIGINT, 143, 130):
            return {"status": "interrupted"}
        # The worker died mid-run (e.g. the OOM killer's SIGKILL): the run failed, the others continue.
        error = (f"the in-process worker died ({'signal ' + str(-code) if code < 0 else 'exit ' + str(code)}"
                 f"{', e.g. out of memory' if code == -signal.SIGKILL else ''}): "
                 f"{sweep_executor._error_tail(log_path)}")  # pylint: disable=protected-access
        sweep_executor.record_failure(root, run.name, error, code)
        return {"status": "failed", "error": error}

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(signum)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            self.proc.wait()
            self.proc = None


def _execute_pool(todo: list, root: str, workers: int, lock_fd, progress: sweep_executor.SweepProgress) -> list:
    slots = sweep_executor.core_slots(workers)[:len(todo)]
    pool = [_Worker(cores, lock_fd) for cores in slots]
    work: queue.Queue = queue.Queue()
    for run in todo:
        work.put(run)
    done: queue.Queue = queue.Queue()
    stopping = threading.Event()

    def serve(worker: _Worker) -> None:
        try:
            while not stopping.is_set():
                try:
                    run = work.get_nowait()
                except queue.Empty:
                    return
                done.put(("start", run, None))
                try:
                    result = worker.train(run, root)
                except Exception as e:  # pylint: disable=broad-except
                    result = {"status": "failed", "error": _error_text(e)}
                done.put(("finish", run, result))
        finally:
            worker.close()
            done.put(("exit", None, None))

    def forward(signum, frame):
        del frame
        stopping.set()
        for worker in pool:
            worker.signal(signal.SIGTERM)

    threads = [threading.Thread(target=serve, args=(w,), daemon=True) for w in pool]
    outcomes = []
    with sweep_executor.signals_stop_sweep(forward, (signal.SIGTERM, signal.SIGINT), progress, stopping), \
            sweep_executor.cpu_peak_for_runs(slots, progress.stream):   # before any worker starts: they inherit it
        for t in threads:
            t.start()
        running = len(threads)
        while running:
            try:
                kind, run, result = done.get(timeout=0.5)
            except queue.Empty:
                continue
            if kind == "exit":
                running -= 1
            elif kind == "start":
                progress.start(run)
            else:
                outcome = sweep_executor.Outcome.from_result(run, root, result)
                outcomes.append(outcome)
                if outcome.status != "interrupted" or not stopping.is_set():
                    progress.finish(outcome)
                sweep.collect_runs_csv(root)
                if outcome.status == "interrupted":
                    stopping.set()
    return outcomes


# --- the worker process -----------------------------------------------------------------------------

def worker_main() -> None:
    """Reads runs from stdin and trains them one after another; one JSON result line per run."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    results = os.fdopen(os.dup(1), "w", buffering=1)   # the protocol; fd 1 itself goes to each run's log
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)          # the launcher forwards SIGTERM
    _quiet()
    enable_compilation_cache()
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        try:
            result = train_one(message["run"], message["root"])
        except (KeyboardInterrupt, SystemExit):
            result = {"status": "interrupted"}
        results.write(json.dumps(result) + "\n")
        if result["status"] == "interrupted":
            break


def executor_for(name: str, launcher: str | None = None):
    """run_sweep's ``executor`` for --executor=NAME: None = the subprocess executor."""
    if name not in ("inprocess", "subprocess"):
        raise ValueError(f"unknown executor {name!r}; use inprocess or subprocess")
    if name == "subprocess" or launcher:
        return None
    return execute


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker_main()
    else:
        print("usage: python -m experiments.sweep_inprocess --worker  (started by experiments.sweep)", file=sys.stderr)
        sys.exit(2)
