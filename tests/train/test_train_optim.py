"""Gradient accumulation equals the large batch; noise-scale sums; schedules; Kaplan eq. D.1; MFU table."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.transformer import Transformer, TransformerConfig
from scaling.train import mfu, optimizers, partitioning, trainer
from scaling.train.config import MeshConfig, TrainConfig

MODEL = TransformerConfig(vocab_size=64, n_ctx=32, n_layer=2, d_model=32, d_ff=64, d_attn=32, n_heads=4)


def test_grad_accumulation_matches_one_large_batch(synthetic_data):
    data = synthetic_data(vocab_size=64, n_ctx=32, batch_size=16)
    results = {}
    for k in (1, 4):
        cfg = TrainConfig(model=MODEL, batch_size=16, num_steps=4, learning_rate=3e-3, warmup_steps=1,
                          microbatches=k, noise_scale=k > 1, mesh=MeshConfig(data=2, fsdp=1, tensor=1))
        run = trainer.setup(cfg, data=data, devices=jax.devices()[:2])
        step_fn, _, _ = trainer.compile_steps(run, with_eval=False)
        state, history = run.init_state(), []
        for step in range(4):
            batch = partitioning.global_batch(data.train.batch(step), run.batch_sharding, 16)
            state, m = step_fn(state, batch)
            history.append({key: float(v) for key, v in m.items()})
        results[k] = (history, jax.tree.map(np.asarray, state.params))
    (h1, p1), (h4, p4) = results[1], results[4]
    np.testing.assert_allclose([h["loss"] for h in h4], [h["loss"] for h in h1], rtol=1e-5)
    np.testing.assert_allclose([h["grad_norm"] for h in h4], [h["grad_norm"] for h in h1], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(p4), jax.tree.leaves(p1)):
        assert np.linalg.norm(a - b) <= 1e-2 * np.linalg.norm(b) + 1e-6
    # Noise-scale sums: S_big is |mean gradient|^2 = grad_norm^2; microbatch gradients are noisier.
    for h in h4:
        assert h["gns_s_big"] == pytest.approx(h["grad_norm"] ** 2, rel=1e-4)
        assert h["gns_s_small"] > h["gns_s_big"]
    assert "gns_s_small" not in h1[0]


def test_identical_microbatches_have_no_gradient_noise():
    model = Transformer(MODEL)
    tokens = jnp.zeros((1, MODEL.n_ctx), jnp.int32)
    params = nn.unbox(model.init(jax.random.key(0), tokens))["params"]
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    row = np.random.default_rng(0).integers(0, 64, (1, MODEL.n_ctx + 1)).astype(np.int32)
    windows = np.repeat(row, 8, axis=0)
    loss, grads, gns = jax.jit(trainer.make_grad_fn(apply_fn, 4))(params, windows)
    loss1, grads1, _ = jax.jit(trainer.make_grad_fn(apply_fn, 1))(params, windows)
    assert float(gns["gns_s_small"]) == pytest.approx(float(gns["gns_s_big"]), rel=1e-5)
    assert float(loss) == pytest.approx(float(loss1), rel=1e-6)


def test_schedules():
    peak, steps, warmup = 1e-3, 100, 10
    cosine = optimizers.make_schedule("cosine", peak, steps, warmup)
    lrs = np.array([float(cosine(s)) for s in range(steps)])
    assert lrs[0] == pytest.approx(peak / warmup)
    assert lrs[warmup - 1] == pytest.approx(peak)
    assert np.all(np.diff(lrs[:warmup]) > 0) and np.all(np.diff(lrs[warmup:]) < 0)
    assert lrs[warmup + 45] == pytest.approx(peak / 2, rel=1e-5)  # half-way through the decay
    assert float(cosine(steps)) == pytest.approx(0.0, abs=1e-12)  # zero at the end of the run
    constant = optimizers.make_schedule("constant", peak, steps, warmup)
    assert [float(constant(s)) for s in (9, 50, 99)] == pytest.approx([peak] * 3)
    wsd = optimizers.make_schedule("wsd", peak, steps, warmup, decay_fraction=0.2)
    assert float(wsd(79)) == pytest.approx(peak)
    assert float(wsd(90)) == pytest.approx(peak / 2)
    assert float(wsd(steps)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="unknown schedule"):
        optimizers.make_schedule("linear", peak, steps, warmup)


def test_kaplan_learning_rate_eq_d1():
    assert optimizers.kaplan_learning_rate(10 ** 6) == pytest.approx(0.003239 - 0.0001395 * math.log(1e6))
    assert optimizers.kaplan_learning_rate(10 ** 5) > optimizers.kaplan_learning_rate(10 ** 8)
    with pytest.raises(ValueError, match="set TrainConfig.learning_rate"):
        optimizers.kaplan_learning_rate(10 ** 11)


def test_config_errors():
    with pytest.raises(ValueError, match="optimizer='sgd'"):
        TrainConfig(model=MODEL, optimizer="sgd")
    with pytest.raises(ValueError, match="not divisible by TrainConfig.microbatches=3"):
        TrainConfig(model=MODEL, batch_size=16, microbatches=3)
    with pytest.raises(ValueError, match="use optimizer='adamw'"):
        optimizers.make_optimizer(TrainConfig(model=MODEL, weight_decay=0.1), lambda s: 1e-3)


def test_peak_flops_lookup_and_mfu():
    """The lookup, not the table's numbers: each device kind JAX reports finds its own row (substring match,
    most specific first: a v5e is not a v5p, an H100 PCIe not an SXM), the dtype picks the column, unknown
    kinds have no peak; one published anchor (H100 SXM: 989 dense bf16 TFLOP/s)."""
    rows = {key: (bf16, fp32) for key, bf16, fp32 in mfu.PEAK_FLOPS}
    reported = {"TPU v5 lite": "tpu v5 lite", "TPU v5e": "tpu v5e", "TPU v5p": "tpu v5p", "TPU v5": "tpu v5",
                "TPU v4": "tpu v4", "NVIDIA H200": "h200", "NVIDIA H100 PCIe": "h100 pcie",
                "NVIDIA H100 80GB HBM3": "h100", "NVIDIA A100-SXM4-80GB": "a100"}
    for kind, key in reported.items():
        assert mfu.chip_peak(kind, "bfloat16") == rows[key][0], kind
        assert mfu.chip_peak(kind, "float32") == rows[key][1], kind
        assert mfu.chip_peak(kind.upper(), "float16") == rows[key][0], kind   # case-insensitive; fp16 = bf16 peak
    assert set(reported.values()) == set(rows)                                 # every row is reachable
    assert all(fp32 <= bf16 for bf16, fp32 in rows.values())
    assert mfu.chip_peak("TPU v5 lite") < mfu.chip_peak("TPU v5p") and mfu.chip_peak("NVIDIA H100 PCIe") < mfu.chip_peak(
        "NVIDIA H100 80GB HBM3")
    assert mfu.chip_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert mfu.chip_peak("cpu") is None and mfu.chip_peak("NVIDIA GeForce RTX 4090") is None
    assert mfu.mfu(6e6, 1e3, 1.2e10) == pytest.approx(0.5)
    peak, source = mfu.peak_flops(jax.devices()[:1])
    assert peak > 1e8 and source.startswith("measured")
