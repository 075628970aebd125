"""The sweep report: every Kaplan et al. 2020 figure this sweep measured, our constants beside the paper's.

    python -m experiments.report --root=DIR [--bootstrap=200] [--seed=0]

Reads DIR/runs.csv, the run directories DIR/runs/<name>/ (summary.json, eval.jsonl), DIR/noise/
(bcrit.json, smin_cmin.csv) and DIR/prediction.json, and writes DIR/report.md, DIR/figures/*.png and
DIR/fits/<fit>.json (atomically; a rerun replaces them and removes figures/fits it no longer makes).

The report is scaling/report/ (loader, document, one module per section family, build); this file is its
flags. Honesty rules, applied by fixed thresholds (scaling/analysis/report_tables.py): only measured numbers; the
N/D/C range covered is stated; a fit with R² < 0.95 in log space, a residual trend or a bend, or a 95% CI
wider than 3× (or 100% of the value) is called so in words beside the number; a section whose inputs are
missing says "not measured in this sweep: <why>" instead of a figure.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

from experiments import sweep_inprocess
from scaling.analysis.io import InputError
from scaling.report import build

ROOT = flags.DEFINE_string("root", None, "Sweep root (runs.csv, runs/, noise/, prediction.json).")
BOOTSTRAP = flags.DEFINE_integer("bootstrap", 200, "Bootstrap replicates for every 95% interval.")
SEED = flags.DEFINE_integer("seed", 0, "Bootstrap seed.")


def main(argv):
    if len(argv) > 1:
        print(f"report: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        sys.exit(2)
    if not ROOT.value:
        print("report: error: --root=DIR is required (a sweep root with runs.csv)", file=sys.stderr)
        sys.exit(2)
    if BOOTSTRAP.value < 0:
        print(f"report: error: --bootstrap must be >= 0, got {BOOTSTRAP.value}", file=sys.stderr)
        sys.exit(2)
    # The fits compile ~240 small XLA programs (~35 s of a ~85 s report); in `make reproduce` the prediction stage
    # has compiled many of them already (measured: 63 s with its cache, the same report to the last digit).
    sweep_inprocess.enable_compilation_cache()
    try:
        path = build(ROOT.value, BOOTSTRAP.value, SEED.value)
    except InputError as e:
        print(f"report: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"[report] wrote {path} (figures in {os.path.join(ROOT.value, 'figures')}, fits in "
          f"{os.path.join(ROOT.value, 'fits')})")


if __name__ == "__main__":
    app.run(main)
