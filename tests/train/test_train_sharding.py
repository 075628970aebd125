"""Sharded runs (data=8; data=2,fsdp=2,tensor=2; fsdp=8) reproduce the single-device losses, for Adam
and Adafactor, and Adafactor's factored second moment is sharded like its parameter's surviving dims."""
import dataclasses

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
import optax

from models.transformer import TransformerConfig
from scaling.train import partitioning, trainer
from scaling.train.config import MeshConfig, TrainConfig

MODEL = TransformerConfig(vocab_size=64, n_ctx=32, n_layer=2, d_model=32, d_ff=64, d_attn=32, n_heads=4)
MESHES = {
    "data8": MeshConfig(data=8, fsdp=1, tensor=1),
    "d2f2t2": MeshConfig(data=2, fsdp=2, tensor=2),
    "fsdp8": MeshConfig(data=1, fsdp=8, tensor=1),
}


def config(optimizer, mesh, **kw):
    return TrainConfig(model=MODEL, batch_size=16, num_steps=5, learning_rate=3e-3, warmup_steps=1,
                       optimizer=optimizer, adafactor_min_dim_to_factor=16, mesh=mesh,
                       microbatches=kw.pop("microbatches", 2), **kw)


def run_steps(cfg, data, devices, steps=5):
    """Losses of the first ``steps`` optimizer steps, and the final state."""
    run = trainer.setup(cfg, data=data, devices=devices)
    train_step, _, _ = trainer.compile_steps(run, with_eval=False)
    state = run.init_state()
    losses = []
    for step in range(steps):
        batch = partitioning.global_batch(data.train.batch(step), run.batch_sharding, cfg.batch_size)
        state, m = train_step(state, batch)
        losses.append(float(m["loss"]))
    return np.array(losses), state, run


@pytest.mark.parametrize("optimizer", ["adam", "adafactor"])
def test_sharded_losses_match_single_device(optimizer, synthetic_data):
    data = synthetic_data(vocab_size=64, n_ctx=32, batch_size=16)
    reference, ref_state, _ = run_steps(config(optimizer, MeshConfig(data=1)), data, jax.devices()[:1])
    assert np.all(np.isfinite(reference)) and reference[-1] < reference[0]
    for name, mesh in MESHES.items():
        losses, state, run = run_steps(config(optimizer, mesh), data, jax.devices())
        assert run.mesh.devices.size == 8
        np.testing.assert_allclose(losses, reference, rtol=1e-5, err_msg=f"{optimizer} on mesh {name}")
        # The parameters after 5 updates agree too, as whole tensors. (Element-wise, Adam/Adafactor's
        # first updates are ~lr·sign(g), so a gradient entry at rounding level may flip: compare norms.)
        # The key bias is skipped: softmax ignores it, its true gradient is 0 and Adafactor/Adam turn the
        # rounding noise there into lr-sized random steps.
        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(state.params)[0],
                                jax.tree.leaves(ref_state.params)):
            if "qkv" in jax.tree_util.keystr(path) and "bias" in jax.tree_util.keystr(path):
                continue
            a, b = np.asarray(a), np.asarray(b)
            assert np.linalg.norm(a - b) <= 1e-2 * np.linalg.norm(b), f"{optimizer} {name}" 


def test_adafactor_factored_state_shardings(synthetic_data):
    data = synthetic_data(vocab_size=64, n_ctx=32, batch_size=16)
    cfg = dataclasses.replace(config("adafactor", MeshConfig(data=2, fsdp=2, tensor=2)),
                              adafactor_min_dim_to_factor=8)
    _, state, run = run_steps(cfg, data, jax.devices(), steps=1)
    factored = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(x, optax.FactoredState))
                if isinstance(s, optax.FactoredState)]
    assert len(factored) == 1
    fs = factored[0]
    wi = state.params["h_0"]["mlp"]["wi"]["kernel"]       # [embed=32, mlp=64]: P('fsdp', 'tensor')
    assert wi.sharding.spec == P("fsdp", "tensor")
    # optax factors over the two largest dims: v_row drops the largest (mlp), v_col the second (embed).
    v_row = fs.v_row["h_0"]["mlp"]["wi"]["kernel"]
    v_col = fs.v_col["h_0"]["mlp"]["wi"]["kernel"]
    assert v_row.shape == (32,) and v_row.sharding.spec == P("fsdp")
    assert v_col.shape == (64,) and v_col.sharding.spec == P("tensor")
    # ...and really is split: each device holds half of the 32 rows.
    assert v_row.addressable_shards[0].data.shape == (16,)
    assert v_col.addressable_shards[0].data.shape == (32,)
    wo = fs.v_row["h_0"]["mlp"]["wo"]["kernel"]              # [mlp=64, embed=32]: drops mlp -> P('fsdp')
    assert wo.shape == (32,) and wo.sharding.spec == P("fsdp")
    # qkv kernel [embed=32, 3, heads=4, kv=8]: largest dim embed (d0), second kv (d1).
    qkv_row = fs.v_row["h_0"]["attn"]["qkv"]["kernel"]
    qkv_col = fs.v_col["h_0"]["attn"]["qkv"]["kernel"]
    assert qkv_row.shape == (3, 4, 8) and qkv_row.sharding.spec == P(None, "tensor", None)
    assert qkv_col.shape == (32, 3, 4) and qkv_col.sharding.spec == P("fsdp", None, "tensor")
    # Unfactored (vectors): full second moment sharded like the parameter; placeholders replicated.
    bias_v = fs.v["h_0"]["mlp"]["wi"]["bias"]
    assert bias_v.shape == (64,) and bias_v.sharding.spec == P("tensor")
    assert fs.v["h_0"]["mlp"]["wi"]["kernel"].shape == (1,)
    assert fs.v["h_0"]["mlp"]["wi"]["kernel"].sharding.spec == P()


def test_adam_state_is_sharded_like_params(synthetic_data):
    data = synthetic_data(vocab_size=64, n_ctx=32, batch_size=16)
    run = trainer.setup(config("adam", MeshConfig(data=1, fsdp=8, tensor=1)), data=data)
    specs = run.state_shardings
    mu = specs.opt_state[1].mu
    for p_sharding, m_sharding in zip(jax.tree.leaves(specs.params), jax.tree.leaves(mu)):
        assert p_sharding.spec == m_sharding.spec
    assert specs.params["embedder"]["wte"]["embedding"].spec == P("tensor", "fsdp")  # (vocab, embed)


def test_mesh_errors_are_clear(synthetic_data):
    with pytest.raises(ValueError, match="at most one of data/fsdp/tensor may be -1"):
        partitioning.mesh_shape(MeshConfig(data=-1, fsdp=-1), 8)
    with pytest.raises(ValueError, match="needs 6 devices but 8 are available"):
        partitioning.mesh_shape(MeshConfig(data=3, fsdp=2, tensor=1), 8)
    assert partitioning.mesh_shape(MeshConfig(data=-1, fsdp=2, tensor=2), 8) == (2, 2, 2)
    data = synthetic_data(vocab_size=64, n_ctx=32, batch_size=12)
    bad = TrainConfig(model=MODEL, batch_size=12, num_steps=5, mesh=MeshConfig(data=8))
    with pytest.raises(ValueError, match=r"batch_size=12 is not divisible by the data-parallel size 8"):
        trainer.setup(bad, data=data)


def test_rules_override_from_config():
    rules = dict(partitioning.logical_rules(MeshConfig(rules_override=(("embed", None), ("mlp", ("fsdp", "tensor"))))))
    assert rules["embed"] is None and rules["mlp"] == ("fsdp", "tensor") and rules["heads"] == "tensor"
    with pytest.raises(ValueError, match="unknown logical axis names"):
        partitioning.logical_rules(MeshConfig(rules_override=(("embedding", None),)))
    with pytest.raises(ValueError, match="mesh axes are"):
        partitioning.logical_rules(MeshConfig(rules_override=(("embed", "model"),)))


def test_sharded_lstm_with_activation_constraints(synthetic_data):
    """The LSTM traces under the mesh with its activation constraints and matches one device."""
    from models.lstm import LSTMConfig
    data = synthetic_data(vocab_size=64, n_ctx=32, batch_size=16)
    lstm = LSTMConfig(vocab_size=64, n_ctx=32, n_layer=2, d_model=32)
    make = lambda mesh: TrainConfig(model=lstm, batch_size=16, num_steps=3, learning_rate=3e-3, warmup_steps=1,
                                    mesh=mesh)
    reference, _, _ = run_steps(make(MeshConfig(data=1)), data, jax.devices()[:1], steps=3)
    losses, _, run = run_steps(make(MeshConfig(data=2, fsdp=2, tensor=2)), data, jax.devices(), steps=3)
    np.testing.assert_allclose(losses, reference, rtol=1e-5)


@pytest.mark.parametrize("min_dim", [1, 8, 128])
def test_factored_dims_match_optax(min_dim):
    """partitioning.factored_dims restates optax's private Adafactor rule; the shapes of the state that the
    public optax.scale_by_factored_rms creates must follow it (fails if optax changes the rule)."""
    import jax.numpy as jnp
    shapes = [(4,), (3, 5), (16, 8), (8, 16), (256, 128), (128, 300), (2, 128, 64), (64, 3, 200), (9, 9), (7, 1, 200)]
    params = {f"p{i}": jnp.zeros(shape) for i, shape in enumerate(shapes)}
    state = optax.scale_by_factored_rms(min_dim_size_to_factor=min_dim).init(params)
    factored = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.FactoredState))
                if isinstance(s, optax.FactoredState)]
    assert len(factored) == 1
    fs = factored[0]
    for i, shape in enumerate(shapes):
        dims = partitioning.factored_dims(shape, min_dim)
        v_row, v_col, v = fs.v_row[f"p{i}"], fs.v_col[f"p{i}"], fs.v[f"p{i}"]
        if dims is None:
            assert v.shape == shape and v_row.shape == (1,) and v_col.shape == (1,), (shape, min_dim)
        else:
            assert v.shape == (1,), (shape, min_dim)
            assert v_row.shape == tuple(np.delete(shape, dims[1])), (shape, dims, v_row.shape)
            assert v_col.shape == tuple(np.delete(shape, dims[0])), (shape, dims, v_col.shape)
