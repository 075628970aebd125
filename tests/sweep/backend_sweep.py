"""The sweep the cluster-backend tests share (tests/sweep/test_sweep_ray.py, test_sweep_slurm.py), its
local-backend reference, and the comparisons.

Four tiny runs: two 6-step ladder rungs and two 300-step runs (data: 'long'; holdout: another seed) that
checkpoint every 20 steps, long enough to be killed or preempted after their first checkpoint.
"""
import csv
import json
import os
import subprocess
import sys
import time

from tests.sweep.test_sweep_run import REPO, child_env

# The runs that are killed or preempted and resumed are d_model 24: at d_model 16 (head size 8) this trainer's
# resume from a checkpoint was seen to give 1-ulp different float32 losses from step 33 on at these settings
# (the same with plain `python -m experiments.train`, no backend involved), while d_model 24 resumes bit-exactly.
LONG_SHAPE = "'TransformerConfig.d_model': 24, 'TransformerConfig.d_attn': 24"
SWEEP = """
Sweep.name = 'backends'
Sweep.base_gin_files = ['gin/data/embedded.gin', 'gin/optim/adam.gin', 'gin/optim/cosine.gin']
Sweep.base_gin_params = {
    'TransformerConfig.n_ctx': 32, 'TransformerConfig.d_ff': 64, 'TransformerConfig.n_heads': 2,
    'TransformerConfig.d_model': 16, 'TransformerConfig.d_attn': 16,
    'TrainConfig.batch_size': 8, 'TrainConfig.microbatches': 2, 'TrainConfig.num_steps': 6,
    'TrainConfig.warmup_steps': 1, 'TrainConfig.log_every': 1, 'TrainConfig.eval_every': 50,
    'TrainConfig.checkpoint_every': 20, 'TrainConfig.keep_checkpoints': 1,
    'TrainConfig.async_checkpointing': False, 'DataConfig.eval_tokens': 1024,
}
Sweep.blocks = [
    {'group': 'ladder', 'models': ['cpu_12k'],
     'grid': {'TransformerConfig.d_model,TransformerConfig.d_attn': [(16, 16), (24, 24)]}},
    {'group': 'data', 'models': ['cpu_12k'], 'tag': 'long', 'params': {'TrainConfig.num_steps': 300, """ + LONG_SHAPE + """}},
    {'group': 'holdout', 'models': ['cpu_12k'],
     'params': {'TrainConfig.num_steps': 300, 'TrainConfig.seed': 1, """ + LONG_SHAPE + """}},
]
"""
LADDER = ["cpu_12k-Dall-B8-d16-d_attn16", "cpu_12k-Dall-B8-d24-d_attn24"]
LONG, HOLDOUT = "cpu_12k-Dall-B8-long", "cpu_12k-Dall-B8"
ALL = [*LADDER, LONG, HOLDOUT]
TIMING_COLUMNS = ("tokens_per_sec", "mfu", "wall_time_sec")   # the only columns that differ between two trainings


def write_sweep(directory, text=SWEEP, name="backends.gin"):
    path = os.path.join(str(directory), name)
    with open(path, "w") as f:
        f.write(text)
    return path


def comparable_rows(root, names=None):
    """runs.csv rows without the timing columns (keyed by run), for the runs in ``names`` (default all)."""
    with open(os.path.join(root, "runs.csv")) as f:
        rows = list(csv.DictReader(f))
    return {r["run"]: {k: v for k, v in r.items() if k not in TIMING_COLUMNS}
            for r in rows if names is None or r["run"] in names}


def losses(root, name):
    with open(os.path.join(root, "runs", name, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


def launcher_state(root, name):
    try:
        with open(os.path.join(root, "runs", name, "launcher.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def launcher_log(root, name):
    with open(os.path.join(root, "runs", name, "launcher.log")) as f:
        return f.read()


def has_checkpoint(root, name):
    checkpoints = os.path.join(root, "runs", name, "checkpoints")
    return os.path.isdir(checkpoints) and any(d.isdigit() for d in os.listdir(checkpoints))


def wait_for(condition, proc, what, timeout=900, poll=0.05):
    """Polls ``condition()`` until true; fails if ``proc`` (the launcher) exits first or time runs out."""
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the launcher exited before {what}: {proc.communicate()[0][-3000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)


def launch(*args, env=None):
    """Starts `python -m experiments.sweep ARGS` (stdout and stderr together, text)."""
    return subprocess.Popen([sys.executable, "-m", "experiments.sweep", *args], cwd=REPO, env=env or child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def local_reference(sweep_file, root):
    """The local backend's sweep root for ``sweep_file`` with the subprocess executor (the per-run command the
    cluster backends run), one run at a time: unpinned like a Ray task or a SLURM job, since the gradient-noise
    diagnostics (runs.csv's b_simple) differ in their 7th digit between a run pinned to one core (--workers=2
    here) and one using all of them; the losses do not."""
    if not os.path.exists(os.path.join(root, "runs.csv")) or any(
            r["status"] != "finished" for r in comparable_rows(root).values()):
        done = subprocess.run([sys.executable, "-m", "experiments.sweep", f"--gin_file={sweep_file}", f"--root={root}",
                               "--workers=1", "--executor=subprocess"], cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, done.stderr[-3000:]
    return root
