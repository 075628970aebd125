"""Offline B_simple from metrics.jsonl records: ratio of sums per loss bin, block-bootstrap CIs (§1.4, T4)."""
import json
import math

import numpy as np
import pytest

from scaling.noise import estimator, offline


def synthetic_records(n, g2_of_loss, trace_of_loss, losses, b_small=4, b_big=16, steps=10, seed=0, n_ctx=64):
    """metrics.jsonl-like lines whose window-mean sums are unbiased noisy draws around the given truth.

    Per step: g_k ~ N(G, Σ/b) in d dims with isotropic Σ (trΣ given) and |G|² given; each line is the
    mean of ``steps`` such steps, as the trainer writes it.
    """
    rng = np.random.default_rng(seed)
    d, K = 40, b_big // b_small
    out = []
    for i in range(n):
        g2, tr = g2_of_loss(losses[i]), trace_of_loss(losses[i])
        G = np.zeros(d)
        G[0] = math.sqrt(g2)
        g = G + rng.standard_normal((steps, K, d)) * math.sqrt(tr / d / b_small)
        s_small = np.mean(np.sum(g ** 2, axis=2), axis=1)
        s_big = np.sum(g.mean(axis=1) ** 2, axis=1)
        out.append({"step": (i + 1) * steps, "tokens": (i + 1) * steps * b_big * n_ctx, "loss": losses[i],
                    "loss_avg": losses[i], "gns_s_small": float(s_small.mean()), "gns_s_big": float(s_big.mean()),
                    "gns_b_small": b_small, "gns_b_big": b_big, "gns_steps": steps,
                    "b_simple": None})
    return out


def test_ratio_of_sums_differs_from_mean_of_ratios():
    # two windows: ratios 10/1 and 10/4 -> mean of ratios 6.25, ratio of sums 20/5 = 4
    trace, g2, w = np.array([10.0, 10.0]), np.array([1.0, 4.0]), np.ones(2)
    assert offline.ratio_of_sums(trace, g2, w) == pytest.approx(4.0)
    assert np.mean(trace / g2) == pytest.approx(6.25)
    # gns_steps weights count steps: one 3-step line counts 3 times
    assert offline.ratio_of_sums(trace, g2, np.array([3.0, 1.0])) == pytest.approx(40 / 7)
    assert offline.ratio_of_sums(np.array([1.0]), np.array([-1.0]), np.ones(1)) == math.inf


def test_noisy_steps_ratio_of_sums_is_right_where_mean_of_ratios_is_not():
    """T4 [sim]: B_simple ≫ B, so per-line |G|² is often negative; summing first recovers the truth."""
    losses = np.full(400, 3.0)
    g2_true, tr_true = 0.01, 8.0  # B_simple = 800 sequences, B = 16
    recs = offline.gns_records(synthetic_records(400, lambda L: g2_true, lambda L: tr_true, losses, steps=1))
    assert (recs.g2 < 0).mean() > 0.2
    assert abs(np.mean(recs.trace / recs.g2) - 800) > 400  # the mean of ratios is garbage
    reps = offline.block_bootstrap_ratio(recs.trace, recs.g2, recs.weight, block=5, n_boot=2000, seed=0)
    lo, hi = offline.interval(reps)
    b = offline.ratio_of_sums(recs.trace, recs.g2, recs.weight)
    assert lo < 800 < hi
    assert 400 < b < 1600


def test_loss_bins_recover_a_rising_b_simple_with_ci_coverage():
    """B_simple(L) = 50·(5/L)^4 sequences along a run whose loss falls from 5 to 4: each 2% bin covers it."""
    n = 600
    losses = np.geomspace(5.0, 4.0, n)
    b_true = lambda L: 50 * (5 / L) ** 4
    lines = synthetic_records(n, lambda L: 0.2, lambda L: 0.2 * b_true(L), losses, steps=10, seed=3)
    result = offline.analyse_metrics(lines, n_ctx=64, bin_frac=0.02, n_boot=500, block=4)
    bins = result["by_loss"]
    assert len(bins) == pytest.approx(math.log(5 / 4) / math.log(1.02), abs=2)
    assert [b["loss"] for b in bins] == sorted([b["loss"] for b in bins], reverse=True)
    covered = [b["lo_sequences"] <= b_true(b["loss"]) <= b["hi_sequences"] for b in bins]
    assert np.mean(covered) >= 0.75
    first, last = bins[0], bins[-1]
    assert last["b_simple_sequences"] > 1.5 * first["b_simple_sequences"]  # rises as the loss falls
    for b in bins:
        assert b["b_simple"] == pytest.approx(64 * b["b_simple_sequences"])  # tokens = n_ctx × sequences
        assert b["bin_lo"] <= b["loss"] < b["bin_hi"]
    assert sum(b["steps"] for b in bins) == result["steps"] == 10 * n
    windows = result["by_tokens"]
    assert len(windows) == 20
    assert windows[-1]["b_simple_sequences"] > windows[0]["b_simple_sequences"]
    json.dumps(result)  # plain Python values


def test_skip_steps_and_missing_sums():
    lines = synthetic_records(5, lambda L: 1.0, lambda L: 4.0, np.full(5, 3.0))
    assert len(offline.gns_records(lines, skip_steps=20)) == 3  # steps 10, 20 dropped
    with pytest.raises(ValueError, match="microbatches >= 2"):
        offline.gns_records([{"step": 1, "loss": 3.0, "tokens": 10}])
    # the window mean of the sums gives the window mean of the unbiased estimates
    g2, tr = estimator.unbiased_estimates(lines[0]["gns_s_small"], lines[0]["gns_s_big"], 4, 16)
    recs = offline.gns_records(lines)
    assert recs.g2[0] == pytest.approx(g2) and recs.trace[0] == pytest.approx(tr)


def test_truncated_last_line_is_ignored(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert [r["step"] for r in offline.read_jsonl(str(path))] == [1, 2]


def test_invalid_line_inside_metrics_is_an_error_but_the_tolerant_reader_skips_it(tmp_path):
    from scaling.core import fileio
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not valid JSON"):
        offline.read_jsonl(str(path))
    assert [r["step"] for r in fileio.read_jsonl(str(path))] == [1, 3]
    assert fileio.read_jsonl(str(tmp_path / "absent.jsonl")) == []


# --- issue 21 item 13: intervals of bins with few blocks ---------------------------------------------------

def _coverage(n_records, trials=600, widen=True, seed=0):
    """Fraction of simulated bins whose interval holds the true B_simple = 50 (iid noisy window estimates)."""
    import math as _math
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(trials):
        g2 = 1 + 0.6 * rng.standard_normal(n_records)
        trace = 50 + 30 * rng.standard_normal(n_records)
        recs = offline.GnsRecords(step=np.arange(n_records), tokens=np.arange(n_records, dtype=float),
                                  loss=np.full(n_records, 3.0), weight=np.ones(n_records), g2=g2, trace=trace,
                                  b_small=np.full(n_records, 4), b_big=np.full(n_records, 16))
        if widen:
            row = offline.summarize(recs, 1, 5, 400, int(rng.integers(1 << 30)), 0.95)
            lo, hi = row["lo_sequences"], row["hi_sequences"]
        else:
            lo, hi = offline.interval(offline.block_bootstrap_ratio(trace, g2, np.ones(n_records), 5, 400,
                                                                    int(rng.integers(1 << 30))))
        hits += bool(lo <= 50 <= hi) and _math.isfinite(lo)
    return hits / trials


def test_few_block_intervals_are_widened_to_nominal_coverage():
    # 5 blocks: the plain percentile interval covers ~85 % (nominal 95 %); widened it is ~94 %.
    assert _coverage(10, widen=False) < 0.9
    assert _coverage(10) >= 0.91
    assert _coverage(50) >= 0.91   # 10 blocks
    assert offline.small_sample_factor(5) == pytest.approx(2.776445 / 1.959964 * (5 / 4) ** 0.5, rel=1e-5)
    assert 1 < offline.small_sample_factor(200) < 1.02
    assert np.isnan(offline.small_sample_factor(1))


def test_rows_say_how_many_blocks_and_flag_few():
    rng = np.random.default_rng(3)
    n = 10
    recs = offline.GnsRecords(step=np.arange(n), tokens=np.arange(n, dtype=float), loss=np.full(n, 3.0),
                              weight=np.ones(n), g2=1 + 0.1 * rng.standard_normal(n),
                              trace=50 + 5 * rng.standard_normal(n), b_small=np.full(n, 4), b_big=np.full(n, 16))
    row = offline.summarize(recs, 8, 5, 200, 0, 0.95)
    assert row["blocks"] == 5 and row["few_blocks"] is True
    assert row["lo_sequences"] < row["b_simple_sequences"] < row["hi_sequences"]
    plain = offline.interval(offline.block_bootstrap_ratio(recs.trace, recs.g2, recs.weight, 5, 200, 0))
    assert row["lo_sequences"] < plain[0] and row["hi_sequences"] > plain[1]
    assert offline.widen_interval(2.0, 1.0, float("inf"), 2.0) == (0.5, float("inf"))
