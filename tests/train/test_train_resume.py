"""Exact resume: SIGKILL after a checkpoint then resume == uninterrupted; SIGTERM saves and exits
cleanly; a checkpoint written on 8 devices restores on 1 and back; a NaN loss stops the run with the
last good checkpoint kept; a finished workdir reports it is finished."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from models.transformer import TransformerConfig
from scaling.train import trainer
from scaling.train.config import MeshConfig, TrainConfig
from scaling.train.metrics import read_jsonl
from train_helpers import Crash, crash_after, step_losses

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MODEL = TransformerConfig(vocab_size=64, n_ctx=32, n_layer=2, d_model=32, d_ff=64, d_attn=32, n_heads=4)
STEPS = 20


def make_config(mesh=MeshConfig(data=1), **kw):
    base = dict(model=MODEL, batch_size=16, num_steps=STEPS, learning_rate=3e-3, warmup_steps=3,
                log_every=1, eval_every=10, checkpoint_every=10, keep_checkpoints=2, progress_bar=False,
                microbatches=2, mesh=mesh)  # K=2: microbatches of 8 rows shard over 8 devices
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def data():
    sys.path.insert(0, HERE)
    import importlib.util
    spec = importlib.util.spec_from_file_location("train_conftest", os.path.join(HERE, "conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_synthetic_data(vocab_size=64, n_ctx=32, batch_size=16)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    summary = trainer.train(make_config(), workdir, data=data, devices=jax.devices()[:1])
    return workdir, summary


def test_outputs_and_per_position_loss(uninterrupted):
    workdir, summary = uninterrupted
    assert summary["status"] == "finished"
    for name in ("metrics.jsonl", "eval.jsonl", "config.gin", "summary.json", "checkpoints", "tensorboard"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()) == [10, 20]
    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for key in ("step", "tokens", "loss", "lr", "grad_norm", "tokens_per_sec", "mfu", "step_time"):
        assert key in records[-1], key
    assert records[-1]["tokens"] == STEPS * 16 * 32
    evals = read_jsonl(os.path.join(workdir, "eval.jsonl"))
    assert [e["step"] for e in evals] == [10, 20]
    for e in evals:
        per_position = np.array(e["loss_per_position"])
        assert per_position.shape == (MODEL.n_ctx,)
        assert per_position.mean() == pytest.approx(e["eval_loss"], rel=1e-9)
        assert e["eval_bpb"] == pytest.approx(e["eval_loss"] / np.log(2) / 1.5)
        assert "eval_loss_shifted" in e
    with open(os.path.join(workdir, "summary.json")) as f:
        on_disk = json.load(f)
    for key in ("n_params_nonembedding", "n_params_total", "flops_per_token", "tokens", "steps", "batch_tokens",
                "compute_pf_days", "final_eval_loss", "best_eval_loss", "best_eval_step", "tokens_per_sec", "mfu",
                "mfu_peak_source", "wall_time_sec", "n_params_chinchilla"):
        assert key in on_disk, key
    assert on_disk["n_params_nonembedding"] == 2 * 32 * 2 * (2 * 32 + 64)
    assert on_disk["flops_per_token"] == 6 * on_disk["n_params_nonembedding"]
    assert on_disk["compute_pf_days"] == pytest.approx(6 * on_disk["n_params_nonembedding"] * STEPS * 512 / 8.64e19)
    assert on_disk["final_eval_loss"] == evals[-1]["eval_loss"]
    assert on_disk["best_eval_loss"] == min(e["eval_loss"] for e in evals)


def test_finished_workdir_is_not_retrained(uninterrupted, data):
    workdir, summary = uninterrupted
    again = trainer.train(make_config(), workdir, data=data, devices=jax.devices()[:1])
    assert again["status"] == "already_finished"
    assert again["final_eval_loss"] == summary["final_eval_loss"]


CHILD = textwrap.dedent("""
    import importlib.util, os, signal, sys
    import jax
    spec = importlib.util.spec_from_file_location("train_conftest", {conftest!r})
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    sys.path.insert(0, {here!r})
    from test_train_resume import make_config
    from scaling.train import trainer

    def crash(step):
        if step == 10:
            os.kill(os.getpid(), signal.SIGKILL)   # hard crash right after checkpoint 10 is on disk

    trainer.train(make_config(), {workdir!r}, data=module.make_synthetic_data(vocab_size=64, n_ctx=32, batch_size=16),
                  devices=jax.devices()[:1], after_checkpoint=crash)
""")


def test_sigkill_then_resume_reproduces_losses(uninterrupted, data, tmp_path):
    workdir = str(tmp_path / "killed")
    code = CHILD.format(conftest=os.path.join(HERE, "conftest.py"), here=HERE, workdir=workdir)
    env = dict(os.environ, PYTHONPATH=ROOT)
    child = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert not os.path.exists(os.path.join(workdir, "summary.json"))
    assert max(step_losses(workdir)) >= 10

    # A NaN from here on (absurd LR) stops the run and keeps checkpoint 10.
    nan_dir = str(tmp_path / "nan")
    shutil.copytree(workdir, nan_dir)
    with pytest.raises(trainer.NonFiniteLossError) as error:
        trainer.train(make_config(learning_rate=1e30), nan_dir, data=data, devices=jax.devices()[:1],
                      resume_changed_config=True)  # the workdir is owned by the lr=3e-3 config
    assert error.value.step > 10 and error.value.last_checkpoint == 10
    assert f"at step {error.value.step}" in str(error.value) and "last good checkpoint is step 10" in str(error.value)
    assert sorted(int(s) for s in os.listdir(os.path.join(nan_dir, "checkpoints")) if s.isdigit()) == [10]
    assert not os.path.exists(os.path.join(nan_dir, "summary.json"))

    # Resuming the killed run gives exactly the uninterrupted losses.
    summary = trainer.train(make_config(), workdir, data=data, devices=jax.devices()[:1])
    assert summary["status"] == "finished"
    resumed, reference = step_losses(workdir), step_losses(uninterrupted[0])
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert [resumed[s] for s in range(1, STEPS + 1)] == [reference[s] for s in range(1, STEPS + 1)]
    assert summary["final_eval_loss"] == uninterrupted[1]["final_eval_loss"]


def test_sigterm_and_restore_across_meshes(uninterrupted, data, tmp_path):
    """8 devices (fsdp=8) -> SIGTERM at step 7 -> 1 device -> crash at 14 -> 8 devices (data=2, fsdp=2, tensor=2)."""
    workdir = str(tmp_path / "meshes")
    kw = dict(checkpoint_every=7)

    def sigterm_at_7(step):
        if step == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    first = trainer.train(make_config(MeshConfig(data=1, fsdp=8), **kw), workdir, data=data,
                          after_checkpoint=sigterm_at_7)
    assert first["status"] == "preempted" and first["steps"] == 7
    assert max(step_losses(workdir)) == 7

    with pytest.raises(Crash):
        trainer.train(make_config(MeshConfig(data=1), **kw), workdir, data=data, devices=jax.devices()[:1],
                      after_checkpoint=crash_after(14))
    summary = trainer.train(make_config(MeshConfig(data=2, fsdp=2, tensor=2), **kw), workdir, data=data)
    assert summary["status"] == "finished" and summary["n_devices"] == 8
    resumed, reference = step_losses(workdir), step_losses(uninterrupted[0])
    assert sorted(resumed) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([resumed[s] for s in range(1, STEPS + 1)],
                               [reference[s] for s in range(1, STEPS + 1)], rtol=1e-5)
