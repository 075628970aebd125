"""The final eval's stride-1 position eval (DataConfig.position_eval_windows): scored once, at the last step,
on its own windows, without changing training; on the regular eval windows it reproduces their curve."""
import dataclasses
import os

import jax
import numpy as np
import pytest

from models.transformer import TransformerConfig
from scaling.train import trainer
from scaling.train.config import MeshConfig, TrainConfig
from scaling.train.metrics import read_jsonl

MODEL = TransformerConfig(vocab_size=64, n_ctx=32, n_layer=1, d_model=32, d_ff=64, d_attn=32, n_heads=4)


def _config():
    return TrainConfig(model=MODEL, batch_size=8, num_steps=12, learning_rate=3e-3, warmup_steps=2, log_every=1,
                       eval_every=6, checkpoint_every=12, keep_checkpoints=1, progress_bar=False, microbatches=2,
                       mesh=MeshConfig(data=1))


def _train(tmp_path, name, data):
    workdir = str(tmp_path / name)
    trainer.train(_config(), workdir, data=data, devices=jax.devices()[:1])
    return (read_jsonl(os.path.join(workdir, "eval.jsonl")),
            {r["step"]: r["loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))})


def test_position_eval_only_at_the_end_and_training_unchanged(tmp_path, synthetic_data):
    plain = synthetic_data(vocab_size=64, n_ctx=32, batch_size=8)
    rng = np.random.default_rng(5)
    stream = rng.integers(0, 64, 4000).astype(np.int32)
    from data import loader
    windows = loader.position_eval_windows(stream, 32, n_windows=40, n_regions=4)
    with_positions = dataclasses.replace(plain)
    with_positions.position_eval_windows = windows

    evals_plain, losses_plain = _train(tmp_path, "plain", plain)
    evals_pos, losses_pos = _train(tmp_path, "positions", with_positions)

    assert losses_pos == losses_plain  # an eval-only setting: the training losses are bit-identical
    assert [e["step"] for e in evals_pos] == [6, 12]
    assert "position_eval_loss_per_position" not in evals_pos[0]
    final = evals_pos[-1]
    curve = np.asarray(final["position_eval_loss_per_position"])
    assert curve.shape == (32,) and final["position_eval_windows"] == 40
    assert final["position_eval_loss"] == pytest.approx(curve.mean())
    # The regular eval of the same run is untouched by the extra windows.
    assert final["loss_per_position"] == evals_plain[-1]["loss_per_position"]
    assert "position_eval_loss" not in evals_plain[-1]


def test_position_eval_on_the_eval_windows_reproduces_their_curve(tmp_path, synthetic_data):
    data = synthetic_data(vocab_size=64, n_ctx=32, batch_size=8)
    data.position_eval_windows = data.eval_windows
    evals, _ = _train(tmp_path, "same", data)
    np.testing.assert_allclose(evals[-1]["position_eval_loss_per_position"], evals[-1]["loss_per_position"],
                               rtol=1e-6)


def test_extra_evals_at_the_final_eval_only(tmp_path, synthetic_data):
    """TrainConfig.extra_eval_final_only: the extra corpora are scored at the last eval alone (their final value is
    what the report reads), with the same numbers there as when scored at every eval; training is unchanged."""
    data = synthetic_data(vocab_size=64, n_ctx=32, batch_size=8)
    data.extra_evals = {"other": (data.eval_windows[::-1].copy(), 1.0)}
    evals_every, losses_every = _train(tmp_path, "every", data)
    workdir = str(tmp_path / "final_only")
    trainer.train(dataclasses.replace(_config(), extra_eval_final_only=True), workdir, data=data,
                  devices=jax.devices()[:1])
    evals_final = read_jsonl(os.path.join(workdir, "eval.jsonl"))
    losses_final = {r["step"]: r["loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))}

    assert losses_final == losses_every
    assert "eval_loss_other" in evals_every[0] and "eval_loss_other" not in evals_final[0]
    assert evals_final[-1]["eval_loss_other"] == evals_every[-1]["eval_loss_other"]
    assert evals_final[-1]["eval_loss"] == evals_every[-1]["eval_loss"]
    import json
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f)["final_extra_eval"]["eval_loss_other"] == evals_every[-1]["eval_loss_other"]
