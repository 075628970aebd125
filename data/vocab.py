"""Vocabularies: SentencePiece BPE trained on a task's train split, or raw UTF-8 bytes.

Both follow seqio's id convention: pad = 0, eos = 1, unk = 2. The SentencePiece model is trained
deterministically (fixed paragraph sample, no shuffling, fixed thread count) and cached under
``cache_dir/vocab/<key>.model`` where the key hashes the training corpus fingerprint and every
training option, so a changed corpus or size trains a new model and an unchanged one is reused.

Settings chosen so that decode(encode(text)) == text exactly (needed for bits-per-byte):
identity normalisation, no extra-whitespace removal, no dummy prefix, byte fallback for any
character outside the learned alphabet. (The paper's GPT-2 tokenizer is a byte-level BPE of
50257 pieces; set ``vocab_size`` accordingly for large runs.)

This module imports sentencepiece and numpy only; seqio (and so TensorFlow) is imported lazily by
`seqio_vocabulary`.
"""
import hashlib
import io
import json
import os
import uuid
from typing import Iterable, Iterator

import numpy as np

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
BYTE_OFFSET = 3                 # seqio.ByteVocabulary: id = byte + 3
BYTE_VOCAB_SIZE = 256 + BYTE_OFFSET
SPM_FORMAT = "spm-bpe-v1"       # bump when training options change, so old caches are not reused

# Deterministic training sample: at most this many characters of paragraphs, taken at a fixed stride.
DEFAULT_MAX_TRAINING_CHARS = 5_000_000
SCAN_FACTOR = 25             # read at most 25 x max_chars characters of documents (the whole books corpus)
MAX_PARAGRAPH_CHARS = 8192      # longer paragraphs are cut (spm skips sentences over max_sentence_length)


def training_paragraphs(documents: Iterable[str], max_chars: int = DEFAULT_MAX_TRAINING_CHARS) -> list[str]:
    """Splits documents into paragraphs and keeps an evenly strided subset of about ``max_chars``.

    Stride sampling (not random) so the sample, and hence the vocabulary, is a pure function of
    the corpus. Newlines inside paragraphs are kept so the model learns "\\n" (books are hard-wrapped).
    """
    paragraphs, scanned = [], 0
    for doc in documents:
        for para in doc.split("\n\n"):
            if para.strip():
                paragraphs.append(para[:MAX_PARAGRAPH_CHARS])
        scanned += len(doc)
        if scanned >= SCAN_FACTOR * max_chars:   # huge sources (c4): sample from a fixed prefix
            break
    total = sum(len(p) for p in paragraphs)
    stride = max(1, -(-total // max_chars))
    return paragraphs[::stride]


def spm_cache_key(corpus_fingerprint: str, vocab_size: int, max_chars: int) -> str:
    blob = json.dumps([SPM_FORMAT, corpus_fingerprint, vocab_size, max_chars]).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _train_spm(paragraphs: list[str], vocab_size: int) -> bytes:
    import sentencepiece as spm  # pylint: disable=import-outside-toplevel
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(paragraphs), model_writer=model,
            model_type="bpe", vocab_size=vocab_size,
            pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,          # seqio convention
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=False, allow_whitespace_only_pieces=True,        # exact round trip
            byte_fallback=True, character_coverage=0.9995,
            max_sentence_length=4 * MAX_PARAGRAPH_CHARS,
            input_sentence_size=0, shuffle_input_sentence=False,              # use our sample as is
            num_threads=2, minloglevel=2, hard_vocab_limit=True)
    except RuntimeError as e:
        msg = str(e)
        if "Vocabulary size" in msg or "vocab_size" in msg:
            raise ValueError(f"vocabulary size {vocab_size} is larger than this corpus supports ({msg.strip()}); "
                             "lower DataConfig.vocab_size or use a larger training corpus") from None
        raise
    return model.getvalue()


def train_or_load_spm(documents_fn, *, corpus_fingerprint: str, vocab_size: int, cache_dir: str,
                      max_chars: int = DEFAULT_MAX_TRAINING_CHARS) -> str:
    """Returns the path of a cached SentencePiece model, training it on first use.

    ``documents_fn()`` yields the training documents; it is only called on a cache miss.
    The model file is written under a temporary name and renamed, so a kill never leaves a
    truncated model that looks valid.
    """
    min_size = BYTE_VOCAB_SIZE + 1
    if vocab_size < min_size:
        raise ValueError(f"vocab_size {vocab_size} is too small for a byte-fallback SentencePiece model "
                         f"(needs >= {min_size}: 3 specials + 256 bytes + pieces); raise it or use vocabulary='byte'")
    vocab_dir = os.path.join(cache_dir, "vocab")
    path = os.path.join(vocab_dir, f"spm{vocab_size}-{spm_cache_key(corpus_fingerprint, vocab_size, max_chars)}.model")
    if os.path.exists(path):
        return path
    paragraphs = training_paragraphs(documents_fn(), max_chars)
    if not paragraphs:
        raise ValueError("cannot train a vocabulary: the training split has no text (empty corpus); "
                         "check the corpus files")
    model = _train_spm(paragraphs, vocab_size)
    os.makedirs(vocab_dir, exist_ok=True)
    # A unique temporary name opened with open(): the file gets the umask's permissions like every other
    # output (mkstemp would make it 0600, unreadable to the rest of a group sharing the cache).
    tmp = os.path.join(vocab_dir, f".{os.path.basename(path)}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "xb") as f:
        f.write(model)
    os.replace(tmp, path)
    return path


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# --- encoders usable in worker processes (no TensorFlow) -----------------------------------------

class Encoder:
    """Text -> int32 ids without EOS, for ``kind`` "spm" (model bytes) or "byte"."""

    def __init__(self, kind: str, model_bytes: bytes | None = None):
        self.kind = kind
        self.model_bytes = model_bytes
        self._sp = None
        if kind == "spm":
            import sentencepiece as spm  # pylint: disable=import-outside-toplevel
            self._sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        elif kind != "byte":
            raise ValueError(f"unknown vocabulary {kind!r}; use 'spm' or 'byte'")

    def __reduce__(self):   # picklable for multiprocessing: rebuild from the model bytes
        return (Encoder, (self.kind, self.model_bytes))

    @property
    def vocab_size(self) -> int:
        return self._sp.GetPieceSize() if self._sp is not None else BYTE_VOCAB_SIZE

    def encode(self, text: str) -> np.ndarray:
        if self._sp is not None:
            return np.asarray(self._sp.EncodeAsIds(text), dtype=np.int32)
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32) + BYTE_OFFSET

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids if int(i) >= BYTE_OFFSET or (self._sp is not None and int(i) == UNK_ID)]
        if self._sp is not None:
            return self._sp.DecodeIds(ids)
        return bytes(i - BYTE_OFFSET for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each id decodes to (0 for pad/eos/unk), so bits/byte = nats·N_tok/(ln2·Σbytes)."""
        if self._sp is None:
            table = np.ones(BYTE_VOCAB_SIZE, np.int64)
            table[:BYTE_OFFSET] = 0
            return table
        table = np.zeros(self._sp.GetPieceSize(), np.int64)
        for i in range(self._sp.GetPieceSize()):
            if self._sp.IsControl(i) or self._sp.IsUnknown(i):
                continue
            if self._sp.IsByte(i):
                table[i] = 1           # <0xNN>: one raw byte
            else:
                table[i] = len(self._sp.IdToPiece(i).replace("\u2581", " ").encode("utf-8"))
        return table


def make_encoder(kind: str, model_path: str | None = None) -> Encoder:
    if kind == "spm":
        with open(model_path, "rb") as f:
            return Encoder("spm", f.read())
    return Encoder(kind)


def vocab_fingerprint(kind: str, model_path: str | None = None) -> str:
    return f"spm:{file_sha256(model_path)}" if kind == "spm" else "byte:seqio-ByteVocabulary-v1"


def seqio_vocabulary(kind: str, model_path: str | None = None):
    """The seqio Vocabulary object (imports seqio and TensorFlow)."""
    import seqio  # pylint: disable=import-outside-toplevel
    if kind == "spm":
        return seqio.SentencePieceVocabulary(model_path, extra_ids=0)
    if kind == "byte":
        return seqio.ByteVocabulary(extra_ids=0)
    raise ValueError(f"unknown vocabulary {kind!r}; use 'spm' or 'byte'")


def paragraphs_iter(documents: Iterable[str]) -> Iterator[str]:   # small helper for inspection
    for doc in documents:
        yield from (p for p in doc.split("\n\n") if p.strip())
