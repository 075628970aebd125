"""A sweep root's noise analysis: per-run B_simple (noise_scale.json/png) and, from the `batch_scan` group,
B_crit(L) (ROOT/noise/bcrit.json, bcrit.png, smin_cmin.csv). The CLI is experiments/noise_scale.py; the
design is docs/noise-scale.md.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os

from scaling.core import fileio
from scaling.noise import batch_scan, offline, plots

SCAN_GROUP = "batch_scan"


@dataclasses.dataclass
class Options:
    bin_frac: float = 0.01
    windows: int = 20
    block: int = 5
    bootstrap: int = 500
    targets: int = 30
    skip_steps: int | None = None
    seed: int = 0
    # Share of the span (in log loss) every scan run reaches that the B_crit(L) targets cover, from its low end.
    target_fraction: float = batch_scan.TARGET_FRACTION
    # Each run's noise_scale.png (~1 s of matplotlib per run; the JSON holds every number in it). `make reproduce`
    # leaves them out (38 runs: ~40 s of its CPU time); `experiments.noise_scale --root` draws them.
    plot_runs: bool = True

    def offline_kwargs(self) -> dict:
        return dict(bin_frac=self.bin_frac, n_windows=self.windows, block=self.block, n_boot=self.bootstrap,
                    seed=self.seed, skip_steps=self.skip_steps)


def previous_analysis(workdir: str, opts: Options) -> dict | None:
    """workdir/noise_scale.json when it is still valid: written after metrics.jsonl and summary.json last
    changed, with the same analysis options (the analysis is deterministic, so it would come out the same)."""
    path = os.path.join(workdir, "noise_scale.json")
    if not os.path.exists(path):
        return None
    inputs = [os.path.join(workdir, f) for f in ("metrics.jsonl", "summary.json")]
    if any(os.path.exists(f) and os.path.getmtime(f) > os.path.getmtime(path) for f in inputs):
        return None
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, ValueError):
        return None  # unreadable: analyse again
    return result if result.get("options") == fileio.json_safe(opts.offline_kwargs()) else None


def _figure_is_stale(workdir: str) -> bool:
    """noise_scale.png is missing or older than the noise_scale.json it draws."""
    figure = os.path.join(workdir, "noise_scale.png")
    return not (os.path.exists(figure)
                and os.path.getmtime(figure) >= os.path.getmtime(os.path.join(workdir, "noise_scale.json")))


def analyse_workdir(workdir: str, opts: Options, reuse: bool = False) -> dict:
    """Writes workdir/noise_scale.json + .png; returns the result.

    reuse: keep a still-valid noise_scale.json (`previous_analysis`) instead of analysing again (what a sweep
    root's second pass, e.g. `make reproduce` after its later groups, needs for the runs it already analysed).
    """
    if reuse:
        result = previous_analysis(workdir, opts)
        if result is not None:
            drawn = ""
            if opts.plot_runs and _figure_is_stale(workdir):
                plots.plot_run(result, os.path.join(workdir, "noise_scale.png"))  # a pass that drew no figures
                drawn = "; noise_scale.png drawn"
            print(f"[noise_scale] {result['run']}: unchanged since its analysis (noise_scale.json kept{drawn})",
                  flush=True)
            return result
    result = offline.analyse_run_dir(workdir, **opts.offline_kwargs())
    result["options"] = opts.offline_kwargs()
    fileio.write_json_atomic(os.path.join(workdir, "noise_scale.json"), fileio.json_safe(result))
    if opts.plot_runs:
        plots.plot_run(result, os.path.join(workdir, "noise_scale.png"))
    o = result["overall"]
    print(f"[noise_scale] {result['run']}: {result['steps']:.0f} steps, loss {o['loss_max']:.3f} -> "
          f"{o['loss_min']:.3f}; B_simple overall {o['b_simple']:,.0f} tokens "
          f"[{o['lo']:,.0f}, {o['hi']:,.0f}] ({o['b_simple_sequences']:.1f} sequences); "
          f"{len(result['by_loss'])} loss bins", flush=True)
    return result


def list_runs(root: str) -> list[dict]:
    """{name, group, workdir, status, model} per run: runs.csv, else sweep.json, else ROOT/runs/*/."""
    runs_dir = os.path.join(root, "runs")
    csv_path = os.path.join(root, "runs.csv")
    if os.path.exists(csv_path):
        with open(csv_path, newline="") as f:
            return [{"name": r["run"], "group": r.get("group", ""), "status": r.get("status", ""),
                     "workdir": os.path.join(root, r.get("workdir") or os.path.join("runs", r["run"])),
                     "model": r.get("model") or None} for r in csv.DictReader(f)]
    groups = {}
    if os.path.exists(os.path.join(root, "sweep.json")):
        with open(os.path.join(root, "sweep.json")) as f:
            groups = {r["name"]: r.get("group", "") for r in json.load(f)}
    if not os.path.isdir(runs_dir):
        raise FileNotFoundError(f"{runs_dir} not found: is {root} a sweep root (experiments.sweep)?")
    return [{"name": n, "group": groups.get(n, ""), "status": "", "workdir": os.path.join(runs_dir, n),
             "model": None} for n in sorted(os.listdir(runs_dir)) if os.path.isdir(os.path.join(runs_dir, n))]


def _has_gns(workdir: str) -> bool:
    path = os.path.join(workdir, "metrics.jsonl")
    return os.path.exists(path) and offline.has_gns(offline.read_jsonl(path))


def analyse_root(root: str, opts: Options, reanalyse: bool = False) -> dict:
    """Per-run noise_scale.json/png, then ROOT/noise/bcrit.json/png + smin_cmin.csv from group batch_scan.

    A run whose noise_scale.json is still valid (`previous_analysis`) is not analysed again unless `reanalyse`.
    """
    runs = list_runs(root)
    with_gns = [r for r in runs if _has_gns(r["workdir"])]
    if not with_gns:
        raise ValueError(f"no runs with gns_s_small in {os.path.join(root, 'runs')}: train with "
                         "TrainConfig.microbatches >= 2 (and TrainConfig.noise_scale = True)")
    per_run = {}
    for r in with_gns:
        try:
            per_run[r["name"]] = analyse_workdir(r["workdir"], opts, reuse=not reanalyse)
        except ValueError as e:  # e.g. every line inside the warmup
            print(f"[noise_scale] {r['name']}: skipped: {e}", flush=True)
    out = {"runs": sorted(per_run)}
    scan = [r for r in runs if r["group"] == SCAN_GROUP and r["status"] in ("", "finished")
            and os.path.exists(os.path.join(r["workdir"], "summary.json"))]
    if not scan:
        print(f"[noise_scale] no finished runs in group '{SCAN_GROUP}': B_crit(L) not fitted", flush=True)
        return out
    scan_runs = [batch_scan.load_scan_run(r["workdir"], r["name"], r["model"]) for r in scan]
    if len({s.batch_tokens for s in scan_runs}) < 2:
        print(f"[noise_scale] group '{SCAN_GROUP}' has a single batch size: B_crit(L) needs >= 2", flush=True)
        return out
    out["bcrit"] = write_bcrit(root, scan_runs, per_run, opts)
    return out


def write_bcrit(root: str, scan_runs, per_run: dict, opts: Options) -> dict:
    result = batch_scan.fit_scan(scan_runs, n_targets=opts.targets, n_boot=opts.bootstrap, seed=opts.seed,
                                 target_fraction=opts.target_fraction)
    result["b_simple_vs_loss"] = [
        {"run": s.name, "loss": row["loss"], "b_simple": row["b_simple"], "lo": row["lo"], "hi": row["hi"]}
        for s in scan_runs if s.name in per_run for row in per_run[s.name]["by_loss"]]
    rows = [p for s in scan_runs for p in batch_scan.pointwise_min(s, result["B_star"], result["alpha_B"])]
    noise_dir = os.path.join(root, "noise")
    fileio.write_json_atomic(os.path.join(noise_dir, "bcrit.json"), fileio.json_safe(result))
    fileio.write_text_atomic(os.path.join(noise_dir, "smin_cmin.csv"), batch_scan.smin_cmin_csv(rows))
    plots.plot_bcrit(result, os.path.join(noise_dir, "bcrit.png"))
    ci = result["ci95"]
    print(f"[noise_scale] B_crit(L) = {result['B_star']:.3g} / L^(1/{result['alpha_B']:.3f}) tokens "
          f"(95% CI B* {ci['B_star']}, alpha_B {ci['alpha_B']}; Kaplan 2.1e8, 0.21) from {result['n_runs']} runs, "
          f"{len(result['per_target'])} targets ({100 * result['bracketed_fraction']:.0f}% bracketed)", flush=True)
    for p in result["per_target"][:: max(1, len(result["per_target"]) // 6)]:
        print(f"  {p['model']}: L={p['target_loss']:.4f} B_crit={p['B_crit']:,.0f} "
              f"[{p['B_crit_lo']:,.0f}, {p['B_crit_hi']:,.0f}] tokens, S_min={p['S_min']:.1f}"
              f"{'' if p['bracketed'] else ' (bound: not bracketed)'}", flush=True)
    if result["not_reached"]:
        print(f"  {len(result['not_reached'])} (run, target) pairs not reached", flush=True)
    print(f"[noise_scale] wrote {noise_dir}/bcrit.json, bcrit.png, smin_cmin.csv", flush=True)
    return result
