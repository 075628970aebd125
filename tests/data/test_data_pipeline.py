"""End-to-end data pipeline: seqio tasks, build_data on the embedded corpus, TFDS tasks, gin files."""
import dataclasses
import glob
import json
import os

import numpy as np
import pytest

from data import pipeline
from data.pipeline import DataConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_CTX = 64


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data-cache"))


@pytest.fixture(scope="module")
def embedded(cache_dir):
    config = DataConfig(vocab_size=1024, cache_dir=cache_dir, eval_tokens=8192)
    return config, pipeline.build_data(config, n_ctx=N_CTX, global_batch_size=8, seed=0)


def test_build_data_on_embedded_corpus(embedded):
    config, data = embedded
    assert data.vocab_size == 1024
    b = data.train.batch(0)
    assert b.shape == (8, N_CTX + 1) and b.dtype == np.int32
    assert b.min() >= 0 and b.max() < data.vocab_size
    assert data.eval_windows.shape == (8192 // N_CTX, N_CTX + 1) and data.eval_windows.dtype == np.int32
    assert 2.0 < data.eval_bytes_per_token < 5.0
    wiki_windows, wiki_bpt = data.extra_evals["wiki_mini"]
    assert wiki_windows.shape[1] == N_CTX + 1 and wiki_bpt > 1.0
    m = data.manifest
    for key in ("corpus_hash_train", "corpus_hash_validation", "vocab_hash", "train_tokens", "n_ctx",
                "windows_per_epoch", "eval_tokens", "eval_bytes_per_token", "seqio_task"):
        assert key in m
    assert m["train_documents"] == 92 and m["train_bytes"] == 4636306
    assert m["windows_per_epoch"] == (m["train_tokens"] - 1) // N_CTX
    json.dumps(m)                                                     # goes into summary.json
    assert int((b == 1).sum()) >= 0 and data.decode(b[0])             # decodes to text


def test_train_and_eval_windows_never_overlap(embedded):
    _, data = embedded
    train = data.train._windows                                        # all train windows
    train_rows = {row.tobytes() for row in np.asarray(train)}
    assert len(train_rows) > 1000
    assert not any(row.tobytes() in train_rows for row in data.eval_windows)
    # and the fixed eval set is identical when rebuilt (same config, n_ctx), whatever the run seed
    again = pipeline.build_data(embedded[0], n_ctx=N_CTX, global_batch_size=4, seed=123)
    np.testing.assert_array_equal(again.eval_windows, data.eval_windows)
    assert again.manifest["train_cache"] == data.manifest["train_cache"]   # cache reused, not rebuilt


def test_seqio_task_round_trips_text_and_matches_cache(embedded):
    from data import corpora, tasks
    import seqio
    config, data = embedded
    # seqio tasks are registered on first use (data/tasks.py); the manifest names the same task
    assert tasks.get_task(config.task, "spm", data.manifest["vocab_model"]).name == data.manifest["seqio_task"]
    task = seqio.get_mixture_or_task(data.manifest["seqio_task"])
    vocab = task.output_features["targets"].vocabulary
    assert vocab.vocab_size == 1024 and (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
    docs = list(corpora.BOOKS_MINI.documents("validation"))
    examples = list(task.get_dataset(sequence_length=None, split="validation", shuffle=False).take(2)
                    .as_numpy_iterator())
    for doc, ex in zip(docs, examples):
        assert ex["targets"][-1] == 1                                  # append_eos
        assert vocab.decode(ex["targets"].tolist()) == doc             # text round trip through seqio
    # the token cache holds exactly the seqio task's tokens, packed back to back
    from data import cache
    val = cache.TokenCache(data.manifest["validation_cache"])
    packed = np.concatenate([ex["targets"] for ex in examples])
    np.testing.assert_array_equal(val.tokens[:len(packed)], packed)
    # the byte-vocabulary task is registered under the plain name
    byte_task = tasks.get_task("wiki_mini")
    ex = next(byte_task.get_dataset(sequence_length=None, split="validation", shuffle=False).as_numpy_iterator())
    assert byte_task.output_features["targets"].vocabulary.decode(ex["targets"].tolist()) == \
        next(corpora.WIKI_MINI.documents("validation"))


def write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")


def local_corpus(tmp_path, n_docs=30, tag=""):
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", tag]
    make = lambda n: [" ".join(rng.choice(words, size=120)) + "." for _ in range(n)]  # noqa: E731
    write_jsonl(tmp_path / "train.jsonl", make(n_docs))
    write_jsonl(tmp_path / "valid.jsonl", make(5))
    return DataConfig(task="local_files", vocabulary="byte", train_files=(str(tmp_path / "train.jsonl"),),
                      validation_files=(str(tmp_path / "valid.jsonl"),), extra_eval_tasks=(),
                      eval_tokens=512, cache_dir=str(tmp_path / "cache"), num_workers=1)


def test_local_files_cache_rebuilds_when_corpus_changes(tmp_path):
    config = local_corpus(tmp_path)
    first = pipeline.build_data(config, n_ctx=32, global_batch_size=4, seed=0)
    assert first.vocab_size == 259
    same = pipeline.build_data(config, n_ctx=32, global_batch_size=4, seed=0)
    assert same.manifest["train_cache"] == first.manifest["train_cache"]
    with open(tmp_path / "train.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "a brand new document appended"}) + "\n")
    changed = pipeline.build_data(config, n_ctx=32, global_batch_size=4, seed=0)
    assert changed.manifest["corpus_hash_train"] != first.manifest["corpus_hash_train"]
    assert changed.manifest["train_cache"] != first.manifest["train_cache"]
    assert changed.manifest["train_documents"] == first.manifest["train_documents"] + 1
    assert changed.manifest["train_tokens"] == first.manifest["train_tokens"] + len("a brand new document appended") + 1


def test_extra_eval_given_as_files_and_data_budget(tmp_path):
    config = dataclasses.replace(local_corpus(tmp_path), extra_eval_tasks=(str(tmp_path / "valid.jsonl"),),
                                 data_budget_tokens=32 * 20)
    data = pipeline.build_data(config, n_ctx=32, global_batch_size=4, seed=0)
    assert data.train.windows_per_epoch == 20 and data.manifest["unique_train_tokens"] == 640
    windows, _ = data.extra_evals[str(tmp_path / "valid.jsonl")]
    np.testing.assert_array_equal(windows, data.eval_windows)          # same files -> same eval set


@pytest.mark.parametrize("change, error, match", [
    (dict(train_files=("/nonexistent/corpus-*.jsonl",)), FileNotFoundError, "matches no file"),
    (dict(data_budget_tokens=0), ValueError, "must be positive"),
    (dict(data_budget_tokens=10 ** 9), ValueError, "larger than the train split"),
    (dict(task="wiki_mini"), ValueError, "no train split"),
    (dict(task="no_such_task"), ValueError, "unknown data task 'no_such_task'"),
    (dict(vocabulary="word"), ValueError, "must be 'spm' or 'byte'"),
    (dict(vocabulary="spm", vocab_size=100000), ValueError, "larger than this corpus supports"),
])
def test_bad_config_gives_clear_error_and_no_partial_cache(tmp_path, change, error, match):
    config = dataclasses.replace(local_corpus(tmp_path), **change)
    with pytest.raises(error, match=match):
        pipeline.build_data(config, n_ctx=32, global_batch_size=4, seed=0)
    leftovers = glob.glob(str(tmp_path / "cache" / "**" / "*.tmp*"), recursive=True)
    assert leftovers == []


def test_empty_corpus_and_too_long_context(tmp_path):
    config = local_corpus(tmp_path)
    with pytest.raises(ValueError, match="longer than any possible window"):
        pipeline.build_data(config, n_ctx=10 ** 6, global_batch_size=4, seed=0)
    write_jsonl(tmp_path / "empty.jsonl", ["", ""])
    empty = dataclasses.replace(config, train_files=(str(tmp_path / "empty.jsonl"),))
    with pytest.raises(ValueError, match="empty corpus"):
        pipeline.build_data(empty, n_ctx=32, global_batch_size=4, seed=0)
    assert glob.glob(str(tmp_path / "cache" / "tokens" / "*.tmp*")) == []


# --- TFDS ----------------------------------------------------------------------------------------

TFDS_TRAIN = [f"training sentence number {i} about cats and dogs." for i in range(40)]
TFDS_TEST = [f"held out sentence {i}, about birds." for i in range(8)]


def _tiny_builder_class():
    import tensorflow_datasets as tfds

    class ScalingTinyText(tfds.core.GeneratorBasedBuilder):
        """A few text examples, built locally with tfds' own builder API."""
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self,
                                         features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(TFDS_TRAIN), "test": self._generate_examples(TFDS_TEST)}

        def _generate_examples(self, texts):
            for i, text in enumerate(texts):
                yield i, {"text": text}

    return ScalingTinyText


def test_tfds_task_reads_a_locally_built_dataset(tmp_path):
    from data import tasks
    builder_cls = _tiny_builder_class()
    data_dir = str(tmp_path / "tfds")
    builder_cls(data_dir=data_dir).download_and_prepare()
    name = tasks.register_tfds_task("scaling_tiny_text_test", "scaling_tiny_text:1.0.0",
                                    {"train": "train", "validation": "test"}, data_dir=data_dir)
    config = DataConfig(task=name, vocabulary="byte", extra_eval_tasks=(), eval_tokens=256,
                        cache_dir=str(tmp_path / "cache"), num_workers=1)
    data = pipeline.build_data(config, n_ctx=16, global_batch_size=2, seed=0)
    assert data.manifest["train_documents"] == 40
    assert data.manifest["train_tokens"] == sum(len(t) + 1 for t in TFDS_TRAIN)
    assert data.manifest["corpus_hash_train"].startswith("tfds:scaling_tiny_text/1.0.0:train:40")
    assert sorted(tasks.documents(name, "validation")) == sorted(TFDS_TEST)
    # and through seqio (TfdsDataSource)
    task = tasks.get_task(name)
    texts = [task.output_features["targets"].vocabulary.decode(ex["targets"].tolist())
             for ex in task.get_dataset(sequence_length=None, split="validation", shuffle=False).as_numpy_iterator()]
    assert sorted(texts) == sorted(TFDS_TEST)


@pytest.mark.parametrize("task, tfds_name", [("lm1b", "lm1b"), ("c4/en", "c4")])
def test_missing_tfds_dataset_says_how_to_build_it(tmp_path, task, tfds_name):
    config = DataConfig(task=task, tfds_data_dir=str(tmp_path / "empty"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError) as info:
        pipeline.build_data(config, n_ctx=32, global_batch_size=4, seed=0)
    msg = str(info.value)
    assert tfds_name in msg and f"tfds build {tfds_name}" in msg and str(tmp_path / "empty") in msg
    assert not os.path.exists(tmp_path / "cache" / "tokens")


# --- gin -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "gin", "data", "*.gin"))))
def test_gin_data_files_bind_real_fields(path):
    import gin
    from scaling import configurables
    gin.clear_config()
    try:
        if os.path.basename(path) == "byte.gin":
            gin.parse_config_files_and_bindings([os.path.join(ROOT, "gin", "data", "embedded.gin"), path], [],
                                                skip_unknown=True)
        else:
            gin.parse_config_file(path, skip_unknown=True)
        config = configurables.DataConfig()
        assert isinstance(config, DataConfig)
        if os.path.basename(path) == "embedded.gin":
            assert config == DataConfig()                              # the embedded file spells out the defaults
        if os.path.basename(path) == "byte.gin":
            assert config.vocabulary == "byte"
    finally:
        gin.clear_config()
