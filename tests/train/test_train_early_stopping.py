"""Early stopping (TrainConfig.early_stopping_patience): the run ends at the eval that is the P-th in a row without a
new best; that eval is the final one (final-only evals included); the run counts as finished (the sweep and the
trainer skip it); a crash and resume stops at the same step with the same losses, and one restored at its stop step
trains no further."""
import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from models.transformer import TransformerConfig
from scaling.core import records
from scaling.train import trainer
from scaling.train.config import MeshConfig, TrainConfig
from scaling.train.metrics import read_jsonl
from train_helpers import Crash, crash_after, step_losses

MODEL = TransformerConfig(vocab_size=64, n_ctx=32, n_layer=1, d_model=32, d_ff=64, d_attn=32, n_heads=4)


def make_config(**kw):
    base = dict(model=MODEL, batch_size=8, num_steps=20, learning_rate=3e-3, warmup_steps=2, log_every=1,
                eval_every=2, checkpoint_every=4, keep_checkpoints=3, progress_bar=False, microbatches=2,
                early_stopping_patience=2, extra_eval_final_only=True, mesh=MeshConfig(data=1))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def diverging_data(synthetic_data):
    """Trains on a peaked Markov chain, evaluates on uniform random tokens: the better the model learns the chain,
    the worse it scores the uniform windows, so the eval loss is best early and then rises (measured below)."""
    data = synthetic_data(vocab_size=64, n_ctx=32, batch_size=8)
    data.eval_windows = np.random.default_rng(3).integers(0, 64, (24, 33)).astype(np.int32)
    return data


def _train(config, workdir, data, **kw):
    return trainer.train(config, workdir, data=data, devices=jax.devices()[:1], **kw)




def test_stops_after_patience_evals_without_a_new_best(tmp_path, diverging_data):
    full = str(tmp_path / "full")
    _train(make_config(early_stopping_patience=0), full, diverging_data)
    curve = [(e["step"], e["eval_loss"]) for e in read_jsonl(os.path.join(full, "eval.jsonl"))]
    best = min(curve, key=lambda x: x[1])[0]
    # where patience 2 must stop: the second eval after the best one so far without a new best
    expected, best_so_far, since = None, np.inf, 0
    for step, loss in curve:
        best_so_far, since = (loss, 0) if loss < best_so_far else (best_so_far, since + 1)
        if since >= 2:
            expected = step
            break
    assert expected is not None and expected < 20, curve  # the fixture's curve does turn up

    stopped = str(tmp_path / "stopped")
    summary = _train(make_config(), stopped, diverging_data)
    assert summary["early_stopped"] is True and summary["steps"] == expected
    assert summary["tokens"] == expected * 8 * 32
    assert summary["best_eval_step"] == min(curve[:expected // 2], key=lambda x: x[1])[0] <= best
    evals = read_jsonl(os.path.join(stopped, "eval.jsonl"))
    assert [e["step"] for e in evals] == [s for s, _ in curve if s <= expected]
    assert evals[-1]["early_stopped"] and "eval_loss_shifted" in evals[-1]   # the final-only extra eval ran
    assert all("eval_loss_shifted" not in e for e in evals[:-1])
    # The same training up to the stop: losses and evals equal the full run's.
    full_losses = step_losses(full)
    assert step_losses(stopped) == {s: full_losses[s] for s in range(1, expected + 1)}
    assert [e["eval_loss"] for e in evals] == [loss for s, loss in curve if s <= expected]
    # Finished: for the trainer (a rerun, even asking for more steps) and for the sweep's check.
    again = _train(make_config(num_steps=40), stopped, diverging_data)
    assert again["status"] == "already_finished" and again["steps"] == expected
    assert records.is_finished(records.read_summary(stopped), 20)


def test_resume_stops_at_the_same_step(tmp_path, diverging_data):
    reference = _train(make_config(), str(tmp_path / "reference"), diverging_data)
    stop = reference["steps"]

    crashed = str(tmp_path / "crashed")
    with pytest.raises(Crash):
        _train(make_config(), crashed, diverging_data, after_checkpoint=crash_after(4))
    resumed = _train(make_config(), crashed, diverging_data)
    assert resumed["steps"] == stop and resumed["early_stopped"]
    assert step_losses(crashed) == step_losses(str(tmp_path / "reference"))

    # Restored at the stop step itself (the summary lost in a crash): no further training, same record.
    os.remove(os.path.join(crashed, "summary.json"))
    lost = _train(make_config(), crashed, diverging_data)
    assert lost["steps"] == stop and lost["early_stopped"] and max(step_losses(crashed)) == stop
    assert lost["best_eval_loss"] == reference["best_eval_loss"]


def test_patience_is_checked_and_not_in_the_fingerprint():
    with pytest.raises(ValueError, match="early_stopping_patience"):
        make_config(early_stopping_patience=-1)
    from scaling.train import config as config_lib
    assert (config_lib.fingerprint_fields(make_config(early_stopping_patience=5))
            == config_lib.fingerprint_fields(make_config(early_stopping_patience=0)))
    assert json.dumps(dataclasses.asdict(make_config()))  # still a plain, serialisable config
