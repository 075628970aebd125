"""Multi-process (multi-host) start-up through JAX's own runtime, ``jax.distributed``.

Every process of a job runs the same command; ``initialize`` connects it to the others before any
device is touched. Afterwards ``jax.devices()`` lists the devices of *all* processes (the trainer's
mesh spans them), ``jax.local_devices()`` this process's, and ``jax.process_index()`` says which
process this is (process 0 writes the run's logs and summary; all write orbax checkpoints).

Where the three numbers come from, first match wins:
  1. flags: --coordinator_address=HOST:PORT --num_processes=N --process_id=I (experiments.train);
  2. environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (what
     experiments.launch sets for N local processes);
  3. JAX's cluster auto-detection for whatever is still unset: Cloud TPU (the TPU VM metadata),
     SLURM (SLURM_JOB_ID, SLURM_NTASKS, SLURM_PROCID, ...), Open MPI (OMPI_MCA_orte_hnp_uri, ...).

A dead process must not leave the others waiting forever: the coordination service declares a
process dead when its heartbeats stop for ``heartbeat_timeout`` seconds and then terminates the
survivors with an error naming it; a collective whose peer vanished fails on the broken connection.
``initialization_timeout`` bounds the wait for all processes to connect at start-up.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import sys
import time
import traceback
from typing import Mapping

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
# Set by experiments.launch, which tags each child's output lines itself.
ENV_OUTPUT_TAGGED = "SCALING_OUTPUT_TAGGED"

# Environment variables by which JAX's auto-detection recognises a cluster (for messages only;
# jax.distributed does the detection itself).
_CLUSTER_MARKERS = (
    ("SLURM", ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID")),
    ("Open MPI", ("OMPI_MCA_orte_hnp_uri",)),
    ("Open MPI", ("OMPI_MCA_ess_base_jobid", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")),
    ("Cloud TPU", ("TPU_WORKER_ID",)),
    ("Cloud TPU", ("TPU_WORKER_HOSTNAMES",)),
    ("Cloud TPU", ("TPU_ACCELERATOR_TYPE",)),
)


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How this process joins the job; None = from the environment / cluster auto-detection."""
    coordinator_address: str | None = None   # HOST:PORT of process 0's coordination service
    num_processes: int | None = None
    process_id: int | None = None
    initialization_timeout: int = 300        # seconds to wait for every process to connect
    heartbeat_timeout: int = 100             # seconds without heartbeats before a process is declared dead
    shutdown_timeout: int = 300              # seconds the processes wait for each other at exit


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def resolve(config: DistributedConfig, environ: Mapping[str, str] | None = None) -> DistributedConfig:
    """Fills unset fields from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID."""
    environ = os.environ if environ is None else environ
    resolved = dataclasses.replace(
        config,
        coordinator_address=config.coordinator_address or environ.get(ENV_COORDINATOR) or None,
        num_processes=config.num_processes if config.num_processes is not None
        else _env_int(environ, ENV_NUM_PROCESSES),
        process_id=config.process_id if config.process_id is not None else _env_int(environ, ENV_PROCESS_ID))
    if resolved.num_processes is not None and resolved.num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {resolved.num_processes}")
    if resolved.process_id is not None and resolved.num_processes is not None \
            and not 0 <= resolved.process_id < resolved.num_processes:
        raise ValueError(f"process_id {resolved.process_id} must be in [0, num_processes="
                         f"{resolved.num_processes}); process ids are 0-based")
    if resolved.coordinator_address is not None and ":" not in resolved.coordinator_address:
        raise ValueError(f"coordinator address {resolved.coordinator_address!r} needs a port: HOST:PORT "
                         "(process 0's host, any free port, the same on every process)")
    for name in ("initialization_timeout", "heartbeat_timeout", "shutdown_timeout"):
        if getattr(resolved, name) <= 0:
            raise ValueError(f"DistributedConfig.{name} must be positive seconds, got {getattr(resolved, name)}")
    return resolved


def detected_cluster(environ: Mapping[str, str] | None = None) -> str | None:
    """The cluster kind whose environment variables are present (SLURM, Open MPI, Cloud TPU), or None."""
    environ = os.environ if environ is None else environ
    for name, markers in _CLUSTER_MARKERS:
        if all(m in environ for m in markers):
            return name
    return None


def requested(config: DistributedConfig, environ: Mapping[str, str] | None = None) -> bool:
    """True when flags or JAX_* variables name a coordinator or a job of more than one process."""
    resolved = resolve(config, environ)
    return (resolved.num_processes or 1) > 1 or resolved.coordinator_address is not None


def initialize(config: DistributedConfig = DistributedConfig(), *, tag_output: bool = True) -> tuple[int, int]:
    """Joins the job (``jax.distributed.initialize``); returns (process_index, process_count).

    Call before anything asks JAX for devices. Fields left None come from the environment and
    then from JAX's cluster auto-detection (Cloud TPU, SLURM, Open MPI). With ``tag_output``, this
    process's stdout/stderr lines start with ``[p<i>]`` when there is more than one process (unless
    experiments.launch already tags them).
    """
    import jax  # imported here: the module must be importable before jax is configured

    resolved = resolve(config)
    if resolved.coordinator_address is None and resolved.num_processes is None and detected_cluster() is None:
        print("distributed: no coordinator given and no cluster detected in the environment; asking JAX "
              "to auto-detect (Cloud TPU metadata). Elsewhere pass --coordinator_address/--num_processes/"
              f"--process_id or set {ENV_COORDINATOR}/{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID}.",
              file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        jax.distributed.initialize(
            coordinator_address=resolved.coordinator_address,
            num_processes=resolved.num_processes,
            process_id=resolved.process_id,
            initialization_timeout=resolved.initialization_timeout,
            heartbeat_timeout_seconds=resolved.heartbeat_timeout,
            shutdown_timeout_seconds=resolved.shutdown_timeout)
    except Exception as e:  # jax raises RuntimeError / ValueError / XlaRuntimeError with terse texts
        cluster = detected_cluster()
        where = f"{cluster} environment detected" if cluster else "no cluster environment detected"
        raise RuntimeError(
            f"jax.distributed.initialize failed ({where}; coordinator={resolved.coordinator_address}, "
            f"num_processes={resolved.num_processes}, process_id={resolved.process_id}): "
            f"{type(e).__name__}: {e}. Check that every process runs with the same coordinator HOST:PORT "
            f"(reachable from all hosts), the same process count and a distinct process id, and that all "
            f"of them start within initialization_timeout={resolved.initialization_timeout}s.") from e
    index, count = jax.process_index(), jax.process_count()
    if tag_output and count > 1 and not os.environ.get(ENV_OUTPUT_TAGGED):
        tag_process_output(index)
    print(f"distributed: process {index} of {count} joined via {resolved.coordinator_address or 'auto-detection'} "
          f"in {time.perf_counter() - start:.1f}s; {jax.local_device_count()} local of {jax.device_count()} "
          f"devices ({jax.default_backend()}); a peer silent for {resolved.heartbeat_timeout}s ends the job",
          flush=True)
    return index, count


@contextlib.contextmanager
def fail_fast():
    """Wraps an entry point: in a multi-process job, a failing process exits at once.

    On a normal exit JAX waits (up to shutdown_timeout, 300 s) at a shutdown barrier for every
    process; a process that failed alone would sit there while the others wait for it in their
    next collective. Exiting without that barrier (os._exit, after printing the error) lets the
    others see it as dead within heartbeat_timeout and stop with an error naming it.
    """
    try:
        yield
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if _joined_processes() > 1 and code != 0:
            _exit_now(code)
        raise
    except BaseException:
        if _joined_processes() > 1:
            traceback.print_exc()
            _exit_now(1)
        raise


def _joined_processes() -> int:
    """Processes in the job this process joined through jax.distributed (1 when it joined none); asks JAX,
    which holds that state, without starting a backend in a process that never joined."""
    import jax  # pylint: disable=import-outside-toplevel
    return jax.process_count() if jax.distributed.is_initialized() else 1


def _exit_now(code: int) -> None:
    print(f"distributed: this process failed (status {code}); leaving the job without the shutdown "
          f"barrier so the other processes stop too", file=sys.stderr, flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def sync(name: str) -> None:
    """Barrier over all processes (no-op with one); ``name`` must be the same string everywhere."""
    import jax
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


class _TaggedStream(io.TextIOBase):
    """A text stream that starts every line with a tag (whole lines only, so interleaving stays readable)."""

    def __init__(self, stream, tag: str):
        self._stream, self._tag, self._at_line_start = stream, tag, True

    def write(self, text: str) -> int:
        out = []
        for piece in text.splitlines(keepends=True):
            if self._at_line_start:
                out.append(self._tag)
            out.append(piece)
            self._at_line_start = piece.endswith(("\n", "\r"))
        self._stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self):
        return getattr(self._stream, "encoding", "utf-8")


def tag_process_output(process_index: int) -> None:
    """Prefixes this process's Python stdout/stderr lines with ``[p<i>]`` (logs say which process speaks)."""
    tag = f"[p{process_index}] "
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, _TaggedStream):
            setattr(sys, name, _TaggedStream(stream, tag))
