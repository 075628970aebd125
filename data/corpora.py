"""Plain-Python readers for text corpora: .txt, .jsonl, .jsonl.xz, .jsonl.gz (no TensorFlow).

A *document* is one JSON object's text field (JSONL) or one whole file (.txt). Errors name the
file and line and say what to do, because a bad corpus is the most common user mistake.

The embedded corpora (shipped in data/corpora/, see their SOURCE.md) and the larger shared corpus
(``../shared/data/corpus`` beside the repository) are described by `LocalCorpus` objects below;
data/tasks.py turns them into seqio Tasks.
"""
import dataclasses
import glob
import gzip
import hashlib
import json
import lzma
import os
from typing import Iterator, Sequence

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
EMBEDDED_DIR = os.path.join(PACKAGE_DIR, "corpora")
REPO_ROOT = os.path.dirname(PACKAGE_DIR)
# The larger corpora live beside the repository (``../shared/data``); SCALING_SHARED_DATA overrides.
SHARED_DATA_DIR = os.environ.get("SCALING_SHARED_DATA", os.path.join(os.path.dirname(REPO_ROOT), "shared", "data"))

SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".jsonl.xz", ".jsonl.gz", ".json.xz", ".json.gz")


_XZ_MAGIC, _GZIP_MAGIC = b"\xfd7zXZ\x00", b"\x1f\x8b"


def _open_binary(path: str):
    """Opens a (possibly compressed) file for reading bytes; decoding is per line so errors name the line.

    The compression is recognised from the file's first bytes, not its name (a gzip file named .xz is
    read as gzip); a .xz/.gz name over data that is neither is a corrupt compressed file.
    """
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(_XZ_MAGIC):
        return lzma.open(path, "rb")
    if magic.startswith(_GZIP_MAGIC):
        return gzip.open(path, "rb")
    if path.endswith((".xz", ".gz")) and magic:
        raise ValueError(f"{path}: corrupt compressed file (neither xz nor gzip data: starts with {magic[:6]!r}); "
                         "re-download or re-compress it")
    return open(path, "rb")


def check_suffix(path: str) -> None:
    if not path.endswith(SUPPORTED_SUFFIXES):
        raise ValueError(
            f"{path}: unsupported corpus file type; use one of {', '.join(SUPPORTED_SUFFIXES)} "
            "(JSON Lines with one {\"text\": ...} object per line, or plain UTF-8 text = one document per file)")


def expand_paths(patterns: Sequence[str], *, what: str = "corpus", hint: str = "") -> list[str]:
    """Expands glob patterns (relative to cwd) into a sorted, de-duplicated file list.

    Raises FileNotFoundError naming the pattern (and ``what``: the binding or corpus it came from) when a
    pattern matches nothing; ``hint`` (e.g. where to download a registered corpus) is appended.
    """
    if isinstance(patterns, str):
        patterns = (patterns,)
    if not patterns:
        raise ValueError(f"no {what} files given; set the file paths (e.g. DataConfig.train_files)")
    files = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        matched = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
        if not matched:
            raise FileNotFoundError(f"{what} path {pattern!r} matches no file (cwd {os.getcwd()!r}); check the path"
                                    + (f", or {hint}" if hint else ""))
        for path in matched:
            check_suffix(path)
            if path not in files:
                files.append(path)
    return files


def read_documents(path: str, text_key: str = "text") -> Iterator[str]:
    """Yields the documents of one file. Empty documents are skipped.

    Raises ValueError naming file and line for invalid UTF-8, invalid JSON or a missing text key.
    """
    check_suffix(path)
    try:
        with _open_binary(path) as f:
            if path.endswith(".txt"):
                raw = f.read()
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    line_no = raw.count(b"\n", 0, e.start) + 1
                    raise ValueError(f"{path}:{line_no}: not valid UTF-8 ({e.reason}); re-encode the file as UTF-8") from None
                if text.strip():
                    yield text
                return
            for line_no, raw_line in enumerate(f, start=1):
                try:
                    line = raw_line.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"{path}:{line_no}: not valid UTF-8 ({e.reason} at byte {e.start} of the line); "
                                     "re-encode the file as UTF-8") from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg}; column {e.colno}); "
                                     "each line must be one JSON object like {\"text\": \"...\"}") from None
                if not isinstance(record, dict) or not isinstance(record.get(text_key), str):
                    raise ValueError(f"{path}:{line_no}: expected a JSON object with a string field "
                                     f"{text_key!r}; set the text key (DataConfig.text_key) or fix the file")
                if record[text_key]:
                    yield record[text_key]
    except (lzma.LZMAError, gzip.BadGzipFile, EOFError) as e:
        raise ValueError(f"{path}: corrupt compressed file ({e}); re-download or re-compress it") from None


def iter_documents(files: Sequence[str], text_key: str = "text") -> Iterator[str]:
    """Yields the documents of all files, in the given (sorted) order."""
    for path in files:
        yield from read_documents(path, text_key)


def hash_files(files: Sequence[str]) -> str:
    """sha256 over (basename, size, bytes) of each file: the corpus's content fingerprint."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(os.path.basename(path).encode() + b"\0" + str(os.path.getsize(path)).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class LocalCorpus:
    """A corpus of local files: split name -> glob patterns (a split may be absent, e.g. eval-only)."""
    name: str
    splits: tuple[tuple[str, tuple[str, ...]], ...]   # (("train", (patterns...)), ("validation", ...))
    text_key: str = "text"
    description: str = ""
    # (split, label) pairs naming where a split's patterns came from in error messages, e.g.
    # ("validation", "DataConfig.validation_files"); default "<name> <split>".
    labels: tuple[tuple[str, str], ...] = ()
    hint: str = ""                                     # appended when a pattern matches no file

    def label(self, split: str) -> str:
        return dict(self.labels).get(split, f"{self.name} {split}")

    def patterns(self, split: str) -> tuple[str, ...]:
        for name, patterns in self.splits:
            if name == split:
                return patterns
        raise ValueError(f"corpus {self.name!r} has no {split!r} split (it has {[s for s, _ in self.splits]}); "
                         "use a task with that split or give files for it")

    def has_split(self, split: str) -> bool:
        return any(name == split for name, _ in self.splits)

    def files(self, split: str) -> list[str]:
        return expand_paths(self.patterns(split), what=self.label(split), hint=self.hint)

    def documents(self, split: str) -> Iterator[str]:
        return iter_documents(self.files(split), self.text_key)

    def fingerprint(self, split: str) -> str:
        # The text key selects what is read from JSONL files, so it is part of the content identity
        # (left out for the default "text", so existing fingerprints and caches stay valid).
        key = "" if self.text_key == "text" else f"|text_key={self.text_key}"
        return "files:" + hash_files(self.files(split)) + key


_DOWNLOAD_HINT = ("download the corpus: the cleaned Project Gutenberg books of GitHub rcdm-uga/Gutenberg_Text (commit "
                  "a0b16d35; data/corpora/books-20m/SOURCE.md says how they are cleaned) and WikiText-103 raw valid+test, "
                  "as train-*/validation-*.jsonl.xz in DIR/corpus and DIR/corpus-wiki; then SCALING_SHARED_DATA=DIR")


def embedded(subdir: str, split_file: str) -> str:
    return os.path.join(EMBEDDED_DIR, subdir, split_file)


BOOKS_MINI = LocalCorpus(
    "books_mini",
    (("train", (embedded("books-mini", "train-*.jsonl.xz"),)),
     ("validation", (embedded("books-mini", "validation-*.jsonl.xz"),))),
    description="Project Gutenberg book excerpts (public domain), embedded: 4.6 MB train, 0.3 MB validation",
    hint=_DOWNLOAD_HINT)
BOOKS_20M = LocalCorpus(
    "books_20m",
    (("train", (embedded("books-20m", "train-*.jsonl.xz"),)),
     ("validation", (embedded("books-20m", "validation-*.jsonl.xz"),))),
    description="Project Gutenberg book excerpts (public domain), embedded: 20.3 MB train (391 books), "
                "0.3 MB validation (books-mini's)",
    hint=_DOWNLOAD_HINT)
WIKI_MINI = LocalCorpus(
    "wiki_mini",
    (("validation", (embedded("wiki-mini", "validation-*.jsonl.xz"),)),),
    description="Wikipedia (WikiText) article excerpts, CC BY-SA 3.0, embedded; evaluation only",
    hint=_DOWNLOAD_HINT)
BOOKS = LocalCorpus(
    "books",
    (("train", (os.path.join(SHARED_DATA_DIR, "corpus", "train-*.jsonl.xz"),)),
     ("validation", (os.path.join(SHARED_DATA_DIR, "corpus", "validation-*.jsonl.xz"),))),
    description="Project Gutenberg books (public domain), ../shared/data/corpus: 117 MB train, 3.2 MB validation",
    hint=_DOWNLOAD_HINT)
WIKI = LocalCorpus(
    "wiki",
    (("validation", (os.path.join(SHARED_DATA_DIR, "corpus-wiki", "validation-*.jsonl.xz"),)),),
    description="Wikipedia (WikiText raw valid+test), ../shared/data/corpus-wiki, CC BY-SA 3.0; evaluation only",
    hint=_DOWNLOAD_HINT)

LOCAL_CORPORA = {c.name: c for c in (BOOKS_MINI, BOOKS_20M, WIKI_MINI, BOOKS, WIKI)}
