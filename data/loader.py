"""Step-indexed deterministic loader over a packed token stream (no TensorFlow, no seqio).

``batch(step)`` is a pure function of (seed, step, global batch size, data budget D, subset seed,
process index/count) — the Levanter ``iter_from_step`` idea — so a run resumed at step s sees
exactly the batches the uninterrupted run saw, with no iterator state to checkpoint.

Order of windows (window = n_ctx+1 tokens of the train stream, see data/cache.py):
  1. one *global* shuffled order of all train windows, keyed by ``subset_seed`` only (not the run
     seed), so it is the same for every run of a sweep;
  2. the data budget D (unique tokens, Kaplan's L(N, D) study) keeps the first D // n_ctx windows
     of that order, so a smaller-D run trains on a subset of a larger-D run's windows;
  3. epoch e visits those windows in a fresh order keyed by (seed, e); position g of the run's
     window sequence is (e, o) = divmod(g, windows_per_epoch), so every window appears exactly
     once per epoch and training past D tokens repeats D in new orders.
Both orders are Feistel permutations (O(1) memory in the number of windows).
Step s uses positions [s*B, (s+1)*B); process p of P reads rows [p*B/P, (p+1)*B/P) of that.
"""
import collections
import queue
import threading

import numpy as np

from data import cache as cache_lib
from data.permutation import FeistelPermutation, derive_key


def budget_windows(data_budget_tokens: int | None, n_windows: int, n_ctx: int, what: str = "the train split") -> int:
    """Number of windows that D unique tokens buy (each window adds n_ctx new target tokens)."""
    if data_budget_tokens is None:
        return n_windows
    d = int(data_budget_tokens)
    available = n_windows * n_ctx
    if d <= 0:
        raise ValueError(f"data_budget_tokens (D) must be positive, got {d}; use None for the whole corpus")
    if d > available:
        raise ValueError(f"data_budget_tokens (D) = {d:,} is larger than {what}, which has {available:,} tokens "
                         f"in {n_windows:,} windows of n_ctx={n_ctx}; lower D or use a larger corpus")
    if d < n_ctx:
        raise ValueError(f"data_budget_tokens (D) = {d} is smaller than one window (n_ctx={n_ctx}); raise D")
    return d // n_ctx


class TrainLoader:
    """Batches of [global_batch_size // process_count, n_ctx+1] int32 windows, indexed by step."""

    def __init__(self, tokens: np.ndarray, *, n_ctx: int, global_batch_size: int, seed: int,
                 data_budget_tokens: int | None = None, subset_seed: int = 0,
                 process_index: int = 0, process_count: int = 1, prefetch: int = 4):
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} must be in [0, process_count={process_count})")
        if global_batch_size % process_count:
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by process_count "
                             f"{process_count}; each host must read an equal slice")
        self._windows = cache_lib.window_view(tokens, n_ctx, "the train split")
        n_total = self._windows.shape[0]
        self.n_ctx = n_ctx
        self.tokens_per_window = n_ctx + 1
        self.global_batch_size = global_batch_size
        self.seed = int(seed)
        self.subset_seed = int(subset_seed)
        self.process_index, self.process_count = process_index, process_count
        self.local_batch_size = global_batch_size // process_count
        self.n_windows_total = n_total
        self.windows_per_epoch = budget_windows(data_budget_tokens, n_total, n_ctx)
        self.unique_tokens = self.windows_per_epoch * n_ctx
        self.prefetch = prefetch
        self._global_order = FeistelPermutation(n_total, derive_key("global-window-order", self.subset_seed))
        self._epoch_orders = collections.OrderedDict()   # small LRU: a batch touches at most 2 epochs
        self._lock = threading.Lock()

    def _epoch_order(self, epoch: int) -> FeistelPermutation:
        with self._lock:   # batch() may run in the prefetch thread and the caller's thread at once
            perm = self._epoch_orders.get(epoch)
            if perm is None:
                perm = FeistelPermutation(self.windows_per_epoch, derive_key("epoch-order", self.seed, epoch))
                self._epoch_orders[epoch] = perm
                while len(self._epoch_orders) > 4:
                    self._epoch_orders.popitem(last=False)
            return perm

    def window_indices(self, step: int) -> np.ndarray:
        """Indices (into all train windows) of the *global* batch at ``step``: int64 [global_batch_size]."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        positions = step * self.global_batch_size + np.arange(self.global_batch_size, dtype=np.int64)
        epochs, offsets = np.divmod(positions, self.windows_per_epoch)
        in_subset = np.empty_like(offsets)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            in_subset[mask] = self._epoch_order(int(epoch))(offsets[mask])
        return self._global_order(in_subset)      # rank within the D subset -> window of the corpus

    def epoch_of_step(self, step: int) -> float:
        return step * self.global_batch_size / self.windows_per_epoch

    def batch(self, step: int) -> np.ndarray:
        """int32 [global_batch_size // process_count, n_ctx+1]: this process's rows of the step's batch."""
        lo = self.process_index * self.local_batch_size
        indices = self.window_indices(step)[lo:lo + self.local_batch_size]
        return np.asarray(self._windows[indices], dtype=np.int32)

    def iterate(self, start_step: int = 0, num_steps: int | None = None):
        """Yields (step, batch) for start_step, start_step+1, ... from a background prefetch thread."""
        stop = threading.Event()
        q = queue.Queue(maxsize=max(1, self.prefetch))
        end = None if num_steps is None else start_step + num_steps
        done = object()

        def produce():
            step = start_step
            try:
                while not stop.is_set() and (end is None or step < end):
                    item = (step, self.batch(step))
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    step += 1
                q.put(done)
            except BaseException as e:  # hand the error to the consumer instead of dying silently
                q.put(e)

        thread = threading.Thread(target=produce, name="data-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=5)


def eval_windows(tokens: np.ndarray, n_ctx: int, eval_tokens: int, what: str = "the validation split") -> np.ndarray:
    """A fixed eval set: about eval_tokens // n_ctx windows spread evenly over the split (int32 copy).

    Evenly spaced (not the first k) so every document of a small split is represented; the same
    (split, vocabulary, n_ctx, eval_tokens) always gives the same windows, so losses compare.
    """
    if eval_tokens < 1:
        raise ValueError(f"eval_tokens must be positive, got {eval_tokens}")
    windows = cache_lib.window_view(tokens, n_ctx, what)
    n_all = windows.shape[0]
    n_eval = min(n_all, max(1, eval_tokens // n_ctx))
    picks = np.unique(np.linspace(0, n_all - 1, n_eval).round().astype(np.int64))
    return np.asarray(windows[picks], dtype=np.int32)


def position_eval_windows(tokens: np.ndarray, n_ctx: int, n_windows: int, n_regions: int = 16,
                          what: str = "the validation split") -> np.ndarray:
    """Windows for the loss-per-position curve (Kaplan Fig. 20): ``n_regions`` evenly spaced stretches of the
    split, each read as ``n_windows // n_regions`` windows at stride 1 (int32 [n, n_ctx+1]).

    Why stride 1: with disjoint windows every position T is scored on a different sample of tokens, and that
    sampling noise (~0.1 nats per position at a few hundred windows) swamps the 0.2-0.5 nats by which loss
    falls with context in small models. Inside a stride-1 stretch of R windows, position T scores tokens
    a+T ... a+T+R-1, so positions T and T' share all but |T-T'| of their R targets: the curve compares nearly
    the same tokens at different context lengths (a paired design). Regions spread it over many documents.
    """
    if n_windows < 1 or n_regions < 1:
        raise ValueError(f"position eval needs n_windows >= 1 and n_regions >= 1, got {n_windows}, {n_regions}")
    tokens = np.asarray(tokens)
    per_region = max(1, n_windows // n_regions)
    span = per_region + n_ctx  # tokens one region reads (its last window ends at start + per_region - 1 + n_ctx)
    if len(tokens) < span:
        raise ValueError(f"{what} has {len(tokens):,} tokens: too few for one position-eval region of "
                         f"{per_region} stride-1 windows of {n_ctx + 1} tokens ({span:,} tokens); lower "
                         f"DataConfig.position_eval_windows or use a longer validation split")
    starts = np.unique(np.linspace(0, len(tokens) - span, n_regions).round().astype(np.int64))
    offsets = np.arange(per_region)[:, None] + np.arange(n_ctx + 1)[None, :]
    return np.concatenate([tokens[s + offsets] for s in starts]).astype(np.int32)


def bytes_per_token(windows: np.ndarray, token_bytes: np.ndarray) -> float:
    """UTF-8 bytes per *target* token of eval windows (EOS counts as a token of 0 bytes)."""
    targets = windows[:, 1:]
    return float(token_bytes[targets].sum()) / targets.size
