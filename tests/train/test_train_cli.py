"""`python -m experiments.train`: the smoke contract end to end, resume/finished reporting, clear errors."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cli(*args, devices=1, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_smoke_gin_writes_every_file_and_field(tmp_path):
    workdir = str(tmp_path / "smoke")
    result = run_cli("--gin_file=gin/smoke.gin", f"--workdir={workdir}")  # one CPU device, as on a laptop
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("metrics.jsonl", "eval.jsonl", "config.gin", "summary.json", "checkpoints", "tensorboard"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tensorboard")))
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["steps"] >= 40
    for key in ("n_params_nonembedding", "n_params_total", "flops_per_token", "tokens", "steps", "batch_tokens",
                "compute_pf_days", "final_eval_loss", "best_eval_loss", "tokens_per_sec", "mfu"):
        assert summary[key] is not None, key
    metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    for key in ("step", "tokens", "loss", "lr", "grad_norm", "tokens_per_sec", "mfu",
                "gns_s_small", "gns_s_big", "gns_b_small", "gns_b_big"):
        assert key in metrics[-1], key
    evals = [json.loads(line) for line in open(os.path.join(workdir, "eval.jsonl"))]
    assert [e["step"] for e in evals] == [10, 20, 30, 40, summary["steps"]]
    assert len(evals[-1]["loss_per_position"]) == summary["n_ctx"]
    assert "eval_loss_wiki_mini" in evals[-1]
    assert "TransformerConfig.d_model = 32" in open(os.path.join(workdir, "config.gin")).read()
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())[-1] == summary["steps"]

    again = run_cli("--gin_file=gin/smoke.gin", f"--workdir={workdir}")
    assert again.returncode == 0 and "already finished" in again.stdout


def test_unknown_gin_binding_names_it_and_its_file(tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text("include 'gin/smoke.gin'\nTrainConfig.batch_sise = 8\n")
    workdir = tmp_path / "w"
    result = run_cli(f"--gin_file={bad}", f"--workdir={workdir}")
    assert result.returncode == 2
    assert "batch_sise" in result.stderr and str(bad) in result.stderr
    assert not workdir.exists()
    result = run_cli("--gin_file=gin/smoke.gin", "--gin_param=TrainConfig.no_such_knob=1", f"--workdir={workdir}")
    assert result.returncode == 2 and "no_such_knob" in result.stderr
    assert not workdir.exists()


def test_batch_not_divisible_by_data_parallel_size(tmp_path):
    workdir = tmp_path / "w"
    result = run_cli("--gin_file=gin/smoke.gin", "--gin_param=TrainConfig.batch_size=12",
                     "--gin_param=TrainConfig.microbatches=1", "--gin_param=TrainConfig.noise_scale=False", "--gin_param=MeshConfig.data=8", f"--workdir={workdir}",
                     devices=8)
    assert result.returncode == 2
    assert "batch_size=12" in result.stderr and "data-parallel size 8" in result.stderr
    assert not workdir.exists()


@pytest.mark.parametrize("args,message", [((), "--workdir is required"),
                                          (("--workdir=/tmp/x",), "--gin_file is required")])
def test_missing_flags(args, message):
    result = run_cli(*args)
    assert result.returncode == 2 and message in result.stderr
