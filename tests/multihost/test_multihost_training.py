"""Multi-process training on one machine: 2 processes x 4 fake CPU devices, coordinator on 127.0.0.1.

One small run (gin/smoke.gin, batch 32, 6 steps, checkpoints at 2/4/6) is trained as
  A: 2 processes x 4 devices (experiments.launch), recording the rows each process loads;
  B: 1 process x 8 devices and C: 1 process x 1 device (in the pytest process: it is one process);
  D: A's step-2 checkpoint resumed by 1 process x 8 devices;
  F: B's step-2 checkpoint resumed by 2 processes started directly; process 1 fails after checkpoint 4
     and process 0 must stop within the heartbeat timeout;
  G: the whole 2-process job restarted (plain `python -m experiments.train`), resuming from step 4.
Every subprocess has a timeout, so a hang fails the test instead of blocking the suite.
"""
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from experiments import launch  # noqa: E402

PYTHON = sys.executable
WORKER = os.path.join(ROOT, "tests", "multihost", "multihost_worker.py")
STEPS = 6
GIN_FILES = ["gin/smoke.gin"]
BINDINGS = [f"TrainConfig.num_steps={STEPS}", "TrainConfig.batch_size=32", "TrainConfig.microbatches=2",
            "TrainConfig.checkpoint_every=2", "TrainConfig.keep_checkpoints=3", "TrainConfig.eval_every=3",
            "TrainConfig.log_every=1", "TrainConfig.eval_max_windows=32", "TrainConfig.progress_bar=False",
            "DataConfig.extra_eval_tasks=()"]
GIN = [f"--gin_file={f}" for f in GIN_FILES] + [f"--gin_param={b}" for b in BINDINGS]
JOB_TIMEOUT = 240        # seconds; a job that takes longer has hung
HEARTBEAT = 10           # --heartbeat_timeout of the job whose process dies
COMPILE_CACHE = {}       # the 2-process jobs compile the same programs: later ones reuse the first's


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS"))}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", **COMPILE_CACHE, **extra)
    return env


def _check(proc: subprocess.CompletedProcess, what: str) -> str:
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, f"{what} failed (status {proc.returncode}):\n{out[-6000:]}"
    return out


def train_in_process(workdir, devices: int) -> dict:
    """The same run as one process over ``devices`` of the pytest process's 8 fake CPU devices."""
    import jax
    from experiments import train_gin
    cwd = os.getcwd()
    os.chdir(ROOT)  # gin includes and the data cache are relative to the repository root
    try:
        return train_gin.train_from_gin(GIN_FILES, BINDINGS, str(workdir), devices=jax.devices()[:devices])
    finally:
        os.chdir(cwd)


def global_batches() -> list:
    """The global batch of every step as the single-process run loads it."""
    from scaling import configurables
    from scaling.train import trainer
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        config, _ = configurables.build_train_config(GIN_FILES, BINDINGS)
        data = trainer.build_data(config, config.model.n_ctx)
    finally:
        os.chdir(cwd)
    assert data.train.process_count == 1
    return [data.train.batch(step) for step in range(STEPS)]


def run_two_processes(workdir, record_dir=None, script=(WORKER,)) -> str:
    env = _env(4, **({"MULTIHOST_RECORD_DIR": str(record_dir)} if record_dir else {}))
    cmd = [PYTHON, "-m", "experiments.launch", "--num_processes=2", "--devices_per_process=4",
           f"--timeout_s={JOB_TIMEOUT - 20}", "--", PYTHON, *script, *GIN, f"--workdir={workdir}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=JOB_TIMEOUT)
    return _check(proc, f"2 processes x 4 devices in {workdir}")


def metrics(workdir, name="metrics.jsonl") -> dict:
    with open(os.path.join(workdir, name)) as f:
        return {r["step"]: r for r in map(json.loads, filter(str.strip, f))}


def rewind_to_step_2(src, dst) -> None:
    """A copy of a finished run as if it had crashed right after its step-2 checkpoint."""
    shutil.copytree(src, dst)
    for step in (4, 6):
        shutil.rmtree(os.path.join(dst, "checkpoints", str(step)))
    os.remove(os.path.join(dst, "summary.json"))


def assert_same_losses(got: dict, want: dict, steps, key="loss", rtol=1e-5) -> None:
    for s in steps:
        assert s in got, f"step {s} missing from the run's log (has {sorted(got)})"
        np.testing.assert_allclose(got[s][key], want[s][key], rtol=rtol, err_msg=f"{key} at step {s}")


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (to report what the runs cost)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A (2x4, rows recorded), B (1x8), C (1x1): the fresh runs the tests compare."""
    base = tmp_path_factory.mktemp("multihost")
    COMPILE_CACHE.update(JAX_COMPILATION_CACHE_DIR=str(base / "jax_cache"),
                         JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    paths = {name: base / name for name in ("A", "B", "C", "rec_A")}
    paths["rec_A"].mkdir()
    timings = {}
    t, c = time.perf_counter(), cpu_seconds()
    paths["out_A"] = run_two_processes(paths["A"], record_dir=paths["rec_A"])
    timings["A"] = (round(time.perf_counter() - t, 1), round(cpu_seconds() - c, 1))
    for name, devices in (("B", 8), ("C", 1)):
        t, c = time.perf_counter(), cpu_seconds()
        train_in_process(paths[name], devices)
        timings[name] = (round(time.perf_counter() - t, 1), round(cpu_seconds() - c, 1))
    print(f"multihost fresh runs (wall s, cpu s): {timings}")
    return paths


def test_two_processes_match_one_process_and_one_device(runs):
    a, b, c = metrics(runs["A"]), metrics(runs["B"]), metrics(runs["C"])
    steps = range(1, STEPS + 1)
    assert_same_losses(a, b, steps)
    assert_same_losses(a, c, steps)
    # Same rows in the same places of the global batch: even the per-microbatch gradient-noise sums agree.
    assert_same_losses(a, b, steps, key="gns_s_small", rtol=1e-4)
    assert_same_losses(metrics(runs["A"], "eval.jsonl"), metrics(runs["B"], "eval.jsonl"), (3, 6), key="eval_loss")
    # Process 0 alone wrote the run's files; every line of the job says which process spoke.
    summary = json.load(open(runs["A"] / "summary.json"))
    assert summary["n_devices"] == 8 and summary["steps"] == STEPS
    assert len(metrics(runs["A"])) == STEPS      # one line per step, not one per process
    job_lines = [line for line in runs["out_A"].splitlines() if line.strip()]
    assert all(line.startswith(("[p0] ", "[p1] ", "launch: ")) for line in job_lines), job_lines[:5]
    assert any(line.startswith("[p0] step 6/6") for line in job_lines)
    assert not any(line.startswith("[p1] step ") for line in job_lines)  # process 1 does not repeat them


def test_processes_load_disjoint_halves_of_the_global_batch(runs):
    for step, whole in enumerate(global_batches()):
        p0 = np.load(runs["rec_A"] / f"p0_step{step}.npy")
        p1 = np.load(runs["rec_A"] / f"p1_step{step}.npy")
        assert p0.shape == p1.shape == (16, 65) and whole.shape == (32, 65)
        np.testing.assert_array_equal(np.concatenate([p0, p1]), whole, err_msg=f"step {step}")
    assert not os.path.exists(runs["rec_A"] / f"p0_step{STEPS}.npy")  # nothing loaded past the last step


def test_checkpoints_move_between_process_counts_and_a_dead_process_ends_the_job(runs, capsys):
    base = runs["A"].parent
    want = metrics(runs["B"])

    # D: a checkpoint of the 2-process job restores in a 1-process job, same losses afterwards.
    timings = {}
    t, c = time.perf_counter(), cpu_seconds()
    rewind_to_step_2(runs["A"], base / "D")
    train_in_process(base / "D", 8)
    timings["D"] = (round(time.perf_counter() - t, 1), round(cpu_seconds() - c, 1))
    assert "from step 2" in capsys.readouterr().out
    assert_same_losses(metrics(base / "D"), want, range(3, STEPS + 1))

    # F: a 1-process checkpoint restores in a 2-process job (started without the launcher, so only
    # JAX's own runtime can stop it); process 1 fails with an exception after checkpoint 4 and
    # process 0 must exit with an error within the heartbeat timeout instead of waiting forever.
    t, c = time.perf_counter(), cpu_seconds()
    rewind_to_step_2(runs["B"], base / "F")
    port = launch.free_port()
    procs = []
    for i in range(2):
        env = launch.process_env(_env(4, MULTIHOST_DIE="1:4:raise"), i, 2, port, devices_per_process=4)
        env.pop(launch.ENV_OUTPUT_TAGGED)
        procs.append(subprocess.Popen([PYTHON, WORKER, f"--heartbeat_timeout={HEARTBEAT}", *GIN,
                                       f"--workdir={base / 'F'}"], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    try:
        out1, _ = procs[1].communicate(timeout=JOB_TIMEOUT)
        died = time.monotonic()
        out0, _ = procs[0].communicate(timeout=HEARTBEAT + 60)
        waited = time.monotonic() - died
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    out0, out1 = out0.decode(errors="replace"), out1.decode(errors="replace")
    assert procs[1].returncode == 1, out1[-3000:]
    assert "RuntimeError: multihost_worker: process 1 fails after checkpoint 4" in out1
    assert "leaving the job without the shutdown barrier" in out1
    assert procs[0].returncode != 0, out0[-3000:]
    assert "another task died" in out0 or "unhealthy" in out0, out0[-3000:]
    assert out0.startswith("[p0] ") or "\n[p0] " in out0   # its own lines are tagged by process
    timings["F"] = (round(time.perf_counter() - t, 1), round(cpu_seconds() - c, 1))
    with capsys.disabled():
        print(f"process 0 exited {waited:.1f}s after process 1 died (heartbeat timeout {HEARTBEAT}s)")
    assert waited < HEARTBEAT + 60
    assert_same_losses(metrics(base / "F"), want, (3, 4))

    # G: restarting the whole job resumes from the last checkpoint (4) and finishes like B.
    t, c = time.perf_counter(), cpu_seconds()
    out = run_two_processes(base / "F", script=("-m", "experiments.train"))
    timings["G"] = (round(time.perf_counter() - t, 1), round(cpu_seconds() - c, 1))
    with capsys.disabled():
        print(f"multihost restore/kill/restart runs (wall s, cpu s): {timings}")
    assert "resuming" in out and "from step 4" in out
    assert_same_losses(metrics(base / "F"), want, range(1, STEPS + 1))
    summary = json.load(open(base / "F" / "summary.json"))
    reference = json.load(open(runs["B"] / "summary.json"))
    np.testing.assert_allclose(summary["final_eval_loss"], reference["final_eval_loss"], rtol=1e-5)
