"""Gradient noise scale B_simple along training, and B_crit(L) from a batch-size scan.

One run (trains it first, or continues / reuses a finished workdir):
  python -m experiments.noise_scale --gin_file=gin/smoke.gin --workdir=/tmp/gns
    -> DIR/noise_scale.json, DIR/noise_scale.png: B_simple vs tokens and vs loss (1% loss bins, ratio of
       sums, block-bootstrap 95% CIs) and the trainer's per-step EMA curve.
An existing workdir, analysis only (no --gin_file):
  python -m experiments.noise_scale --workdir=DIR
A sweep root (layout in experiments.sweep):
  python -m experiments.noise_scale --root=ROOT
    -> ROOT/runs/<name>/noise_scale.json/png for every run with noise-scale sums, and, when group
       `batch_scan` holds >= 2 batch sizes of a model, ROOT/noise/bcrit.json + bcrit.png (B_crit(L) with
       CIs beside B_simple(L), Kaplan's line dashed) and ROOT/noise/smin_cmin.csv (S_min, E_min, C_min
       along every scan curve, Kaplan eqs 5.4/5.5).
Design: docs/noise-scale.md. B is in tokens unless a key says sequences.
"""
from __future__ import annotations

import sys

from absl import app, flags

from scaling.noise import batch_scan
from scaling.noise.sweep_analysis import Options, analyse_root, analyse_workdir

_GIN_FILE = flags.DEFINE_multi_string("gin_file", [], "Gin config file(s) of the run to train (with --workdir).")
_GIN_PARAM = flags.DEFINE_multi_string("gin_param", [], "Gin bindings, e.g. TrainConfig.num_steps=100.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: trained (or resumed) with --gin_file, then analysed.")
_ROOT = flags.DEFINE_string("root", None, "Sweep root to analyse (ROOT/runs/<name>/, ROOT/runs.csv).")
_BIN_FRAC = flags.DEFINE_float("bin_frac", 0.01, "Relative width of the loss bins (0.01 = 1%).")
_WINDOWS = flags.DEFINE_integer("windows", 20, "Token windows for B_simple vs tokens.")
_BLOCK = flags.DEFINE_integer("block", 5, "Block length (metrics lines) of the block bootstrap.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 500, "Bootstrap replicates (noise bins and the B_crit scan).")
_TARGETS = flags.DEFINE_integer("targets", 30, "Target losses per model size in the batch scan.")
_TARGET_FRACTION = flags.DEFINE_float("target_fraction", batch_scan.TARGET_FRACTION, "B_crit(L) targets: the share "
                                       "of the span (in log loss) every scan run reaches, from its low end (1: all "
                                       "of it; 0.5 is what the results before session 16 used).")
_SKIP = flags.DEFINE_integer("skip_steps", None, "Steps dropped at the start (default: the run's warmup).")
_SEED = flags.DEFINE_integer("seed", 0, "Bootstrap seed.")
_PLOT_RUNS = flags.DEFINE_bool("plot_runs", True, "Draw each run's noise_scale.png (~1 s per run; the numbers are all "
                                "in noise_scale.json). A later pass with --plot_runs draws the missing ones.")
_REANALYSE = flags.DEFINE_bool("reanalyse", False, "With --root: analyse every run again, even one whose "
                               "noise_scale.json is newer than its metrics and was made with the same options.")


def train_and_analyse(gin_files, gin_params, workdir: str, opts: Options) -> dict:
    from experiments import train_gin  # jax and the trainer only for this mode

    summary = train_gin.train_from_gin(gin_files, gin_params, workdir)
    if summary.get("status") not in (None, "finished"):
        print(f"[noise_scale] training status: {summary.get('status')}", flush=True)
    return analyse_workdir(workdir, opts)


def fail(message: str) -> None:
    print(f"noise_scale: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}")
    opts = Options(bin_frac=_BIN_FRAC.value, windows=_WINDOWS.value, block=_BLOCK.value,
                   bootstrap=_BOOTSTRAP.value, targets=_TARGETS.value, skip_steps=_SKIP.value, seed=_SEED.value,
                   target_fraction=_TARGET_FRACTION.value,
                   plot_runs=_PLOT_RUNS.value)
    if not 0.0 < opts.target_fraction <= 1.0:
        fail(f"--target_fraction must be in (0, 1] (the share of the scan's loss span to fit), got "
             f"{opts.target_fraction}")
    if bool(_ROOT.value) == bool(_WORKDIR.value):
        fail("give exactly one of --root=ROOT (analyse a sweep) or --workdir=DIR (train with --gin_file, analyse)")
    try:
        if _ROOT.value:
            analyse_root(_ROOT.value, opts, reanalyse=_REANALYSE.value)
        elif _GIN_FILE.value:
            train_and_analyse(_GIN_FILE.value, _GIN_PARAM.value, _WORKDIR.value, opts)
        else:  # an existing workdir, analysis only
            analyse_workdir(_WORKDIR.value, opts)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e).replace("\n", " | "))


if __name__ == "__main__":
    app.run(main)
