"""The data pipeline the trainer calls: DataConfig -> build_data(...) -> LMData.

corpus (local files / TFDS, as a seqio Task, data/tasks.py)
  -> vocabulary (SentencePiece BPE trained on the train split, or bytes; data/vocab.py)
  -> token cache (tokenized once on all cores, packed with EOS, memmap + manifest; data/cache.py)
  -> TrainLoader.batch(step) (pure function of seed, step, batch, D; data/loader.py)
  + fixed eval windows of the validation split and of extra tasks (transfer eval, Kaplan Fig. 8).

Importing this module is cheap (no TensorFlow); `build_data` imports seqio/TF only when a corpus must be
read from TFDS or a split tokenized without a cache (data/tasks.py registers seqio tasks lazily).
"""
import dataclasses
import numbers
import os
import sys

import numpy as np

from data import cache as cache_lib
from data import loader as loader_lib
from data import vocab as vocab_lib
from data.loader import TrainLoader


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What to train and evaluate on. Bind from gin as ``DataConfig.<field>`` (gin/data/*.gin)."""
    task: str = "books_mini"              # seqio task (data/tasks.py): books_mini, books, lm1b, c4_en, local_files, ...
    vocabulary: str = "spm"               # "spm" (SentencePiece BPE trained on the train split) or "byte"
    vocab_size: int = 4096                # spm pieces incl. pad=0, eos=1, unk=2 (ignored for "byte": 259)
    data_budget_tokens: int | None = None  # D: unique train tokens, a prefix of one global shuffled order
    eval_tokens: int = 65536              # target tokens in the fixed held-out eval set (validation split)
    position_eval_windows: int = 0        # > 0: the final eval also scores this many stride-1 windows for the
                                          # loss-per-position curve (loader.position_eval_windows); 0 = off
    position_eval_regions: int = 16       # evenly spaced stretches of the validation split they are read from
    extra_eval_tasks: tuple[str, ...] = ("wiki_mini",)  # other distributions evaluated with the same vocab
    cache_dir: str = ".cache/scaling"     # vocab + token caches (relative to cwd unless absolute)
    train_files: tuple[str, ...] = ()     # task="local_files": glob patterns of .txt/.jsonl/.jsonl.xz/.jsonl.gz
    validation_files: tuple[str, ...] = ()
    text_key: str = "text"                # JSONL field holding the text (local files)
    tfds_data_dir: str | None = None      # TFDS data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)
    max_train_documents: int | None = None  # tokenize only the first N train documents (huge TFDS sets)
    max_eval_documents: int | None = None   # likewise for validation splits
    vocab_training_chars: int = vocab_lib.DEFAULT_MAX_TRAINING_CHARS  # spm training sample size
    subset_seed: int = 0                  # seeds the global window order (keep fixed across a sweep)
    num_workers: int = 0                  # tokenizer processes; 0 = all available cores
    prefetch: int = 4                     # batches the background thread keeps ready

    def __post_init__(self):
        # A bare string is one pattern (gin: DataConfig.train_files = 'corpus/*.jsonl'), never its characters.
        for name in ("train_files", "validation_files", "extra_eval_tasks"):
            value = getattr(self, name)
            if isinstance(value, (str, os.PathLike)):
                object.__setattr__(self, name, (os.fspath(value),))
            elif value is None:
                object.__setattr__(self, name, ())
            elif isinstance(value, (list, tuple)):
                if not all(isinstance(v, (str, os.PathLike)) for v in value):
                    raise ValueError(f"DataConfig.{name} must be a string or a tuple of strings, got {value!r}")
                object.__setattr__(self, name, tuple(os.fspath(v) for v in value))
            else:
                raise ValueError(f"DataConfig.{name} must be a string or a tuple of strings, got {value!r}")
        for name in ("vocab_size", "eval_tokens", "subset_seed", "num_workers", "prefetch", "vocab_training_chars",
                     "position_eval_windows", "position_eval_regions", "data_budget_tokens", "max_train_documents", "max_eval_documents"):
            value = getattr(self, name)
            optional = name in ("data_budget_tokens", "max_train_documents", "max_eval_documents")
            if (value is None and optional) or (isinstance(value, numbers.Real) and not isinstance(value, bool)):
                continue
            raise ValueError(f"DataConfig.{name} must be a number{' or None' if optional else ''}, got {value!r}")


@dataclasses.dataclass
class LMData:
    vocab_size: int                       # model vocabulary size (seqio vocab.vocab_size)
    train: TrainLoader
    eval_windows: np.ndarray              # int32 [n_eval_windows, n_ctx+1]
    eval_bytes_per_token: float           # UTF-8 bytes per target token of eval_windows
    extra_evals: dict                     # name -> (windows, bytes_per_token)
    manifest: dict                        # hashes and counts, for summary.json
    encoder: vocab_lib.Encoder            # text <-> ids (decode samples, inspect batches)
    position_eval_windows: np.ndarray | None = None  # int32 stride-1 windows for loss per position (or None)

    def decode(self, ids) -> str:
        return self.encoder.decode(ids)


def _num_workers(config: DataConfig) -> int:
    if config.num_workers > 0:
        return config.num_workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _validate(config: DataConfig, n_ctx: int, global_batch_size: int) -> None:
    if config.vocabulary not in ("spm", "byte"):
        raise ValueError(f"DataConfig.vocabulary must be 'spm' or 'byte', got {config.vocabulary!r}")
    if n_ctx < 1:
        raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    if config.data_budget_tokens is not None and config.data_budget_tokens <= 0:
        raise ValueError(f"DataConfig.data_budget_tokens (D) must be positive, got {config.data_budget_tokens}; "
                         "use None for the whole corpus")
    if config.eval_tokens < 1:
        raise ValueError(f"DataConfig.eval_tokens must be positive, got {config.eval_tokens}")
    if config.position_eval_windows < 0 or config.position_eval_regions < 1:
        raise ValueError(f"DataConfig.position_eval_windows must be >= 0 (0 = off) and position_eval_regions >= 1, "
                         f"got {config.position_eval_windows} and {config.position_eval_regions}")


def _resolve_task(tasks, name: str, config: DataConfig) -> str:
    if name == "local_files":
        if not config.train_files:
            raise ValueError("task 'local_files' needs DataConfig.train_files (and validation_files): glob "
                             "patterns of .txt/.jsonl/.jsonl.xz/.jsonl.gz files")
        task = tasks.local_files_task_name(config.train_files, config.validation_files, config.text_key)
        return tasks.register_local_files_task(task, config.train_files, config.validation_files, config.text_key,
                                               labels={"train": "DataConfig.train_files",
                                                       "validation": "DataConfig.validation_files"})
    if name.endswith(tuple(s for s in (".txt", ".jsonl", ".xz", ".gz"))):   # extra eval given as file pattern(s)
        task = tasks.local_files_task_name((), (name,), config.text_key)
        return tasks.register_local_files_task(task, (), (name,), config.text_key,
                                               labels={"validation": "DataConfig.extra_eval_tasks"})
    tasks.get_corpus(name)                 # unknown names fail here, listing the registered ones
    return tasks.canonical_name(name)


def warn_batch_larger_than_data(global_batch_size: int, windows_per_epoch: int, n_ctx: int) -> bool:
    """Warns (stderr) when one batch holds more windows than the training set: every step repeats
    windows (several epochs per step), which is rarely intended. Returns whether it warned."""
    if global_batch_size <= windows_per_epoch:
        return False
    print(f"[data] WARNING: the global batch ({global_batch_size} sequences) is larger than the training set "
          f"({windows_per_epoch} windows of {n_ctx} tokens within DataConfig.data_budget_tokens / the corpus): "
          f"every step sees each window {global_batch_size / windows_per_epoch:.1f} times; use a larger corpus or "
          f"D, or a smaller TrainConfig.batch_size", file=sys.stderr, flush=True)
    return True


def build_data(config: DataConfig, *, n_ctx: int, global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1) -> LMData:
    """Builds (or loads from cache) everything the trainer needs for one run."""
    _validate(config, n_ctx, global_batch_size)
    from data import tasks  # pylint: disable=import-outside-toplevel
    cache_dir = os.path.abspath(os.path.expanduser(config.cache_dir))
    workers = _num_workers(config)
    task = _resolve_task(tasks, config.task, config)
    if not tasks.has_split(task, "train"):
        raise ValueError(f"task {config.task!r} has no train split (it is evaluation-only); "
                         "use it in DataConfig.extra_eval_tasks and train on another task")
    if not tasks.has_split(task, "validation"):
        raise ValueError(f"task {config.task!r} has no validation split for the held-out eval set; "
                         "give DataConfig.validation_files (held-out documents)")
    data_dir = config.tfds_data_dir
    # Every input is checked before anything is tokenized: the validation files and the extra eval
    # tasks too, so a typo there does not cost a tokenization of the train split first.
    extra_names = {extra: _resolve_task(tasks, extra, config) for extra in config.extra_eval_tasks}
    for name, split in [(task, "train"), (task, "validation")] + [(n, "validation") for n in extra_names.values()]:
        tasks.check_inputs(name, split, data_dir=data_dir)
    train_fp = tasks.fingerprint(task, "train", data_dir=data_dir)
    train_source = f"{train_fp}|first{config.max_train_documents}"

    def train_docs():
        return tasks.documents(task, "train", data_dir=data_dir, max_documents=config.max_train_documents)

    model_path = None
    if config.vocabulary == "spm":
        model_path = vocab_lib.train_or_load_spm(train_docs, corpus_fingerprint=train_source,
                                                 vocab_size=config.vocab_size, cache_dir=cache_dir,
                                                 max_chars=config.vocab_training_chars)
    encoder = vocab_lib.make_encoder(config.vocabulary, model_path)
    vocab_fp = vocab_lib.vocab_fingerprint(config.vocabulary, model_path)
    # The seqio task's name and vocabulary size without importing seqio: its SentencePieceVocabulary
    # (extra_ids=0) has the model's pieces, its ByteVocabulary 256 bytes + pad/eos/unk (= the encoder's).
    seqio_task_name = tasks.task_name(task, config.vocabulary, model_path)
    vocab_size = encoder.vocab_size
    token_bytes = encoder.token_bytes()

    def split_cache(name: str, split: str, fp: str, docs_fn, max_docs):
        # Keyed on the content (corpus fingerprint) and vocabulary, not on the other split's patterns.
        description = dict(task=tasks.cache_name(name), split=split, corpus=fp, max_documents=max_docs,
                           vocabulary=vocab_fp)
        return cache_lib.get_or_build(cache_dir, description, docs_fn, encoder, num_workers=workers,
                                      desc=f"tokenize {tasks.label(name, split)}", what=tasks.label(name, split))

    train_cache = split_cache(task, "train", train_fp, train_docs, config.max_train_documents)
    train = TrainLoader(train_cache.tokens, n_ctx=n_ctx, global_batch_size=global_batch_size, seed=seed,
                        data_budget_tokens=config.data_budget_tokens, subset_seed=config.subset_seed,
                        process_index=process_index, process_count=process_count, prefetch=config.prefetch)
    warn_batch_larger_than_data(global_batch_size, train.windows_per_epoch, n_ctx)

    def eval_set(name: str):
        fp = tasks.fingerprint(name, "validation", data_dir=data_dir)
        docs_fn = lambda: tasks.documents(name, "validation", data_dir=data_dir,  # noqa: E731
                                          max_documents=config.max_eval_documents)
        entry = split_cache(name, "validation", fp, docs_fn, config.max_eval_documents)
        windows = loader_lib.eval_windows(entry.tokens, n_ctx, config.eval_tokens,
                                          what=tasks.label(name, "validation"))
        return entry, windows, loader_lib.bytes_per_token(windows, token_bytes), fp

    val_cache, eval_windows, eval_bpt, val_fp = eval_set(task)
    position_windows = None
    if config.position_eval_windows:
        position_windows = loader_lib.position_eval_windows(
            val_cache.tokens, n_ctx, config.position_eval_windows, config.position_eval_regions,
            what=tasks.label(task, "validation"))
    extra_evals, extra_manifest = {}, {}
    for extra, name in extra_names.items():
        entry, windows, bpt, fp = eval_set(name)
        extra_evals[extra] = (windows, bpt)
        extra_manifest[extra] = dict(task=name, corpus_hash=fp, tokens=entry.n_tokens, documents=entry.manifest["n_documents"],
                                     eval_windows=len(windows), eval_tokens=int(windows[:, 1:].size),
                                     bytes_per_token=bpt, cache=entry.path)

    manifest = dict(
        task=config.task, seqio_task=seqio_task_name, vocabulary=config.vocabulary, vocab_size=int(vocab_size),
        vocab_hash=vocab_fp, vocab_model=model_path, corpus_hash_train=train_fp, corpus_hash_validation=val_fp,
        n_ctx=n_ctx, tokens_per_window=n_ctx + 1, train_tokens=train_cache.n_tokens,
        train_documents=train_cache.manifest["n_documents"], train_bytes=train_cache.manifest["n_bytes"],
        train_bytes_per_token=train_cache.manifest["bytes_per_token"], train_windows=train.n_windows_total,
        windows_per_epoch=train.windows_per_epoch, data_budget_tokens=config.data_budget_tokens,
        unique_train_tokens=train.unique_tokens, subset_seed=config.subset_seed, seed=seed,
        global_batch_size=global_batch_size, process_count=process_count,
        eval_windows=len(eval_windows), eval_tokens=int(eval_windows[:, 1:].size),
        eval_bytes_per_token=eval_bpt, validation_tokens=val_cache.n_tokens,
        position_eval_windows=0 if position_windows is None else len(position_windows),
        train_cache=train_cache.path, validation_cache=val_cache.path, extra_evals=extra_manifest)
    return LMData(vocab_size=int(vocab_size), train=train, eval_windows=eval_windows, eval_bytes_per_token=eval_bpt,
                  extra_evals=extra_evals, manifest=manifest, encoder=encoder,
                  position_eval_windows=position_windows)
