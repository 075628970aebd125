"""The in-process executor (experiments/sweep_inprocess.py): fault isolation, kill/resume, same losses.

One sweep: two tiny Transformers (6 and 200 steps), a run whose learning rate makes the loss NaN, and
a run whose data config the trainer rejects (it raises). The launcher is SIGKILLed while the second
run trains; the relaunch (a pool of two worker processes) skips the finished run, resumes the
interrupted one from its checkpoint, records the two failures and finishes; the same runs trained by
the subprocess executor give bit-identical losses and final parameters.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.sweep.test_sweep_run import REPO, child_env, cli, mtime, read_csv, wait_until_unlocked

SWEEP = """
Sweep.name = 'tiny_inprocess'
Sweep.base_gin_files = ['gin/data/embedded.gin', 'gin/optim/adam.gin', 'gin/optim/cosine.gin']
Sweep.base_gin_params = {
    'TransformerConfig.n_ctx': 32, 'TransformerConfig.d_ff': 64, 'TransformerConfig.n_heads': 2,
    'TrainConfig.batch_size': 8, 'TrainConfig.microbatches': 2,
    'TrainConfig.warmup_steps': 1, 'TrainConfig.log_every': 1, 'TrainConfig.eval_every': 50,
    'TrainConfig.checkpoint_every': 20, 'TrainConfig.keep_checkpoints': 1,
    'TrainConfig.async_checkpointing': False, 'DataConfig.eval_tokens': 1024,
}
Sweep.blocks = [
    {'group': 'ladder', 'models': ['cpu_12k'],
     'grid': {'TransformerConfig.d_model,TransformerConfig.d_attn,TrainConfig.num_steps': [(16, 16, 6),
                                                                                            (24, 24, 200)]}},
    {'group': 'data', 'models': ['cpu_12k'], 'tag': 'nan',
     'params': {'TrainConfig.learning_rate': 1e30, 'TrainConfig.num_steps': 20}},
    {'group': 'holdout', 'models': ['cpu_12k'], 'params': {'DataConfig.vocabulary': 'no_such_vocabulary'}},
]
"""
FIRST, SECOND = "cpu_12k-Dall-B8-d16-d_attn16-S6", "cpu_12k-Dall-B8-d24-d_attn24-S200"
NAN_RUN, BAD_RUN = "cpu_12k-Dall-B8-nan", "cpu_12k-Dall-B8"


def losses(root, name):
    with open(os.path.join(root, "runs", name, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


def summary(root, name):
    with open(os.path.join(root, "runs", name, "summary.json")) as f:
        return json.load(f)


def final_params_sha256(root, name, sweep_file):
    """sha256 of a run's final parameters, restored from its last checkpoint (the summary carries no hash:
    trainer.checkpoint_params_sha256 is the test aid, off the training path)."""
    import jax
    from scaling import configurables, sweep
    from scaling.train import trainer
    run = next(r for r in sweep.expand(sweep_file)[1] if r.name == name)
    try:
        config, _ = configurables.build_train_config([os.path.join(REPO, f) for f in run.gin_files], run.gin_params)
    finally:
        configurables.clear()
    step, digest = trainer.checkpoint_params_sha256(config, os.path.join(root, "runs", name),
                                                    devices=jax.devices()[:1])
    assert step == run.planned["steps"] and digest
    return digest


@pytest.fixture
def sweep_file(tmp_path):
    path = tmp_path / "tiny_inprocess.gin"
    path.write_text(SWEEP)
    return str(path)


def test_names(sweep_file):
    from scaling import sweep
    _, runs = sweep.expand(sweep_file)
    assert [r.name for r in runs] == [FIRST, SECOND, NAN_RUN, BAD_RUN]


def test_inprocess_kill_resume_failures_retry_and_same_losses_as_subprocess(sweep_file, tmp_path):
    root = str(tmp_path / "inprocess")
    # 1. One process trains the runs back to back; SIGKILL it while the second run trains (after its
    #    first checkpoint).
    proc = subprocess.Popen([sys.executable, "-m", "experiments.sweep", f"--gin_file={sweep_file}", f"--root={root}",
                             "--workers=1", "--executor=inprocess"], cwd=REPO, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoints = os.path.join(root, "runs", SECOND, "checkpoints")
    deadline = time.time() + 600
    try:
        while not (os.path.isdir(checkpoints) and any(d.isdigit() for d in os.listdir(checkpoints))):
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "the second run never checkpointed"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    wait_until_unlocked(root)
    assert os.path.exists(os.path.join(root, "runs", FIRST, "summary.json"))
    assert not os.path.exists(os.path.join(root, "runs", SECOND, "summary.json")), "killed too late"
    first_mtime = mtime(root, FIRST)
    with open(os.path.join(root, "runs", SECOND, "launcher.json")) as f:
        assert json.load(f)["executor"] == "inprocess"

    # 2. Relaunch with a pool of two worker processes: the finished run is skipped, the interrupted one
    #    resumes from its checkpoint, the NaN run and the raising run are failed with their errors.
    result = cli(f"--gin_file={sweep_file}", f"--root={root}", "--workers=2")
    assert result.returncode == 1, result.stderr
    assert "1 already finished, 3 to run" in result.stderr
    assert f"FAILED {BAD_RUN}" in result.stderr and "no_such_vocabulary" in result.stderr
    assert f"FAILED {NAN_RUN}" in result.stderr and "NonFiniteLossError" in result.stderr
    assert mtime(root, FIRST) == first_mtime
    log = open(os.path.join(root, "runs", SECOND, "launcher.log")).read()
    assert "resuming" in log and log.count("=== ") == 2
    _, rows = read_csv(root)
    assert [r["status"] for r in rows] == ["finished", "finished", "failed", "failed"]
    assert "no_such_vocabulary" in rows[3]["error"] and "nan" in rows[2]["error"].lower()

    # 3. The next call retries only the failed runs.
    result = cli(f"--gin_file={sweep_file}", f"--root={root}", "--workers=1")
    assert result.returncode == 1 and "2 already finished, 2 to run" in result.stderr
    assert open(os.path.join(root, "runs", BAD_RUN, "launcher.log")).read().count("=== ") == 2

    # 4. The subprocess executor trains the same runs to bit-identical losses and final parameters
    #    (the in-process one was killed and resumed in between).
    other = str(tmp_path / "subprocess")
    result = cli(f"--gin_file={sweep_file}", f"--root={other}", "--executor=subprocess", "--workers=1",
                 "--only=ladder")
    assert result.returncode == 0, result.stderr
    for name in (FIRST, SECOND):
        assert losses(root, name) == losses(other, name) and len(losses(root, name)) > 5
        assert final_params_sha256(root, name, sweep_file) == final_params_sha256(other, name, sweep_file)
        assert summary(root, name)["final_eval_loss"] == summary(other, name)["final_eval_loss"]


def test_a_raising_run_is_recorded_and_gin_is_left_clean(tmp_path, monkeypatch, sweep_file):
    """MemoryError / XLA's RESOURCE_EXHAUSTED inside the executor: the run fails with its error, gin is
    cleared, and the process (the next run) carries on."""
    import gin
    from experiments import sweep_inprocess
    from scaling import sweep
    from scaling.train import trainer

    _, runs = sweep.expand(sweep_file)
    root = str(tmp_path / "root")
    seen = []

    def fake_train(config, workdir, **kwargs):
        seen.append((config.model.d_model, config.num_steps))
        if len(seen) == 1:
            raise MemoryError("out of memory allocating 1e12 bytes")
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 99 bytes")

    monkeypatch.setattr(trainer, "train", fake_train)
    for run, expected in zip(runs[:2], ("MemoryError", "RESOURCE_EXHAUSTED")):
        result = sweep_inprocess.train_one(run.record(), root)
        assert result["status"] == "failed" and expected in result["error"]
        with open(os.path.join(root, "runs", run.name, "launcher.json")) as f:
            state = json.load(f)
        assert state["status"] == "failed" and expected in state["error"]
        assert "Traceback" in open(os.path.join(root, "runs", run.name, "launcher.log")).read()
        assert gin.config_str().strip() == ""           # no binding leaks into the next run
    assert seen == [(16, 6), (24, 200)]                  # each run got its own gin


def test_an_early_stopped_run_is_finished(tmp_path, monkeypatch, sweep_file):
    """A run that TrainConfig.early_stopping_patience ended before its planned steps is finished, not failed."""
    from experiments import sweep_inprocess
    from scaling import sweep
    from scaling.train import trainer

    _, runs = sweep.expand(sweep_file)
    stopped = {"status": "finished", "steps": 40, "early_stopped": True, "final_eval_loss": 5.0}
    monkeypatch.setattr(trainer, "train", lambda config, workdir, **kw: dict(stopped))
    result = sweep_inprocess.train_one(runs[1].record(), str(tmp_path / "root"))   # planned: 200 steps
    assert result["status"] == "finished", result
    monkeypatch.setattr(trainer, "train", lambda config, workdir, **kw: dict(stopped, early_stopped=False))
    result = sweep_inprocess.train_one(runs[1].record(), str(tmp_path / "root2"))
    assert result["status"] == "failed" and "stopped at step 40 of 200" in result["error"]
