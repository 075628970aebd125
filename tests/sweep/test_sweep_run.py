"""The sweep launcher end to end: real (tiny) training subprocesses through the CLI.

One sweep of three runs is used throughout: two tiny Transformers (d_model 16 and 24 on the cpu_12k
file, 6 steps) and one run whose data config is rejected by the trainer (not at expansion), so it fails.
"""
import csv
import fcntl
import os
import signal
import subprocess
import sys
import time

import pytest

from experiments import sweep_executor as executor
from scaling import sweep

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SWEEP = """
Sweep.name = 'tiny'
Sweep.base_gin_files = ['gin/data/embedded.gin', 'gin/optim/adam.gin', 'gin/optim/cosine.gin']
Sweep.base_gin_params = {
    'TransformerConfig.n_ctx': 32, 'TransformerConfig.d_ff': 64, 'TransformerConfig.n_heads': 2,
    'TrainConfig.batch_size': 8, 'TrainConfig.microbatches': 2, 'TrainConfig.num_steps': 6,
    'TrainConfig.warmup_steps': 1, 'TrainConfig.log_every': 1, 'TrainConfig.eval_every': 3,
    'TrainConfig.checkpoint_every': 3, 'TrainConfig.keep_checkpoints': 1,
    'TrainConfig.async_checkpointing': False, 'DataConfig.eval_tokens': 1024,
}
Sweep.blocks = [
    {'group': 'ladder', 'models': ['cpu_12k'],
     'grid': {'TransformerConfig.d_model,TransformerConfig.d_attn': [(16, 16), (24, 24)]}},
    {'group': 'holdout', 'models': ['cpu_12k'], 'params': {'DataConfig.vocabulary': 'no_such_vocabulary'}},
]
"""
OK_RUNS = ["cpu_12k-Dall-B8-d16-d_attn16", "cpu_12k-Dall-B8-d24-d_attn24"]
BAD_RUN = "cpu_12k-Dall-B8"
CONTRACT_COLUMNS = [
    "run", "group", "status", "workdir", "error", "model", "model_family", "n_params_nonembedding",
    "n_params_total", "n_params_embedding", "flops_per_token", "tokens", "steps", "batch_size", "batch_tokens",
    "compute_pf_days", "final_eval_loss", "best_eval_loss", "tokens_per_sec", "mfu", "n_ctx", "learning_rate",
    "data_budget_tokens", "b_simple", "final_eval_loss_wiki_mini", "epochs",
    "TransformerConfig.d_model", "TransformerConfig.d_attn"]


def child_env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)          # one CPU device per run (tests/conftest.py asks for 8 fake ones)
    env["JAX_PLATFORMS"] = "cpu"
    return env


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "experiments.sweep", *args], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=timeout)


def read_csv(root):
    with open(os.path.join(root, "runs.csv")) as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def mtime(root, name):
    return os.stat(os.path.join(root, "runs", name, "summary.json")).st_mtime_ns


def wait_until_unlocked(root, timeout=300):
    """A killed launcher's runs hold ROOT/.lock until they have checkpointed and exited."""
    deadline = time.time() + timeout
    with open(os.path.join(root, ".lock")) as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                assert time.time() < deadline, "the killed launcher's runs never released the lock"
                time.sleep(0.5)


@pytest.fixture
def sweep_file(tmp_path):
    path = tmp_path / "tiny.gin"
    path.write_text(SWEEP)
    return str(path)


def test_kill_resume_failure_and_retry(sweep_file, tmp_path):
    root = str(tmp_path / "root")
    # 1. Launch and SIGKILL the launcher as soon as the first run has finished.
    proc = subprocess.Popen([sys.executable, "-m", "experiments.sweep", f"--gin_file={sweep_file}", f"--root={root}",
                             "--workers=1"], cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    first = os.path.join(root, "runs", OK_RUNS[0], "summary.json")
    deadline = time.time() + 600
    try:
        while not os.path.exists(first):
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "first run did not finish"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    wait_until_unlocked(root)
    first_mtime = mtime(root, OK_RUNS[0])
    assert not os.path.exists(os.path.join(root, "runs", OK_RUNS[1], "summary.json"))

    # 2. Relaunch: the finished run is skipped, the interrupted one completes, the bad one fails.
    result = cli(f"--gin_file={sweep_file}", f"--root={root}")
    assert result.returncode == 1, result.stderr
    assert "1 already finished, 2 to run" in result.stderr
    assert f"FAILED {BAD_RUN}" in result.stderr and "no_such_vocabulary" in result.stderr
    assert mtime(root, OK_RUNS[0]) == first_mtime
    columns, rows = read_csv(root)
    assert set(CONTRACT_COLUMNS) <= set(columns)
    assert [r["run"] for r in rows] == [*OK_RUNS, BAD_RUN]        # one row per run, no duplicates
    assert [r["status"] for r in rows] == ["finished", "finished", "failed"]
    assert [r["group"] for r in rows] == ["ladder", "ladder", "holdout"]
    ok = rows[:2]
    assert [r["TransformerConfig.d_model"] for r in ok] == ["16", "24"]
    assert all(r["workdir"] == f"runs/{r['run']}" and r["model"] == "cpu_12k" for r in rows)
    assert all(int(r["steps"]) == 6 and int(r["tokens"]) == 6 * 8 * 32 and r["data_budget_tokens"] == ""
               for r in ok)
    assert all(float(r["final_eval_loss"]) > 0 and float(r["final_eval_loss_wiki_mini"]) > 0 for r in ok)
    assert int(ok[0]["n_params_nonembedding"]) < int(ok[1]["n_params_nonembedding"])
    assert rows[2]["error"] and "no_such_vocabulary" in rows[2]["error"] and rows[2]["final_eval_loss"] == ""
    assert "no_such_vocabulary" in open(os.path.join(root, "runs", BAD_RUN, "launcher.log")).read()
    mtimes = [mtime(root, n) for n in OK_RUNS]

    # 3. Rerun: only the failed run is retried; without --retry_failed nothing runs.
    result = cli(f"--gin_file={sweep_file}", f"--root={root}")
    assert result.returncode == 1 and "2 already finished, 1 to run" in result.stderr
    assert [mtime(root, n) for n in OK_RUNS] == mtimes
    assert open(os.path.join(root, "runs", BAD_RUN, "launcher.log")).read().count("=== ") == 2
    result = cli(f"--gin_file={sweep_file}", f"--root={root}", "--noretry_failed")
    assert "2 already finished, 1 failed and not retried, 0 to run" in result.stderr
    assert open(os.path.join(root, "runs", BAD_RUN, "launcher.log")).read().count("=== ") == 2
    # Only the good groups: everything finished, exit 0; runs.csv still lists every run once.
    result = cli(f"--gin_file={sweep_file}", f"--root={root}", "--exclude_group=holdout")
    assert result.returncode == 0, result.stderr
    assert [r["run"] for r in read_csv(root)[1]] == [*OK_RUNS, BAD_RUN]


def test_second_launcher_on_a_locked_root_is_refused(sweep_file, tmp_path):
    root = str(tmp_path / "root")
    with executor.RootLock(root):
        result = cli(f"--gin_file={sweep_file}", f"--root={root}")
    assert result.returncode == 3
    assert "is in use by another launcher" in result.stderr and f"pid {os.getpid()}" in result.stderr
    assert not os.path.exists(os.path.join(root, "runs"))
    # A lock left behind by a dead holder does not block (flock dies with its process).
    subprocess.run([sys.executable, "-c", f"from experiments import sweep_executor as executor; executor.RootLock({root!r}).acquire(); "
                    "import os; os._exit(0)"], cwd=REPO, check=True)
    with executor.RootLock(root) as lock:
        assert lock.fd is not None


def test_dry_run_prints_one_self_contained_command_per_run(sweep_file, tmp_path):
    root = str(tmp_path / "root")
    result = cli(f"--gin_file={sweep_file}", f"--root={root}", "--dry_run", "--exclude_group=holdout")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("cd ") and "-m experiments.train" in line for line in lines)
    assert not os.path.exists(root)                   # a dry run trains and writes nothing
    _, runs = sweep.expand(sweep_file)
    launched = executor.shell_command(runs[0], root, "python -m experiments.launch --num_processes=2 --")
    # A launcher starting with `python` runs in the project's interpreter, like the run itself.
    assert launched == lines[0].replace(" && ", f" && {sys.executable} -m experiments.launch --num_processes=2 -- ", 1)
    # Run the printed command from elsewhere, as a scheduler would.
    done = subprocess.run(["bash", "-c", lines[0]], cwd="/", env=child_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert os.path.exists(os.path.join(root, "runs", OK_RUNS[0], "summary.json"))
    # --collect turns the scheduler's run directories into runs.csv.
    collected = cli(f"--gin_file={sweep_file}", f"--root={root}", "--collect")
    assert collected.returncode == 0, collected.stderr
    assert [r["status"] for r in read_csv(root)[1]] == ["finished", "pending", "pending"]
