"""Resume safety found by trying the project as a new user (issue 21, items 1-3, 8, 12, 14):

- a changed corpus (a shard added to the train glob: new content, new vocabulary) is refused like a
  changed config, both by the workdir fingerprint and by the checkpoint's own record;
- "no checkpoint restores" keeps being refused on every rerun until the user chooses;
- an unwritable workdir (or a gs:// URL) is refused before any setup, naming the path (CLI exit 2);
- TensorBoard is flushed when a checkpoint is saved; evaluation with loss_chunk_length is chunked.
"""
import glob
import json
import os
import struct
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import reliability_child as child  # noqa: E402

from data.pipeline import DataConfig  # noqa: E402
from scaling.train import checkpointing, trainer, workdir as workdir_lib  # noqa: E402

ONE = None


def one():
    return jax.devices()[:1]


def local_config(tmp_path, **kw):
    data = DataConfig(task="local_files", vocabulary="byte", train_files=(str(tmp_path / "corpus" / "train-*.txt"),),
                      validation_files=(str(tmp_path / "corpus" / "valid.txt"),), extra_eval_tasks=(),
                      eval_tokens=256, cache_dir=str(tmp_path / "cache"), num_workers=1)
    base = dict(data=data, num_steps=2, checkpoint_every=1, eval_every=2)
    base.update(kw)
    return child.make_config(**base)


def write_corpus(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train-0.txt").write_text("the quick brown fox jumps over the lazy dog. " * 60)
    (corpus / "valid.txt").write_text("a held out sentence about foxes and dogs. " * 40)
    return corpus


# --- 1. data identity ---------------------------------------------------------------------------------

def test_a_changed_corpus_is_refused_by_the_fingerprint_and_by_the_checkpoint(tmp_path):
    corpus = write_corpus(tmp_path)
    workdir = str(tmp_path / "run")
    first = trainer.train(local_config(tmp_path), workdir, devices=one())
    assert first["status"] == "finished"
    owner = json.load(open(os.path.join(workdir, checkpointing.FINGERPRINT_FILE)))["config"]
    assert owner["data_identity.corpus_train"].startswith("files:") and owner["data_identity.vocabulary"]
    assert set(owner) >= {"data_identity.corpus_validation"}

    # A shard added to the train glob: same DataConfig, other data.
    (corpus / "train-1.txt").write_text("an entirely different second shard of text. " * 60)
    with pytest.raises(checkpointing.WorkdirConfigError) as error:
        trainer.train(local_config(tmp_path, num_steps=4), workdir, devices=one())
    message = str(error.value)
    assert "data_identity.corpus_train" in message and "--overwrite" in message, message
    assert "corpus files or the vocabulary" in message

    # Without the fingerprint file (adopted workdir) the checkpoint's record still refuses it.
    os.remove(os.path.join(workdir, checkpointing.FINGERPRINT_FILE))
    with pytest.raises(checkpointing.WorkdirConfigError, match="trained on other data") as error:
        trainer.train(local_config(tmp_path, num_steps=4), workdir, devices=one())
    assert "data_identity.corpus_train" in str(error.value)

    # --overwrite starts over on the new corpus.
    again = trainer.train(local_config(tmp_path, num_steps=4), workdir, devices=one(), overwrite=True)
    assert again["status"] == "finished" and again["steps"] == 4


def test_data_identity_keys_and_vocabulary_is_structural():
    data = type("D", (), {"manifest": dict(corpus_hash_train="files:a", corpus_hash_validation="files:b",
                                           vocab_hash="spm:c", task="x")})()
    identity = checkpointing.data_identity(data)
    assert identity == {"data_identity.corpus_train": "files:a", "data_identity.corpus_validation": "files:b",
                        "data_identity.vocabulary": "spm:c"}
    assert checkpointing.data_identity(object()) == {}
    with tempfile.TemporaryDirectory() as workdir:
        fields = {"seed": 0, **identity}
        checkpointing.claim_workdir(workdir, fields)
        checkpointing.check_workdir(workdir, {"seed": 0})      # before setup: identity not known yet
        changed_corpus = dict(fields, **{"data_identity.corpus_train": "files:z"})
        checkpointing.check_workdir(workdir, changed_corpus, resume_changed_config=True)  # accepted when asked
        with pytest.raises(checkpointing.WorkdirConfigError, match="change the shape of the saved state"):
            checkpointing.check_workdir(workdir, dict(fields, **{"data_identity.vocabulary": "spm:z"}),
                                        resume_changed_config=True)


# --- 2. persistent refusal ------------------------------------------------------------------------------

class Crash(Exception):
    pass


def test_no_good_checkpoint_keeps_refusing_until_the_user_chooses(tmp_path):
    data = child.make_data()
    workdir = str(tmp_path / "run")
    config = child.make_config(num_steps=4, checkpoint_every=2, eval_every=4)

    def crash(step):
        if step == 4:
            raise Crash()

    with pytest.raises(Crash):
        trainer.train(config, workdir, data=data, devices=one(), after_checkpoint=crash)
    for step_dir in glob.glob(os.path.join(workdir, "checkpoints", "[0-9]*")):
        for path in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True):
            if os.path.isfile(path) and os.path.getsize(path) > 64:
                open(path, "r+b").truncate(os.path.getsize(path) // 2)
    metrics_before = open(os.path.join(workdir, "metrics.jsonl")).read()
    for attempt in range(3):  # the corrupt steps are moved aside on the first; the refusal persists
        with pytest.raises(checkpointing.NoGoodCheckpointError, match="--from_scratch_if_corrupt") as error:
            trainer.train(config, workdir, data=data, devices=one())
        assert "step 2:" in str(error.value) and "step 4:" in str(error.value), (attempt, str(error.value))
        assert open(os.path.join(workdir, "metrics.jsonl")).read() == metrics_before
    assert os.path.exists(os.path.join(workdir, checkpointing.REFUSAL_FILE))
    result = trainer.train(config, workdir, data=data, devices=one(), from_scratch_if_corrupt=True)
    assert result["status"] == "finished"
    assert not os.path.exists(os.path.join(workdir, checkpointing.REFUSAL_FILE))


def test_overwrite_also_ends_the_refusal(tmp_path):
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / checkpointing.REFUSAL_FILE).write_text(json.dumps({"failures": [[3, "ValueError: x"]]}))
    (workdir / "metrics.jsonl").write_text("")
    ckpt = checkpointing.Checkpointer(str(workdir / "checkpoints"))
    with pytest.raises(checkpointing.NoGoodCheckpointError, match="step 3: ValueError"):
        ckpt.restore_latest_good(None)
    ckpt.close()
    checkpointing.claim_workdir(str(workdir), {"seed": 0}, overwrite=True)
    ckpt = checkpointing.Checkpointer(str(workdir / "checkpoints"))
    assert ckpt.restore_latest_good(None) is None
    ckpt.close()


# --- 3 / 14. unwritable workdir, object-storage URL --------------------------------------------------------

def test_unwritable_workdir_is_refused_before_setup(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(checkpointing.WorkdirNotWritableError, match="is not a directory") as error:
        trainer.train(child.make_config(), str(blocker / "run"), data=child.make_data(), devices=one())
    assert str(blocker) in str(error.value)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(workdir_lib.tempfile, "mkstemp", denied)
    monkeypatch.setattr(trainer, "setup", lambda *a, **k: pytest.fail("setup ran before the writability check"))
    existing = tmp_path / "ro"
    existing.mkdir()
    with pytest.raises(checkpointing.WorkdirNotWritableError, match="Permission denied") as error:
        trainer.train(child.make_config(), str(existing), data=None, devices=one())
    assert f"workdir {existing}" in str(error.value)
    with pytest.raises(checkpointing.WorkdirNotWritableError, match="would be created") as error:
        trainer.train(child.make_config(), str(existing / "new" / "run"), data=None, devices=one())
    assert not (existing / "new").exists()


def test_object_storage_url_is_refused_naming_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for url in ("gs://bucket/runs/r1", "s3://bucket/r"):
        with pytest.raises(checkpointing.WorkdirNotWritableError, match="object storage") as error:
            trainer.train(child.make_config(), url, data=child.make_data(), devices=one())
        assert url in str(error.value)
    assert os.listdir(tmp_path) == []  # no local "gs:" directory was made
    assert checkpointing.local_workdir("runs/x") == str(tmp_path / "runs" / "x")


def test_cli_unwritable_workdir_exit_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for workdir in (str(blocker / "run"), "gs://bucket/run"):
        result = subprocess.run([sys.executable, "-m", "experiments.train", "--gin_file=gin/smoke.gin",
                                 f"--workdir={workdir}"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "train: error:" in result.stderr and workdir.split("/run")[0] in result.stderr
        assert "Traceback" not in result.stderr, result.stderr[-2000:]


# --- 8. TensorBoard flushed with each checkpoint --------------------------------------------------------

def tfrecord_count(path):
    count = 0
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                return count
            (length,) = struct.unpack("<Q", header[:8])
            if len(f.read(length + 4)) < length + 4:
                return count
            count += 1


def test_tensorboard_is_flushed_when_a_checkpoint_is_saved(tmp_path):
    workdir = str(tmp_path / "run")
    seen = {}

    def after_checkpoint(step):
        files = glob.glob(os.path.join(workdir, "tensorboard", "events.*"))
        seen[step] = sum(tfrecord_count(f) for f in files)

    trainer.train(child.make_config(num_steps=4, checkpoint_every=2, eval_every=4), workdir,
                  data=child.make_data(), devices=one(), after_checkpoint=after_checkpoint)
    # Header record + at least the scalars of the 2 logged steps before checkpoint 2.
    assert seen[2] > 1 + 2, seen
    assert seen[4] > seen[2], seen


# --- 12. chunked evaluation ------------------------------------------------------------------------------

def test_eval_with_loss_chunk_length_is_equal_and_never_forms_the_whole_logits():
    from models import build_model
    from models.transformer import TransformerConfig
    from scaling.train import eval as eval_lib
    config = TransformerConfig(vocab_size=97, n_ctx=32, n_layer=1, d_model=16, d_ff=32, d_attn=16, n_heads=2)
    model = build_model(config)
    windows = np.random.default_rng(0).integers(0, 97, (4, 33)).astype(np.int32)
    params = model.init(jax.random.key(0), windows[:, :-1])["params"]
    weights = np.asarray([1, 1, 1, 0], np.float32)

    def apply_fn(p, inputs, **kw):
        return model.apply({"params": p}, inputs, **kw)

    whole = jax.jit(eval_lib.make_eval_step(apply_fn))
    chunked = jax.jit(eval_lib.make_eval_step(apply_fn, 8))
    (a, na), (b, nb) = whole(params, windows, weights), chunked(params, windows, weights)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-5)
    assert float(na) == float(nb) == 3.0
    text = chunked.lower(params, windows, weights).as_text()
    assert "4x32x97" not in text and "4x8x97" in text
    assert "4x32x97" in whole.lower(params, windows, weights).as_text()


# --- 8. progress on a terminal that reports 0x0 -------------------------------------------------------

def test_progress_lines_show_on_a_zero_size_terminal(monkeypatch, capsys):
    from scaling.train import metrics as metrics_lib
    monkeypatch.setattr(metrics_lib.os, "get_terminal_size", lambda fd=None: os.terminal_size((0, 0)))
    monkeypatch.setattr(metrics_lib.sys.stderr, "isatty", lambda: True)
    progress = metrics_lib.Progress(10, 0, enabled=None)
    assert progress.bar is None  # tqdm would draw nothing visible: plain lines instead
    progress.log_line(5, {"loss": 1.5, "lr": 1e-3, "tokens_per_sec": 100.0, "mfu": 0.1})
    assert "step 5/10  loss 1.5000" in capsys.readouterr().out
    monkeypatch.setattr(metrics_lib.os, "get_terminal_size", lambda fd=None: os.terminal_size((80, 24)))
    progress = metrics_lib.Progress(10, 0, enabled=True)
    assert progress.bar is not None
    progress.close()
