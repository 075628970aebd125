"""Corpus readers, vocabulary training and the token cache (no TensorFlow needed)."""
import gzip
import json
import lzma
import os

import numpy as np
import pytest

from data import cache as cache_lib
from data import corpora
from data import vocab as vocab_lib


def write_jsonl(path, texts, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")


def test_reads_all_formats_in_sorted_order(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", ["two", "", "three"])
    write_jsonl(tmp_path / "c.jsonl.xz", ["four ünïcødé"], lzma.open)
    write_jsonl(tmp_path / "d.jsonl.gz", ["five\nlines"], gzip.open)
    (tmp_path / "a.txt").write_text("one whole\n\nfile", encoding="utf-8")
    files = corpora.expand_paths([str(tmp_path / "*")])
    assert [os.path.basename(f) for f in files] == ["a.txt", "b.jsonl", "c.jsonl.xz", "d.jsonl.gz"]
    assert list(corpora.iter_documents(files)) == ["one whole\n\nfile", "two", "three", "four ünïcødé",
                                                    "five\nlines"]


def test_embedded_corpora_are_shipped_with_licence_notes():
    train = list(corpora.BOOKS_MINI.documents("train"))
    valid = list(corpora.BOOKS_MINI.documents("validation"))
    wiki = list(corpora.WIKI_MINI.documents("validation"))
    assert (len(train), len(valid), len(wiki)) == (92, 10, 34)
    assert not set(train) & set(valid)
    for sub in ("books-mini", "wiki-mini"):
        text = open(os.path.join(corpora.EMBEDDED_DIR, sub, "SOURCE.md")).read()
        assert "Licence" in text or "licence" in text
    assert not corpora.WIKI_MINI.has_split("train")


def test_missing_path_names_the_pattern(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope-.*matches no file"):
        corpora.expand_paths([str(tmp_path / "nope-*.jsonl")])


def test_unsupported_suffix(tmp_path):
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="unsupported corpus file type"):
        corpora.expand_paths([str(tmp_path / "x.csv")])


def test_invalid_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n\n{"text": broken}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: not valid JSON"):
        list(corpora.read_documents(str(path)))
    path.write_text('{"body": "no text key"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: expected a JSON object with a string field 'text'"):
        list(corpora.read_documents(str(path)))


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"latin1\.jsonl\.gz:2: not valid UTF-8"):
        list(corpora.read_documents(str(path)))
    txt = tmp_path / "bad.txt"
    txt.write_bytes(b"\xff\xfe oops")
    with pytest.raises(ValueError, match=r"bad\.txt:1: not valid UTF-8"):
        list(corpora.read_documents(str(txt)))


@pytest.fixture(scope="module")
def book_docs():
    return list(corpora.BOOKS_MINI.documents("train"))


def test_sentencepiece_training_is_deterministic_and_cached(tmp_path, book_docs):
    calls = []

    def docs():
        calls.append(1)
        return iter(book_docs)

    kw = dict(corpus_fingerprint="fp-books", vocab_size=512, max_chars=1_000_000)
    p1 = vocab_lib.train_or_load_spm(docs, cache_dir=str(tmp_path / "a"), **kw)
    p2 = vocab_lib.train_or_load_spm(docs, cache_dir=str(tmp_path / "b"), **kw)
    assert open(p1, "rb").read() == open(p2, "rb").read()                # same bytes from independent trainings
    assert vocab_lib.train_or_load_spm(docs, cache_dir=str(tmp_path / "a"), **kw) == p1
    assert len(calls) == 2                                               # third call hit the cache
    p3 = vocab_lib.train_or_load_spm(docs, cache_dir=str(tmp_path / "a"), **dict(kw, corpus_fingerprint="other"))
    assert p3 != p1                                                      # a changed corpus trains anew
    enc = vocab_lib.make_encoder("spm", p1)
    assert enc.vocab_size == 512
    assert [enc._sp.IdToPiece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]   # seqio ids
    sample = book_docs[3][:3000] + "\n\n  Ωmega ✓ 𝄞 tabs\there"
    ids = enc.encode(sample)
    assert enc.decode(ids) == sample                                     # exact round trip (byte fallback)
    assert enc.token_bytes()[ids].sum() == len(sample.encode("utf-8"))   # bytes table is exact


def test_vocabulary_larger_than_corpus_supports(tmp_path):
    docs = lambda: iter(["tiny corpus with few words. " * 3])  # noqa: E731
    with pytest.raises(ValueError, match="larger than this corpus supports"):
        vocab_lib.train_or_load_spm(docs, corpus_fingerprint="tiny", vocab_size=5000, cache_dir=str(tmp_path))
    assert not os.listdir(tmp_path) or not any(f.endswith(".model") for f in os.listdir(tmp_path / "vocab"))
    with pytest.raises(ValueError, match="too small"):
        vocab_lib.train_or_load_spm(docs, corpus_fingerprint="tiny", vocab_size=100, cache_dir=str(tmp_path))


def test_byte_encoder_matches_seqio_convention():
    enc = vocab_lib.Encoder("byte")
    ids = enc.encode("Aé")
    assert ids.tolist() == [0x41 + 3, 0xC3 + 3, 0xA9 + 3] and enc.vocab_size == 259
    assert enc.decode(ids.tolist() + [1, 0]) == "Aé"


def test_cache_build_packs_documents_with_eos(tmp_path):
    enc = vocab_lib.Encoder("byte")
    desc = {"task": "t", "split": "train", "corpus": "x", "vocabulary": "byte"}
    entry = cache_lib.get_or_build(str(tmp_path), desc, lambda: iter(["ab", "c", "dé"]), enc, num_workers=1)
    assert entry.tokens.tolist() == [100, 101, 1, 102, 1, 103, 0xC3 + 3, 0xA9 + 3, 1]
    assert entry.manifest["n_documents"] == 3 and entry.manifest["n_bytes"] == 6
    assert entry.tokens.dtype == np.uint16
    w = entry.windows(4)
    assert w.shape == (2, 5) and w[1].tolist() == entry.tokens[4:9].tolist()


def test_cache_with_worker_processes_matches_single_process(tmp_path, book_docs):
    enc = vocab_lib.Encoder("byte")
    docs = book_docs[:12]
    one = cache_lib.get_or_build(str(tmp_path / "1"), {"k": 1}, lambda: iter(docs), enc, num_workers=1)
    two = cache_lib.get_or_build(str(tmp_path / "2"), {"k": 1}, lambda: iter(docs), enc, num_workers=2)
    np.testing.assert_array_equal(one.tokens, two.tokens)


def test_interrupted_build_leaves_no_valid_cache(tmp_path):
    enc = vocab_lib.Encoder("byte")

    def docs_then_crash():
        yield "first document"
        raise KeyboardInterrupt("killed")                # as if the user pressed Ctrl-C mid-build

    desc = {"task": "t", "split": "train"}
    with pytest.raises(KeyboardInterrupt):
        cache_lib.get_or_build(str(tmp_path), desc, docs_then_crash, enc, num_workers=1)
    assert os.listdir(tmp_path / "tokens") == []           # temp dir removed, nothing renamed into place
    # a stale temp dir of a SIGKILLed build is never mistaken for an entry
    key = cache_lib.cache_key(dict(desc, format=cache_lib.FORMAT))
    os.makedirs(tmp_path / "tokens" / f"{key}.tmp-999-dead")
    entry = cache_lib.get_or_build(str(tmp_path), desc, lambda: iter(["ok"]), enc, num_workers=1)
    assert entry.tokens.tolist() == [ord("o") + 3, ord("k") + 3, 1]


def test_bad_document_in_worker_build_raises_and_cleans_up(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        cache_lib.get_or_build(str(tmp_path / "c"), {"k": 2}, lambda: corpora.read_documents(str(path)),
                               vocab_lib.Encoder("byte"), num_workers=2)
    assert os.listdir(tmp_path / "c" / "tokens") == []


def test_empty_corpus_is_an_error_and_leaves_no_cache(tmp_path):
    with pytest.raises(ValueError, match="empty corpus"):
        cache_lib.get_or_build(str(tmp_path), {"task": "e", "split": "train"}, lambda: iter([]),
                               vocab_lib.Encoder("byte"))
    assert os.listdir(tmp_path / "tokens") == []


def test_truncated_cache_is_rebuilt_not_reused(tmp_path):
    enc = vocab_lib.Encoder("byte")
    entry = cache_lib.get_or_build(str(tmp_path), {"k": 3}, lambda: iter(["hello"]), enc)
    with open(os.path.join(entry.path, "tokens.bin"), "r+b") as f:
        f.truncate(4)
    rebuilt = cache_lib.get_or_build(str(tmp_path), {"k": 3}, lambda: iter(["hello"]), enc)
    assert rebuilt.n_tokens == 6 and len(rebuilt.tokens) == 6


_SLOW_BUILD = r"""
import sys, time
sys.path.insert(0, {root!r})
from data import cache, vocab

def docs():
    for i in range(10 ** 6):
        yield "document %d " % i * 50
        if i == 20:
            print("building", flush=True)
        if i > 20:
            time.sleep(0.01)

cache.get_or_build({cache_dir!r}, {{"task": "slow"}}, docs, vocab.Encoder("byte"), num_workers=1)
"""


def test_sigkill_during_build_leaves_no_valid_cache(tmp_path):
    import signal
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    child = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD.format(root=root, cache_dir=str(tmp_path))],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "building"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    names = os.listdir(tmp_path / "tokens")
    assert len(names) == 1 and ".tmp-" in names[0]                     # only the temporary directory
    entry = cache_lib.get_or_build(str(tmp_path), {"task": "slow"}, lambda: iter(["fresh"]),
                                   vocab_lib.Encoder("byte"))
    assert entry.manifest["n_documents"] == 1                            # rebuilt, the partial build ignored
