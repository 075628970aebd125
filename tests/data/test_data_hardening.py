"""Data inputs as a new user gives them (issue 21, items 4-6): a bare string for a file list, every input
validated before anything is tokenized, the train cache keyed on train content only, stale build
directories collected, messages naming the binding, compression recognised by content, umask-following
vocabulary files, and a warning when one batch is larger than the training set."""
import dataclasses
import glob
import gzip
import json
import os
import time

import numpy as np
import pytest

from data import cache as cache_lib
from data import corpora
from data import pipeline
from data import vocab as vocab_lib
from data.pipeline import DataConfig


def write_jsonl(path, texts, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")


def corpus(tmp_path, n_docs=20):
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away"]
    make = lambda n: [" ".join(rng.choice(words, size=100)) + "." for _ in range(n)]  # noqa: E731
    write_jsonl(tmp_path / "train.jsonl", make(n_docs))
    write_jsonl(tmp_path / "valid.jsonl", make(4))
    write_jsonl(tmp_path / "valid2.jsonl", make(5))
    return DataConfig(task="local_files", vocabulary="byte", train_files=(str(tmp_path / "train.jsonl"),),
                      validation_files=(str(tmp_path / "valid.jsonl"),), extra_eval_tasks=(),
                      eval_tokens=256, cache_dir=str(tmp_path / "cache"), num_workers=1)


def train_entries(tmp_path):
    return sorted(p for p in glob.glob(str(tmp_path / "cache" / "tokens" / "*"))
                  if json.load(open(os.path.join(p, "manifest.json")))["description"]["split"] == "train")


# --- 4. a bare string is one pattern -------------------------------------------------------------------

def test_a_bare_string_is_one_pattern(tmp_path):
    config = corpus(tmp_path)
    as_string = dataclasses.replace(config, train_files=str(tmp_path / "train.jsonl"),
                                    validation_files=str(tmp_path / "valid.jsonl"))
    assert as_string.train_files == (str(tmp_path / "train.jsonl"),)
    assert as_string.validation_files == (str(tmp_path / "valid.jsonl"),)
    data = pipeline.build_data(as_string, n_ctx=32, global_batch_size=4, seed=0)
    assert data.manifest["train_documents"] == 20
    assert DataConfig(extra_eval_tasks="wiki_mini").extra_eval_tasks == ("wiki_mini",)
    with pytest.raises(ValueError, match="DataConfig.train_files must be a string or a tuple"):
        DataConfig(train_files=3)
    with pytest.raises(ValueError, match="DataConfig.vocab_size must be a number"):
        DataConfig(vocab_size="4096")
    from data import tasks
    name = tasks.register_local_files_task("t_bare_string", str(tmp_path / "train.jsonl"))
    assert tasks.CORPORA[name].patterns("train") == (str(tmp_path / "train.jsonl"),)


# --- 5. validate first; train cache keyed on train content; stale temp dirs ------------------------------

def test_bad_validation_files_fail_before_the_train_split_is_tokenized(tmp_path):
    config = dataclasses.replace(corpus(tmp_path), validation_files=(str(tmp_path / "nope-*.jsonl"),))
    with pytest.raises(FileNotFoundError) as error:
        pipeline.build_data(config, n_ctx=32, global_batch_size=4, seed=0)
    message = str(error.value)
    assert "DataConfig.validation_files" in message and "local_files_" not in message, message
    assert "download" not in message  # a user's own files: no "download the corpus" hint
    assert glob.glob(str(tmp_path / "cache" / "tokens" / "*")) == []  # nothing tokenized
    extra = dataclasses.replace(corpus(tmp_path), extra_eval_tasks=(str(tmp_path / "missing.jsonl"),))
    with pytest.raises(FileNotFoundError, match="DataConfig.extra_eval_tasks"):
        pipeline.build_data(extra, n_ctx=32, global_batch_size=4, seed=0)
    assert glob.glob(str(tmp_path / "cache" / "tokens" / "*")) == []


def test_train_cache_is_keyed_on_train_content_alone(tmp_path):
    config = corpus(tmp_path)
    first = pipeline.build_data(config, n_ctx=32, global_batch_size=4, seed=0)
    other_validation = dataclasses.replace(config, validation_files=(str(tmp_path / "valid2.jsonl"),))
    second = pipeline.build_data(other_validation, n_ctx=32, global_batch_size=4, seed=0)
    assert second.manifest["train_cache"] == first.manifest["train_cache"]
    assert second.manifest["validation_cache"] != first.manifest["validation_cache"]
    assert len(train_entries(tmp_path)) == 1


def test_stale_build_dirs_are_collected(tmp_path):
    parent = tmp_path / "tokens"
    parent.mkdir()
    dead_pid = 2 ** 22 + 12345
    while True:
        try:
            os.kill(dead_pid, 0)
            dead_pid += 1
        except ProcessLookupError:
            break
    dead = parent / f"abc.tmp-{cache_lib._HOST}-{dead_pid}-deadbeef"
    legacy = parent / f"abd.tmp-{dead_pid}-deadbeef"
    live = parent / f"abe.tmp-{cache_lib._HOST}-{os.getpid()}-cafecafe"
    other_host = parent / f"abf.tmp-otherhost-{dead_pid}-cafecafe"
    old_other_host = parent / f"abg.tmp-otherhost-{dead_pid}-cafecafe"
    for d in (dead, legacy, live, other_host, old_other_host):
        d.mkdir()
    day_ago = time.time() - 2 * cache_lib.STALE_TMP_SECONDS
    os.utime(old_other_host, (day_ago, day_ago))
    removed = cache_lib.collect_stale_builds(str(parent))
    assert sorted(removed) == sorted(map(str, (dead, legacy, old_other_host)))
    assert live.exists() and other_host.exists()
    # The builder collects them on its way.
    dead.mkdir()
    encoder = vocab_lib.make_encoder("byte", None)
    cache_lib.get_or_build(str(tmp_path), dict(task="t", split="train", corpus="c", max_documents=None,
                                               vocabulary="byte"), lambda: ["hello"], encoder)
    assert not dead.exists()


# --- 6. messages -------------------------------------------------------------------------------------

def test_gzip_named_xz_is_read_as_gzip_and_garbage_is_corrupt(tmp_path):
    path = str(tmp_path / "mislabelled.jsonl.xz")
    write_jsonl(path, ["one", "two"], gzip.open)
    assert list(corpora.read_documents(path)) == ["one", "two"]
    garbage = tmp_path / "garbage.jsonl.gz"
    garbage.write_bytes(b"this is not compressed at all\n")
    with pytest.raises(ValueError, match="corrupt compressed file"):
        list(corpora.read_documents(str(garbage)))


def test_json_error_reads_well_and_registered_corpora_keep_the_download_hint(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "unterminated\n', encoding="utf-8")
    with pytest.raises(ValueError) as error:
        list(corpora.read_documents(str(path)))
    assert "at at" not in str(error.value) and "column" in str(error.value), str(error.value)
    missing = dataclasses.replace(corpora.BOOKS_MINI, splits=(("train", (str(tmp_path / "none-*.xz"),)),))
    with pytest.raises(FileNotFoundError, match="download the corpus"):
        missing.files("train")


def test_vocabulary_file_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = vocab_lib.train_or_load_spm(lambda: ["the cat sat on the mat. " * 40 + "\n\n" + "dogs ran far. " * 40],
                                           corpus_fingerprint="umask-test", vocab_size=280,
                                           cache_dir=str(tmp_path))
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert not glob.glob(os.path.join(os.path.dirname(path), "*.tmp"))


def test_batch_larger_than_the_corpus_warns(tmp_path, capfd):
    config = corpus(tmp_path, n_docs=2)
    capfd.readouterr()
    data = pipeline.build_data(config, n_ctx=32, global_batch_size=64, seed=0)
    err = capfd.readouterr().err
    assert data.train.windows_per_epoch < 64
    assert "WARNING: the global batch (64 sequences) is larger than the training set" in err, err
    pipeline.build_data(config, n_ctx=32, global_batch_size=2, seed=0)
    assert "WARNING" not in capfd.readouterr().err
