"""The Ray sweep backend: `python -m experiments.sweep --backend=ray [--address=HOST:PORT] ...`.

Each run of the sweep is one Ray task that runs the subprocess executor's command for it
(``python -m experiments.train`` with the run's gin, into ROOT/runs/<name>/: experiments/sweep_cluster.py
``run_task``), with a resource request derived from the run's mesh (``sweep_cluster.run_resources``: CPUs,
and GPUs or the ``TPU`` resource with --accelerator=gpu|tpu). Everything else is the local backend's
(``sweep_executor.run_sweep``): the lock on ROOT/.lock, sweep.json, skipping finished runs, resuming
interrupted ones from their workdirs and retrying failed ones on the next call, runs.csv rewritten as
each task finishes.

- Without --address a Ray head is started on this machine (``ray.init``: --workers x --cores_per_run CPUs,
  or all of them); with it the sweep joins that cluster (``ray start --head`` printed the address; 'auto'
  finds a cluster started on this machine). An address that does not answer within --connect_timeout
  seconds is an error before anything is written or started.
- The repository (and its .venv) must be at the same path on every node, as for SLURM: the tasks run
  ``python -m experiments.train`` from it and write the sweep root, so that must be a shared file system.
- A task whose worker process or node dies is retried by Ray (``max_retries``); the retry waits for the old
  training process if it is still checkpointing on the same host, then resumes from the run's last
  checkpoint. A run whose training is preempted (SIGTERM: it checkpoints) is submitted again
  (``sweep_cluster.drive``). A run that fails is recorded failed; the next call retries it (--retry_failed).
- Before submission every run is checked against the nodes: one asking for more CPUs/GPUs/TPUs than the
  largest node has is refused with its name and the numbers; runs spanning hosts (--hosts_per_run > 1)
  are refused (one process per run).
- SIGTERM/SIGINT: the tasks are cancelled (each SIGTERMs its training process, which checkpoints); rerun
  the same command to resume.
"""
from __future__ import annotations

import os
from typing import Sequence

from experiments import sweep_cluster
from scaling.sweep import REPO_ROOT, SweepRun

LOCAL_OBJECT_STORE_BYTES = 128 * 2 ** 20   # the tasks move a few small dicts: a local head needs little


def _ray_task(record: dict, root: str, launcher: str | None) -> dict:
    """The Ray task of one run (module level, so workers import it from the repository)."""
    import ray  # pylint: disable=import-outside-toplevel
    node = ray.get_runtime_context().get_node_id()
    return sweep_cluster.run_task(record, root, launcher, state={"executor": "ray", "ray_node": node})


class RayBackend:
    """``preflight`` and ``execute`` for sweep_executor.run_sweep (its ``preflight`` / ``executor`` hooks)."""

    def __init__(self, *, address: str | None = None, accelerator: str = "cpu", cores_per_run: int = 1,
                 workers: int | None = None, launcher: str | None = None, max_retries: int = 3,
                 hosts_per_run: int = 1, connect_timeout: float = 30.0):
        self.address, self.accelerator, self.cores_per_run = address, accelerator, cores_per_run
        self.workers, self.launcher, self.max_retries = workers, launcher, max_retries
        self.hosts_per_run, self.connect_timeout = hosts_per_run, connect_timeout
        self.ray = None
        self.started = False     # this process connected (and shuts down) Ray

    # --- before anything is written ---

    def preflight(self, runs: Sequence[SweepRun], root: str) -> None:
        del root
        sweep_cluster.refuse_multi_host(self.hosts_per_run, "ray")
        for run in runs:
            sweep_cluster.run_resources(run, self.accelerator, self.cores_per_run)   # validates --accelerator
        self.ray = sweep_cluster.require("ray")
        self.connect()
        try:
            sweep_cluster.check_capacity(runs, self.accelerator, self.cores_per_run, self.nodes(),
                                         f"Ray cluster {self.address or '(local head)'}")
        except sweep_cluster.BackendError:
            self.shutdown()
            raise

    def connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # Workers started by a local head inherit this environment: let them import the project.
        path = os.environ.get("PYTHONPATH", "")
        if REPO_ROOT not in path.split(os.pathsep):
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, path) if p)
        kwargs = dict(log_to_driver=False, logging_level="warning", configure_logging=True)
        try:
            if self.address:
                if self.address != "auto":
                    sweep_cluster.wait_tcp(self.address.removeprefix("ray://"), self.connect_timeout, "Ray cluster")
                ray.init(address=self.address, **kwargs)
            else:
                cpus = self.workers * self.cores_per_run if self.workers else os.cpu_count()
                ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                         **kwargs)
        except sweep_cluster.BackendError:
            raise
        except Exception as e:  # pylint: disable=broad-except  (ray raises ConnectionError, RuntimeError, ...)
            raise sweep_cluster.BackendError(f"could not connect to the Ray cluster at {self.address or 'a new local head'}"
                                             f": {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
                                             f"nothing was started") from None
        self.started = True

    def nodes(self) -> list[dict]:
        """{cpus, gpu, tpu} of each live node."""
        out = []
        for node in self.ray.nodes():
            if node.get("Alive"):
                res = node.get("Resources", {})
                out.append({"cpus": int(res.get("CPU", 0)), "gpu": int(res.get("GPU", 0)), "tpu": int(res.get("TPU", 0))})
        return out

    def shutdown(self) -> None:
        if self.started and self.ray is not None:
            self.ray.shutdown()
            self.started = False

    # --- the executor ---

    def options(self, run: SweepRun) -> dict:
        need = sweep_cluster.run_resources(run, self.accelerator, self.cores_per_run)
        opts = {"num_cpus": need["cpus"], "max_retries": self.max_retries, "retry_exceptions": False,
                "name": f"sweep:{run.name}"}
        if self.accelerator == "gpu":
            opts["num_gpus"] = need["devices"]
        elif self.accelerator == "tpu":
            opts["resources"] = {"TPU": need["devices"]}
        return opts

    def execute(self, todo: list, root: str, workers: int, lock_fd, progress) -> list:
        del workers, lock_fd   # Ray schedules by resources; the lock stays with this (the driver) process
        ray = self.ray
        task = ray.remote(_ray_task)

        def submit(run: SweepRun):
            return task.options(**self.options(run)).remote(run.record(), root, self.launcher)

        def wait(refs: list, timeout: float) -> list:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
            done = []
            for ref in ready:
                try:
                    done.append((ref, ray.get(ref)))
                except Exception as e:  # pylint: disable=broad-except  (a lost task: the run failed)
                    done.append((ref, e))
            return done

        def cancel(refs: list) -> None:
            for ref in refs:
                ray.cancel(ref)

        try:
            return sweep_cluster.drive(todo, root, progress, submit=submit, wait=wait, cancel=cancel,
                                       requeues=self.max_retries)
        finally:
            self.shutdown()
