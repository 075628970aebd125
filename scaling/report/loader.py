"""The sweep on disk as the report reads it: runs.csv rows completed from each run's summary.json
(scaling.core.records.merge_summary), eval.jsonl curves, and the run's score (best eval loss, else final).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from scaling.analysis import report_tables as rt
from scaling.analysis.io import InputError
from scaling.core import fileio, records


class NotMeasured(Exception):
    """A section's inputs are absent from this sweep (the message says which)."""


@dataclasses.dataclass
class SweepResults:
    root: str
    rows: list                      # runs.csv rows (numbers parsed), summary.json merged in where missing
    summaries: dict                 # run -> summary.json
    evals: dict                     # run -> eval.jsonl lines

    @classmethod
    def load(cls, root: str) -> "SweepResults":
        path = os.path.join(root, "runs.csv")
        if not os.path.exists(path):
            raise InputError(f"{path} does not exist; run `python -m experiments.sweep --root={root}` first")
        rows = rt.read_rows(path)
        if rows and all("group" not in r for r in rows):
            for r in rows:  # a runs.csv from before sweep groups (experiments.reproduce's ladder): all ladder
                r["group"] = "ladder"
        summaries, evals = {}, {}
        for r in rows:
            name = str(r.get("run"))
            workdir = r.get("workdir") or os.path.join("runs", name)
            workdir = workdir if os.path.isabs(str(workdir)) else os.path.join(root, str(workdir))
            if os.path.exists(os.path.join(workdir, "summary.json")):
                summaries[name] = records.read_summary(workdir) or {}
            evals[name] = fileio.read_jsonl(os.path.join(workdir, "eval.jsonl"))
            records.merge_summary(r, summaries.get(name, {}))  # runs.csv wins; the summary fills what it lacks
        return cls(root, rows, summaries, evals)

    def group(self, name: str, finished: bool = True) -> list:
        return [r for r in self.rows if r.get("group") == name and (not finished or r.get("status") == "finished")]

    def finished(self) -> list:
        return [r for r in self.rows if r.get("status") == "finished"]

    def curve(self, row, x: str = "tokens", y: str = "eval_loss"):
        """(x, y) arrays of a run's eval.jsonl (positive x only), sorted by step."""
        lines = [e for e in self.evals.get(str(row["run"]), []) if rt.positive(e.get(x)) and rt.positive(e.get(y))]
        lines.sort(key=lambda e: e.get("step", 0))
        return np.array([e[x] for e in lines], dtype=float), np.array([e[y] for e in lines], dtype=float)


def run_loss(row) -> float | None:
    """The loss a run is scored by: best eval loss (early stopping), else the final eval loss."""
    for k in ("best_eval_loss", "final_eval_loss"):
        if rt.positive(row.get(k)):
            return float(row[k])
    return None


def scored(rows, x_key) -> tuple[list, np.ndarray, np.ndarray]:
    keep = [r for r in rows if rt.positive(r.get(x_key)) and run_loss(r) is not None]
    return keep, np.array([float(r[x_key]) for r in keep]), np.array([run_loss(r) for r in keep])


def bcrit_record(root: str) -> dict | None:
    """ROOT/noise/bcrit.json (experiments.noise_scale: B_crit(L) = B_*/L^(1/α_B)), or None when absent."""
    path = os.path.join(root, "noise", "bcrit.json")
    return fileio.read_json_object(path) if os.path.exists(path) else None


def need(cond: bool, why: str):
    if not cond:
        raise NotMeasured(why)
