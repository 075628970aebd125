"""NaN/Inf in the loss or gradients: the run stops naming the step and the last good checkpoint, or
(TrainConfig.nonfinite='skip') skips the update inside the jitted step and carries on; a checkpoint
with non-finite parameters is never written. A failed checkpoint write is a clear error with the
previous checkpoint intact."""
import dataclasses
import errno
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import reliability_child as child  # noqa: E402

from scaling.train import checkpointing, partitioning, trainer  # noqa: E402
from scaling.train.metrics import read_jsonl  # noqa: E402

STEPS = 12


class PoisonedLoader:
    """The synthetic loader with an out-of-vocabulary token in the batches of `bad_steps` (1-based):
    the embedding lookup of such a token is NaN, so exactly those steps have a NaN loss."""

    def __init__(self, loader, bad_steps):
        self.inner, self.bad_steps = loader, set(bad_steps)
        self.windows_per_epoch = loader.windows_per_epoch

    def batch(self, step):
        rows = self.inner.batch(step).copy()
        if step + 1 in self.bad_steps:
            rows[0, 0] = 10 ** 6
        return rows

    def iterate(self, start_step=0, num_steps=None):
        for step, _ in self.inner.iterate(start_step, num_steps):
            yield step, self.batch(step)


def poisoned(data, bad_steps):
    return dataclasses.replace(data, train=PoisonedLoader(data.train, bad_steps))


@pytest.fixture(scope="module")
def data():
    return child.make_data()


def config(**kw):
    return child.make_config(num_steps=STEPS, checkpoint_every=4, eval_every=STEPS, **kw)


def checkpoint_steps(workdir):
    return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


def test_nan_stops_then_skip_policy_resumes_and_skips(data, tmp_path, capsys):
    """One workdir: NaN at step 6 stops the run (checkpoint 4 kept, nothing after it); resumed with
    nonfinite='skip' and NaNs from step 6 on, it stops after max_skipped_steps=3 skips in a row (step 8);
    resumed again with only step 6 bad, it skips 6 and finishes with finite parameters."""
    workdir = str(tmp_path / "run")
    one = jax.devices()[:1]
    with pytest.raises(trainer.NonFiniteLossError) as error:
        trainer.train(config(), workdir, data=poisoned(data, {6}), devices=one)
    assert error.value.step == 6 and error.value.last_checkpoint == 4
    assert "at step 6" in str(error.value) and "last good checkpoint is step 4" in str(error.value)
    assert "nonfinite = 'skip'" in str(error.value)
    assert checkpoint_steps(workdir) == [4]          # nothing written after the NaN
    assert not os.path.exists(os.path.join(workdir, "summary.json"))

    # The policy is not part of the run's identity: the same workdir resumes under 'skip'.
    with pytest.raises(trainer.NonFiniteLossError, match="3 consecutive skipped steps") as error:
        trainer.train(config(nonfinite="skip", max_skipped_steps=3), workdir,
                      data=poisoned(data, range(6, STEPS + 1)), devices=one)
    assert error.value.step == 8 and error.value.last_checkpoint == 4 and checkpoint_steps(workdir) == [4]

    capsys.readouterr()
    result = trainer.train(config(nonfinite="skip"), workdir, data=poisoned(data, {6}), devices=one)
    assert result["status"] == "finished" and result["skipped_steps"] == 1
    assert np.isfinite(result["final_eval_loss"]) and np.isfinite(result["final_train_loss"])
    assert "at step 6; update skipped" in capsys.readouterr().out
    records = {r["step"]: r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))}
    assert sorted(records) == list(range(1, STEPS + 1))
    assert records[6]["loss"] is None and records[5]["skipped_steps"] == 0 and records[STEPS]["skipped_steps"] == 1
    assert all(np.isfinite(records[s]["loss"]) for s in records if s != 6)


def test_never_writes_a_nan_checkpoint(data, tmp_path):
    run = trainer.setup(config(), data=data, devices=jax.devices()[:1])
    state = run.init_state()
    state = state.replace(params=jax.tree.map(lambda p: p.at[...].set(jnp.nan) if p.ndim == 2 else p, state.params))
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
    with pytest.raises(checkpointing.NonFiniteStateError, match="NaN/Inf"):
        ckpt.save(3, state, {"data_step": 3})
    ckpt.close()
    assert checkpoint_steps(str(tmp_path)) == []


def test_disk_write_failure_is_clear_and_keeps_previous_checkpoint(data, tmp_path, monkeypatch):
    """ENOSPC while checkpoint 8 is written (injected into orbax's commit): a CheckpointWriteError
    names the step and the intact checkpoint 4; rerunning resumes from 4 and finishes."""
    from orbax.checkpoint._src.path import atomicity
    original = atomicity.AtomicRenameTemporaryPath.finalize

    async def disk_full(self):
        if os.path.basename(str(self.get_final())) == "8":
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        return await original(self)

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", disk_full)
    workdir = str(tmp_path / "full")
    with pytest.raises(checkpointing.CheckpointWriteError) as error:
        trainer.train(config(), workdir, data=data, devices=jax.devices()[:1])
    message = str(error.value)
    assert "checkpoint 8" in message and "No space left on device" in message
    assert "last complete checkpoint is step 4" in message and error.value.last_good == 4
    assert checkpoint_steps(workdir) == [4]
    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", original)
    run = trainer.setup(config(), data=data, devices=jax.devices()[:1])
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
    step, _, record = ckpt.restore_latest_good(partitioning.abstract_with_shardings(run.abstract_state,
                                                                                     run.state_shardings))
    ckpt.close()
    assert step == 4 and record["data_step"] == 4
    result = trainer.train(config(), workdir, data=data, devices=jax.devices()[:1])
    assert result["status"] == "finished" and result["steps"] == STEPS
