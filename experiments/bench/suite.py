"""The benchmark suite behind `python -m experiments.bench [all|matmul|train|noise|data|fit|compile|memory|gpu|sweep ...] [--out=FILE.json]`.

Each section lives in its own module `experiments/bench/<section>.py` exposing
``run(previous: dict, tiny: bool) -> dict`` that returns a flat dict of named figures (ratios are
measured side by side in the same process). Sections run in the order given and see the figures of
the sections before them (train divides by the matmul section's peak; data compares the loader with
the train section's consumption). ``all`` runs every section. The merged, flat JSON object goes to
--out, a markdown table to FILE.md beside it and to stdout. ``--tiny`` runs every section at smoke-test
sizes (the figures then mean nothing; the schema is the same).

XLA CPU flags: experiments.bench.xla.configure() sets this project's defaults unless XLA_FLAGS is
already set by the user.
"""
from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import sys

from experiments.bench import xla as bench_xla

bench_xla.configure()   # before jax initialises its CPU client

from absl import app, flags  # noqa: E402

from scaling.core import fileio  # noqa: E402

SECTIONS = ("matmul", "train", "noise", "data", "fit", "compile", "memory", "gpu", "sweep")
RUNGS = ("small", "mid", "large")
# The named figures; a full run writes every one of them (the smoke test checks it).
REQUIRED_KEYS = {
    "matmul": ["matmul_peak_flops"],
    "train": [f"{prefix}_{rung}{suffix}" for rung in RUNGS for prefix, suffix in (
        ("train", "_tokens_per_sec"), ("train", "_mfu"), ("train", "_compile_s"),
        ("torch_eager", "_tokens_per_sec"), ("torch_compile", "_tokens_per_sec"))]
    + [f"speedup_vs_torch_{mode}_{rung}" for rung in RUNGS for mode in ("eager", "compile")],
    "noise": ["noise_overhead_fraction", "microbatch_overhead_fraction"],
    "data": ["loader_over_consumption"],
    "fit": ["fit_bootstrap_s"],
    "compile": ["compile_scan_6_s", "compile_scan_24_s", "compile_unrolled_6_s", "compile_unrolled_24_s"],
    "memory": ["memory_loss_whole_temp_bytes", "memory_loss_chunked_temp_bytes", "memory_loss_chunked_over_whole"],
    "sweep": ["sweep_utilisation", "sweep_speedup_vs_subprocess", "sweep_overhead_fraction", "sweep_losses_equal"],
    # On an accelerator (or with --tiny); on a CPU-only machine the section writes gpu_skipped instead.
    "gpu": [f"gpu_gpt2_small{v}_{f}" for v in ("", "_k1") for f in ("tokens_per_sec", "mfu", "compile_s")],
}
GPU_VARIANTS = (("", "default step (K=4 + estimator), scanned layers"), ("_k1", "K=1 step"),
                ("_unrolled", "default step, unrolled layers"), ("_remat", "default step, remat (dots saved)"))

FLAGS_OUT = flags.DEFINE_string("out", "runs/bench.json", "Where to write the flat JSON object of figures.")
FLAGS_TINY = flags.DEFINE_bool("tiny", False, "Smoke-test sizes (seconds; the figures are meaningless).")
FLAGS_UPDATE = flags.DEFINE_bool("update", False, "Merge this run's figures into the existing --out JSON (re-run "
                                 "one section; the figures of the sections not re-run are kept).")


def machine_info() -> dict:
    import jax
    from scaling.train import mfu
    identity = mfu.cpu_identity()
    info = {"bench_date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "bench_cpu": identity["cpu_model"], "bench_cpu_count": identity["cpu_count"],
            "bench_device": jax.devices()[0].device_kind, "bench_platform": jax.devices()[0].platform,
            "bench_jax_version": jax.__version__, "bench_python": platform.python_version(),
            "bench_xla_flags": os.environ.get("XLA_FLAGS", "")}
    return info


def _fmt(value, kind: str = "") -> str:
    if value is None:
        return "–"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "x":
        return f"{value:.2f}×"
    if kind == "s":
        return f"{value:.1f} s"
    if kind == "gb":
        return f"{value / 1e9:.2f} GB"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def _rounds(figures: dict, key: str) -> str:
    if f"{key}_rounds_median" not in figures:
        return "–"
    return (f"{figures[key + '_rounds_median']:.2f}× ({figures[key + '_rounds_min']:.2f}–"
            f"{figures[key + '_rounds_max']:.2f})")


def markdown_table(figures: dict) -> str:
    """The README table: machine line, one row per train rung, then the single figures with their goals."""
    get = figures.get
    lines = [f"Machine: {get('bench_cpu', '?')} ({get('bench_cpu_count', '?')} cores, {get('bench_platform', '?')}), "
             f"jax {get('bench_jax_version', '?')}, torch {get('torch_version', '–')}; {get('bench_date', '?')}; "
             f"load average {get('bench_loadavg_start', '?')} at start, {get('bench_loadavg_end', '?')} at end; "
             f"XLA_FLAGS `{get('bench_xla_flags', '')}`."]
    for key in sorted(k for k in figures if k.startswith("bench_date_")):
        section = key[len("bench_date_"):]
        lines.append(f"Section {section} re-run {figures[key]} (load average "
                     f"{get(f'bench_loadavg_{section}', '?')}).")
    lines.append("")
    if any(k.startswith("train_") for k in figures):
        lines += ["| rung | shape | JAX tokens/s (K=4 + estimator) | MFU | JAX tokens/s (K=1) | MFU (K=1) | compile "
                  "| torch eager tokens/s | torch.compile tokens/s | vs eager | vs compile "
                  "| vs faster, per round: median (min–max) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for rung in RUNGS:
            if f"train_{rung}_tokens_per_sec" not in figures:
                continue
            lines.append("| " + " | ".join([
                rung, str(get(f"train_{rung}_shape", "")), _fmt(get(f"train_{rung}_tokens_per_sec")),
                _fmt(get(f"train_{rung}_mfu"), "pct"), _fmt(get(f"train_{rung}_k1_tokens_per_sec")),
                _fmt(get(f"train_{rung}_k1_mfu"), "pct"), _fmt(get(f"train_{rung}_compile_s"), "s"),
                _fmt(get(f"torch_eager_{rung}_tokens_per_sec")), _fmt(get(f"torch_compile_{rung}_tokens_per_sec")),
                _fmt(get(f"speedup_vs_torch_eager_{rung}"), "x"),
                _fmt(get(f"speedup_vs_torch_compile_{rung}"), "x"), _rounds(figures, f"speedup_vs_faster_torch_{rung}")]) + " |")
        lines.append("")
    if any(k.startswith("gpu_gpt2_small") for k in figures) or "gpu_skipped" in figures:
        lines += gpu_table(figures)
    singles = [
        ("matmul_peak_flops", "matmul peak (float32 FLOP/s)", "", "–"),
        ("matmul_peak_flops_bfloat16", "matmul peak (bfloat16 FLOP/s)", "", "–"),
        ("matmul_peak_flops_this_run", "matmul peak measured in this run (float32 FLOP/s)", "", "–"),
        ("train_mid_mfu", "mid-rung MFU (default step)", "pct", "≥ 65%"),
        ("train_mid_mfu_vs_this_run_peak", "mid-rung MFU vs this run's matmul peak (default step)", "pct", "≥ 65%"),
        ("train_mid_mfu_kaplan", "mid-rung MFU, Kaplan 6N + attention only (default step)", "pct", "–"),
        ("train_mid_k1_mfu", "mid-rung MFU (K=1 step)", "pct", "≥ 65%"),
        ("noise_overhead_fraction", "noise-scale estimator overhead (K=4, on vs off)", "pct", "≤ 5%"),
        ("microbatch_overhead_fraction", "microbatching overhead (K=4 vs K=1, estimator off)", "pct", "–"),
        ("loader_over_consumption", "loader / trainer consumption", "x", "≥ 20×"),
        ("fit_bootstrap_s", "300-point fit + 1,000 bootstraps", "s", "< 30 s"),
        ("compile_scan_6_s", "compile, nn.scan, 6 layers", "s", "–"),
        ("compile_scan_24_s", "compile, nn.scan, 24 layers", "s", "≈ flat"),
        ("compile_unrolled_6_s", "compile, unrolled, 6 layers", "s", "–"),
        ("compile_unrolled_24_s", "compile, unrolled, 24 layers", "s", "–"),
        ("memory_loss_whole_temp_bytes", "step temporaries, whole-sequence loss (6x384, n_ctx 1024, vocab 50,257, "
         "8 sequences)", "gb", "–"),
        ("memory_loss_chunked_temp_bytes", "step temporaries, loss in 128-position chunks (same step)", "gb", "–"),
        ("sweep_utilisation", "sweep utilisation, in-process executor (model FLOPs ÷ wall × matmul peak)", "pct", "≥ 50%"),
        ("sweep_utilisation_subprocess", "sweep utilisation, subprocess executor", "pct", "–"),
        ("sweep_speedup_vs_subprocess", "sweep wall time, subprocess ÷ in-process", "x", "≥ 2.0×"),
        ("sweep_overhead_fraction", "sweep wall time outside training steps, in-process", "pct", "≤ 10%"),
        ("sweep_overhead_fraction_subprocess", "sweep wall time outside training steps, subprocess", "pct", "–"),
        ("sweep_utilisation_ceiling", "sweep utilisation with no time outside training steps (the steps' own "
                                      "ceiling), in-process", "pct", "–"),
        ("sweep_compile_fraction", "sweep worker time compiling train/eval steps, in-process", "pct", "–"),
        ("sweep_idle_fraction", "sweep worker time in no run, in-process", "pct", "–"),
        ("sweep_overhead_fraction_runs_over_30s", "run wall time outside training steps, runs ≥ 30 s, in-process",
         "pct", "≤ 10%"),
        ("sweep_speedup_warm_cache_vs_subprocess", "sweep wall time, subprocess ÷ in-process re-run (warm "
         "compilation cache)", "x", "–"),
        ("sweep_overhead_fraction_warm_cache", "sweep wall time outside training steps, in-process re-run", "pct", "–"),
        ("sweep_losses_equal", "same losses and parameters under both executors", "", "True"),
    ]
    rows = [(label, _fmt(figures[key], kind), goal) for key, label, kind, goal in singles if key in figures]
    if rows:
        lines += ["| figure | value | goal |", "|---|---:|---|"]
        lines += [f"| {label} | {value} | {goal} |" for label, value, goal in rows]
    return "\n".join(lines) + "\n"


def gpu_table(figures: dict) -> list[str]:
    """The accelerator section's lines: device, the GPT-2-small variants' rows (or why they are missing)."""
    get = figures.get
    if "gpu_skipped" in figures:
        return [f"GPU section: skipped ({figures['gpu_skipped']}).", ""]
    lines = [f"GPU: {get('gpu_devices', '?')} x {get('gpu_device', '?')}, jax {get('gpu_jax_version', '?')}; "
             f"GPT-2-small {get('gpu_gpt2_small_shape', '?')}, {get('gpu_batch_sequences', '?')} sequences per "
             f"step, {get('gpu_dtype', '?')}, attention {get('gpu_attention_impl', '?')}; MFU against "
             f"{get('gpu_peak_source', '?')} and against the measured bf16 matmul peak "
             f"({_fmt(get('gpu_matmul_peak_flops_bfloat16'))} FLOP/s).", "",
             "| GPT-2-small step | tokens/s | MFU (goal ≥ 50%) | MFU vs measured matmul peak | compile |",
             "|---|---:|---:|---:|---:|"]
    for suffix, label in GPU_VARIANTS:
        name = f"gpu_gpt2_small{suffix}"
        if f"{name}_error" in figures:
            lines.append(f"| {label} | failed: {figures[name + '_error']} | | | |")
        elif f"{name}_tokens_per_sec" in figures:
            lines.append(f"| {label} | {_fmt(get(name + '_tokens_per_sec'))} | {_fmt(get(name + '_mfu'), 'pct')} "
                         f"| {_fmt(get(name + '_mfu_vs_measured_peak'), 'pct')} | {_fmt(get(name + '_compile_s'), 's')} |")
    return lines + [""]


def run_sections(names, tiny: bool = False) -> dict:
    figures = {**machine_info(), "bench_loadavg_start": "%.2f" % os.getloadavg()[0]}
    for name in names:
        module = importlib.import_module(f"experiments.bench.{name}")
        print(f"== bench {name} ==", flush=True)
        result = module.run(dict(figures), tiny=tiny)
        for key, value in result.items():
            print(f"  {key:<44s} {value}", flush=True)
        figures.update(result)
    figures["bench_loadavg_end"] = "%.2f" % os.getloadavg()[0]
    figures["bench_sections"] = ",".join(names)
    figures["bench_tiny"] = int(tiny)
    return figures


def main(argv):
    names = argv[1:] or ["all"]
    if names == ["all"]:
        names = list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        print(f"bench: unknown section(s) {unknown}; choose from {list(SECTIONS)} or 'all'", file=sys.stderr)
        sys.exit(2)
    figures = run_sections(names, tiny=FLAGS_TINY.value)
    out = FLAGS_OUT.value
    if FLAGS_UPDATE.value and os.path.exists(out):
        with open(out) as f:
            previous = json.load(f)
        sections = previous.get("bench_sections", "").split(",") + names
        figures = {**previous, **{k: v for k, v in figures.items() if not k.startswith("bench_")},
                   "bench_sections": ",".join(dict.fromkeys(s for s in sections if s)),
                   f"bench_date_{'_'.join(names)}": figures["bench_date"],
                   f"bench_loadavg_{'_'.join(names)}": f"{figures['bench_loadavg_start']}-{figures['bench_loadavg_end']}"}
    fileio.write_json_atomic(out, figures, sort_keys=True)
    table = markdown_table(figures)
    md_path = os.path.splitext(out)[0] + ".md"
    fileio.write_text_atomic(md_path, table)
    print(table)
    print(f"wrote {out} and {md_path}")

