"""Start N local processes of one multi-process JAX job: `python -m experiments.launch --num_processes=2 -- CMD ...`.

For testing multi-host code on one machine (fake CPU devices) and for single-machine multi-GPU
users who want one process per GPU group. Each process i runs CMD with

    JAX_COORDINATOR_ADDRESS=127.0.0.1:<port>  JAX_NUM_PROCESSES=N  JAX_PROCESS_ID=i

which scaling.train.distributed (experiments.train) reads to call jax.distributed.initialize;
--devices_per_process=K gives each process K fake CPU devices (XLA_FLAGS
--xla_force_host_platform_device_count=K, JAX_PLATFORMS=cpu); --gpus_per_process=G gives
process i the GPUs i*G .. i*G+G-1 (JAX_LOCAL_DEVICE_IDS). Every output line is prefixed with
[p<i>]. If one process fails, the others are stopped (SIGTERM, then SIGKILL after --grace_s) and
the launcher exits with that process's status. SIGTERM/SIGINT to the launcher are forwarded to all
processes (the trainer checkpoints and exits; the launcher then exits 128+signal), and the
processes get SIGTERM if the launcher itself is killed. So a sweep can hand each run to it:

    python -m experiments.launch --num_processes=2 --devices_per_process=4 -- \
        python -m experiments.train --gin_file=gin/smoke.gin --workdir=/tmp/smoke2
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 2, "Number of processes to start (>= 1).")
_DEVICES_PER_PROCESS = flags.DEFINE_integer(
    "devices_per_process", None, "Fake CPU devices per process (forces the CPU backend); unset = real devices.")
_GPUS_PER_PROCESS = flags.DEFINE_integer(
    "gpus_per_process", None, "GPUs per process: process i sees GPUs i*G..i*G+G-1 (JAX_LOCAL_DEVICE_IDS).")
_COORDINATOR_PORT = flags.DEFINE_integer("coordinator_port", None,
                                         "Coordinator port on 127.0.0.1 (default: a free one).")
_GRACE_S = flags.DEFINE_float("grace_s", 10.0, "Seconds between SIGTERM and SIGKILL when stopping the processes.")
_TIMEOUT_S = flags.DEFINE_float("timeout_s", None, "Stop the whole job after this many seconds (exit 124).")

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_OUTPUT_TAGGED = "SCALING_OUTPUT_TAGGED"   # tells scaling.train.distributed not to tag lines again


def fail(message: str) -> None:
    print(f"launch: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_device_count(xla_flags: str, count: int) -> str:
    """XLA_FLAGS with --xla_force_host_platform_device_count set to ``count`` (replacing any)."""
    kept = re.sub(r"--xla_force_host_platform_device_count=\S+", "", xla_flags).split()
    return " ".join(kept + [f"--xla_force_host_platform_device_count={count}"])


def process_env(base: dict, index: int, num_processes: int, port: int, devices_per_process: int | None = None,
                gpus_per_process: int | None = None) -> dict:
    """The environment of process ``index``."""
    env = dict(base)
    env.update({ENV_COORDINATOR: f"127.0.0.1:{port}", ENV_NUM_PROCESSES: str(num_processes),
                ENV_PROCESS_ID: str(index), ENV_OUTPUT_TAGGED: "1", "PYTHONUNBUFFERED": "1"})
    if devices_per_process is not None:
        env["XLA_FLAGS"] = with_device_count(env.get("XLA_FLAGS", ""), devices_per_process)
        env["JAX_PLATFORMS"] = "cpu"
    if gpus_per_process is not None:
        env["JAX_LOCAL_DEVICE_IDS"] = ",".join(str(index * gpus_per_process + g) for g in range(gpus_per_process))
    return env


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the launcher dies, even by SIGKILL (Linux prctl)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: a killed launcher leaves its processes to be stopped by hand


def _pump(index: int, stream, out, lock: threading.Lock) -> None:
    """Copies one process's output to ``out`` line by line, each prefixed with [p<i>]."""
    tag = f"[p{index}] ".encode()
    for line in iter(stream.readline, b""):
        with lock:
            out.write(tag + line if line.endswith(b"\n") else tag + line + b"\n")
            out.flush()
    stream.close()


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _stop(procs: list, grace_s: float) -> None:
    """SIGTERM to the running processes, SIGKILL to those still alive after ``grace_s``."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(command: list[str], num_processes: int, *, devices_per_process: int | None = None,
           gpus_per_process: int | None = None, port: int | None = None, grace_s: float = 10.0,
           timeout_s: float | None = None, out=None) -> int:
    """Runs ``command`` as processes 0..N-1 of one job; returns 0 if all succeed, else the first failure's status."""
    if num_processes < 1:
        raise ValueError(f"--num_processes must be >= 1, got {num_processes}")
    if not command:
        raise ValueError("no command given; put it after `--`, e.g. -- python -m experiments.train ...")
    out = out if out is not None else sys.stdout.buffer
    port = port or free_port()
    lock = threading.Lock()
    procs, pumps = [], []
    for i in range(num_processes):
        env = process_env(os.environ, i, num_processes, port, devices_per_process, gpus_per_process)
        # Own process group: a SIGTERM/SIGINT meant for the job reaches only what we forward.
        # (All are started before any output thread, so the pre-exec hook runs single-threaded.)
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      start_new_session=True, preexec_fn=_die_with_parent))
    for i, p in enumerate(procs):
        t = threading.Thread(target=_pump, args=(i, p.stdout, out, lock), daemon=True)
        t.start()
        pumps.append(t)

    def say(message: str) -> None:
        with lock:
            out.write(f"launch: {message}\n".encode())
            out.flush()

    say(f"{num_processes} processes of {' '.join(command)!r}, coordinator 127.0.0.1:{port}")
    forwarded = []

    def forward(signum, frame):
        forwarded.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)} \
        if threading.current_thread() is threading.main_thread() else {}
    status = 0
    start = time.monotonic()
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i, code = failed[0]
                still = [j for j, c in enumerate(codes) if c is None]
                say(f"process {i} {_describe(code)}; stopping the other processes {still}" if still
                    else f"process {i} {_describe(code)}")
                _stop(procs, grace_s)
                status = code if code > 0 else 128 - code
                break
            if all(c == 0 for c in codes):
                break
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                say(f"the job ran past --timeout_s={timeout_s:g}; stopping all processes")
                _stop(procs, grace_s)
                status = 124
                break
            time.sleep(0.1)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for t in pumps:
            t.join(timeout=5)
    if status == 0 and forwarded:
        # Stopped on request (e.g. a preempted job that checkpointed): report it as the signal's status.
        status = 128 + forwarded[0]
        say(f"all {num_processes} processes stopped after {signal.Signals(forwarded[0]).name}")
    elif status == 0:
        say(f"all {num_processes} processes finished")
    return status


def main(argv):
    command = argv[1:]
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        fail("no command given; usage: python -m experiments.launch --num_processes=N [--devices_per_process=K] "
             "-- python -m experiments.train --gin_file=... --workdir=...")
    if _NUM_PROCESSES.value < 1:
        fail(f"--num_processes must be >= 1, got {_NUM_PROCESSES.value}")
    for name, value in (("devices_per_process", _DEVICES_PER_PROCESS.value),
                        ("gpus_per_process", _GPUS_PER_PROCESS.value)):
        if value is not None and value < 1:
            fail(f"--{name} must be >= 1, got {value}")
    if _DEVICES_PER_PROCESS.value is not None and _GPUS_PER_PROCESS.value is not None:
        fail("--devices_per_process (fake CPU devices) and --gpus_per_process exclude each other")
    sys.exit(launch(command, _NUM_PROCESSES.value, devices_per_process=_DEVICES_PER_PROCESS.value,
                    gpus_per_process=_GPUS_PER_PROCESS.value, port=_COORDINATOR_PORT.value,
                    grace_s=_GRACE_S.value, timeout_s=_TIMEOUT_S.value))


if __name__ == "__main__":
    app.run(main)
