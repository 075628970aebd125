"""Run outputs: metrics.jsonl, eval.jsonl, TensorBoard events, summary.json, progress bar.

Only process 0 writes. JSON lines are appended and flushed line by line; on resume each log is cut
back (atomically, tmp + rename) to the lines at or before the restored step, so a resumed run's logs
read exactly like an uninterrupted run's. Whole files (summary.json, config.gin) are written to a
temporary file and renamed, so a crash never leaves a truncated one.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time

import numpy as np

from scaling.core import fileio


read_jsonl = fileio.read_jsonl  # tolerant: a torn line from a crash is skipped


class JsonlLog:
    """Append-only JSON lines, one record per logged step."""

    def __init__(self, path: str):
        self.path = path
        self._file = None

    def truncate_after(self, step: int) -> list[dict]:
        """Keeps the records with record['step'] <= step (resume); returns them."""
        kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= step]
        fileio.write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def append(self, record: dict) -> None:
        if self._file is None:
            self._file = open(self.path, "a")
        self._file.write(json.dumps(fileio.json_safe(record)) + "\n")
        self._file.flush()

    def sync(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorBoard:
    """Scalar TensorBoard events under <workdir>/tensorboard (tensorboardX: no TensorFlow needed)."""

    def __init__(self, logdir: str):
        from tensorboardX import SummaryWriter
        self.writer = SummaryWriter(logdir=logdir, flush_secs=30)

    def scalars(self, step: int, values: dict, prefix: str = "") -> None:
        for key, value in values.items():
            if isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(float(value)):
                self.writer.add_scalar(prefix + key, float(value), step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _terminal_size() -> tuple[int, int] | None:
    """(columns, rows) of stderr's terminal, or None when it reports a zero (or no) size."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        size = shutil.get_terminal_size((0, 0))
    return (size.columns, size.lines) if size.columns > 0 and size.lines > 0 else None


class Progress:
    """A terminal progress bar (tqdm) with loss, tokens/s and ETA; plain log lines when not a terminal."""

    def __init__(self, total: int, initial: int, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total = total
        self.bar = None
        if self.enabled and _terminal_size() is not None:
            from tqdm import tqdm
            columns, _ = _terminal_size()
            self.bar = tqdm(total=total, initial=initial, unit="step", ncols=columns, file=sys.stderr)
        # A terminal that reports 0 columns or 0 rows (some ptys, serial consoles, CI runners): tqdm
        # would draw nothing visible, so the plain log lines are printed instead of a bar.
        self._start = time.time()
        self._start_step = initial

    def update(self, step: int, loss: float, tokens_per_sec: float) -> None:
        if self.bar is None:
            return
        self.bar.n = step
        self.bar.set_postfix_str(f"loss {loss:.4f}  {tokens_per_sec:,.0f} tok/s", refresh=False)
        self.bar.refresh()

    def log_line(self, step: int, record: dict) -> None:
        """One line per logging step when there is no bar (e.g. output to a file)."""
        if self.bar is not None:
            return
        done = step - self._start_step
        elapsed = time.time() - self._start
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        print(f"step {step}/{self.total}  loss {record['loss']:.4f}  lr {record['lr']:.3g}  "
              f"{record['tokens_per_sec']:,.0f} tok/s  mfu {record['mfu']:.3f}  eta {eta:.0f}s", flush=True)

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
