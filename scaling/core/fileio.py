"""Atomic file writes, strict-JSON conversion and tolerant JSON readers shared by the trainer, the
noise and analysis code, the sweep and the CLIs.

A file is written to a temporary name beside it and renamed, so a crash never leaves a truncated
summary, fit or CSV; NaN/inf become null because strict JSON has no NaN.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np


def json_safe(value: Any) -> Any:
    """Numpy scalars/arrays to Python, mapping keys to str, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_text_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str, obj: Any, sort_keys: bool = False) -> None:
    write_text_atomic(path, json.dumps(json_safe(obj), indent=2, sort_keys=sort_keys) + "\n")


def read_jsonl(path: str, *, strict: bool = False) -> list[dict]:
    """The records of a JSON-lines file; [] when it does not exist.

    A torn last line (a run killed mid-write) is always skipped. Any other line that is not JSON is
    skipped too, unless ``strict``: then it is an error naming the file and the line.
    """
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if strict and i != len(lines) - 1:
                raise ValueError(f"{path}:{i + 1}: not valid JSON") from None
    return records


def read_json_object(path: str) -> dict | None:
    """The JSON object in ``path``, or None when it is missing, unreadable or not an object."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
