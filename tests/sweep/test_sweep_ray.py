"""The Ray backend (experiments/sweep_ray.py) against real Ray clusters: Ray's own local head started by the
sweep, and ray.cluster_utils.Cluster with two simulated one-CPU nodes.

- The 4-run sweep (tests/sweep/backend_sweep.py) completes on a local head; the worker training the long run
  is SIGKILLed (with its training process) after the run's first checkpoint: Ray retries the task, which
  resumes from the checkpoint; losses and runs.csv equal the local backend's.
- On two nodes the two ladder runs go one to each node; a second call skips them; runs asking for more CPUs or
  GPUs than any node has are refused before anything is written.
- Bad input: ray missing, no cluster at --address, a locked root.
"""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from experiments import sweep_cluster, sweep_executor
from tests.sweep import backend_sweep as bs
from tests.sweep.test_sweep_run import REPO, child_env, cli


def kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_local_head_kill_retry_resume_and_same_runs_csv_as_local(backend_sweep_file, local_reference_root, tmp_path):
    root = str(tmp_path / "ray")
    proc = bs.launch(f"--gin_file={backend_sweep_file}", f"--root={root}", "--backend=ray", "--workers=2")
    try:
        # SIGKILL the Ray worker that trains the long run, and its training process, after its first checkpoint.
        bs.wait_for(lambda: bs.has_checkpoint(root, bs.LONG) and "train_pid" in bs.launcher_state(root, bs.LONG),
                    proc, "the long run's first checkpoint")
        state = bs.launcher_state(root, bs.LONG)
        assert state["executor"] == "ray" and state["pid"] != proc.pid
        kill(state["pid"])
        kill(state["train_pid"])
        out, _ = proc.communicate(timeout=1200)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "4 finished" in out
    assert not os.path.exists(os.path.join(root, "runs", bs.LONG, "summary.json.tmp"))
    log = bs.launcher_log(root, bs.LONG)
    assert log.count("=== ") == 2 and "resuming" in log, log[-2000:]          # retried once, resumed
    assert bs.launcher_state(root, bs.LONG)["pid"] != state["pid"]              # by another worker
    assert bs.losses(root, bs.LONG) == bs.losses(local_reference_root, bs.LONG)
    assert len(bs.losses(root, bs.LONG)) == 300
    rows = bs.comparable_rows(root)
    assert list(rows) == bs.ALL and all(r["status"] == "finished" for r in rows.values())
    assert rows == bs.comparable_rows(local_reference_root)
    assert os.path.exists(os.path.join(root, "sweep.json"))


@pytest.fixture(scope="module")
def two_nodes():
    """A Ray cluster of two one-CPU nodes on this machine (their workers see one CPU device, as the runs do)."""
    from ray.cluster_utils import Cluster
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(child_env())
    os.environ["PYTHONPATH"] = REPO
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    cluster = Cluster()
    try:
        try:
            cluster.add_node(num_cpus=1, object_store_memory=80 * 2 ** 20, include_dashboard=False)   # the head
            cluster.add_node(num_cpus=1, object_store_memory=80 * 2 ** 20)
            cluster.wait_for_nodes()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        yield cluster
    finally:
        cluster.shutdown()     # also when starting it failed: no Ray process outlives the test


def test_two_nodes_spread_skip_and_oversized_runs_refused(two_nodes, backend_sweep_file, local_reference_root,
                                                           tmp_path):
    root = str(tmp_path / "ray2")
    address = f"--address={two_nodes.address}"
    done = cli(f"--gin_file={backend_sweep_file}", f"--root={root}", "--backend=ray", address, "--only=ladder")
    assert done.returncode == 0, done.stderr[-3000:]
    nodes = {bs.launcher_state(root, name)["ray_node"] for name in bs.LADDER}
    assert len(nodes) == 2                                                    # one run on each node
    assert bs.comparable_rows(root, bs.LADDER) == bs.comparable_rows(local_reference_root, bs.LADDER)
    assert [r["status"] for r in bs.comparable_rows(root).values()] == ["finished", "finished", "pending", "pending"]
    again = cli(f"--gin_file={backend_sweep_file}", f"--root={root}", "--backend=ray", address, "--only=ladder")
    assert again.returncode == 0 and "2 already finished, 0 to run" in again.stderr, again.stderr[-2000:]

    # More devices than any node has: refused before anything is written, naming the run and the numbers.
    big = bs.write_sweep(tmp_path, bs.SWEEP.replace("'DataConfig.eval_tokens': 1024,",
                                                    "'DataConfig.eval_tokens': 1024, 'MeshConfig.data': 4,"), "big.gin")
    for flags, message in ((["--accelerator=cpu"], "needs 4 CPU(s) on one host"),
                           (["--accelerator=gpu"], "needs 4 GPU(s) on one host")):
        other = str(tmp_path / f"big{flags[0][-3:]}")
        refused = cli(f"--gin_file={big}", f"--root={other}", "--backend=ray", address, *flags, "--only=ladder")
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert message in refused.stderr and bs.LADDER[0] in refused.stderr and "nothing was submitted" in refused.stderr
        assert "the largest node has " + ("1" if "CPU" in message else "0") in refused.stderr
        assert not os.path.exists(os.path.join(other, "sweep.json")) and not os.path.exists(os.path.join(other, "runs"))


def test_ray_missing_no_cluster_and_locked_root_are_refused(backend_sweep_file, tmp_path):
    # The local backend (and importing the backends' modules) never imports ray or submitit.
    probe = subprocess.run([sys.executable, "-c", "import sys; from experiments import sweep, sweep_ray, sweep_slurm; "
                            "print(sorted({'ray', 'submitit'} & set(sys.modules)))"], cwd=REPO, env=child_env(),
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stderr[-2000:]

    # ray not installed: a module named ray that fails to import, first on the path.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "ray.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    env = dict(child_env(), PYTHONPATH=f"{shadow}{os.pathsep}{REPO}")
    root = str(tmp_path / "missing")
    missing = subprocess.run([sys.executable, "-m", "experiments.sweep", f"--gin_file={backend_sweep_file}",
                              f"--root={root}", "--backend=ray"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)
    assert missing.returncode == 2 and "pip install ray==2.60.0" in missing.stderr, missing.stderr[-2000:]
    assert not os.path.exists(os.path.join(root, "sweep.json"))

    # No cluster at --address: a clear error within the timeout, nothing written or started.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.time()
    with pytest.raises(sweep_cluster.BackendError, match=f"no Ray cluster reachable at 127.0.0.1:{port} within 1 s"):
        sweep_cluster.wait_tcp(f"127.0.0.1:{port}", 1.0, "Ray cluster")
    assert time.time() - started < 10
    root = str(tmp_path / "nocluster")
    absent = cli(f"--gin_file={backend_sweep_file}", f"--root={root}", "--backend=ray", f"--address=127.0.0.1:{port}",
                 "--connect_timeout=2")
    assert absent.returncode == 2, absent.stderr[-2000:]
    assert f"no Ray cluster reachable at 127.0.0.1:{port} within 2 s" in absent.stderr
    assert not os.path.exists(os.path.join(root, "sweep.json")) and not os.path.exists(os.path.join(root, "runs"))

    # A second sweep on a root in use: refused by the lock, as on the local backend.
    root = str(tmp_path / "locked")
    with sweep_executor.RootLock(root):
        for backend in ("ray", "slurm"):
            locked = cli(f"--gin_file={backend_sweep_file}", f"--root={root}", f"--backend={backend}",
                         "--slurm_cluster=local")
            assert locked.returncode == 3 and "is in use by another launcher" in locked.stderr, locked.stderr[-2000:]
    assert not os.path.exists(os.path.join(root, "runs"))
