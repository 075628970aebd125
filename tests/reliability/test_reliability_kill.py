"""kill -9 anywhere, SIGTERM, corrupt checkpoints, topology change: no compute is lost, nothing is mixed.

One chain of training processes (reliability_child.py) on one workdir is SIGKILLed at seeded random
points -- random steps plus a random delay (mid-step, mid-log, mid-async-save), right after a resume,
and inside a checkpoint write (the temporary directory exists, the commit has not happened) -- and
SIGTERMed once (it must save and exit 0 within a bounded time). The resumed run's loss curve (every
step) and final parameters (sha256) must equal an uninterrupted run's bit for bit (CPU).
"""
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import reliability_child as child  # noqa: E402

from scaling.train import checkpointing, partitioning, trainer  # noqa: E402
from scaling.train.config import MeshConfig  # noqa: E402
from scaling.train.metrics import read_jsonl  # noqa: E402

SIGTERM_EXIT_LIMIT_S = 30.0  # generous for a loaded 2-core CI box; the save itself takes well under 1 s


def losses(workdir):
    return {r["step"]: r["loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))}


def evals(workdir):
    return [(r["step"], r["eval_loss"]) for r in read_jsonl(os.path.join(workdir, "eval.jsonl"))]


def summary(workdir):
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)


def params_hash(workdir, data):
    """sha256 of the final checkpoint's parameters (the run's bit-level identity; not in summary.json)."""
    step, digest = trainer.checkpoint_params_sha256(child.make_config(), workdir, data=data, devices=jax.devices()[:1])
    assert step == child.STEPS and digest
    return digest


def steps_on_disk(workdir):
    return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


@pytest.fixture(scope="module")
def data():
    return child.make_data()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """The uninterrupted run (in-process, same config, one device), shared by the tests here."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    result = trainer.train(child.make_config(), workdir, data=data, devices=jax.devices()[:1])
    assert result["status"] == "finished" and "params_sha256" not in result  # a test aid, off the training path
    return workdir


class Child:
    """One training process; `until(trigger)` reads its stdout until a line matches, then signals it."""

    def __init__(self, workdir, env_extra=None):
        # The processes of a chain share a persistent compilation cache: only the first compiles.
        cache = os.path.join(os.path.dirname(workdir), "jax_cache")
        env = dict(os.environ, PYTHONPATH=ROOT, JAX_COMPILATION_CACHE_DIR=cache,
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **(env_extra or {}))
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "reliability_child.py"), workdir],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.watchdog = threading.Timer(240, self.proc.kill)  # never hang the suite
        self.watchdog.start()
        self.lines = []

    def until(self, trigger, sig, delay=0.0):
        for line in self.proc.stdout:
            self.lines.append(line)
            if trigger(line):
                time.sleep(delay)
                sent = time.monotonic()
                self.proc.send_signal(sig)
                self.lines.extend(self.proc.stdout.read().splitlines(keepends=True))
                self.proc.wait()
                self.watchdog.cancel()
                return line, time.monotonic() - sent
        self.proc.wait()
        self.watchdog.cancel()
        raise AssertionError(f"the trigger never fired; exit {self.proc.returncode}:\n{''.join(self.lines)[-3000:]}")

    def finish(self):
        out, _ = self.proc.communicate()
        self.watchdog.cancel()
        self.lines.append(out)
        return self.proc.returncode

    @property
    def output(self):
        return "".join(self.lines)[-3000:]


def at_step(k):
    return lambda line: line.startswith(f"step {k}/")


def test_kill9_at_random_points_and_sigterm_then_resume_is_bit_identical(reference, data, tmp_path):
    rng = random.Random(20261123)
    workdir = str(tmp_path / "killed")
    kill_steps = sorted(rng.sample(range(2, child.STEPS - 3), 4))       # 4 random steps in [2, 20]
    hold = 3 * (kill_steps[0] // 3 + 2)                                 # a checkpoint after kill 1
    kill_steps = [k for k in kill_steps if k > hold] or [hold + 2]
    while len(kill_steps) < 3:                                          # keep >= 3 step kills after the hold
        kill_steps.append(min(kill_steps[-1] + 2, child.STEPS - 2))
    term_step = min(kill_steps[-1] + 1 + rng.randrange(2), child.STEPS - 1)
    points = []

    # 1. A random step, plus a random delay (inside the next step, its log write or its async save).
    first = 3 * rng.randrange(1, hold // 3) - 1 if hold > 3 else 2
    c = Child(workdir)
    line, _ = c.until(at_step(first), signal.SIGKILL, delay=rng.uniform(0.0, 0.3))
    assert c.proc.returncode == -signal.SIGKILL, c.output
    points.append(f"step {first}+delay")

    # 2. Inside the write of checkpoint `hold`: its temporary directory exists, the commit never happens.
    c = Child(workdir, {"RELIABILITY_HOLD_CHECKPOINT_STEP": str(hold)})
    line, _ = c.until(lambda l: l.startswith("HOLDING_CHECKPOINT_WRITE"), signal.SIGKILL)
    tmp_dir = line.split(maxsplit=1)[1].strip()
    assert os.path.isdir(tmp_dir) and ".orbax-checkpoint-tmp" in tmp_dir, line
    assert hold not in steps_on_disk(workdir), "the held checkpoint must not look complete"
    points.append(f"writing checkpoint {hold}")

    # 3. Right after the resume (during compilation / the first steps of the session).
    c = Child(workdir)
    c.until(lambda l: l.startswith("resuming"), signal.SIGKILL, delay=rng.uniform(0.0, 1.0))
    assert c.proc.returncode == -signal.SIGKILL, c.output
    points.append("after resume")

    # 4-5. Two more random steps with random delays.
    for k in kill_steps[-2:]:
        c = Child(workdir)
        c.until(at_step(k), signal.SIGKILL, delay=rng.uniform(0.0, 0.3))
        assert c.proc.returncode == -signal.SIGKILL, c.output
        points.append(f"step {k}+delay")

    # 6. SIGTERM (preemption): saves and exits 0 within a bounded time.
    c = Child(workdir)
    _, seconds_to_exit = c.until(at_step(term_step), signal.SIGTERM)
    assert c.proc.returncode == 0, c.output
    assert seconds_to_exit < SIGTERM_EXIT_LIMIT_S, seconds_to_exit
    assert "preempted (SIGTERM)" in c.output and "STATUS preempted" in c.output, c.output
    saved = steps_on_disk(workdir)[-1]
    assert saved >= term_step and f"saved checkpoint at step {saved}" in c.output
    assert not os.path.exists(os.path.join(workdir, "summary.json"))
    points.append(f"SIGTERM at step {term_step}")

    # 7. Resume to the end.
    c = Child(workdir)
    assert c.finish() == 0, c.output
    assert f"resuming {workdir} from step {saved}" in c.output
    assert len(points) >= 6, points  # 5 SIGKILLs + 1 SIGTERM

    resumed, uninterrupted = losses(workdir), losses(reference)
    assert sorted(resumed) == list(range(1, child.STEPS + 1))
    assert [resumed[s] for s in sorted(resumed)] == [uninterrupted[s] for s in sorted(uninterrupted)]  # bit-identical
    assert evals(workdir) == evals(reference)
    assert params_hash(workdir, data) == params_hash(reference, data)


# --- corrupt checkpoints -------------------------------------------------------------------------

class Crash(Exception):
    pass


def crash_at(step):
    def hook(s):
        if s == step:
            raise Crash()
    return hook


def largest_file(step_dir):
    files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True) if os.path.isfile(f)]
    return max(files, key=os.path.getsize)


def truncate(step_dir):
    path = largest_file(step_dir)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def garble(step_dir):
    path = largest_file(step_dir)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        chunk = bytearray(f.read(64))
        f.seek(size // 2)
        f.write(bytes(b ^ 0x5A for b in chunk))


@pytest.fixture(scope="module")
def crashed_at_9(tmp_path_factory, data):
    """A run that crashed right after checkpoint 9 (checkpoints 3, 6, 9); tests damage copies of it."""
    workdir = str(tmp_path_factory.mktemp("crashed") / "run")
    with pytest.raises(Crash):
        trainer.train(child.make_config(keep_checkpoints=3), workdir, data=data, devices=jax.devices()[:1],
                      after_checkpoint=crash_at(9))
    assert steps_on_disk(workdir) == [3, 6, 9]
    return workdir


def test_corrupt_checkpoints_fall_back_to_the_previous_good_one(reference, crashed_at_9, data, tmp_path, capfd):
    """Newest checkpoint truncated, the one before garbled (bytes flipped in its array data): both are
    reported, moved aside (kept) and the run resumes from the third, ending bit-identical."""
    workdir = str(tmp_path / "run")
    shutil.copytree(crashed_at_9, workdir)
    truncate(os.path.join(workdir, "checkpoints", "9"))
    garble(os.path.join(workdir, "checkpoints", "6"))
    capfd.readouterr()
    result = trainer.train(child.make_config(keep_checkpoints=3), workdir, data=data, devices=jax.devices()[:1])
    out, err = capfd.readouterr()
    for step in (9, 6):
        assert f"checkpoint step {step} in" in err and "cannot be restored" in err, err
        moved = glob.glob(os.path.join(workdir, checkpointing.CORRUPT_DIR, f"{step}-*"))
        assert len(moved) == 1 and os.listdir(moved[0]), "a corrupt checkpoint is kept, not deleted"
    assert "falling back to the previous checkpoint" in err and f"resuming {workdir} from step 3" in out
    assert result["status"] == "finished"
    resumed = losses(workdir)
    assert [resumed[s] for s in range(1, child.STEPS + 1)] == [losses(reference)[s] for s in range(1, child.STEPS + 1)]
    assert params_hash(workdir, data) == params_hash(reference, data)


def test_no_good_checkpoint_refuses_then_starts_over_only_when_told(reference, crashed_at_9, data, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(crashed_at_9, workdir)
    one = jax.devices()[:1]
    for step in steps_on_disk(workdir):
        truncate(os.path.join(workdir, "checkpoints", str(step)))
    metrics_before = open(os.path.join(workdir, "metrics.jsonl")).read()
    with pytest.raises(checkpointing.NoGoodCheckpointError, match="--from_scratch_if_corrupt") as error:
        trainer.train(child.make_config(keep_checkpoints=3), workdir, data=data, devices=one)
    assert all(f"step {s}:" in str(error.value) for s in (3, 6, 9)), str(error.value)
    assert steps_on_disk(workdir) == [] and len(os.listdir(os.path.join(workdir, checkpointing.CORRUPT_DIR))) == 3
    assert open(os.path.join(workdir, "metrics.jsonl")).read() == metrics_before  # nothing started
    result = trainer.train(child.make_config(keep_checkpoints=3), workdir, data=data, devices=one,
                           from_scratch_if_corrupt=True)
    assert result["status"] == "finished" and params_hash(workdir, data) == params_hash(reference, data)
    kept = glob.glob(os.path.join(workdir, "metrics.jsonl.before-*"))
    assert len(kept) == 1 and open(kept[0]).read() == metrics_before  # the old log is set aside, not lost


# --- topology ------------------------------------------------------------------------------------

def test_checkpoint_from_8_devices_restores_bit_identically_on_1_and_another_mesh(data, tmp_path):
    """The state saved on an fsdp=8 mesh restores on 1 device and on data=2,fsdp=2,tensor=2 with the
    identical bits (checksum); training on from it is covered by tests/train/test_train_resume.py."""
    workdir = str(tmp_path / "mesh")
    config = child.make_config(mesh=MeshConfig(data=1, fsdp=8), num_steps=6)
    trainer.train(config, workdir, data=data)
    checksums = {}
    for name, mesh, devices in (("8 fsdp", MeshConfig(data=1, fsdp=8), None),
                                ("1 device", MeshConfig(data=1), jax.devices()[:1]),
                                ("2x2x2", MeshConfig(data=2, fsdp=2, tensor=2), None)):
        run = trainer.setup(child.make_config(mesh=mesh, num_steps=6), data=data, devices=devices)
        target = partitioning.abstract_with_shardings(run.abstract_state, run.state_shardings)
        ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
        step, state, record = ckpt.restore_latest_good(target)
        ckpt.close()
        assert step == 6 and record["data_step"] == 6
        assert all(len(leaf.sharding.device_set) == (1 if devices else 8) for leaf in jax.tree.leaves(state))
        checksums[name] = (checkpointing.inspect_state(state)[1], checkpointing.params_sha256(state.params))
        assert checksums[name][0] == record["state_checksum"]
    assert len(set(checksums.values())) == 1, checksums
