"""`experiments.reproduce` end to end on a tiny sweep: sweep -> noise -> prediction -> holdout -> report.

Three tiny ladder Transformers, a data-budget run and one larger held-out one (6 steps each, one CPU device
per run). Asserts the main job's promises: the prediction is written before the held-out run starts and is
never rewritten; the groups the prediction does not need (data) train after it, with the held-out run;
the report and its figures exist, and a rerun retrains nothing.
"""
import csv
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SWEEP = """
Sweep.name = 'tiny_reproduce'
Sweep.base_gin_files = ['gin/data/embedded.gin', 'gin/optim/adam.gin', 'gin/optim/cosine.gin']
Sweep.base_gin_params = {
    'TransformerConfig.n_ctx': 32, 'TransformerConfig.n_heads': 2,
    'TrainConfig.batch_size': 8, 'TrainConfig.microbatches': 2, 'TrainConfig.num_steps': 6,
    'TrainConfig.warmup_steps': 1, 'TrainConfig.log_every': 1, 'TrainConfig.eval_every': 3,
    'TrainConfig.checkpoint_every': 6, 'TrainConfig.keep_checkpoints': 1,
    'TrainConfig.async_checkpointing': False, 'DataConfig.eval_tokens': 1024,
}
Sweep.blocks = [
    {'group': 'ladder', 'models': ['cpu_12k'],
     'grid': {'TransformerConfig.d_model,TransformerConfig.d_attn,TransformerConfig.d_ff':
              [(16, 16, 64), (24, 24, 96), (32, 32, 128)]}},
    {'group': 'data', 'models': ['cpu_12k'], 'grid': {'DataConfig.data_budget_tokens': [4096]}},
    {'group': 'holdout', 'models': ['cpu_12k'], 'tag': 'big',
     'params': {'TransformerConfig.d_model': 48, 'TransformerConfig.d_attn': 48, 'TransformerConfig.d_ff': 192}},
]
"""


def reproduce(sweep_file, root):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # one CPU device per run
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, "-m", "experiments.reproduce", f"--sweep={sweep_file}",
                           f"--root={root}", "--workers=1", "--bootstrap=20"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_reproduce_predicts_before_training_the_holdout_and_reruns_nothing(tmp_path):
    sweep_file = tmp_path / "tiny.gin"
    sweep_file.write_text(SWEEP)
    root = tmp_path / "root"
    proc = reproduce(sweep_file, root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    with open(root / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["group"] for r in rows) == ["data", "holdout", "ladder", "ladder", "ladder"]
    assert all(r["status"] == "finished" for r in rows)
    holdout = next(r for r in rows if r["group"] == "holdout")

    prediction = json.loads((root / "prediction.json").read_text())
    assert prediction["target_run"] == holdout["run"]
    assert len(prediction["fit_runs"]) == 3 and prediction["law"] == "kaplan_n"
    assert prediction["n_params_nonembedding"] == float(holdout["n_params_nonembedding"])
    # (Six steps make a flat, poorly determined L(N): the interval may be unbounded, i.e. null.)
    assert prediction["loss_pred_lo"] is None or prediction["loss_pred_lo"] <= prediction["loss_pred"]
    assert prediction["loss_pred_hi"] is None or prediction["loss_pred"] <= prediction["loss_pred_hi"]
    assert 0 < prediction["loss_pred"] < 20
    # Written before the held-out run produced anything.
    holdout_dir = root / holdout["workdir"]
    first_output = min(os.path.getmtime(holdout_dir / f) for f in ("config.gin", "metrics.jsonl"))
    assert os.path.getmtime(root / "prediction.json") < first_output
    # The data run is not needed by the prediction: it trains in the second part, with the held-out run.
    data_dir = root / next(r for r in rows if r["group"] == "data")["workdir"]
    assert os.path.getmtime(root / "prediction.json") < os.path.getmtime(data_dir / "config.gin")
    assert "4/5 sweep: groups data, holdout" in proc.stdout

    report = (root / "report.md").read_text()
    assert holdout["run"] in report
    figures = os.listdir(root / "figures")
    assert figures and all(os.path.getsize(root / "figures" / f) > 0 for f in figures)
    # L(N) of the final losses; the converged L(N) (fits/kaplan_n.json) needs >= 3 evals per curve after 25 %
    # of the run, which six steps with eval_every=3 do not give (its section says so).
    assert (root / "fits" / "kaplan_n_final.json").exists()

    # Rerun: nothing retrained, the prediction kept byte for byte.
    summaries = {r["run"]: os.path.getmtime(root / r["workdir"] / "summary.json") for r in rows}
    before = (root / "prediction.json").read_bytes()
    again = reproduce(sweep_file, root)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert {r: os.path.getmtime(root / next(x for x in rows if x["run"] == r)["workdir"] / "summary.json")
            for r in summaries} == summaries
    assert (root / "prediction.json").read_bytes() == before
    assert "keeping the prediction" in again.stdout
