"""The bad-input catalogue: each user mistake gives a clear message naming the problem (and the fix),
a non-zero exit, and loses nothing (no workdir created, no output written, earlier outputs intact).

The trainer's entry points are called in-process (fast); the CLI maps the errors they raise
(ValueError/TypeError/FileNotFoundError -> exit 2; a stopped run -> exit 1, experiments/train.py),
which `test_cli_exit_codes` checks end to end for a few cases in a subprocess."""
import json
import os
import shutil
import subprocess
import sys

import jax
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import reliability_child as child  # noqa: E402

from data import cache as cache_lib  # noqa: E402
from data import vocab as vocab_lib  # noqa: E402
from data.pipeline import DataConfig  # noqa: E402
from scaling import configurables  # noqa: E402
from scaling.analysis import api, io as analysis_io  # noqa: E402
from scaling.train import checkpointing, trainer  # noqa: E402
from scaling.train.config import MeshConfig, TrainConfig  # noqa: E402

CLI_USER_ERRORS = (ValueError, TypeError, FileNotFoundError)  # experiments/train.py: exit code 2


def config_from_gin(*params, files=("gin/smoke.gin",)):
    configurables.parse_gin([os.path.join(ROOT, f) if not os.path.isabs(f) else f for f in files], list(params))
    return TrainConfig()


# --- gin and TrainConfig ----------------------------------------------------------------------------

@pytest.mark.parametrize("params,files,needle", [
    (("TrainConfig.batch_sise = 8",), ("gin/smoke.gin",), "batch_sise"),                       # unknown binding
    ((), ("gin/smoke.gin", "gin/no_such_file.gin"), "no_such_file.gin"),                     # unknown gin file
    (("TrainConfig.batch_size = 'big'",), ("gin/smoke.gin",), "batch_size must be a positive int"),  # wrong type
    (("TrainConfig.num_steps = 1.5",), ("gin/smoke.gin",), "num_steps must be a positive int"),      # wrong type
    (("TrainConfig.optimizer = 'sgd'",), ("gin/smoke.gin",), "choose one of"),                 # unknown optimizer
    (("TrainConfig.schedule = 'linear'",), ("gin/smoke.gin",), "TrainConfig.schedule"),        # unknown schedule
    (("TrainConfig.nonfinite = 'ignore'",), ("gin/smoke.gin",), "TrainConfig.nonfinite"),      # unknown policy
    (("TrainConfig.microbatches = 3",), ("gin/smoke.gin",), "not divisible by TrainConfig.microbatches"),
    (("TrainConfig.learning_rate = -1.0",), ("gin/smoke.gin",), "learning_rate must be > 0"),
    (("TransformerConfig.n_layer = ",), ("gin/smoke.gin",), "TransformerConfig.n_layer"),     # malformed binding
    (("TrainConfig.learning_rate = '3e-4'",), ("gin/smoke.gin",), "TrainConfig.learning_rate must be a number"),
    (("TrainConfig.num_steps = True",), ("gin/smoke.gin",), "num_steps must be a positive int, got True"),
    (("TrainConfig.seed = 1.5",), ("gin/smoke.gin",), "TrainConfig.seed must be an int"),
    (("DataConfig.vocab_size = '4096'",), ("gin/smoke.gin",), "DataConfig.vocab_size must be a number"),
])
def test_bad_gin_or_config_value_is_named(params, files, needle):
    import gin
    try:
        with pytest.raises(CLI_USER_ERRORS) as error:
            config_from_gin(*params, files=files)
    finally:
        gin.clear_config()  # a bad binding that parsed must not leak into later tests
    assert needle in str(error.value), str(error.value)


def tiny(**kw):
    return child.make_config(**kw)


@pytest.fixture(scope="module")
def data():
    return child.make_data()


@pytest.mark.parametrize("kw,needle", [
    (dict(mesh=MeshConfig(data=16)), "needs 16 devices but 8 are available"),            # mesh > device count
    (dict(batch_size=12, microbatches=1, noise_scale=False, mesh=MeshConfig(data=8)),
     "data-parallel size 8"),                                                              # batch % mesh
    (dict(model=None), "TrainConfig.model is not set"),                                   # no model file
    (dict(mesh=MeshConfig(data=-1, fsdp=-1)), "at most one of data/fsdp/tensor may be -1"),
])
def test_bad_mesh_or_model_refused_before_anything_is_written(data, tmp_path, kw, needle):
    workdir = tmp_path / "run"
    with pytest.raises(CLI_USER_ERRORS) as error:
        trainer.train(tiny(**kw), str(workdir), data=data)
    assert needle in str(error.value), str(error.value)
    assert not workdir.exists()


# --- data ------------------------------------------------------------------------------------------

def data_config(tmp_path, train_files, validation_files=None, **kw):
    validation = tmp_path / "valid.txt"
    if validation_files is None:
        validation.write_text("held out text " * 200)
        validation_files = (str(validation),)
    return DataConfig(task="local_files", vocabulary="byte", train_files=tuple(train_files),
                      validation_files=tuple(validation_files), extra_eval_tasks=(), eval_tokens=256,
                      cache_dir=str(tmp_path / "cache"), num_workers=1, **kw)


def corpus(tmp_path, name, content, mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


@pytest.mark.parametrize("make_files,kw,needle", [
    (lambda p: [str(p / "missing" / "*.txt")], {}, "missing"),                                   # missing corpus
    (lambda p: [corpus(p, "empty.txt", "")], {}, "empty corpus"),                                 # empty corpus
    (lambda p: [corpus(p, "bad.jsonl", '{"text": "ok"}\n{"text": "broken\n')], {}, "not valid JSON"),  # garbled
    (lambda p: [corpus(p, "latin1.txt", b"caf\xe9 " * 50, mode="wb")], {}, "not valid UTF-8"),    # garbled bytes
    (lambda p: [corpus(p, "small.txt", "a few words " * 100)], dict(data_budget_tokens=10 ** 9),
     "larger than"),                                                                              # D > corpus
])
def test_bad_corpus_is_named_and_nothing_is_written(tmp_path, make_files, kw, needle):
    workdir = tmp_path / "run"
    config = tiny(data=data_config(tmp_path, make_files(tmp_path), **kw))
    with pytest.raises(CLI_USER_ERRORS) as error:
        trainer.train(config, str(workdir), devices=jax.devices()[:1])
    assert needle in str(error.value), str(error.value)
    assert not workdir.exists()


def test_n_ctx_longer_than_the_held_out_split(tmp_path):
    config = tiny(data=data_config(tmp_path, [corpus(tmp_path, "train.txt", "plenty of words " * 400)],
                                   [corpus(tmp_path, "v.txt", "tiny")]))
    with pytest.raises(CLI_USER_ERRORS, match="n_ctx=32 is longer than any possible window"):
        trainer.train(config, str(tmp_path / "run"), devices=jax.devices()[:1])
    assert not (tmp_path / "run").exists()


def test_token_cache_for_another_vocabulary_is_rebuilt_loudly(tmp_path, capfd):
    """A cache entry whose manifest describes other data (e.g. another vocabulary) is never reused."""
    encoder = vocab_lib.make_encoder("byte", None)
    description = dict(task="t", split="train", corpus="fp", max_documents=None, vocabulary="byte-v1")
    entry = cache_lib.get_or_build(str(tmp_path), description, lambda: ["hello world"] * 3, encoder)
    manifest_path = os.path.join(entry.path, "manifest.json")
    manifest = json.load(open(manifest_path))
    manifest["description"]["vocabulary"] = "spm-4096-other"
    json.dump(manifest, open(manifest_path, "w"))
    capfd.readouterr()
    again = cache_lib.get_or_build(str(tmp_path), description, lambda: ["hello world"] * 3, encoder)
    err = capfd.readouterr().err
    assert "rebuilding token cache" in err and "describes different data" in err, err
    assert again.manifest["description"]["vocabulary"] == "byte-v1" and again.n_tokens == entry.n_tokens


# --- workdir ownership -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def owned(tmp_path_factory, data):
    """A short finished run: its workdir belongs to its configuration."""
    workdir = str(tmp_path_factory.mktemp("owned") / "run")
    result = trainer.train(tiny(num_steps=4, checkpoint_every=2, eval_every=4), workdir, data=data,
                           devices=jax.devices()[:1])
    assert result["status"] == "finished"
    return workdir


def snapshot(workdir):
    return {os.path.relpath(os.path.join(d, f), workdir): os.path.getsize(os.path.join(d, f))
            for d, _, files in os.walk(workdir) for f in files}


@pytest.mark.parametrize("kw,needle", [
    (dict(learning_rate=1e-3), "learning_rate: 0.003 -> 0.001"),              # another run's hyperparameters
    (dict(seed=1), "seed: 0 -> 1"),
    (dict(model=child.make_config().model.__class__(vocab_size=64, n_ctx=64, n_layer=2, d_model=32, d_ff=64,
                                                   d_attn=32, n_heads=4)), "model.n_ctx: 32 -> 64"),  # n_ctx
])
def test_workdir_owned_by_a_different_config_is_refused(owned, data, kw, needle):
    before = snapshot(owned)
    with pytest.raises(checkpointing.WorkdirConfigError) as error:
        trainer.train(tiny(num_steps=4, checkpoint_every=2, eval_every=4, **kw), owned, data=data,
                      devices=jax.devices()[:1])
    message = str(error.value)
    assert needle in message and "--overwrite" in message and "refusing to mix two runs" in message
    assert snapshot(owned) == before


def test_changed_model_is_refused_even_with_resume_changed_config(owned, data):
    with pytest.raises(checkpointing.WorkdirConfigError, match="change the shape of the saved state"):
        trainer.train(tiny(num_steps=4, optimizer="adafactor"), owned, data=data, devices=jax.devices()[:1],
                      resume_changed_config=True)


def test_continuing_longer_and_cosmetic_changes_are_allowed(owned, data):
    """num_steps (continue a run longer), logging cadence and the mesh do not change the run's identity."""
    fields = checkpointing.fingerprint(
        __import__("scaling.train.config", fromlist=["x"]).fingerprint_fields(tiny(num_steps=4)))
    same = __import__("scaling.train.config", fromlist=["x"]).fingerprint_fields(
        tiny(num_steps=400, log_every=7, eval_every=9, progress_bar=True, mesh=MeshConfig(data=2, fsdp=4)))
    assert checkpointing.fingerprint(same) == fields
    checkpointing.check_workdir(owned, same)  # does not raise


def test_overwrite_moves_the_old_run_aside_and_starts_fresh(owned, data, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(owned, workdir)
    one = jax.devices()[:1]
    first = trainer.checkpoint_params_sha256(tiny(num_steps=4, checkpoint_every=2, eval_every=4), owned, data=data,
                                             devices=one)
    before = snapshot(workdir)
    second = trainer.train(tiny(num_steps=4, checkpoint_every=2, eval_every=4, seed=1), workdir, data=data,
                           devices=one, overwrite=True)
    assert second["status"] == "finished" and trainer.checkpoint_params_sha256(
        tiny(num_steps=4, checkpoint_every=2, eval_every=4, seed=1), workdir, data=data, devices=one) != first
    previous = [n for n in os.listdir(workdir) if n.startswith("previous-")]
    assert len(previous) == 1
    moved = snapshot(os.path.join(workdir, previous[0]))
    assert moved == before  # every old file kept, byte counts equal
    assert json.load(open(os.path.join(workdir, "run_fingerprint.json")))["config"]["seed"] == 1


def test_workdir_that_is_a_file(tmp_path, data):
    path = tmp_path / "file"
    path.write_text("not a directory")
    with pytest.raises(CLI_USER_ERRORS, match="not a directory"):
        trainer.train(tiny(), str(path), data=data)
    assert path.read_text() == "not a directory"


# --- fits ------------------------------------------------------------------------------------------

def write_csv(tmp_path, text):
    path = tmp_path / "points.csv"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("law,text,needle", [
    ("kaplan_n", "N,D\n1e6,1e9\n2e6,1e9\n4e6,1e9\n", "needs column(s) ['loss']"),
    ("kaplan_n", "N,D,loss\n1e6,1e9,4.0\n2e6,1e9,nan\n4e6,1e9,3.6\n8e6,1e9,3.5\n", "must be finite and > 0"),
    ("kaplan_n", "N,D,loss\n1e6,1e9,4.0\n-2e6,1e9,3.8\n4e6,1e9,3.6\n8e6,1e9,3.5\n", "must be finite and > 0"),
    ("kaplan_zz", "N,D,loss\n1e6,1e9,4.0\n", "unknown law 'kaplan_zz'"),
    ("kaplan_d", "N,loss\n1e6,4.0\n2e6,3.8\n4e6,3.6\n", "needs column(s) ['D']"),
])
def test_bad_fit_input_is_an_input_error(tmp_path, law, text, needle):
    """experiments.fit turns analysis InputError into exit code 2 with one line, and writes nothing."""
    path = write_csv(tmp_path, text)
    with pytest.raises(analysis_io.InputError) as error:
        api.check_columns(law, analysis_io.read_table(path))
    assert needle in str(error.value), str(error.value)


# --- the CLI end to end ----------------------------------------------------------------------------

def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_exit_codes(owned, tmp_path):
    """Exit 2 and one 'train: error:' line: mesh larger than the device count; a workdir owned by
    another configuration (nothing in it touched)."""
    result = run_cli("--gin_file=gin/smoke.gin", "--gin_param=MeshConfig.data=16", f"--workdir={tmp_path / 'w'}")
    assert result.returncode == 2 and "needs 16 devices but 8 are available" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "w").exists()
    before = snapshot(owned)
    result = run_cli("--gin_file=gin/smoke.gin", f"--workdir={owned}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "train: error: workdir" in result.stderr and "--overwrite" in result.stderr
    assert snapshot(owned) == before
