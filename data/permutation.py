"""Keyed pseudo-random permutations of [0, n) in O(1) memory: a Feistel network + cycle walking.

Levanter's ``data/permutation.py`` idea: instead of materialising ``rng.permutation(n)`` (O(n)
memory, and it must be recomputed or stored on resume), evaluate ``perm(i)`` for any i directly.
A balanced Feistel network on 2h bits (2^(2h) >= n) is a bijection on [0, 2^(2h)) for any round
function; "cycle walking" (re-applying it until the value falls below n) restricts it to a
bijection on [0, n). Since 2^(2h) < 4n, the expected number of walks is below 4.

Everything is vectorised over numpy uint64 arrays and is a pure function of (n, key).
"""
import hashlib

import numpy as np

_ROUNDS = 6
_M1 = np.uint64(0xBF58476D1CE4E5B9)   # splitmix64 finaliser constants
_M2 = np.uint64(0x94D049BB133111EB)


def derive_key(*parts) -> int:
    """A 64-bit key from arbitrary parts (seed, epoch, purpose...), stable across processes and platforms."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fast, well-mixing 64-bit hash (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


class FeistelPermutation:
    """perm(i) for i in [0, n): a bijection of [0, n) determined by ``key``."""

    def __init__(self, n: int, key: int):
        if n <= 0:
            raise ValueError(f"permutation length must be positive, got {n}")
        self.n = int(n)
        bits = max(2, (self.n - 1).bit_length())
        self.half_bits = (bits + 1) // 2
        self.half_mask = np.uint64((1 << self.half_bits) - 1)
        # round keys from sha256, not a numpy RNG stream: identical on every platform and numpy version
        self.round_keys = [np.uint64(derive_key("feistel-round", int(key), r)) for r in range(_ROUNDS)]

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        h = np.uint64(self.half_bits)
        left, right = x >> h, x & self.half_mask
        with np.errstate(over="ignore"):
            for k in self.round_keys:
                left, right = right, left ^ (_mix(right ^ k) & self.half_mask)
        return (left << h) | right

    def __call__(self, index) -> np.ndarray:
        idx = np.asarray(index, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"permutation index out of range [0, {self.n})")
        x = self._feistel(idx.astype(np.uint64).ravel())
        outside = x >= self.n
        while outside.any():   # cycle walking: stays a bijection on [0, n)
            x[outside] = self._feistel(x[outside])
            outside = x >= self.n
        return x.astype(np.int64).reshape(idx.shape)
