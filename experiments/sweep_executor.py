"""The sweep executor: trains a sweep's runs as `python -m experiments.train` subprocesses.

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

``run_sweep(..., executor=)`` hands the runs to another executor instead of the subprocesses: the
entry points' default is experiments/sweep_inprocess.py (long-lived processes train the runs back to back).

The plan (file format, expansion, names, runs.csv) is scaling/sweep.py; this module launches entry points,
so it lives with them. Python API (experiments.sweep, experiments.reproduce): ``run_sweep(sweep_file, root,
only=..., exclude=...)`` -> SweepResult; ``RootLock``; ``train_command`` / ``shell_command``.

Size (~600 lines): one responsibility (running the runs: lock, pool, pinning and the per-core MFU peak,
progress, signals); the pieces share the launch state and are only used together.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures
from typing import Callable, Sequence

from scaling.core import fileio, records
from scaling.sweep import (REPO_ROOT, SweepError, SweepRun, collect_runs_csv, expand, run_dir, run_status, select,
                           write_sweep_json)


class LockedError(RuntimeError):
    """Another launcher holds ROOT/.lock."""


# --- commands ----------------------------------------------------------------------------------------

def train_command(run: SweepRun, root: str, launcher: str | None = None, python: str | None = None) -> list[str]:
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


def shell_command(run: SweepRun, root: str, launcher: str | None = None) -> str:
    """One self-contained shell line (cd to the repository, exact quoted flags) for any scheduler."""
    return f"cd {shlex.quote(REPO_ROOT)} && {shlex.join(train_command(run, root, launcher))}"


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


_PEAK_PROGRAM = "from scaling.train import mfu; print(repr(mfu.measure_cpu_peak()))"


def measure_slot_peak(cores: list[int] | None, timeout: float = 300.0) -> float | None:
    """Float32 matmul FLOP/s per core of one core slot: ``scaling.train.mfu.measure_cpu_peak`` in a CPU-only child
    process pinned to ``cores`` exactly as a worker or run is (None: every core of this process), divided by the
    slot's core count; None (said on stderr) when the measurement fails."""
    n_cores = len(cores) if cores else len(available_cores())
    env = dict(os.environ, JAX_PLATFORMS="cpu")   # the runs' environment (XLA_FLAGS included), on the CPU
    try:
        done = subprocess.run([sys.executable, "-c", _PEAK_PROGRAM], cwd=REPO_ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL, preexec_fn=_child_setup(cores))
        flops = float(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        print("[sweep] the matmul peak measurement failed; each run measures its own", file=sys.stderr, flush=True)
        return None
    return flops / n_cores if flops > 0 else None


@contextlib.contextmanager
def cpu_peak_for_runs(slots: Sequence[list[int] | None], stream=None, here: bool = False):
    """The CPU matmul peak of this sweep's runs, measured once, before any of them starts; yields the environment
    the runs need for it ({} when there is nothing to hand them), also set in os.environ while the block runs.

    A run's MFU peak is that of the cores it may use (scaling/train/mfu.py): per core, the same for every
    slot of equal size, so one slot is measured (``measure_slot_peak(slots[0])``: the same pinning as its
    worker, the other cores idle since nothing of the sweep runs yet) and ``mfu.PEAK_ENV`` hands the
    per-core figure to every run, which multiplies it by its own core count. Without it each run would probe
    while the others train (peak underestimated, MFU > 1). Nothing is measured when a cached peak for this
    machine exists (experiments.bench matmul's, which wins in mfu.peak_flops) or the variable is already set
    (e.g. by an enclosing sweep). ``here``: the runs train in this very process on all its cores (the
    in-process executor with one worker), so the measurement runs here too (no child's JAX start-up)."""
    from scaling.train import mfu  # pylint: disable=import-outside-toplevel
    if mfu.launcher_peak_per_core() is not None or mfu.read_cpu_peak() is not None or not slots:
        yield {}
        return
    started = time.time()
    if here:
        per_core = mfu.measure_cpu_peak() / mfu.process_cores()
    else:
        per_core = measure_slot_peak(slots[0])
    if per_core is None:
        yield {}
        return
    print(f"[sweep] matmul peak for MFU: {per_core / 1e9:.1f} GFLOP/s per core (one worker's cores, measured once in "
          f"{time.time() - started:.1f} s)", file=stream or sys.stderr, flush=True)
    extra = {mfu.PEAK_ENV: repr(per_core)}
    os.environ.update(extra)
    try:
        yield extra
    finally:
        os.environ.pop(mfu.PEAK_ENV, None)


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


def wait_for_previous_process(state_path: str, timeout: float = 300.0) -> None:
    """Waits (at most ``timeout`` s) for the training process an earlier attempt of this run started on this host,
    if it is still alive: a cluster backend that retries a run whose worker was killed must not start a second
    trainer in the workdir while the first one (SIGTERMed with its worker) is still writing its checkpoint."""
    state = fileio.read_json_object(state_path) or {}
    pid = state.get("train_pid")
    if not isinstance(pid, int) or state.get("host") != socket.gethostname() or pid == os.getpid():
        return
    deadline = time.time() + timeout
    while time.time() < deadline and process_alive(pid, b"experiments.train"):
        time.sleep(0.2)


def process_alive(pid: int, marker: bytes = b"") -> bool:
    """Whether process ``pid`` of this host is alive (not a zombie) and its command line contains ``marker``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if marker not in f.read():
                return False
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


@dataclasses.dataclass
class Outcome:
    run: SweepRun
    status: str          # finished | failed | interrupted (signalled; resumes on the next launch)
    seconds: float = 0.0
    error: str = ""
    summary: dict | None = None
    cpu_seconds: float = 0.0     # user + system CPU time of the run's processes

    def as_result(self) -> dict:
        """The wire form of an outcome (what a worker process, a Ray task or a SLURM job sends back)."""
        return {"status": self.status, "seconds": self.seconds, "cpu_seconds": self.cpu_seconds, "error": self.error}

    @classmethod
    def from_result(cls, run: SweepRun, root: str, result: dict) -> "Outcome":
        """The Outcome of a run from its wire form; a finished run's summary is read from its directory."""
        summary = None
        if result["status"] == "finished":
            summary = fileio.read_json_object(os.path.join(run_dir(root, run.name), "summary.json"))
        return cls(run, result["status"], result.get("seconds", 0.0), result.get("error", ""), summary,
                   result.get("cpu_seconds", 0.0))


def record_failure(root: str, name: str, error: str, returncode: int | None = None) -> None:
    """Marks a run failed in its launcher.json when whatever ran it died before it could (a killed worker
    process, a lost Ray task, a SLURM job that ended without a result): runs.csv then shows the error."""
    state_path = os.path.join(run_dir(root, name), "launcher.json")
    state = fileio.read_json_object(state_path) or {}
    os.makedirs(os.path.dirname(state_path), exist_ok=True)
    fileio.write_json_atomic(state_path, dict(state, status="failed", returncode=returncode, error=error))


def execute_run(run: SweepRun, root: str, *, launcher: str | None = None, cores: list[int] | None = None,
                lock_fd: int | None = None, env: dict | None = None,
                register: Callable[[subprocess.Popen | None], None] = lambda p: None,
                state_extra: dict | None = None) -> Outcome:
    """Trains one run in a subprocess; records launcher.json (running -> finished|failed, plus ``state_extra``,
    e.g. the cluster backend and node) and launcher.log."""
    workdir = run_dir(root, run.name)
    os.makedirs(workdir, exist_ok=True)
    state_path = os.path.join(workdir, "launcher.json")
    log_path = os.path.join(workdir, "launcher.log")
    cmd = train_command(run, root, launcher)
    wait_for_previous_process(state_path)
    started = time.time()
    state = {"status": "running", "pid": os.getpid(), "host": socket.gethostname(),
             "started": datetime.datetime.now().isoformat(timespec="seconds"), "command": shlex.join(cmd),
             **(state_extra or {})}
    fileio.write_json_atomic(state_path, state)
    with open(log_path, "ab") as log:
        log.write(f"\n=== {state['started']} {shlex.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, preexec_fn=_child_setup(cores), start_new_session=True,
                                pass_fds=(lock_fd,) if lock_fd is not None else ())
        state["train_pid"] = proc.pid
        fileio.write_json_atomic(state_path, state)
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
    # records.is_finished: all planned steps, or an early-stopped run (TrainConfig.early_stopping_patience).
    finished = code == 0 and records.is_finished(summary, run.planned["steps"])
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


class SweepProgress:
    """Runs done/total, ETA and the current runs: a tqdm bar on a terminal, plain lines otherwise."""

    def __init__(self, todo: Sequence[SweepRun], total: int, done: int, workers: int, stream=None):
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

    def start(self, run: SweepRun) -> None:
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


def _run_flops(run: SweepRun) -> float:
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
    runs: list[SweepRun]                  # the selected runs
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
              executor: Callable[..., list[Outcome]] | None = None,
              preflight: Callable[[list[SweepRun], str], None] | None = None) -> SweepResult:
    """Expands ``sweep_file`` and trains its (selected) runs under ``root``; returns what happened.

    Resumable and failure-tolerant (see the module docstring). ``workers`` runs at a time (default:
    cores // cores_per_run); with several workers each run is pinned to its share of the cores, which
    also sizes XLA's and the tokenizer's thread pools, and the runs start largest-first (planned FLOPs)
    so that no big run is left alone at the end; runs.csv keeps the sweep's order. A run keeps its slot's
    cores also when it is the last one left (losses are bit-identical only at a fixed thread count). ``env`` is the runs' environment (default: ours). ``executor(todo, root, workers,
    lock_fd, progress) -> [Outcome]`` trains the runs instead of the subprocess executor (e.g.
    experiments/sweep_inprocess.py, which trains them in long-lived processes; experiments/sweep_ray.py and
    sweep_slurm.py, which hand them to a cluster). ``preflight(selected runs, root)`` runs under the lock before
    anything is written (a cluster backend connects and checks its resources there; it raises to refuse).
    """
    stream = stream or sys.stderr
    from scaling.train import checkpointing  # pylint: disable=import-outside-toplevel
    root = checkpointing.local_workdir(root, "sweep root")   # gs:// would become a local "gs:" folder: refuse it
    sweep, runs = expand(sweep_file)
    selected = select(runs, only, exclude)
    if not selected:
        raise SweepError(f"sweep file {sweep_file}: no runs left after --only={list(only)} "
                         f"--exclude_group={list(exclude)}")
    workers = workers or default_workers(cores_per_run)
    start = time.time()
    with RootLock(root) as lock:
        if preflight is not None:
            preflight(selected, root)
        write_sweep_json(root, sweep, sweep_file, runs)
        run_records = {r.name: r.record() for r in runs}
        todo, finished, failed_kept = [], 0, 0
        for run in selected:
            status, _, _ = run_status(root, run_records[run.name])
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
        progress = SweepProgress(todo, len(selected), done, workers, stream)
        if executor is not None:
            outcomes = executor(todo, root, workers, lock.fd, progress)
        else:
            outcomes = _execute(todo, root, workers, launcher, lock.fd, env, progress)
        csv_path = collect_runs_csv(root)
    counts: dict[str, int] = {}
    for run in selected:
        status = run_status(root, run_records[run.name])[0]
        counts[status] = counts.get(status, 0) + 1
    seconds = time.time() - start
    print(f"[sweep] {sweep.name}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
          + f" in {_duration(seconds)}; {csv_path}", file=stream, flush=True)
    return SweepResult(root, selected, outcomes, counts, seconds, csv_path)


@contextlib.contextmanager
def signals_stop_sweep(handler, signals, progress: SweepProgress, stopping: threading.Event):
    """Routes `signals` to `handler` while the block runs (main thread only), then restores the previous handlers
    and closes `progress`; when the block ended normally but `stopping` was set, raises KeyboardInterrupt (the
    executors' shared "stopped by a signal, rerun to resume" exit)."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        progress.close()
    if stopping.is_set():
        raise KeyboardInterrupt("sweep stopped by a signal; the runs checkpointed, rerun the same command to resume")


def _execute(todo: list[SweepRun], root: str, workers: int, launcher, lock_fd, env, progress: SweepProgress) -> list[Outcome]:
    outcomes: list[Outcome] = []
    if not todo:
        progress.close()
        return outcomes
    # The slots of `workers`, as many as there are runs: a run's cores (so its thread count and float rounding)
    # do not depend on how many other runs remain.
    slots = core_slots(workers)[:max(1, len(todo))]
    with cpu_peak_for_runs(slots, progress.stream) as peak_env:
        return _execute_slots(todo, root, slots, launcher, lock_fd, None if env is None else dict(env, **peak_env),
                              progress)


def _execute_slots(todo: list[SweepRun], root: str, slots: list, launcher, lock_fd, env,
                   progress: SweepProgress) -> list[Outcome]:
    outcomes: list[Outcome] = []
    free_slots = list(range(len(slots)))
    slot_lock = threading.Lock()
    live: set[subprocess.Popen] = set()
    stopping = threading.Event()

    def one(run: SweepRun) -> Outcome:
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

    with signals_stop_sweep(forward, (signal.SIGTERM, signal.SIGINT), progress, stopping):
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
    return outcomes
