"""The main job: sweep → noise scale → predict the held-out rung → train it → fits and report.

    python -m experiments.reproduce [--root=runs/reproduce] [--preset=quick|full] [--workers=N]
    make reproduce                                   # = --preset=quick on the embedded corpus

Stages (each idempotent; rerunning the command resumes where it stopped and redoes nothing finished):

1. **sweep, first part**: the groups the prediction needs (`ladder`, and `batch_scan` for B_crit) of the
   preset's sweep file (gin/sweeps/kaplan_cpu_<preset>.gin), through `experiments.sweep_executor.run_sweep`
   with the in-process executor (experiments/sweep_inprocess.py; --executor=subprocess for one process per
   run) (finished runs skipped, interrupted ones resumed from their checkpoints, failures recorded and
   retried on the next invocation).
2. **noise**: `experiments.noise_scale --root --noplot_runs` — B_simple along every run (noise_scale.json; the
   per-run figures are left to a later `experiments.noise_scale --root`), and B_crit(L) from the `batch_scan`
   group (ROOT/noise/).
3. **predict**: the ladder's learning curves (eq 1.6 with S_min from B_crit(L)) predict the final eval loss
   of the `holdout` run (a larger model) with a bootstrap 95 % interval, written to ROOT/prediction.json
   *before* that run starts, and never rewritten once the run has begun (its `written_at` time and
   the run's start time are both in the report, so the order is checkable).
4. **sweep, second part**: the held-out run and every other group (data budgets, LSTM, recurrent, ...),
   together and largest first, so the held-out run trains beside the others rather than alone at the end;
   then `noise_scale` again for their per-run noise analyses (runs analysed before are kept), run beside 5:
5. **report**: `experiments.report --root` (fits, figures, report.md; the prediction's error).

A failed run does not stop the job: it is listed in the report and retried by the next invocation.
The exit status is non-zero when any run failed or a stage could not produce its output.
"""
from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time

from absl import app, flags, logging

from scaling.core import fileio, records

PRESETS = {"quick": "gin/sweeps/kaplan_cpu_quick.gin", "full": "gin/sweeps/kaplan_cpu_full.gin"}
HOLDOUT = "holdout"
# What the prediction is fitted on: the ladder's learning curves, and the batch scan for B_crit(L) (S_min).
PREDICTION_GROUPS = ("ladder", "batch_scan")

ROOT = flags.DEFINE_string("root", "runs/reproduce", "Output directory (runs/, runs.csv, noise/, fits/, report.md).")
PRESET = flags.DEFINE_enum("preset", "quick", list(PRESETS), "Which sweep: quick (embedded corpus, ~17-19 min on "
                           "2 cores) or full (the 47M-token book corpus, data/corpora.py; ~71 min).")
SWEEP = flags.DEFINE_string("sweep", None, "A sweep gin file instead of the preset's (same groups).")
WORKERS = flags.DEFINE_integer("workers", None, "Concurrent runs (default: sized to the machine).")
EXECUTOR = flags.DEFINE_enum("executor", "inprocess", ["inprocess", "subprocess"],
                             "How the runs train: inprocess (long-lived processes, runs back to back; "
                             "experiments/sweep_inprocess.py) or subprocess (one experiments.train per run).")
# The per-run B_simple figures are left out (~1 s each, 38 runs; their numbers are in each noise_scale.json and the
# report's B_crit figure holds the scan's): `experiments.noise_scale --root=ROOT` draws them afterwards.
NOISE_STAGE = ["experiments.noise_scale", "--noplot_runs"]
# The full preset keeps the batch-scan design its reference results were made with: a warmup fixed in tokens and
# B_crit(L) over the lower half of the losses every scan run reaches (the quick preset's until session 16). With the
# quick preset's 12-step warmup and every target, its ladder's converged L(N) bends (gin/sweeps/kaplan_cpu_full.gin).
PRESET_NOISE_FLAGS = {"quick": [], "full": ["--target_fraction=0.5"]}
BOOTSTRAP = flags.DEFINE_integer("bootstrap", 200, "Bootstrap replicates for the prediction and the report.")


_START = time.time()


def log(message: str) -> None:
    print(f"[reproduce +{(time.time() - _START) / 60:.1f} min] {message}", flush=True)


def run_stage(name: str, argv: list[str]) -> bool:
    """A CLI stage as a subprocess (its own gin/JAX state); True when it succeeded."""
    return run_stages([(name, argv)])


def run_stages(stages: list[tuple[str, list[str]]]) -> bool:
    """CLI stages as subprocesses running side by side (stages that do not read each other's output); True when
    every one succeeded."""
    procs = []
    for name, argv in stages:
        log(f"{name}: {' '.join(argv)}")
        procs.append((name, subprocess.Popen([sys.executable, "-m", *argv])))
    ok = True
    for name, proc in procs:
        if proc.wait():
            log(f"{name} failed (exit {proc.returncode}); the stages after it still run")
            ok = False
    return ok


def ladder_points(root: str, runs) -> dict:
    """(N, best eval loss) of the finished ladder runs, from their summary.json files."""
    from scaling import sweep
    names, n, loss = [], [], []
    for run in runs:
        if run.group != "ladder":
            continue
        summary = records.read_summary(sweep.run_dir(root, run.name))
        if records.is_finished(summary) and summary.get("best_eval_loss"):
            names.append(run.name)
            n.append(float(summary["n_params_nonembedding"]))
            loss.append(float(summary["best_eval_loss"]))
    return {"run": names, "N": n, "loss": loss}


def holdout_started(root: str, run) -> bool:
    from scaling import sweep
    directory = sweep.run_dir(root, run.name)
    return any(os.path.exists(os.path.join(directory, f)) for f in ("summary.json", "metrics.jsonl", "checkpoints"))


def prediction_laws(n_points: int) -> list:
    """Laws that predict the holdout, headline first. Every ladder run trains the same S steps, so eq 1.6 at
    fixed S (power law + the shared (S_c/S)^α_S) is the right form; it has 3 parameters and is the headline
    only with >= 5 rungs (2 degrees of freedom). Eq 1.1 (pure power law, exact only at convergence) is always
    reported beside it."""
    return ["kaplan_n_fixed_s", "kaplan_n"] if n_points >= 5 else ["kaplan_n"]


def predict_loss(law: str, points: dict, n_target: float, n_boot: int) -> dict:
    """One law fitted on the ladder points, evaluated at N = n_target with its bootstrap 95 % interval."""
    from scaling.analysis import api
    fit = api.fit_law(law, {"N": points["N"], "loss": points["loss"]}, n_boot=n_boot, seed=0)
    pred, lo, hi = (float(v[0]) for v in fit.predict({"N": [n_target]}))
    finite = lambda v: v if v == v and abs(v) != float("inf") else None  # JSON null = unbounded side
    return {"loss_pred": pred, "loss_pred_lo": finite(lo), "loss_pred_hi": finite(hi),
            "fit_params": fit.record["params"], "fit_ci95": fit.record.get("ci95", {})}


def predict_from_curves(root: str, runs, target, n_boot: int) -> dict:
    """The holdout's final eval loss from the ladder's whole learning curves (Kaplan eq 1.6, the headline law).

    Each ladder rung's curve gives its converged loss L_inf (one fit of L_r(S) = L_inf_r + (S_c/S_min)^alpha_S to all
    rungs, S_min from the batch scan's B_crit(L) when noise/bcrit.json has it); eq 1.1 through the L_inf gives
    L(N) at the holdout's N, and the step term at its planned steps and batch is added. Interval: whole rungs
    resampled with replacement (scaling/analysis/learning_curves.py)."""
    from scaling import sweep
    from scaling.analysis import learning_curves
    curves = []
    for run in runs:
        if run.group == "ladder":
            curve = learning_curves.read_curve(sweep.run_dir(root, run.name), run.name)
            if curve is not None:
                curves.append(curve)
    b_crit = learning_curves.bcrit_law(fileio.read_json_object(os.path.join(root, "noise", "bcrit.json")))
    planned = target.planned
    out = learning_curves.predict_final_loss(
        curves, float(planned["n_params_nonembedding"]), float(planned["steps"]), float(planned["batch_tokens"]),
        b_crit=b_crit, n_boot=n_boot, seed=0)
    return {**out, "measure": "final_eval_loss", "fit_params": {"N_c": out["N_c"], "alpha_N": out["alpha_N"]},
            "s_min_correction": b_crit is not None}


def missing_corpora(runs) -> list[str]:
    """Local corpora the runs' data gin files name (DataConfig.task = '...') whose files are absent, as messages."""
    import re
    from data import corpora
    tasks = set()
    for run in runs:
        for path in run.gin_files:
            full = path if os.path.isabs(path) else os.path.join(os.path.dirname(os.path.dirname(__file__)), path)
            if os.path.exists(full):
                with open(full) as f:
                    tasks.update(re.findall(r"^DataConfig\.task\s*=\s*['\"]([\w.]+)['\"]", f.read(), re.M))
        tasks.update(re.findall(r"DataConfig\.task=['\"]?([\w.]+)", " ".join(run.gin_params)))
    problems = []
    for task in sorted(tasks):
        corpus = corpora.LOCAL_CORPORA.get(task)
        for split, patterns in (corpus.splits if corpus else ()):
            try:
                corpora.expand_paths(patterns, what=f"{task} {split}")
            except (FileNotFoundError, ValueError):
                problems.append(f"corpus {task!r} ({split}) is missing: {', '.join(patterns)} matches no file. "
                                f"Put the files there, or point $SCALING_SHARED_DATA at a folder holding corpus/ and "
                                f"corpus-wiki/ (data/corpora.py), or run another corpus with --sweep and "
                                f"gin/data/local_files.gin")
    return problems


def write_prediction(root: str, runs, n_boot: int) -> dict | None:
    """Fits L(N) on the ladder and writes ROOT/prediction.json for the holdout run (once, before it trains)."""
    from scaling.analysis import fitting
    from scaling.analysis.io import InputError
    path = os.path.join(root, "prediction.json")
    target = next((r for r in runs if r.group == HOLDOUT), None)
    if target is None:
        log("predict: the sweep has no holdout group; nothing to predict")
        return None
    existing = fileio.read_json_object(path)
    if existing and existing.get("target_run") == target.name:
        log(f"predict: keeping the prediction written at {existing['written_at']}")
        return existing
    if holdout_started(root, target):
        # An honest prediction must precede training; do not write one after the fact.
        log(f"predict: {target.name} has already started training and no prediction was recorded before it; "
            "delete its run directory to redo the prediction honestly")
        return None
    points = ladder_points(root, runs)
    if len(points["N"]) < 3:
        log(f"predict: only {len(points['N'])} finished ladder runs; need >= 3 to predict {target.name}")
        return None
    n_target = float(target.planned["n_params_nonembedding"])
    predictions = {}
    try:
        predictions["kaplan_ns_curves"] = predict_from_curves(root, runs, target, n_boot)
    except (InputError, fitting.FitError, ValueError) as e:
        log(f"predict: the learning-curve (eq 1.6) prediction failed ({e})")
    for law in prediction_laws(len(points["N"])):
        try:
            predictions[law] = {**predict_loss(law, points, n_target, n_boot), "measure": "best_eval_loss"}
        except (InputError, fitting.FitError) as e:
            log(f"predict: the {law} fit failed ({e})")
    if not predictions:
        log("predict: no L(N) fit succeeded; no prediction")
        return None
    law = next(iter(predictions))  # the first law that fits is the headline, chosen by rule before training
    record = {"law": law, **predictions[law], "alternatives": {k: v for k, v in predictions.items() if k != law},
              "fit_runs": points["run"], "target_run": target.name,
              "n_params_nonembedding": n_target, "fit_n_range": [min(points["N"]), max(points["N"])],
              "extrapolation_factor": n_target / max(points["N"]), "bootstrap": n_boot,
              "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    pred, lo, hi = record["loss_pred"], record["loss_pred_lo"], record["loss_pred_hi"]
    fileio.write_json_atomic(path, record)
    bound = lambda v, inf: inf if v is None else f"{v:.4f}"
    log(f"predict: {target.name} (N = {n_target:,.0f}) {record.get('measure', 'best_eval_loss').replace('_', ' ')} {pred:.4f} "
        f"[95% {bound(lo, '-inf')}, {bound(hi, 'inf')}] by {law} from {len(points['N'])} ladder runs -> {path}")
    return record


def _predict(root: str, runs, n_boot: int) -> None:
    logging.set_verbosity(logging.WARNING)
    from experiments import sweep_inprocess
    sweep_inprocess.enable_compilation_cache()  # the report's fits reuse these programs (~20 s of its time)
    write_prediction(root, runs, n_boot)


def predict_in_child(root: str, runs, n_boot: int) -> bool:
    """`write_prediction` in a fresh interpreter (multiprocessing's spawn): its fits start JAX's thread pools,
    and this process goes on to fork the sweep's workers (a fork of a multithreaded process can deadlock in
    the child before its exec). True when the child exited cleanly."""
    import multiprocessing
    child = multiprocessing.get_context("spawn").Process(target=_predict, args=(root, runs, n_boot))
    child.start()
    child.join()
    if child.exitcode:
        log(f"predict: the prediction process failed (exit {child.exitcode}); no prediction was written")
    return child.exitcode == 0


def main(argv):
    if len(argv) > 1:
        print(f"reproduce: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        sys.exit(2)
    logging.set_verbosity(logging.WARNING)
    from experiments import sweep_executor, sweep_inprocess
    from scaling import sweep
    executor = sweep_inprocess.executor_for(EXECUTOR.value)

    sweep_file = SWEEP.value or PRESETS[PRESET.value]
    root = os.path.abspath(ROOT.value)
    noise_stage = NOISE_STAGE + PRESET_NOISE_FLAGS[PRESET.value] + [f"--root={root}"]
    try:
        _, runs = sweep.expand(sweep_file)
    except (sweep.SweepError, FileNotFoundError, ValueError) as e:
        print(f"reproduce: error: {e}", file=sys.stderr)
        sys.exit(2)
    problems = missing_corpora(runs)
    if problems:
        for problem in problems:
            print(f"reproduce: error: {problem}", file=sys.stderr)
        sys.exit(2)
    os.makedirs(root, exist_ok=True)
    ok = True
    try:
        first_groups = sorted({r.group for r in runs if r.group in PREDICTION_GROUPS})
        later_groups = sorted({r.group for r in runs if r.group not in PREDICTION_GROUPS})
        if first_groups:
            log(f"1/5 sweep {sweep_file}: groups {', '.join(first_groups)} in {root}")
            ok &= sweep_executor.run_sweep(sweep_file, root, workers=WORKERS.value, only=first_groups,
                                           executor=executor).ok
        log("2/5 noise scale and B_crit")
        ok &= run_stage("noise", noise_stage)
        log("3/5 predict the held-out rung")
        predict_in_child(root, runs, BOOTSTRAP.value)
        if later_groups:
            log(f"4/5 sweep: groups {', '.join(later_groups)} (the held-out rung among them, largest first)")
            ok &= sweep_executor.run_sweep(sweep_file, root, workers=WORKERS.value, only=later_groups,
                                           executor=executor).ok
        report = ("report", ["experiments.report", f"--root={root}", f"--bootstrap={BOOTSTRAP.value}"])
        if later_groups:
            # The later groups' per-run noise analyses and the report side by side: the report reads noise/bcrit.json,
            # which comes from the batch scan (analysed in stage 2, rewritten unchanged here), and no per-run file.
            log("5/5 report (beside the noise analysis of the later groups)")
            ok &= run_stages([("noise", noise_stage), report])
        else:
            log("5/5 report")
            ok &= run_stage(*report)
    except sweep_executor.LockedError as e:
        print(f"reproduce: error: {e}", file=sys.stderr)
        sys.exit(2)
    log(f"done in {(time.time() - _START) / 60:.1f} min: {os.path.join(root, 'report.md')}"
        + ("" if ok else " (some runs or stages failed: see the report; rerun the command to retry them)"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    app.run(main)
