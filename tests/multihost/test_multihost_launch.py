"""experiments.launch: N local processes with JAX_* variables, tagged output, fail-fast; no JAX needed."""
import io
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from experiments import launch  # noqa: E402
from scaling.train import distributed  # noqa: E402

SHOW_ENV = ("import os; print(*[os.environ.get(k) for k in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', "
            "'JAX_PROCESS_ID', 'XLA_FLAGS', 'JAX_PLATFORMS')], sep='|')")


def test_each_process_gets_the_job_variables_and_tagged_lines():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_cpu_foo=1")
    proc = subprocess.run([sys.executable, "-m", "experiments.launch", "--num_processes=3", "--devices_per_process=2",
                           "--coordinator_port=23456", "--", sys.executable, "-c", SHOW_ENV],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = sorted(line for line in proc.stdout.splitlines() if line.startswith("[p"))
    assert lines == [f"[p{i}] 127.0.0.1:23456|3|{i}|--xla_cpu_foo=1 --xla_force_host_platform_device_count=2|cpu"
                     for i in range(3)]
    assert "all 3 processes finished" in proc.stdout


def test_a_failing_process_stops_the_others_and_the_job_fails():
    # Process 1 fails at once; process 0 would run for a minute (and ignores SIGTERM, so it needs SIGKILL).
    script = ("import os, signal, sys, time\n"
              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "if os.environ['JAX_PROCESS_ID'] == '1':\n"
              "    print('bad input', flush=True); sys.exit(3)\n"
              "time.sleep(60)\n")
    out = io.BytesIO()
    start = time.monotonic()
    status = launch.launch([sys.executable, "-c", script], 2, grace_s=1.0, out=out)
    elapsed = time.monotonic() - start
    text = out.getvalue().decode()
    assert status == 3, text
    assert elapsed < 20, f"the launcher took {elapsed:.1f}s to stop the job"
    assert "[p1] bad input" in text
    assert "process 1 exited with status 3; stopping the other processes [0]" in text


def test_job_timeout_and_argument_errors():
    out = io.BytesIO()
    status = launch.launch([sys.executable, "-c", "import time; time.sleep(60)"], 2, timeout_s=1.0, grace_s=1.0,
                           out=out)
    assert status == 124 and b"--timeout_s=1" in out.getvalue()
    proc = subprocess.run([sys.executable, "-m", "experiments.launch", "--num_processes=2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no command given" in proc.stderr


def test_distributed_settings_resolve_from_flags_then_environment():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
    got = distributed.resolve(distributed.DistributedConfig(), env)
    assert (got.coordinator_address, got.num_processes, got.process_id) == ("10.0.0.1:1234", 4, 2)
    got = distributed.resolve(distributed.DistributedConfig(process_id=0, num_processes=2), env)
    assert (got.coordinator_address, got.num_processes, got.process_id) == ("10.0.0.1:1234", 2, 0)
    assert distributed.requested(distributed.DistributedConfig(), env)
    assert not distributed.requested(distributed.DistributedConfig(), {})
    assert distributed.detected_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_PROCID": "0"}) == "SLURM"
    assert distributed.detected_cluster({}) is None
    for bad, message in (({"JAX_NUM_PROCESSES": "two"}, "not an integer"),
                         ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, "must be in [0, num_processes=2)"),
                         ({"JAX_COORDINATOR_ADDRESS": "localhost"}, "needs a port")):
        try:
            distributed.resolve(distributed.DistributedConfig(), bad)
        except ValueError as e:
            assert message in str(e)
        else:
            raise AssertionError(f"{bad} was accepted")


def test_sigterm_to_the_launcher_reaches_every_process():
    # Each process exits 0 on SIGTERM (as a checkpointing trainer does); the launcher reports 143.
    script = ("import signal, sys, time\n"
              "signal.signal(signal.SIGTERM, lambda *a: (print('stopping', flush=True), sys.exit(0)))\n"
              "print('ready', flush=True)\n"
              "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-m", "experiments.launch", "--num_processes=2", "--",
                             sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    lines = []
    while sum(line.endswith("ready\n") for line in lines) < 2:
        lines.append(proc.stdout.readline())
        assert lines[-1], f"the job ended early: {''.join(lines)}"
    proc.terminate()
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 143, "".join(lines) + rest
    assert "[p0] stopping" in rest and "[p1] stopping" in rest
    assert "stopped after SIGTERM" in rest
