"""The SLURM sweep backend: `python -m experiments.sweep --backend=slurm [--slurm_partition=P] ...` (submitit).

The runs still to do go out as one job array (``submitit.SlurmExecutor.map_array``: ``#SBATCH --array=0-N%P``,
P = --workers, default all at once); array task i runs the subprocess executor's command of run i
(``python -m experiments.train`` with its gin into ROOT/runs/<name>/, after the ``--launcher`` prefix, as
``--dry_run`` prints it: experiments/sweep_cluster.py ``run_task``). Each task asks for the largest run's
resources (``sweep_cluster.run_resources``: --cores_per_run CPUs, the mesh's devices as GPUs with
--accelerator=gpu; a CPU mesh's devices as CPUs). The launcher waits for the array, rewriting runs.csv as tasks
end, and holds ROOT/.lock meanwhile (run it where it can stay, e.g. in tmux on the login node); everything else
(sweep.json, skip/resume/retry, runs.csv) is the local backend's (``sweep_executor.run_sweep``).

Preemption and time limits: SLURM signals USR2 before the limit (``--signal=USR2@90``, submitit); the job's
``checkpoint`` SIGTERMs the training process, which saves a checkpoint and exits, and submitit requeues the
task (``--requeue``; submitit's local executor restarts it), which resumes exactly from that checkpoint. A
SIGTERM that reaches the training process itself (a preemption) also checkpoints it; the launcher then
submits the run again (--max_retries times) and it resumes. Jobs write their submitit logs under ROOT/slurm/.

``--slurm_cluster=local`` runs the jobs as local processes (submitit's LocalExecutor: real subprocesses,
same pickled job, same checkpoint/requeue path); the tests use it. TPUs are not scheduled by SLURM
(use --backend=ray); runs spanning hosts (--hosts_per_run > 1) are refused.
"""
from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from typing import Sequence

from experiments import sweep_cluster, sweep_executor
from scaling.core import fileio
from scaling.sweep import SweepRun, run_dir

SIGNAL_DELAY_S = 90     # USR2 this long before the time limit: time for a checkpoint


class RunJob:
    """The callable every array task runs (pickled by submitit): one run's command, checkpointable."""

    def __init__(self, root: str, launcher: str | None):
        self.root, self.launcher = root, launcher
        self._proc = None

    def __getstate__(self):
        return {"root": self.root, "launcher": self.launcher, "_proc": None}

    def _track(self, proc) -> None:
        self._proc = proc

    def __call__(self, record: dict) -> dict:
        job = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")
        return sweep_cluster.run_task(record, self.root, self.launcher, register=self._track,
                                      state={"executor": "slurm", "slurm_job": job})

    def checkpoint(self, record: dict):
        """submitit calls this on USR2 (preemption / time limit): the trainer checkpoints on SIGTERM; the
        requeued task runs the same command, which resumes from that checkpoint."""
        sweep_cluster.terminate(self._proc)
        from submitit.helpers import DelayedSubmission  # pylint: disable=import-outside-toplevel
        return DelayedSubmission(self, record)


def _gpus_in(gres: str) -> int:
    """GPUs of one sinfo %G field, e.g. 'gpu:a100:8(S:0-1),shard:8' -> 8; '(null)' -> 0."""
    total = 0
    for item in gres.split(","):
        if item.startswith("gpu"):
            match = re.match(r"gpu(?::[^:(]+)?:(\d+)", item)
            total += int(match.group(1)) if match else 0
    return total


class SlurmBackend:
    """``preflight`` and ``execute`` for sweep_executor.run_sweep (its ``preflight`` / ``executor`` hooks)."""

    def __init__(self, *, cluster: str = "slurm", partition: str | None = None, time_min: int = 24 * 60,
                 accelerator: str = "cpu", cores_per_run: int = 1, workers: int | None = None,
                 launcher: str | None = None, max_retries: int = 3, hosts_per_run: int = 1):
        if cluster not in ("slurm", "local"):
            raise sweep_cluster.BackendError(f"--slurm_cluster must be slurm or local, got {cluster!r}")
        self.cluster, self.partition, self.time_min = cluster, partition, time_min
        self.accelerator, self.cores_per_run, self.workers = accelerator, cores_per_run, workers
        self.launcher, self.max_retries, self.hosts_per_run = launcher, max_retries, hosts_per_run
        self.submitit = None

    # --- before anything is written ---

    def preflight(self, runs: Sequence[SweepRun], root: str) -> None:
        sweep_cluster.refuse_multi_host(self.hosts_per_run, "slurm")
        if self.accelerator == "tpu":
            raise sweep_cluster.BackendError("--accelerator=tpu: SLURM does not schedule TPUs; use --backend=ray "
                                             "(a Ray cluster on the TPU VMs); nothing was submitted")
        self.submitit = sweep_cluster.require("submitit")
        sweep_cluster.check_capacity(runs, self.accelerator, self.cores_per_run, self.nodes(),
                                     "SLURM cluster" if self.cluster == "slurm" else "this machine (--slurm_cluster=local)")
        self.refuse_live_jobs(runs, root)

    def refuse_live_jobs(self, runs: Sequence[SweepRun], root: str) -> None:
        """The jobs of a launcher that was killed keep running (SLURM owns them, not the launcher) and ROOT/.lock
        is free again: refuse a second sweep while any of them still trains one of ``runs``."""
        states = {r.name: fileio.read_json_object(os.path.join(run_dir(root, r.name), "launcher.json")) or {}
                  for r in runs}
        states = {n: s for n, s in states.items() if s.get("status") == "running" and s.get("executor") == "slurm"}
        if not states:
            return
        if self.cluster == "local":
            live = [n for n, s in states.items() if s.get("host") == socket.gethostname()
                    and sweep_executor.process_alive(s.get("pid", -1), b"submitit")]
        else:
            try:
                queued = set(subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True, timeout=30,
                                            check=True).stdout.split())
            except (subprocess.SubprocessError, OSError):
                queued = set()
            live = [n for n, s in states.items() if str(s.get("slurm_job")) in queued]
        if live:
            raise sweep_executor.LockedError(
                f"sweep root {root} is in use: run(s) {', '.join(live)} are still training in SLURM job(s) "
                f"{', '.join(str(states[n].get('slurm_job')) for n in live)} of an earlier launcher; wait for them "
                f"(then rerun to collect and resume) or cancel them (scancel)")

    def nodes(self) -> list[dict]:
        """{cpus, gpu} per node: `sinfo` on SLURM, this machine for --slurm_cluster=local."""
        if self.cluster == "local":
            gpus = len([p for p in glob.glob("/dev/nvidia*") if re.fullmatch(r"/dev/nvidia\d+", p)])
            return [{"cpus": os.cpu_count() or 1, "gpu": gpus}]
        if shutil.which("sinfo") is None:
            raise sweep_cluster.BackendError("no SLURM cluster reachable: `sinfo` is not on PATH (run the sweep on a "
                                             "login node of the cluster); nothing was submitted")
        try:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%c %G"], capture_output=True, text=True, timeout=30,
                                 check=True).stdout
        except (subprocess.SubprocessError, OSError) as e:
            raise sweep_cluster.BackendError(f"no SLURM cluster reachable: `sinfo` failed within 30 s ({e}); nothing "
                                             f"was submitted") from None
        nodes = []
        for line in out.splitlines():
            cpus, _, gres = line.strip().partition(" ")
            if cpus.isdigit():
                nodes.append({"cpus": int(cpus), "gpu": _gpus_in(gres.strip())})
        return nodes

    # --- the job array ---

    def parameters(self, runs: Sequence[SweepRun], workers: int | None = None) -> dict:
        """The array's resources: the largest request among ``runs`` (one job array shares them)."""
        needs = [sweep_cluster.run_resources(r, self.accelerator, self.cores_per_run) for r in runs]
        cpus = max((n["cpus"] for n in needs), default=self.cores_per_run)
        gpus = max((n["devices"] for n in needs), default=0)
        if self.cluster == "local":
            return {"timeout_min": self.time_min, "gpus_per_node": gpus}
        params = {"job_name": "sweep", "time": self.time_min, "nodes": 1, "ntasks_per_node": 1, "cpus_per_task": cpus,
                  "signal_delay_s": SIGNAL_DELAY_S, "array_parallelism": workers or max(1, len(runs)),
                  "additional_parameters": {"requeue": True}}
        if gpus:
            params["gpus_per_node"] = gpus
        if self.partition:
            params["partition"] = self.partition
        return params

    def executor(self, root: str, runs: Sequence[SweepRun], workers: int | None = None):
        submitit = self.submitit or sweep_cluster.require("submitit")
        folder = os.path.join(root, "slurm", "%j")
        ex = submitit.LocalExecutor(folder) if self.cluster == "local" else submitit.SlurmExecutor(folder)
        ex.update_parameters(**self.parameters(runs, workers))
        return ex

    def sbatch_script(self, root: str, runs: Sequence[SweepRun], workers: int | None = None) -> str:
        """The sbatch file of the sweep's job array as submitit renders it for ``runs`` (SLURM parameters; works
        off a cluster too: submitit's SlurmExecutor itself insists on finding srun)."""
        from submitit.slurm import slurm  # pylint: disable=import-outside-toplevel
        folder = os.path.join(root, "slurm", "%j")
        command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(folder)}"
        return slurm._make_sbatch_string(command=command, folder=folder, map_count=len(runs),  # pylint: disable=protected-access
                                         **self.parameters(runs, workers))

    def execute(self, todo: list, root: str, workers: int, lock_fd, progress) -> list:
        del workers, lock_fd   # the array's parallelism is --workers (self.workers); the lock stays with the launcher
        if not todo:
            progress.close()
            return []
        ex = self.executor(root, todo, self.workers)
        job = RunJob(root, self.launcher)
        array = dict(zip((r.name for r in todo), ex.map_array(job, [r.record() for r in todo])))

        def submit(run: SweepRun):
            first = array.pop(run.name, None)
            return first if first is not None else ex.submit(job, run.record())

        def wait(jobs: list, timeout: float) -> list:
            deadline = time.time() + timeout
            while True:
                done = [j for j in jobs if j.done()]
                if done or time.time() >= deadline:
                    break
                time.sleep(0.2)
            results = []
            for j in done:
                try:
                    results.append((j, j.result()))
                except Exception as e:  # pylint: disable=broad-except  (the job died: the run failed)
                    results.append((j, e))
            return results

        def cancel(jobs: list) -> None:
            for j in jobs:
                j.cancel(check=False)

        return sweep_cluster.drive(todo, root, progress, submit=submit, wait=wait, cancel=cancel,
                                   requeues=self.max_retries)
