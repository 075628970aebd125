"""The in-step estimator (noise-scale.md §3 T1, T2, T5, T6): algebra, exact truth at fixed θ, invariances,
and the scan / per-example / shard_map paths on 8 fake devices (incl. the check_vma trap)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from scaling.noise import estimator

D_FEATURES = 50


# --- models: logistic regression and a tiny MLP on one packed array [B, features + 1 label] ---------------
def logreg_loss(params, rows):
    x, y = rows[:, :-1], rows[:, -1]
    z = x @ params["w"] + params["b"]
    return jnp.mean(jax.nn.softplus(z) - y * z)  # mean logistic loss


def mlp_loss(params, rows):
    x, y = rows[:, :-1], rows[:, -1]
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean(0.5 * jnp.square(h @ params["w2"] + params["b2"] - y))


def logreg_problem(n=2 ** 15, d=D_FEATURES, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) / np.sqrt(d) * 2
    w_true = rng.standard_normal(d)
    y = (rng.random(n) < 1 / (1 + np.exp(-(x @ w_true)))).astype(np.float64)
    params = {"w": 0.3 * w_true + 0.2 * rng.standard_normal(d), "b": np.float64(0.1)}  # not at the optimum
    return np.concatenate([x, y[:, None]], axis=1), params


def mlp_problem(n=2 ** 15, d=6, h=8, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = np.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2] + 0.3 * rng.standard_normal(n)
    params = {"w1": rng.standard_normal((d, h)) / np.sqrt(d), "b1": 0.1 * rng.standard_normal(h),
              "w2": rng.standard_normal(h) / np.sqrt(h), "b2": np.float64(0.0)}
    return np.concatenate([x, y[:, None]], axis=1), params


def f32(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)


def exact_truth(loss_fn, params, data):
    """Full-population |G|² and trΣ = mean_i |g_i|² − |G|² from per-example gradients in float64."""
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        grads = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0))(p64, jnp.asarray(data, jnp.float64)[:, None])
        flat = np.concatenate([np.asarray(g).reshape(len(data), -1) for g in jax.tree.leaves(grads)], axis=1)
    G = flat.mean(axis=0)
    g2 = float(G @ G)
    return g2, float(np.mean(np.sum(flat ** 2, axis=1)) - g2)


# --- T1: algebra --------------------------------------------------------------------------------------------
def test_unbiased_estimates_identities_float64():
    rng = np.random.default_rng(0)
    K, b, d = 5, 3, 20
    B = K * b
    g = rng.standard_normal((K, d)) + 0.7
    s_small = np.mean(np.sum(g ** 2, axis=1))
    g_bar = g.mean(axis=0)
    s_big = g_bar @ g_bar
    g2, trace = estimator.unbiased_estimates(s_small, s_big, b, B)
    assert trace == pytest.approx(b / (K - 1) * np.sum((g - g_bar) ** 2), rel=1e-12)
    assert g2 == pytest.approx(s_big - trace / B, rel=1e-12)
    assert g2 == pytest.approx((B * s_big - b * s_small) / (B - b), rel=1e-12)
    with pytest.raises(ValueError, match="b_big > b_small"):
        estimator.unbiased_estimates(s_small, s_big, 4, 4)


def test_k_equals_b_scan_matches_per_example_vmap():
    data, params = logreg_problem(n=64, d=10)
    batch, params = jnp.asarray(data[:16], jnp.float32), f32(params)
    vg = jax.value_and_grad(logreg_loss)
    loss_s, g_s, scan = jax.jit(estimator.microbatch_value_and_grad(vg, 16))(params, batch)
    loss_e, g_e, per = jax.jit(estimator.per_example_value_and_grad(vg))(params, batch)
    # vmap(grad) by hand: the per-example mean squared norm
    singles = jax.vmap(jax.grad(logreg_loss), in_axes=(None, 0))(params, batch[:, None])
    by_hand = np.mean(sum(np.sum(np.asarray(x).reshape(16, -1) ** 2, axis=1) for x in jax.tree.leaves(singles)))
    assert float(scan["gns_s_small"]) == pytest.approx(by_hand, rel=1e-6)
    assert float(per["gns_s_small"]) == pytest.approx(by_hand, rel=1e-6)
    assert float(scan["gns_s_big"]) == pytest.approx(float(per["gns_s_big"]), rel=1e-6)
    assert float(loss_s) == pytest.approx(float(loss_e), rel=1e-6)
    np.testing.assert_allclose(g_s["w"], g_e["w"], rtol=1e-5, atol=1e-7)


def test_identical_microbatches_give_zero_trace():
    data, params = logreg_problem(n=64, d=10)
    K = 4
    # strided split: microbatch k = rows k, k+K, ...; repeating each row K times makes all K identical
    batch = jnp.asarray(np.repeat(data[:8], K, axis=0), jnp.float32)
    _, _, sums = jax.jit(estimator.microbatch_value_and_grad(jax.value_and_grad(logreg_loss), K))(f32(params), batch)
    g2, trace = estimator.unbiased_estimates(float(sums["gns_s_small"]), float(sums["gns_s_big"]), 8, 32)
    assert abs(trace) < 1e-5 * g2 * 32
    assert g2 > 0


def test_one_gradient_sample_is_refused():
    with pytest.raises(ValueError, match="at least 2 gradient samples"):
        estimator.check_gradient_samples(1)
    with pytest.raises(ValueError, match=r"K=1 x data shards D=1"):
        estimator.check_gradient_samples(1, 1)
    estimator.check_gradient_samples(1, 2)  # D = 2 data shards are two samples
    mesh = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Auto,))
    with pytest.raises(ValueError, match="at least 2 gradient samples"):
        estimator.data_parallel_value_and_grad(jax.value_and_grad(logreg_loss), mesh, microbatches=1)
    with pytest.raises(ValueError, match="at least 2 gradient samples"):
        estimator.per_example_value_and_grad(jax.value_and_grad(logreg_loss))(
            f32(logreg_problem(n=4, d=3)[1]), jnp.ones((1, 4)))
    assert estimator.sample_batch_sizes(64, microbatches=4, data_shards=2) == (8, 64)


# --- T2: exact truth at fixed θ ------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _problem(name):
    return {"logreg": (logreg_loss, *logreg_problem()), "mlp": (mlp_loss, *mlp_problem())}[name]


@pytest.mark.parametrize("name", ["logreg", "mlp"])
@pytest.mark.parametrize("b,K", [(1, 64), (8, 8), (32, 2)])
def test_unbiased_against_exact_truth(name, b, K):
    """R = 2000 batches (with replacement) through the production scan: mean within 4 SE of the truth."""
    loss_fn, data, params = _problem(name)
    g2_true, trace_true = exact_truth(loss_fn, params, data)
    R, B = 2000, b * K
    idx = np.random.default_rng(b * 100 + K).integers(0, len(data), size=(R, B))
    batches = jnp.asarray(data[idx], jnp.float32)
    run = estimator.microbatch_value_and_grad(jax.value_and_grad(loss_fn), K)
    _, _, sums = jax.jit(jax.vmap(run, in_axes=(None, 0)))(f32(params), batches)
    g2, trace = estimator.unbiased_estimates(np.asarray(sums["gns_s_small"], np.float64),
                                             np.asarray(sums["gns_s_big"], np.float64), b, B)
    for est, truth in ((g2, g2_true), (trace, trace_true)):
        se = est.std(ddof=1) / np.sqrt(R)
        assert abs(est.mean() - truth) < 4 * se, (est.mean(), truth, se)
    assert trace_true / g2_true > 1  # a noisy regime: the test would catch a bias in trΣ


# --- T5: invariances at fixed θ -------------------------------------------------------------------------------
def test_loss_scale_and_microbatch_order_leave_b_simple_unchanged():
    data, params = logreg_problem(n=256, d=20)
    params, batch, K = f32(params), jnp.asarray(data[:64], jnp.float32), 8
    base = estimator.microbatch_value_and_grad(jax.value_and_grad(logreg_loss), K)
    scaled = estimator.microbatch_value_and_grad(jax.value_and_grad(lambda p, r: 7.3 * logreg_loss(p, r)), K)
    _, _, s1 = jax.jit(base)(params, batch)
    _, _, s2 = jax.jit(scaled)(params, batch)

    def ratio(s):
        g2, tr = estimator.unbiased_estimates(float(s["gns_s_small"]), float(s["gns_s_big"]), 64 // K, 64)
        return tr / g2

    assert float(s2["gns_s_small"]) == pytest.approx(7.3 ** 2 * float(s1["gns_s_small"]), rel=1e-5)
    assert ratio(s2) == pytest.approx(ratio(s1), rel=1e-4)
    # same microbatches in another order (and rows shuffled inside each): identical sums
    rng = np.random.default_rng(0)
    split = np.asarray(batch).reshape(64 // K, K, -1)[:, rng.permutation(K)]
    split = split[rng.permutation(64 // K)]
    _, _, s3 = jax.jit(base)(params, jnp.asarray(split.reshape(64, -1)))
    assert float(s3["gns_s_small"]) == pytest.approx(float(s1["gns_s_small"]), rel=1e-6)
    assert float(s3["gns_s_big"]) == pytest.approx(float(s1["gns_s_big"]), rel=1e-6)


# --- T6: scan, per-example and shard_map on 8 fake devices ----------------------------------------------------
@pytest.fixture(scope="module")
def mesh8():
    if jax.device_count() < 8:
        pytest.fail("tests/conftest.py must provide 8 fake CPU devices")
    return jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))


def _contiguous_blocks_as_strided(batch, parts):
    """Reorder rows so the strided microbatch k holds contiguous block k (what shard k of 'data' gets)."""
    b = batch.shape[0] // parts
    return batch.reshape(parts, b, *batch.shape[1:]).swapaxes(0, 1).reshape(batch.shape)


def test_scan_per_example_and_shard_map_agree(mesh8):
    data, params = mlp_problem(n=64)
    params, batch = f32(params), jnp.asarray(data[:32], jnp.float32)
    vg = jax.value_and_grad(mlp_loss)
    # b = 1: per-example vmap == scan K=32 == shard_map D=8 x local K=4
    _, g_e, per = jax.jit(estimator.per_example_value_and_grad(vg))(params, batch)
    _, g_s, scan = jax.jit(estimator.microbatch_value_and_grad(vg, 32))(params, batch)
    _, g_d, dp = jax.jit(estimator.data_parallel_value_and_grad(vg, mesh8, microbatches=4))(params, batch)
    for s in (scan, dp):
        for key in ("gns_s_small", "gns_s_big"):
            assert float(s[key]) == pytest.approx(float(per[key]), rel=1e-6)
    for g in (g_s, g_d):
        for a, e in zip(jax.tree.leaves(g), jax.tree.leaves(g_e)):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)
    # b = B/8: shard_map D=8, K=1 == scan K=8 on the same blocks == scan under GSPMD with the batch sharded
    _, _, dp8 = jax.jit(estimator.data_parallel_value_and_grad(vg, mesh8))(params, batch)
    reordered = _contiguous_blocks_as_strided(batch, 8)
    scan8 = estimator.microbatch_value_and_grad(vg, 8)
    _, _, sc8 = jax.jit(scan8)(params, reordered)
    sharded = jax.device_put(reordered, NamedSharding(mesh8, P("data")))
    _, _, gspmd = jax.jit(scan8)(params, sharded)
    for s in (sc8, gspmd):
        for key in ("gns_s_small", "gns_s_big"):
            assert float(s[key]) == pytest.approx(float(dp8[key]), rel=1e-6)
    assert float(dp8["gns_s_small"]) < float(per["gns_s_small"])  # b = 4 vs b = 1: smaller spread


def test_check_vma_trap_is_real_and_avoided(mesh8):
    """jax.grad inside shard_map w.r.t. replicated params returns the psum: S_small = D²·|ḡ|²."""
    data, params = mlp_problem(n=64)
    params, batch = f32(params), jnp.asarray(data[:32], jnp.float32)

    def naive(p, rows):  # no pcast: each "local" gradient is already summed over the 8 shards
        g = jax.grad(mlp_loss)(p, rows)
        s_local = estimator.sqnorm(g)
        return jax.lax.pmean(s_local, "data"), estimator.sqnorm(jax.lax.pmean(g, "data"))

    trap = jax.jit(jax.shard_map(naive, mesh=mesh8, in_specs=(P(), P("data")), out_specs=(P(), P())))
    s_small_trap, s_big_trap = trap(params, batch)
    _, _, ours = jax.jit(estimator.data_parallel_value_and_grad(jax.value_and_grad(mlp_loss), mesh8))(params, batch)
    _, _, ref = jax.jit(estimator.microbatch_value_and_grad(jax.value_and_grad(mlp_loss), 8))(
        params, _contiguous_blocks_as_strided(batch, 8))
    D = 8
    assert float(s_big_trap) == pytest.approx(D ** 2 * float(ref["gns_s_big"]), rel=1e-5)  # psum, then mean
    assert float(s_small_trap) == pytest.approx(float(s_big_trap), rel=1e-5)  # every shard holds the same sum
    assert float(s_small_trap) > 10 * float(ref["gns_s_small"])  # D²-inflated: B_simple would be garbage
    assert float(ours["gns_s_small"]) == pytest.approx(float(ref["gns_s_small"]), rel=1e-6)
    assert float(ours["gns_s_big"]) == pytest.approx(float(ref["gns_s_big"]), rel=1e-6)


# --- issue 21 item 13: 64-bit mode ---------------------------------------------------------------------------

def test_scan_carry_follows_the_gradient_dtype_in_64_bit_mode():
    data, params = logreg_problem(n=256)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        rows = jnp.asarray(data, jnp.float64)
        run = jax.jit(estimator.microbatch_value_and_grad(jax.value_and_grad(logreg_loss), 4))
        loss, g, sums = run(p64, rows)
        assert loss.dtype == jnp.float64 and g["w"].dtype == jnp.float64
        assert sums["gns_s_small"].dtype == jnp.float64
        # Same sums as per-microbatch gradients computed directly in float64.
        split = estimator.strided_split(rows, 4)
        gs = [jax.grad(logreg_loss)(p64, split[k]) for k in range(4)]
        s_small = np.mean([float(estimator.sqnorm(gk)) for gk in gs])
        assert float(sums["gns_s_small"]) == pytest.approx(s_small, rel=1e-12)
    # float32 (and bf16) parameters still accumulate in float32.
    p32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    run32 = jax.jit(estimator.microbatch_value_and_grad(jax.value_and_grad(logreg_loss), 4))
    loss, g, sums = run32(p32, jnp.asarray(data, jnp.float32))
    assert g["w"].dtype == jnp.float32 and sums["gns_s_small"].dtype == jnp.float32
    pbf = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), params)
    _, gb, sb = run32(pbf, jnp.asarray(data, jnp.bfloat16))
    assert gb["w"].dtype == jnp.float32 and sb["gns_s_big"].dtype == jnp.float32
