"""Loader and permutation behaviour on synthetic token streams (no TensorFlow needed)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data import cache as cache_lib
from data import loader as loader_lib
from data import vocab as vocab_lib
from data.permutation import FeistelPermutation, derive_key

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stream(n_tokens: int) -> np.ndarray:
    # Token value = position, so a window is identified by its first token (window i starts at i*n_ctx).
    return np.arange(n_tokens, dtype=np.uint32)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_feistel_is_a_bijection(n):
    perm = FeistelPermutation(n, derive_key("test", n))
    out = perm(np.arange(n))
    assert sorted(out.tolist()) == list(range(n))
    assert np.array_equal(perm(np.arange(n)), out)                     # deterministic
    if n >= 64:
        assert not np.array_equal(out, np.arange(n))                    # actually shuffles
        other = FeistelPermutation(n, derive_key("other", n))(np.arange(n))
        assert not np.array_equal(out, other)                           # key matters
    with pytest.raises(IndexError):
        perm(np.array([n]))


def test_every_window_exactly_once_per_epoch_and_reshuffled_next_epoch():
    n_ctx, batch = 8, 6
    tokens = stream(8 * 60 + 1)                                         # exactly 60 windows
    loader = loader_lib.TrainLoader(tokens, n_ctx=n_ctx, global_batch_size=batch, seed=3)
    assert loader.windows_per_epoch == 60 and loader.tokens_per_window == 9
    epoch0 = np.concatenate([loader.window_indices(s) for s in range(10)])
    epoch1 = np.concatenate([loader.window_indices(s) for s in range(10, 20)])
    assert sorted(epoch0.tolist()) == list(range(60))
    assert sorted(epoch1.tolist()) == list(range(60))
    assert not np.array_equal(epoch0, epoch1)
    b = loader.batch(4)
    assert b.dtype == np.int32 and b.shape == (batch, n_ctx + 1)
    # rows are the windows the indices name: consecutive tokens starting at index * n_ctx
    np.testing.assert_array_equal(b[:, 0], loader.window_indices(4) * n_ctx)
    np.testing.assert_array_equal(b - b[:, :1], np.broadcast_to(np.arange(n_ctx + 1), b.shape))


def test_batch_is_pure_function_and_seed_dependent():
    tokens = stream(16 * 500 + 1)
    a = loader_lib.TrainLoader(tokens, n_ctx=16, global_batch_size=8, seed=1)
    b = loader_lib.TrainLoader(tokens, n_ctx=16, global_batch_size=8, seed=1)
    c = loader_lib.TrainLoader(tokens, n_ctx=16, global_batch_size=8, seed=2)
    for step in (0, 5, 61, 62, 1000):          # 62.5 steps per epoch: 62 straddles an epoch boundary
        np.testing.assert_array_equal(a.batch(step), b.batch(step))
    assert not np.array_equal(a.batch(0), c.batch(0))
    # querying out of order (as after a resume) gives the same batches
    np.testing.assert_array_equal(b.batch(1000), a.batch(1000))


def test_iterate_resume_matches_uninterrupted_run():
    tokens = stream(16 * 100 + 1)
    loader = loader_lib.TrainLoader(tokens, n_ctx=16, global_batch_size=4, seed=0, prefetch=2)
    full = list(loader.iterate(0, 30))
    assert [s for s, _ in full] == list(range(30))
    resumed = list(loader.iterate(17, 13))
    for (s1, b1), (s2, b2) in zip(full[17:], resumed):
        assert s1 == s2
        np.testing.assert_array_equal(b1, b2)
    it = loader.iterate(0)                      # endless; closing it stops the thread
    next(it)
    it.close()


def test_nested_data_budgets_are_subsets():
    n_ctx = 4
    tokens = stream(n_ctx * 1000 + 1)

    def windows_seen(d, seed):
        loader = loader_lib.TrainLoader(tokens, n_ctx=n_ctx, global_batch_size=10, seed=seed,
                                        data_budget_tokens=d)
        steps = loader.windows_per_epoch // 10
        return loader, set(np.concatenate([loader.window_indices(s) for s in range(steps)]).tolist())

    small_loader, small = windows_seen(400, seed=0)
    big_loader, big = windows_seen(2000, seed=7)           # a different run seed: same global order
    assert small_loader.windows_per_epoch == 100 and small_loader.unique_tokens == 400
    assert len(small) == 100 and len(big) == 500
    assert small <= big
    # training past D repeats exactly the D subset
    later = set(np.concatenate([small_loader.window_indices(s) for s in range(10, 40)]).tolist())
    assert later == small


def test_union_of_host_slices_is_the_global_batch():
    tokens = stream(8 * 300 + 1)
    whole = loader_lib.TrainLoader(tokens, n_ctx=8, global_batch_size=12, seed=5)
    for step in (0, 3, 40):
        parts = [loader_lib.TrainLoader(tokens, n_ctx=8, global_batch_size=12, seed=5,
                                        process_index=p, process_count=3).batch(step) for p in range(3)]
        assert all(p.shape == (4, 9) for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts), whole.batch(step))
    with pytest.raises(ValueError, match="not divisible by process_count"):
        loader_lib.TrainLoader(tokens, n_ctx=8, global_batch_size=12, seed=5, process_index=0, process_count=5)


@pytest.mark.parametrize("d, match", [(0, "must be positive"), (-5, "must be positive"),
                                      (10 ** 9, "larger than the train split"), (3, "smaller than one window")])
def test_bad_data_budget(d, match):
    with pytest.raises(ValueError, match=match):
        loader_lib.TrainLoader(stream(1001), n_ctx=10, global_batch_size=2, seed=0, data_budget_tokens=d)


def test_n_ctx_longer_than_any_window():
    with pytest.raises(ValueError, match="longer than any possible window"):
        loader_lib.TrainLoader(stream(100), n_ctx=100, global_batch_size=2, seed=0)
    with pytest.raises(ValueError, match="longer than any possible window"):
        loader_lib.eval_windows(stream(50), 64, 1000)


def test_position_eval_windows_are_stride_one_regions_spread_over_the_split():
    tokens = np.arange(10_000, dtype=np.int64)  # token value == its index: windows show where they were read
    n_ctx, n_regions, per_region = 16, 5, 40
    w = loader_lib.position_eval_windows(tokens, n_ctx, n_windows=n_regions * per_region, n_regions=n_regions)
    assert w.shape == (n_regions * per_region, n_ctx + 1) and w.dtype == np.int32
    regions = w.reshape(n_regions, per_region, n_ctx + 1)
    np.testing.assert_array_equal(np.diff(regions[:, :, 0], axis=1), 1)  # stride 1 inside a region
    np.testing.assert_array_equal(np.diff(regions, axis=2), 1)           # each window a contiguous stretch
    starts = regions[:, 0, 0]
    assert starts[0] == 0 and regions[-1, -1, -1] == len(tokens) - 1     # first and last stretch of the split
    assert np.all(np.diff(starts) > per_region + n_ctx)                  # disjoint regions, evenly spread
    # Paired design: positions T and T' score the same targets but for |T - T'| per region.
    targets = lambda t: set(regions[:, :, t].ravel().tolist())  # noqa: E731
    assert len(targets(1) & targets(n_ctx // 2)) == n_regions * (per_region - (n_ctx // 2 - 1))


def test_position_eval_windows_too_short_split_names_the_setting():
    with pytest.raises(ValueError, match="position_eval_windows"):
        loader_lib.position_eval_windows(np.arange(100), 16, n_windows=400, n_regions=2)


def test_eval_windows_fixed_spread_and_bytes_per_token():
    tokens = stream(10 * 100 + 1) % 200 + 3
    w1 = loader_lib.eval_windows(tokens, 10, 250)
    w2 = loader_lib.eval_windows(tokens, 10, 250)
    np.testing.assert_array_equal(w1, w2)
    assert w1.shape == (25, 11) and w1.dtype == np.int32
    assert w1[0, 0] == tokens[0] and w1[-1, -1] == tokens[-1]          # spread over the whole split
    assert loader_lib.eval_windows(tokens, 10, 10 ** 6).shape == (100, 11)   # capped at the split
    table = np.full(300, 2)
    table[:3] = 0
    assert loader_lib.bytes_per_token(w1, table) == 2.0


_CHILD = r"""
import hashlib, json, sys
sys.path.insert(0, {root!r})
from data import cache, loader
entry = cache.TokenCache({path!r})
out = {{}}
for seed, step in [(0, 0), (0, 7), (1, 7), (0, 123)]:
    tl = loader.TrainLoader(entry.tokens, n_ctx=32, global_batch_size=8, seed=seed, data_budget_tokens=4096)
    out[f"{{seed}}/{{step}}"] = hashlib.sha256(tl.batch(step).tobytes()).hexdigest()
out["tf_imported"] = "tensorflow" in sys.modules or "seqio" in sys.modules
print(json.dumps(out))
"""


def test_same_seed_and_step_identical_across_fresh_processes(tmp_path):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    docs = [" ".join(rng.choice(words, size=200)) for _ in range(40)]
    path = str(tmp_path / "tokens" / "entry")
    cache_lib.build(path, iter(docs), vocab_lib.Encoder("byte"), {"task": "synthetic"}, num_workers=1)
    code = _CHILD.format(root=ROOT, path=path)
    runs = [json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                      text=True, timeout=120).stdout) for _ in range(2)]
    assert runs[0] == runs[1]
    assert not runs[0]["tf_imported"]                    # the loader stays TensorFlow-free
    assert runs[0]["0/7"] != runs[0]["1/7"] and runs[0]["0/0"] != runs[0]["0/7"]


def test_orders_are_pinned_so_old_runs_resume_identically():
    # Golden values: a change here would silently change every run's data order (and break resume
    # of runs started with an older checkout). Change them only together with a cache/format bump.
    assert FeistelPermutation(10, derive_key("golden"))(np.arange(10)).tolist() == [2, 6, 9, 4, 8, 3, 1, 5, 7, 0]
    loader = loader_lib.TrainLoader(stream(8 * 50 + 1), n_ctx=8, global_batch_size=4, seed=0,
                                    data_budget_tokens=8 * 20)
    assert loader.window_indices(0).tolist() == [27, 11, 40, 2]
    assert loader.window_indices(7).tolist() == [3, 26, 34, 10]
