"""Token cache: a split tokenized once into a flat memmap stream plus a JSON manifest.

Layout of one cache entry, ``<cache_dir>/tokens/<key>/``:
  tokens.bin     uint16 (vocab <= 65536) or uint32 ids; every document followed by EOS (id 1),
                 the end-of-text separator, so documents are packed back to back
  manifest.json  what was tokenized (corpus fingerprint, vocabulary fingerprint, split, ...) and
                 the counts (documents, tokens, UTF-8 bytes), written last

The key is a hash of that description, so a changed corpus or vocabulary gets a new entry and is
never silently reused; on load the manifest is checked against the description and the file size
against the token count. The entry is built in a temporary directory and renamed into place at the
end, so a kill during the build leaves no entry that looks valid.

Fixed (n_ctx+1)-token windows are zero-copy strided views of the stream (`windows`): window i is
tokens[i*n_ctx : i*n_ctx + n_ctx + 1], so consecutive windows share one token and every token
after the first is a prediction target exactly once. One tokenization serves every n_ctx.

No TensorFlow here: this module is imported by the training loader and by worker processes.
"""
import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import sys
import time
import types
import uuid
from typing import Callable, Iterable

import numpy as np

from data import vocab as vocab_lib

FORMAT = "scaling-token-cache-v1"
_TOKENS, _MANIFEST = "tokens.bin", "manifest.json"


def cache_key(description: dict) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:24]


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class TokenCache:
    """A built cache entry: ``tokens`` (read-only memmap, 1-D) and its ``manifest``."""

    def __init__(self, path: str):
        self.path = path
        with open(os.path.join(path, _MANIFEST)) as f:
            self.manifest = json.load(f)
        dtype = np.dtype(self.manifest["dtype"])
        n_tokens = int(self.manifest["n_tokens"])
        size = os.path.getsize(os.path.join(path, _TOKENS))
        if self.manifest.get("format") != FORMAT or size != n_tokens * dtype.itemsize:
            raise ValueError(f"token cache {path} is incomplete or from another version "
                             f"({size} bytes for {n_tokens} tokens); delete it and rerun to rebuild")
        self.tokens = np.memmap(os.path.join(path, _TOKENS), dtype=dtype, mode="r", shape=(n_tokens,))

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    def n_windows(self, n_ctx: int) -> int:
        return num_windows(self.n_tokens, n_ctx)

    def windows(self, n_ctx: int) -> np.ndarray:
        return window_view(self.tokens, n_ctx)


def num_windows(n_tokens: int, n_ctx: int) -> int:
    return max(0, (n_tokens - 1) // n_ctx)


def window_view(tokens: np.ndarray, n_ctx: int, what: str = "the split") -> np.ndarray:
    """[n_windows, n_ctx+1] zero-copy view; window i starts at token i*n_ctx. No window is an error."""
    n = num_windows(len(tokens), n_ctx)
    if n < 1:
        raise ValueError(f"n_ctx={n_ctx} is longer than any possible window: {what} has only {len(tokens):,} "
                         f"tokens (a window needs n_ctx+1); lower n_ctx or use a larger corpus")
    step = tokens.strides[0]
    return np.lib.stride_tricks.as_strided(tokens, shape=(n, n_ctx + 1), strides=(n_ctx * step, step),
                                           writeable=False)


# --- building ----------------------------------------------------------------------------------

_worker_encoder = None


@contextlib.contextmanager
def _main_module_hidden():
    """Spawned workers re-import the parent's ``__main__`` (a script without a ``__name__`` guard would
    re-run). Our workers need only this module, so start them while ``__main__`` is an empty module."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _init_worker(encoder):
    global _worker_encoder
    _worker_encoder = encoder


def _encode_document(text: str):
    return _worker_encoder.encode(text), len(text.encode("utf-8"))


def _progress(desc: str):
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    return tqdm(desc=desc, unit="B", unit_scale=True, file=sys.stderr, mininterval=1.0, dynamic_ncols=True)


_HOST = socket.gethostname().replace("-", "_") or "host"
STALE_TMP_SECONDS = 24 * 3600   # a temp dir this old is stale whoever made it (builds take minutes)


def _tmp_owner(name: str) -> tuple[str | None, int | None]:
    """(host, pid) of a ``<key>.tmp-<host>-<pid>-<hex>`` build dir (host None for the older <pid>-<hex>)."""
    parts = name.rsplit(".tmp-", 1)[-1].split("-")
    try:
        if len(parts) == 3:
            return parts[0], int(parts[1])
        if len(parts) == 2:
            return None, int(parts[0])
    except ValueError:
        pass
    return None, None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True      # exists, owned by another user
    return True


def collect_stale_builds(parent: str, now: float | None = None) -> list[str]:
    """Removes the temp dirs of builds that were killed (their process on this host is gone, or they are
    over a day old); returns the removed paths. A build in progress (live pid) is left alone."""
    removed = []
    now = time.time() if now is None else now
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        if ".tmp-" not in name:
            continue
        path = os.path.join(parent, name)
        host, pid = _tmp_owner(name)
        try:
            age = now - os.path.getmtime(path)
        except OSError:
            continue
        here = host == _HOST or (host is None and pid is not None)
        if age > STALE_TMP_SECONDS or (here and pid is not None and not _alive(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def build(path: str, documents: Iterable[str], encoder: vocab_lib.Encoder, description: dict,
          num_workers: int = 1, desc: str = "tokenize", what: str | None = None) -> dict:
    """Tokenizes ``documents`` into a new entry at ``path`` (atomic: temp dir, then rename)."""
    dtype = token_dtype(encoder.vocab_size)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    collect_stale_builds(parent)
    tmp = f"{path}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp)
    n_docs = n_tokens = n_bytes = 0
    start = time.perf_counter()
    pool = None
    try:
        if num_workers > 1 and multiprocessing.current_process().daemon:
            num_workers = 1                                   # daemonic processes may not have children
        if num_workers > 1:
            # spawn, not fork: the parent may hold TensorFlow/JAX threads, which fork can deadlock.
            with _main_module_hidden():
                pool = multiprocessing.get_context("spawn").Pool(num_workers, _init_worker, (encoder,))
            encoded = pool.imap(_encode_document, documents, chunksize=4)   # imap keeps document order
        else:
            _init_worker(encoder)
            encoded = map(_encode_document, documents)
        eos = np.asarray([vocab_lib.EOS_ID], dtype)
        with open(os.path.join(tmp, _TOKENS), "wb") as out, _progress(desc) as bar:
            for ids, doc_bytes in encoded:
                out.write(ids.astype(dtype).tobytes())
                out.write(eos.tobytes())                      # end-of-text separator after each document
                n_docs += 1
                n_tokens += len(ids) + 1
                n_bytes += doc_bytes
                bar.update(doc_bytes)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    if n_docs == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        where = what or f"{description.get('task')!r} split {description.get('split')!r}"
        raise ValueError(f"empty corpus: {where} has no non-empty documents; check the corpus files")
    seconds = time.perf_counter() - start
    manifest = dict(format=FORMAT, description=description, dtype=dtype.name, n_documents=n_docs,
                    n_tokens=n_tokens, n_bytes=n_bytes, bytes_per_token=n_bytes / n_tokens,
                    build_seconds=round(seconds, 3), tokens_per_second=n_tokens / max(seconds, 1e-9),
                    num_workers=num_workers)
    with open(os.path.join(tmp, _MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    try:
        os.rename(tmp, path)                                  # atomic: the entry appears complete or not at all
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)                # another process finished first; use its entry
        if not os.path.exists(os.path.join(path, _MANIFEST)):
            raise
    return manifest


def get_or_build(cache_dir: str, description: dict, documents_fn: Callable[[], Iterable[str]],
                 encoder: vocab_lib.Encoder, num_workers: int = 1, desc: str = "tokenize",
                 what: str | None = None) -> TokenCache:
    """Loads the entry for ``description`` or builds it; a stale or corrupt entry is rebuilt."""
    description = dict(description, format=FORMAT)
    path = os.path.join(cache_dir, "tokens", cache_key(description))
    if os.path.exists(path):
        try:
            entry = TokenCache(path)
            if entry.manifest.get("description") == description:
                return entry
            reason = "its manifest describes different data"
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
            reason = str(e)
        print(f"[data] rebuilding token cache {path}: {reason}", file=sys.stderr)
        shutil.rmtree(path)
    build(path, documents_fn(), encoder, description, num_workers=num_workers, desc=desc, what=what)
    return TokenCache(path)
