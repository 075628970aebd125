"""`python -m experiments.noise_scale`: a sweep root (per-run noise_scale.json/png, noise/bcrit.json/png,
noise/smin_cmin.csv as the contract says), a clear error without noise sums, and one real tiny training run."""
import csv
import json
import math
import os
import subprocess
import sys

from test_noise_batch_scan import write_run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCAN = [(1e6, 2 ** k) for k in (14, 16, 18, 20, 21)] + [(4e6, 2 ** k) for k in (15, 17, 19, 21)]


def run_cli(*args, devices=1, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.run([sys.executable, "-m", "experiments.noise_scale", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def write_root(root, gns=True):
    runs = os.path.join(root, "runs")
    rows = []
    for i, (n, b) in enumerate(SCAN):
        name = f"scan_n{int(n)}_b{b}"
        write_run(runs, name, n, b, seed=i, gns=gns)
        rows.append({"run": name, "group": "batch_scan", "status": "finished", "workdir": f"runs/{name}",
                     "model": f"m{int(n)}", "batch_tokens": b})
    write_run(runs, "ladder_small", 1e6, 2 ** 17, gns=gns)
    rows.append({"run": "ladder_small", "group": "ladder", "status": "finished", "workdir": "runs/ladder_small",
                 "model": "m1000000", "batch_tokens": 2 ** 17})
    rows.append({"run": "never_ran", "group": "batch_scan", "status": "failed", "workdir": "runs/never_ran",
                 "model": "m1000000", "batch_tokens": 2 ** 16})
    with open(os.path.join(root, "runs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_root_writes_bcrit_and_per_run_outputs(tmp_path):
    root = str(tmp_path)
    write_root(root)
    result = run_cli(f"--root={root}", "--bootstrap=40", "--targets=12")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "B_crit(L) =" in result.stdout
    for name in ("scan_n1000000_b16384", "ladder_small"):
        with open(os.path.join(root, "runs", name, "noise_scale.json")) as f:
            per_run = json.load(f)
        assert per_run["by_loss"] and per_run["by_tokens"] and per_run["overall"]["b_simple"] > 0
        assert os.path.getsize(os.path.join(root, "runs", name, "noise_scale.png")) > 1000
    with open(os.path.join(root, "noise", "bcrit.json")) as f:
        bc = json.load(f)
    for key in ("B_star", "alpha_B", "ci95", "per_target", "n_runs", "models", "b_simple_vs_loss", "paper"):
        assert key in bc, key
    assert set(bc["ci95"]) >= {"B_star", "alpha_B"} and len(bc["ci95"]["alpha_B"]) == 2
    assert bc["paper"] == {"B_star": 2.1e8, "alpha_B": 0.21}
    assert bc["n_runs"] == len(SCAN) and bc["models"] == ["m1000000", "m4000000"]
    assert abs(bc["alpha_B"] - 0.21) < 0.03  # the synthetic scan's law
    for p in bc["per_target"]:
        assert {"target_loss", "S_min", "E_min", "B_crit", "B_crit_lo", "B_crit_hi", "bracketed"} <= set(p)
    assert {"run", "loss", "b_simple", "lo", "hi"} <= set(bc["b_simple_vs_loss"][0])
    assert os.path.getsize(os.path.join(root, "noise", "bcrit.png")) > 1000
    with open(os.path.join(root, "noise", "smin_cmin.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["run", "n_params_nonembedding", "batch_tokens", "step", "tokens", "loss", "S_min",
                             "E_min", "C_min_pf_days"]
    assert {r["run"] for r in rows} == {f"scan_n{int(n)}_b{b}" for n, b in SCAN}  # batch_scan runs only
    assert all(float(r["S_min"]) < float(r["step"]) for r in rows)


def test_target_fraction_narrows_the_targets_and_is_recorded(tmp_path):
    """--target_fraction=0.5 (what the results before session 16 used) fits the lower half of the span every scan
    run reaches, and bcrit.json says which share it fitted; a share outside (0, 1] is refused before anything is
    read or written."""
    root = str(tmp_path)
    write_root(root)
    spans = {}
    for fraction in ("1", "0.5"):
        result = run_cli(f"--root={root}", "--bootstrap=10", "--targets=8", f"--target_fraction={fraction}")
        assert result.returncode == 0, result.stderr[-3000:]
        with open(os.path.join(root, "noise", "bcrit.json")) as f:
            bc = json.load(f)
        assert bc["target_fraction"] == float(fraction)
        losses = [p["target_loss"] for p in bc["per_target"] if p["model"] == "m1000000"]
        spans[fraction] = (min(losses), max(losses))
    assert spans["0.5"][0] == spans["1"][0] and spans["0.5"][1] < spans["1"][1]   # same low end, lower top
    os.remove(os.path.join(root, "noise", "bcrit.json"))
    result = run_cli(f"--root={root}", "--target_fraction=0")
    assert result.returncode == 2 and "--target_fraction must be in (0, 1]" in result.stderr
    assert not os.path.exists(os.path.join(root, "noise", "bcrit.json"))


def test_root_without_noise_sums_is_a_clear_error(tmp_path):
    write_root(str(tmp_path), gns=False)
    result = run_cli(f"--root={tmp_path}")
    assert result.returncode == 2
    assert "no runs with gns_s_small" in result.stderr and "microbatches >= 2" in result.stderr
    assert not os.path.exists(tmp_path / "noise")


def test_real_tiny_training_run(tmp_path):
    workdir = str(tmp_path / "smoke")
    result = run_cli("--gin_file=gin/smoke.gin", "--gin_param=TrainConfig.num_steps=16",
                     "--gin_param=TrainConfig.eval_every=8", "--bootstrap=50", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(workdir, "noise_scale.json")) as f:
        ns = json.load(f)
    assert ns["n_ctx"] == 64 and ns["b_small"] == [4] and ns["b_big"] == [16] and ns["skip_steps"] == 5
    assert math.isfinite(ns["overall"]["b_simple"]) and ns["overall"]["steps"] == 10  # steps 7..16
    assert ns["ema"] and all(math.isfinite(r["b_simple"]) for r in ns["ema"])
    assert os.path.getsize(os.path.join(workdir, "noise_scale.png")) > 1000
    assert "[noise_scale] smoke:" in result.stdout


def test_second_pass_keeps_analyses_whose_inputs_and_options_are_unchanged(tmp_path, capsys):
    """`make reproduce` analyses the root twice; the second pass re-analyses only runs that changed since."""
    from scaling.noise import sweep_analysis as noise_scale

    root = str(tmp_path)
    write_root(root)
    opts = noise_scale.Options(bootstrap=20, targets=8)
    first = noise_scale.analyse_root(root, opts)
    path = {name: os.path.join(root, "runs", name, "noise_scale.json") for name in ("ladder_small",
                                                                                   "scan_n1000000_b16384")}
    old = os.path.getmtime(path["ladder_small"]) - 100  # analysis files dated well before the next pass,
    for name in os.listdir(os.path.join(root, "runs")):  # their inputs before them
        for f in ("metrics.jsonl", "summary.json", "noise_scale.json"):
            p = os.path.join(root, "runs", name, f)
            if os.path.exists(p):
                t = old if f == "noise_scale.json" else old - 100
                os.utime(p, (t, t))
    metrics = os.path.join(root, "runs", "scan_n1000000_b16384", "metrics.jsonl")
    os.utime(metrics, (old + 50, old + 50))  # this run's metrics changed after its analysis
    capsys.readouterr()
    second = noise_scale.analyse_root(root, opts)
    out = capsys.readouterr().out
    assert "ladder_small: unchanged since its analysis" in out
    assert "scan_n1000000_b16384: unchanged" not in out
    assert os.path.getmtime(path["ladder_small"]) == old  # kept, not rewritten
    assert os.path.getmtime(path["scan_n1000000_b16384"]) > old
    assert second["runs"] == first["runs"] and second["bcrit"]["alpha_B"] == first["bcrit"]["alpha_B"]
    # Other options, or reanalyse=True: every run is analysed again.
    noise_scale.analyse_root(root, noise_scale.Options(bootstrap=20, targets=8, bin_frac=0.02))
    assert "unchanged since" not in capsys.readouterr().out
    noise_scale.analyse_root(root, noise_scale.Options(bootstrap=20, targets=8, bin_frac=0.02), reanalyse=True)
    assert "unchanged since" not in capsys.readouterr().out
    with open(path["ladder_small"]) as f:
        assert json.load(f)["options"]["bin_frac"] == 0.02


def test_a_pass_without_run_figures_leaves_them_to_the_next_pass(tmp_path, capsys):
    """`make reproduce` analyses without the per-run figures; `noise_scale --root` later draws the missing ones from
    the kept analyses (no run analysed again)."""
    from scaling.noise import sweep_analysis as noise_scale

    root = str(tmp_path)
    write_root(root)
    first = noise_scale.analyse_root(root, noise_scale.Options(bootstrap=20, targets=8, plot_runs=False))
    figures = {name: os.path.join(root, "runs", name, "noise_scale.png") for name in first["runs"]}
    assert first["runs"] and not any(os.path.exists(f) for f in figures.values())
    assert os.path.exists(os.path.join(root, "noise", "bcrit.png"))  # the root's figure is still drawn
    capsys.readouterr()
    second = noise_scale.analyse_root(root, noise_scale.Options(bootstrap=20, targets=8))
    out = capsys.readouterr().out
    assert all(f"{name}: unchanged since its analysis (noise_scale.json kept; noise_scale.png drawn)" in out
               for name in first["runs"])
    assert all(os.path.getsize(f) > 1000 for f in figures.values())
    assert second["bcrit"]["alpha_B"] == first["bcrit"]["alpha_B"]
    noise_scale.analyse_root(root, noise_scale.Options(bootstrap=20, targets=8))  # drawn: not drawn again
    assert "png drawn" not in capsys.readouterr().out
