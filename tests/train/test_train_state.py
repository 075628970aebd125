"""The train state (scaling.train.state.TrainState): the same parameters as before the unused ``rng`` was dropped;
a checkpoint of the earlier dict layout ({step, params, opt_state, rng}) resumes exactly; a restored state steps
bit-identically to the one it was saved from (d_model 16, the shape whose resumes were seen to drift by 1 ulp)."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.lstm import LSTMConfig
from models.recurrent_transformer import RecurrentTransformerConfig
from models.transformer import TransformerConfig
from scaling.train import checkpointing, mfu, partitioning, trainer
from scaling.train import state as state_lib
from scaling.train.config import MeshConfig, TrainConfig
from train_helpers import Crash, crash_after, step_losses

# The tiny shape of the resume report: d_model 16, head size 8, batch 8, checkpoint every 10.
MODEL = TransformerConfig(vocab_size=64, n_ctx=32, n_layer=1, d_model=16, d_ff=64, d_attn=16, n_heads=2)


def make_config(**kw):
    base = dict(model=MODEL, batch_size=8, num_steps=20, learning_rate=3e-3, warmup_steps=3, log_every=1,
                eval_every=10, checkpoint_every=10, keep_checkpoints=3, progress_bar=False, microbatches=2,
                mesh=MeshConfig(data=1), async_checkpointing=False)
    base.update(kw)
    return TrainConfig(**base)


def bits(tree):
    return [np.ascontiguousarray(np.asarray(x)).tobytes() for x in jax.tree.leaves(tree)]


def test_state_has_no_rng_and_keeps_the_parameters_of_the_split_init_key(synthetic_data):
    data = synthetic_data(vocab_size=64, n_ctx=32, batch_size=8)
    run = trainer.setup(make_config(seed=3), data=data, devices=jax.devices()[:1])
    state = run.init_state()
    assert isinstance(state, trainer.TrainState) and set(vars(state)) == {"step", "params", "opt_state"}
    assert int(state.step) == 0 and state.step.dtype == jnp.int32
    # Before TrainState the key was split into (init key, rng) and the rng kept: the init key is unchanged.
    init_key, _ = jax.random.split(jax.random.key(3))
    tokens = jnp.zeros((1, MODEL.n_ctx), jnp.int32)
    expected = jax.jit(lambda k: nn.unbox(run.model.init(k, tokens))["params"])(init_key)
    assert bits(state.params) == bits(expected)
    assert run.state_shardings.params is not None and isinstance(run.abstract_state, trainer.TrainState)


@pytest.mark.parametrize("model", [
    TransformerConfig(vocab_size=1024, n_ctx=128, n_layer=2, d_model=12, d_ff=48, d_attn=12, n_heads=2,
                      attention_impl="heads_major"),
    LSTMConfig(vocab_size=1024, n_ctx=128, n_layer=2, d_model=48),
    RecurrentTransformerConfig(vocab_size=1024, n_ctx=128, n_layer=2, n_recurrence=2, d_model=32, d_ff=128,
                               d_attn=32, n_heads=2, attention_impl="heads_major"),
], ids=["transformer_cpu_3k5", "lstm_cpu_37k", "recurrent_cpu_25k_x2"])
def test_init_compiled_at_its_lower_optimisation_level_gives_the_default_levels_bits(synthetic_data, model):
    """The init compiles at state.INIT_COMPILER_OPTIONS (a third of the compile time); the parameters and optimizer
    state must be those of the default XLA level, or every committed result would stop reproducing."""
    assert state_lib.INIT_COMPILER_OPTIONS  # the lower level is in use: this compares it with the default
    data = synthetic_data(vocab_size=1024, n_ctx=128, batch_size=8)
    run = trainer.setup(make_config(model=model, seed=5), data=data, devices=jax.devices()[:1])
    state = run.init_state()
    tokens = jnp.zeros((1, model.n_ctx), jnp.int32)

    def init_state(seed):
        init_key, _ = jax.random.split(jax.random.key(seed))
        params = nn.unbox(run.model.init(init_key, tokens))["params"]
        return params, run.tx.init(params)

    params, opt_state = jax.jit(init_state, static_argnums=0)(5)  # default compiler options
    assert bits(state.params) == bits(params) and bits(state.opt_state) == bits(opt_state)


def test_checkpoint_of_the_old_dict_layout_with_rng_resumes_exactly(synthetic_data, tmp_path):
    data = synthetic_data(vocab_size=64, n_ctx=32, batch_size=8)
    devices = jax.devices()[:1]
    reference = str(tmp_path / "reference")
    trainer.train(make_config(), reference, data=data, devices=devices)
    workdir = str(tmp_path / "old_layout")
    with pytest.raises(Crash):
        trainer.train(make_config(), workdir, data=data, devices=devices, after_checkpoint=crash_after(10))
    # Rewrite checkpoint 10 as the previous trainer wrote it: a dict with the (unused) rng key data.
    run = trainer.setup(make_config(), data=data, devices=devices)
    target = partitioning.abstract_with_shardings(run.abstract_state, run.state_shardings)
    directory = os.path.join(workdir, "checkpoints")
    ckpt = checkpointing.Checkpointer(directory, async_save=False)
    _, state, record = ckpt.restore_latest_good(target)
    _, rng = jax.random.split(jax.random.key(0))
    old = {"step": state.step, "params": state.params, "opt_state": state.opt_state, "rng": jax.random.key_data(rng)}
    ckpt.manager.delete(10)
    ckpt.save(10, old, {k: v for k, v in record.items() if k != "state_checksum"})
    ckpt.close()
    assert "rng" in checkpointing.Checkpointer(directory).saved_tree(10)

    summary = trainer.train(make_config(), workdir, data=data, devices=devices)
    assert summary["status"] == "finished"
    assert step_losses(workdir) == step_losses(reference) and len(step_losses(workdir)) == 20
    sha = lambda w: trainer.checkpoint_params_sha256(make_config(), w, data=data, devices=devices)  # noqa: E731
    assert sha(workdir) == sha(reference)


def test_old_layout_checkpoint_with_garbled_state_is_still_caught(synthetic_data, tmp_path):
    """The checksum of an old-layout checkpoint is checked in that layout (rng included)."""
    data = synthetic_data(vocab_size=64, n_ctx=32, batch_size=8)
    run = trainer.setup(make_config(), data=data, devices=jax.devices()[:1])
    state = run.init_state()
    old = {"step": state.step, "params": state.params, "opt_state": state.opt_state,
           "rng": jnp.asarray([1, 2], jnp.uint32)}
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    ckpt.save(0, old, {"data_step": 0})
    ckpt.wait()
    _, checksum = checkpointing.inspect_state(old)
    ckpt.manager.delete(0)
    old["rng"] = jnp.asarray([1, 3], jnp.uint32)                    # a different rng, the old checksum
    ckpt.manager.save(0, args=checkpointing.ocp.args.Composite(
        state=checkpointing.ocp.args.StandardSave(old),
        record=checkpointing.ocp.args.JsonSave({"data_step": 0, "state_checksum": checksum})), force=True)
    ckpt.manager.wait_until_finished()
    target = partitioning.abstract_with_shardings(run.abstract_state, run.state_shardings)
    with pytest.raises(ValueError, match="state checksum"):
        ckpt.restore(0, target)
    ckpt.close()


def test_restored_state_steps_bit_identically_to_the_saved_one(synthetic_data, tmp_path):
    """The restored arrays (orbax) and the in-memory ones they were saved from give the same bits for 20 more
    steps: the resume path adds no layout, sharding or dtype difference XLA could compile differently."""
    data = synthetic_data(vocab_size=64, n_ctx=32, batch_size=8)
    config = make_config(num_steps=40)
    run = trainer.setup(config, data=data, devices=jax.devices()[:1])
    step_fn, _, _ = trainer.compile_steps(run, with_eval=False)
    put = lambda s: partitioning.global_batch(data.train.batch(s), run.batch_sharding, config.batch_size)  # noqa: E731
    state = run.init_state()
    for s in range(20):
        state, _ = step_fn(state, put(s))
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    ckpt.save(20, state, {"data_step": 20})
    ckpt.wait()
    _, restored, _ = ckpt.restore_latest_good(
        partitioning.abstract_with_shardings(run.abstract_state, run.state_shardings))
    ckpt.close()
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        assert (a.dtype, a.shape, a.sharding, a.weak_type) == (b.dtype, b.shape, b.sharding, b.weak_type)
    in_memory = jax.tree.map(lambda x: x.copy(), state)              # the step donates its input
    for s in range(20, 40):
        in_memory, m1 = step_fn(in_memory, put(s))
        restored, m2 = step_fn(restored, put(s))
        assert float(m1["loss"]) == float(m2["loss"]), s + 1
    assert bits(in_memory) == bits(restored)


def test_resume_on_another_number_of_cpu_cores_is_named(synthetic_data, tmp_path, monkeypatch, capsys):
    """The 1-ulp resume drift at d_model 16 comes from the CPU cores of the session (XLA's thread pool), not
    from the checkpoint (the test above): a resume on another core count says so; on the same one it is silent."""
    data = synthetic_data(vocab_size=64, n_ctx=32, batch_size=8)
    devices = jax.devices()[:1]
    workdir = str(tmp_path / "cores")
    monkeypatch.setattr(mfu, "process_cores", lambda: 7)
    with pytest.raises(Crash):
        trainer.train(make_config(), workdir, data=data, devices=devices, after_checkpoint=crash_after(10))
    with pytest.raises(Crash):                                        # resumed on 7 cores again: no warning
        trainer.train(make_config(), workdir, data=data, devices=devices, after_checkpoint=crash_after(20))
    assert "CPU cores" not in capsys.readouterr().out
    monkeypatch.setattr(mfu, "process_cores", lambda: 3)
    trainer.train(make_config(), workdir, data=data, devices=devices)   # resumes at its last step
    out = capsys.readouterr().out
    assert "checkpoint 20 was written by a session on 7 CPU cores, this one runs on 3" in out
    assert "taskset" in out
