"""The SLURM backend (experiments/sweep_slurm.py) through submitit: its local executor runs the job array's
jobs as real subprocesses, with the same pickled job and the same checkpoint/requeue path as on SLURM.

- Preemption, both ways, after each long run's first checkpoint: USR2 to one job (SLURM's signal before a time
  limit or a preemption: submitit calls the job's ``checkpoint``, which SIGTERMs the training process, and requeues
  it) and SIGTERM to the other's training process (a preemption reaching the trainer: it checkpoints, the launcher
  submits the run again). Both resume from their checkpoints; losses and runs.csv equal the local backend's.
- The sbatch script of the sweep's job array: array size and parallelism, GPUs/CPUs from the runs' meshes, the
  partition, requeue and the USR2 signal.
- Bad input: no SLURM on the machine, a run larger than the machine, the live jobs of a killed launcher.
"""
import os
import signal
import socket
import subprocess
import sys

from experiments import sweep_slurm
from scaling import sweep
from scaling.core import fileio
from tests.sweep import backend_sweep as bs
from tests.sweep.test_sweep_run import REPO, child_env, cli


def test_preempted_jobs_requeue_and_resume_exactly(backend_sweep_file, local_reference_root, tmp_path):
    root = str(tmp_path / "slurm")
    proc = bs.launch(f"--gin_file={backend_sweep_file}", f"--root={root}", "--backend=slurm", "--slurm_cluster=local",
                     "--only=data,holdout")
    try:
        for name in (bs.LONG, bs.HOLDOUT):
            bs.wait_for(lambda n=name: bs.has_checkpoint(root, n) and "train_pid" in bs.launcher_state(root, n),
                        proc, f"{name}'s first checkpoint")
        long_state, holdout_state = bs.launcher_state(root, bs.LONG), bs.launcher_state(root, bs.HOLDOUT)
        assert long_state["executor"] == "slurm" and long_state["slurm_job"]
        os.kill(long_state["pid"], signal.SIGUSR2)            # the job process: submitit's preemption signal
        os.kill(holdout_state["train_pid"], signal.SIGTERM)   # the training process itself
        out, _ = proc.communicate(timeout=1200)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert f"requeued {bs.HOLDOUT}" in out and "2 finished" in out
    for name, state in ((bs.LONG, long_state), (bs.HOLDOUT, holdout_state)):
        log = bs.launcher_log(root, name)
        assert log.count("=== ") == 2 and "resuming" in log and "preempted (SIGTERM)" in log, log[-2000:]
        assert bs.losses(root, name) == bs.losses(local_reference_root, name) and len(bs.losses(root, name)) == 300
    assert bs.launcher_state(root, bs.LONG)["slurm_job"] == long_state["slurm_job"]     # requeued in place
    assert bs.launcher_state(root, bs.HOLDOUT)["slurm_job"] != holdout_state["slurm_job"]  # submitted again
    rows = bs.comparable_rows(root)
    assert [r["status"] for r in rows.values()] == ["pending", "pending", "finished", "finished"]
    assert bs.comparable_rows(root, [bs.LONG, bs.HOLDOUT]) == bs.comparable_rows(local_reference_root,
                                                                                  [bs.LONG, bs.HOLDOUT])


def test_sbatch_script_of_the_job_array(tmp_path):
    text = bs.SWEEP.replace("'DataConfig.eval_tokens': 1024,", "'DataConfig.eval_tokens': 1024, 'MeshConfig.data': 2,"
                            " 'MeshConfig.tensor': 2,")
    _, runs = sweep.expand(bs.write_sweep(tmp_path, text))
    root = str(tmp_path / "root")
    gpu = sweep_slurm.SlurmBackend(partition="gpu", accelerator="gpu", cores_per_run=8, time_min=600)
    script = gpu.sbatch_script(root, runs, workers=3)
    lines = set(script.splitlines())
    for line in ("#SBATCH --array=0-3%3", "#SBATCH --gpus-per-node=4", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --partition=gpu", "#SBATCH --time=600", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --requeue", "#SBATCH --signal=USR2@90"):
        assert line in lines, (line, script)
    assert "submitit.core._submit" in script and f"#SBATCH --output={root}/slurm/%A_%a/%A_%a_0_log.out" in lines
    # On CPU the mesh's devices are cores; no GPU line; default parallelism: the whole array at once.
    cpu = sweep_slurm.SlurmBackend(accelerator="cpu", cores_per_run=1).sbatch_script(root, runs[:2])
    assert "#SBATCH --cpus-per-task=4" in cpu and "#SBATCH --array=0-1%2" in cpu and "gpus-per-node" not in cpu
    assert sweep_slurm._gpus_in("gpu:a100:8(S:0-1),shard:8") == 8 and sweep_slurm._gpus_in("(null)") == 0


def test_no_slurm_and_a_run_larger_than_the_machine_are_refused(backend_sweep_file, tmp_path):
    root = str(tmp_path / "noslurm")
    no_sinfo = subprocess.run([sys.executable, "-m", "experiments.sweep", f"--gin_file={backend_sweep_file}",
                               f"--root={root}", "--backend=slurm"], cwd=REPO, capture_output=True, text=True,
                              env=dict(child_env(), PATH=os.path.dirname(sys.executable)), timeout=300)   # no sinfo
    assert no_sinfo.returncode == 2 and "no SLURM cluster reachable" in no_sinfo.stderr, no_sinfo.stderr[-2000:]
    assert not os.path.exists(os.path.join(root, "sweep.json"))
    big = bs.write_sweep(tmp_path, bs.SWEEP.replace("'DataConfig.eval_tokens': 1024,",
                                                    "'DataConfig.eval_tokens': 1024, 'MeshConfig.data': 4096,"),
                         "big.gin")
    root = str(tmp_path / "big")
    refused = cli(f"--gin_file={big}", f"--root={root}", "--backend=slurm", "--slurm_cluster=local")
    assert refused.returncode == 2 and f"run {bs.LADDER[0]} needs 4096 CPU(s) on one host" in refused.stderr
    assert "nothing was submitted" in refused.stderr and not os.path.exists(os.path.join(root, "runs"))


def test_jobs_of_a_killed_launcher_still_running_lock_the_root(backend_sweep_file, tmp_path):
    """SLURM keeps a killed launcher's jobs running and ROOT/.lock is free: their live jobs refuse a second sweep."""
    root = str(tmp_path / "root")
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "submitit.core._submit"])
    try:
        workdir = os.path.join(root, "runs", bs.LONG)
        os.makedirs(workdir)
        fileio.write_json_atomic(os.path.join(workdir, "launcher.json"), {
            "status": "running", "executor": "slurm", "slurm_job": "4242", "pid": job.pid,
            "host": socket.gethostname()})
        refused = cli(f"--gin_file={backend_sweep_file}", f"--root={root}", "--backend=slurm", "--slurm_cluster=local")
        assert refused.returncode == 3, refused.stderr[-2000:]
        assert f"run(s) {bs.LONG} are still training in SLURM job(s) 4242" in refused.stderr
        assert not os.path.exists(os.path.join(root, "sweep.json"))
    finally:
        job.kill()
        job.wait()
