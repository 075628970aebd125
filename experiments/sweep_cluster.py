"""What the cluster sweep backends (experiments/sweep_ray.py, experiments/sweep_slurm.py) share.

Both plug into ``experiments.sweep_executor.run_sweep`` (its ``preflight`` and ``executor`` hooks), so the
plan, the lock on ROOT/.lock, the skip/resume/retry bookkeeping, sweep.json and runs.csv are the local
backend's. What differs is only where a run's command runs; the command itself is the subprocess
executor's (``sweep_executor.execute_run``: ``python -m experiments.train ...`` with the run's gin and
workdir, the ``--launcher`` prefix, launcher.json/launcher.log), so a resumed run is the trainer's exact resume.

- ``require(module, pin)``: the lazy import of ray / submitit, or an error naming the install command.
- ``run_resources``: what a run asks of a host (CPUs, accelerator devices) from its planned mesh.
- ``check_capacity``: refuses, before anything is submitted, a run that asks for more than any node has.
- ``run_task``: the per-run work on a Ray worker or in a SLURM job.
- ``drive``: submits the runs, records each outcome (and rewrites runs.csv) as it comes back, requeues
  runs whose training was preempted, and stops cleanly on SIGTERM/SIGINT.
"""
from __future__ import annotations

import importlib
import math
import os
import signal
import socket
import subprocess
import threading
import time
from typing import Any, Callable, Sequence

from experiments import sweep_executor
from scaling.sweep import SweepError, SweepRun, collect_runs_csv

ACCELERATORS = ("cpu", "gpu", "tpu")
PINS = {"ray": "ray==2.60.0", "submitit": "submitit==1.5.4"}


class BackendError(SweepError):
    """A cluster backend refuses to start (package missing, no cluster, a run too big for every node)."""


def require(module: str):
    """Imports ``module`` (ray, submitit) or raises BackendError naming the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BackendError(f"--backend needs the Python package {module!r}, which is not installed ({e}); install "
                           f"it with `pip install {PINS.get(module, module)}` (it is pinned in requirements.txt)"
                           ) from None


def mesh_devices(run: SweepRun) -> int:
    """Devices one host of the run needs: the product of its mesh's fixed axes (a -1 axis takes what is left,
    so it asks for at least one)."""
    mesh = run.planned.get("mesh") or [-1, 1, 1]
    return max(1, math.prod(n for n in mesh if n > 0))


def run_resources(run: SweepRun, accelerator: str, cores_per_run: int = 1) -> dict:
    """{cpus, devices, accelerator} of one run: on CPU the mesh's devices are cores (fake XLA devices), on
    GPU/TPU they are that many accelerators beside ``cores_per_run`` cores."""
    if accelerator not in ACCELERATORS:
        raise BackendError(f"--accelerator must be one of {', '.join(ACCELERATORS)}, got {accelerator!r}")
    devices = mesh_devices(run)
    cpus = max(cores_per_run, devices) if accelerator == "cpu" else cores_per_run
    return {"cpus": cpus, "devices": devices if accelerator != "cpu" else 0, "accelerator": accelerator}


def check_capacity(runs: Sequence[SweepRun], accelerator: str, cores_per_run: int,
                   nodes: Sequence[dict], where: str) -> None:
    """Refuses the sweep if some run asks for more CPUs or devices than the largest node has.

    ``nodes``: one dict per node, {"cpus": n, "gpu": n, "tpu": n}; ``where`` names the cluster in the message.
    """
    if not nodes:
        raise BackendError(f"{where}: no node is available; nothing was submitted")
    most_cpus = max(n.get("cpus", 0) for n in nodes)
    most_devices = max(n.get(accelerator, 0) for n in nodes) if accelerator != "cpu" else most_cpus
    problems = []
    for run in runs:
        need = run_resources(run, accelerator, cores_per_run)
        mesh = "x".join(str(n) for n in run.planned.get("mesh") or [-1, 1, 1])
        if accelerator != "cpu" and need["devices"] > most_devices:
            problems.append(f"run {run.name} needs {need['devices']} {accelerator.upper()}(s) on one host (mesh "
                            f"data x fsdp x tensor = {mesh}) but the largest node has {most_devices}")
        elif need["cpus"] > most_cpus:
            problems.append(f"run {run.name} needs {need['cpus']} CPU(s) on one host (mesh data x fsdp x tensor = "
                            f"{mesh}, --cores_per_run={cores_per_run}) but the largest node has {most_cpus}")
    if problems:
        raise BackendError(f"{where}: {len(problems)} run(s) ask for more than any node has; nothing was submitted: "
                           + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
                           + ". Shrink their mesh (MeshConfig) or use a cluster with bigger nodes")


def refuse_multi_host(hosts_per_run: int, backend: str) -> None:
    if hosts_per_run > 1:
        raise BackendError(f"--hosts_per_run={hosts_per_run}: runs that span several hosts are not supported on the "
                           f"{backend} backend (it starts one process per run); nothing was submitted. Train such a run "
                           f"on its own with `python -m experiments.train` on every host (README \"Multi-host\"), or "
                           f"several processes on one host with --launcher='python -m experiments.launch "
                           f"--num_processes=N --'")


# --- the per-run work (on a Ray worker, in a SLURM job) ------------------------------------------------------

def terminate(proc: subprocess.Popen | None, timeout: float = 120.0) -> None:
    """SIGTERM to a run's training process (it checkpoints and exits), SIGKILL if it outlives ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except ProcessLookupError:
        pass


def run_task(record: dict, root: str, launcher: str | None = None, state: dict | None = None,
             register: Callable[[subprocess.Popen | None], None] = lambda p: None) -> dict:
    """Trains (or resumes) one run of sweep.json's records here, with the subprocess executor's command;
    returns the outcome's wire form (sweep_executor.Outcome.as_result) plus the host. A KeyboardInterrupt
    (Ray's cancel) lets the training process checkpoint, then reports the run interrupted."""
    run = SweepRun(**record)
    live: list[subprocess.Popen] = []

    def track(proc):
        if proc is None:
            live.clear()
        else:
            live.append(proc)
        register(proc)
    try:
        outcome = sweep_executor.execute_run(run, root, launcher=launcher, register=track, state_extra=state)
    except KeyboardInterrupt:
        for proc in list(live):
            terminate(proc)
        return {"status": "interrupted", "host": socket.gethostname()}
    return dict(outcome.as_result(), host=socket.gethostname())


# --- the driver ----------------------------------------------------------------------------------------------

def drive(todo: Sequence[SweepRun], root: str, progress: sweep_executor.SweepProgress, *,
          submit: Callable[[SweepRun], Any], wait: Callable[[list, float], list],
          cancel: Callable[[list], None], requeues: int = 3) -> list[sweep_executor.Outcome]:
    """Submits every run and records the outcomes as they come back (runs.csv rewritten after each).

    ``submit(run) -> handle``; ``wait(handles, timeout_s) -> [(handle, result)]`` for the handles done by
    then, result being the wire form or an exception; ``cancel(handles)`` asks them to stop (they checkpoint).
    A run whose training was preempted (SIGTERM: it checkpointed and exited) is submitted again, at most
    ``requeues`` times, and resumes from its checkpoint; a run whose task died without a result is failed
    with the error (the next launch retries it, like any failed run)."""
    outcomes: list[sweep_executor.Outcome] = []
    if not todo:
        progress.close()
        return outcomes
    stopping = threading.Event()
    live: dict[Any, SweepRun] = {}
    requeued: dict[str, int] = {}

    def stop(signum, frame):
        del signum, frame
        stopping.set()

    with sweep_executor.signals_stop_sweep(stop, (signal.SIGTERM, signal.SIGINT), progress, stopping):
        for run in todo:
            live[submit(run)] = run
            progress.start(run)
        cancelled = False
        while live:
            if stopping.is_set() and not cancelled:
                cancel(list(live))
                cancelled = True
            for handle, result in wait(list(live), 1.0):
                run = live.pop(handle)
                if isinstance(result, BaseException):
                    error = f"{type(result).__name__}: {result}".replace("\n", " | ")[:600]
                    status = "interrupted" if cancelled else "failed"
                    if status == "failed":
                        sweep_executor.record_failure(root, run.name, error)
                    result = {"status": status, "error": error if status == "failed" else ""}
                if (result["status"] == "interrupted" and not stopping.is_set()
                        and requeued.get(run.name, 0) < requeues):
                    requeued[run.name] = requeued.get(run.name, 0) + 1
                    print(f"[sweep] requeued {run.name} (preempted; it resumes from its checkpoint)",
                          file=progress.stream, flush=True)
                    live[submit(run)] = run
                    continue
                outcome = sweep_executor.Outcome.from_result(run, root, result)
                outcomes.append(outcome)
                if outcome.status != "interrupted" or not stopping.is_set():
                    progress.finish(outcome)
                collect_runs_csv(root)
    return outcomes


def wait_tcp(address: str, timeout: float, what: str) -> None:
    """Raises BackendError unless HOST:PORT accepts a TCP connection within ``timeout`` seconds."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise BackendError(f"{what} address {address!r} must be HOST:PORT (e.g. 10.0.0.1:6379) or 'auto'")
    deadline = time.time() + timeout
    last = None
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=max(0.1, min(2.0, deadline - time.time()))):
                return
        except OSError as e:
            last = e
        if time.time() >= deadline:
            raise BackendError(f"no {what} reachable at {address} within {timeout:g} s ({last}); nothing was "
                               f"started. Start one (`ray start --head`) or pass the right --address")
        time.sleep(0.2)
