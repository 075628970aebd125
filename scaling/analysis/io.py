"""CSV/JSON in and out for the fitters: validated columns, atomic writes (no partial output files)."""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Mapping, Sequence

import numpy as np

from scaling.core import fileio


class InputError(ValueError):
    """Bad user input (file, column, value); the CLIs turn it into exit code 2 and one line."""


def read_table(path: str, required: Sequence[str] = (), positive: Sequence[str] = ()) -> dict:
    """Columns of a CSV by header name as float arrays (non-numeric columns kept as strings).

    Checks that `required` columns exist and that they and `positive` ones are finite and > 0,
    naming the first offending row (1-based, counting the header as row 1) and column.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"points file {path} does not exist; pass --points=FILE.csv with a header row")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): v for k, v in r.items()} for r in reader]
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; the file has {header}")
    if not rows:
        raise InputError(f"{path}: no data rows")
    table = {}
    for col in header:
        values = [r.get(col) for r in rows]
        try:
            table[col] = np.array([float(v) for v in values], dtype=np.float64)
        except (TypeError, ValueError):
            if col in required or col in positive:
                bad = next(i for i, v in enumerate(values) if not _is_float(v))
                raise InputError(f"{path}: row {bad + 2}, column {col!r}: {values[bad]!r} is not a number")
            table[col] = np.array(values, dtype=object)
    for col in list(required) + [c for c in positive if c in table]:
        v = table[col]
        bad = np.flatnonzero(~np.isfinite(v) | (v <= 0))
        if len(bad):
            raise InputError(f"{path}: row {bad[0] + 2}, column {col!r}: value {v[bad[0]]!r} must be finite and > 0")
    return table


def _is_float(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def write_json(path: str, obj) -> None:
    """Write JSON atomically (temp file + rename), NaN/inf as null."""
    fileio.write_json_atomic(path, obj)


def read_json(path: str) -> dict:
    if not os.path.exists(path):
        raise FileNotFoundError(f"fit file {path} does not exist; create it with python -m experiments.fit")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f"{path} is not valid JSON ({e})") from None


def write_csv(path: str, columns: Mapping[str, Sequence]) -> None:
    """Write columns (equal length) as CSV atomically."""
    names = list(columns)
    n = len(next(iter(columns.values())))
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(names)
    for i in range(n):
        w.writerow([_fmt(columns[c][i]) for c in names])
    fileio.write_text_atomic(path, text.getvalue())


def _fmt(v):
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return v
