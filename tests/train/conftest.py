"""Fixtures of the trainer tests: a small deterministic synthetic LMData and tiny TrainConfigs.

The synthetic corpus is a fixed random first-order Markov chain over a small vocabulary, so a model
can learn it (its entropy rate is known) and every batch is a pure function of (seed, step).
"""
import dataclasses

import numpy as np
import pytest


class SyntheticLoader:
    def __init__(self, vocab_size, n_ctx, global_batch_size, seed, transition):
        self.vocab_size, self.n_ctx, self.global_batch_size, self.seed = vocab_size, n_ctx, global_batch_size, seed
        self.transition = transition
        self.windows_per_epoch = 10 ** 6
        self.tokens_per_window = n_ctx

    def batch(self, step):
        rng = np.random.default_rng([self.seed, step])
        return sample_chain(rng, self.transition, self.global_batch_size, self.n_ctx + 1)

    def iterate(self, start_step=0, num_steps=None):
        step = start_step
        while num_steps is None or step < start_step + num_steps:
            yield step, self.batch(step)
            step += 1


def sample_chain(rng, transition, rows, length):
    cumulative = np.cumsum(transition, axis=1)
    out = np.empty((rows, length), np.int32)
    out[:, 0] = rng.integers(0, transition.shape[0], rows)
    for t in range(1, length):
        u = rng.random(rows)
        out[:, t] = np.minimum((cumulative[out[:, t - 1]] < u[:, None]).sum(1), transition.shape[0] - 1)
    return out


@dataclasses.dataclass
class SyntheticData:
    vocab_size: int
    train: SyntheticLoader
    eval_windows: np.ndarray
    eval_bytes_per_token: float
    extra_evals: dict
    manifest: dict


def make_synthetic_data(vocab_size=64, n_ctx=32, batch_size=16, seed=0, n_eval=24):
    rng = np.random.default_rng(1234)
    # Peaked transitions: each token has a few likely successors (entropy well below log V).
    logits = rng.standard_normal((vocab_size, vocab_size)) * 3.0
    transition = np.exp(logits - logits.max(1, keepdims=True))
    transition /= transition.sum(1, keepdims=True)
    loader = SyntheticLoader(vocab_size, n_ctx, batch_size, seed, transition)
    eval_windows = sample_chain(np.random.default_rng(99), transition, n_eval, n_ctx + 1)
    extra = {"shifted": (sample_chain(np.random.default_rng(7), transition[::-1], 8, n_ctx + 1), 2.0)}
    return SyntheticData(vocab_size, loader, eval_windows, 1.5, extra, {"task": "synthetic-markov"})


@pytest.fixture
def synthetic_data():
    return make_synthetic_data
