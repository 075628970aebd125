"""seqio Tasks for language modelling: the embedded corpora, local files, and TFDS datasets.

Each task has a source of raw documents ({"text": ...}) with "train" and/or "validation" splits and
the preprocessors rekey(text -> targets), tokenize, append_eos, so
``seqio.get_mixture_or_task(name).get_dataset(...)`` gives token sequences, one per document.

Registered at import (with seqio.ByteVocabulary, which needs no training):
  books_mini, wiki_mini   embedded corpora in data/corpora/ (the default; no download)
  books, wiki             ../shared/data/corpus and ../shared/data/corpus-wiki (beside the repo)
  lm1b, c4_en, wiki40b_en TFDS datasets (need ``tfds build <name>`` into a data_dir first)
A trained SentencePiece vocabulary gives a variant task ``<name>.<vocab tag>`` (`get_task`).
Users add local files with `register_local_files_task` (DataConfig.task = "local_files" does it
from DataConfig.train_files / validation_files).

The token cache (data/cache.py) reads the same documents through `documents` and applies the
same vocabulary in worker processes, because tokenizing in Python on all cores is much faster
than a single tf.data pipeline; tests check both paths give identical tokens.
"""
import dataclasses
import functools
import hashlib
import os
from typing import Iterator, Sequence

import seqio
import tensorflow as tf

from data import corpora
from data import vocab as vocab_lib

TEXT = "text"
SPLITS = ("train", "validation")


@dataclasses.dataclass(frozen=True)
class TfdsCorpus:
    """A TFDS text dataset: canonical split -> TFDS split, and the feature holding the text."""
    name: str
    tfds_name: str
    splits: tuple[tuple[str, str], ...]
    text_key: str = "text"
    data_dir: str | None = None
    description: str = ""

    def tfds_split(self, split: str) -> str:
        for canonical, tfds_split in self.splits:
            if canonical == split:
                return tfds_split
        raise ValueError(f"TFDS task {self.name!r} has no {split!r} split (has {[s for s, _ in self.splits]})")

    def has_split(self, split: str) -> bool:
        return any(canonical == split for canonical, _ in self.splits)

    def resolved_data_dir(self, data_dir: str | None = None) -> str:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
        return os.path.expanduser(data_dir or self.data_dir or os.environ.get("TFDS_DATA_DIR")
                                  or tfds.core.constants.DATA_DIR)

    def builder(self, data_dir: str | None = None):
        """The prepared tfds builder; FileNotFoundError saying how to build it when absent."""
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
        where = self.resolved_data_dir(data_dir)
        how = (f"build it with `tfds build {self.tfds_name.split(':')[0]} --data_dir={where}` "
               f"(or point DataConfig.tfds_data_dir / $TFDS_DATA_DIR at a data_dir that has it)")
        try:
            builder = tfds.builder(self.tfds_name, data_dir=where)
        except Exception as e:  # unknown name / bad version
            raise FileNotFoundError(f"TFDS dataset {self.tfds_name!r} (task {self.name!r}) is not available "
                                    f"in data_dir {where!r}: {e}; {how}") from None
        if not builder.is_prepared():
            raise FileNotFoundError(f"TFDS dataset {self.tfds_name!r} (task {self.name!r}) is not present in "
                                    f"data_dir {where!r}; {how}")
        return builder

    def fingerprint(self, split: str, data_dir: str | None = None) -> str:
        info = self.builder(data_dir).info
        split_info = info.splits[self.tfds_split(split)]
        return (f"tfds:{info.full_name}:{self.tfds_split(split)}:{split_info.num_examples}:"
                f"{split_info.num_bytes}:{self.text_key}")

    def documents(self, split: str, data_dir: str | None = None) -> Iterator[str]:
        builder = self.builder(data_dir)
        ds = builder.as_dataset(split=self.tfds_split(split), shuffle_files=False)
        for example in ds.as_numpy_iterator():
            text = example[self.text_key]
            text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
            if text:
                yield text


# --- the corpora behind the registered tasks ------------------------------------------------------

CORPORA: dict = dict(corpora.LOCAL_CORPORA)
CORPORA.update({
    "lm1b": TfdsCorpus("lm1b", "lm1b:1.1.0", (("train", "train"), ("validation", "test")),
                       description="One Billion Word benchmark (sentences; TFDS 'lm1b')"),
    "c4_en": TfdsCorpus("c4_en", "c4/en:3.1.0", (("train", "train"), ("validation", "validation")),
                        description="Colossal Clean Crawled Corpus, English (TFDS 'c4/en')"),
    "wiki40b_en": TfdsCorpus("wiki40b_en", "wiki40b/en:1.3.0", (("train", "train"), ("validation", "validation")),
                             description="Wiki-40B English (TFDS 'wiki40b/en')"),
})
ALIASES = {"c4/en": "c4_en", "c4": "c4_en", "wiki40b/en": "wiki40b_en", "wiki40b": "wiki40b_en"}


def canonical_name(name: str) -> str:
    return ALIASES.get(name, name)


def get_corpus(name: str):
    name = canonical_name(name)
    if name not in CORPORA:
        raise ValueError(f"unknown data task {name!r}; registered: {sorted(CORPORA)} (or 'local_files' with "
                         "DataConfig.train_files, or register one with data.tasks.register_local_files_task)")
    return CORPORA[name]


def documents(name: str, split: str, *, data_dir: str | None = None,
              max_documents: int | None = None) -> Iterator[str]:
    """The raw documents of a task's split, in a fixed order (the task's source, without seqio)."""
    corpus = get_corpus(name)
    if not corpus.has_split(split):
        raise ValueError(f"task {name!r} has no {split!r} split; it has {[s for s, _ in corpus.splits]}")
    docs = corpus.documents(split) if isinstance(corpus, corpora.LocalCorpus) else corpus.documents(split, data_dir)
    for i, doc in enumerate(docs):
        if max_documents is not None and i >= max_documents:
            return
        yield doc


def fingerprint(name: str, split: str, *, data_dir: str | None = None) -> str:
    corpus = get_corpus(name)
    if isinstance(corpus, corpora.LocalCorpus):
        return corpus.fingerprint(split)
    return corpus.fingerprint(split, data_dir)


def has_split(name: str, split: str) -> bool:
    return get_corpus(name).has_split(split)


def label(name: str, split: str) -> str:
    """How errors name a task's split: the binding its files came from (DataConfig.validation_files) for
    local-files tasks, else "<task> <split>"."""
    corpus = get_corpus(name)
    return corpus.label(split) if isinstance(corpus, corpora.LocalCorpus) else f"{name} {split}"


def cache_name(name: str) -> str:
    """The task name the token cache is keyed on. Local-files tasks are named after all their patterns
    (train and validation); their caches are keyed on the content fingerprint instead, so changing the
    validation files never re-tokenizes the train split."""
    corpus = get_corpus(name)
    if isinstance(corpus, corpora.LocalCorpus) and name.startswith("local_files_"):
        return "local_files"
    return canonical_name(name)


def check_inputs(name: str, split: str, *, data_dir: str | None = None) -> None:
    """Fails fast (naming the binding) if a split's files are missing / unreadable or a TFDS set is absent."""
    corpus = get_corpus(name)
    if not corpus.has_split(split):
        raise ValueError(f"task {name!r} has no {split!r} split; it has {[s for s, _ in corpus.splits]}")
    if isinstance(corpus, corpora.LocalCorpus):
        corpus.files(split)
    else:
        corpus.builder(data_dir)


# --- seqio registration ---------------------------------------------------------------------------

def _local_source(corpus: corpora.LocalCorpus) -> seqio.DataSource:
    def dataset_fn(split, shuffle_files, seed=None):
        del shuffle_files, seed   # documents come in file order; the loader does the shuffling
        signature = {TEXT: tf.TensorSpec((), tf.string)}
        return tf.data.Dataset.from_generator(lambda: ({TEXT: d} for d in corpus.documents(split)),
                                              output_signature=signature)
    return seqio.FunctionDataSource(dataset_fn, splits=[s for s, _ in corpus.splits])


def _tfds_source(corpus: TfdsCorpus) -> seqio.DataSource:
    return seqio.TfdsDataSource(tfds_name=corpus.tfds_name, splits=dict(corpus.splits),
                                tfds_data_dir=corpus.data_dir)


def _preprocessors(text_key: str):
    return [
        functools.partial(seqio.preprocessors.rekey, key_map={"targets": text_key}),
        seqio.preprocessors.tokenize,
        seqio.preprocessors.append_eos,
    ]


def _output_features(vocabulary) -> dict:
    return {"targets": seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32)}


def _register(name: str, corpus) -> None:
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    if isinstance(corpus, corpora.LocalCorpus):
        source, text_key = _local_source(corpus), TEXT
    else:
        source, text_key = _tfds_source(corpus), corpus.text_key
    seqio.TaskRegistry.add(name, source=source, preprocessors=_preprocessors(text_key),
                           output_features=_output_features(seqio.ByteVocabulary()))


def _patterns(files) -> tuple[str, ...]:
    """A bare string is one pattern, not a sequence of one-character patterns."""
    return (files,) if isinstance(files, str) else tuple(files or ())


def register_local_files_task(name: str, train_files: Sequence[str] = (), validation_files: Sequence[str] = (),
                              text_key: str = "text", labels: dict | None = None) -> str:
    """Registers (or replaces) a task over local .txt/.jsonl(.xz/.gz) files; returns its name.

    ``labels`` ({split: "DataConfig.train_files", ...}) names where the patterns came from in errors.
    """
    splits = tuple((s, _patterns(files)) for s, files in (("train", train_files), ("validation", validation_files))
                   if _patterns(files))
    if not splits:
        raise ValueError(f"local files task {name!r} needs train_files and/or validation_files "
                         "(glob patterns of .txt/.jsonl/.jsonl.xz/.jsonl.gz files)")
    CORPORA[name] = corpora.LocalCorpus(name, splits, text_key=text_key, description="local files",
                                        labels=tuple((labels or {}).items()))
    _register(name, CORPORA[name])
    return name


def register_tfds_task(name: str, tfds_name: str, splits: dict, text_key: str = "text",
                       data_dir: str | None = None) -> str:
    """Registers (or replaces) a task over a TFDS text dataset; returns its name."""
    CORPORA[name] = TfdsCorpus(name, tfds_name, tuple(splits.items()), text_key=text_key, data_dir=data_dir)
    _register(name, CORPORA[name])
    return name


def local_files_task_name(train_files: Sequence[str], validation_files: Sequence[str], text_key: str) -> str:
    blob = repr((_patterns(train_files), _patterns(validation_files), text_key)).encode()
    return "local_files_" + hashlib.sha256(blob).hexdigest()[:10]


def get_task(name: str, vocabulary: str = "byte", model_path: str | None = None) -> seqio.Task:
    """The seqio Task ``name`` tokenized with the given vocabulary (registered on first use)."""
    name = canonical_name(name)
    get_corpus(name)
    if vocabulary == "byte":
        return seqio.get_mixture_or_task(name)
    tag = "spm" + vocab_lib.file_sha256(model_path)[:10]
    variant = f"{name}.{tag}"
    if variant not in seqio.TaskRegistry.names():
        vocab = vocab_lib.seqio_vocabulary(vocabulary, model_path)
        task = seqio.get_mixture_or_task(name).replace(name=variant, output_features=_output_features(vocab))
        seqio.TaskRegistry.add_provider(variant, task)
    return seqio.get_mixture_or_task(variant)


for _name, _corpus in CORPORA.items():
    _register(_name, _corpus)
