"""Rebuilds books-20m/train-00000.jsonl.xz from the full Project Gutenberg corpus (the `books` task's files).

    python data/corpora/books-20m/build.py --corpus_dir=PATH/TO/corpus --out=data/corpora/books-20m

One paragraph-aligned excerpt of at most EXCERPT_BYTES from every train book, starting after 10 % of the
book (past front matter), in the corpus's own document order. Deterministic: the same input files give
the same output bytes (xz preset 9, no timestamps). The validation file is books-mini's (other books).
"""
import argparse
import hashlib
import json
import lzma
import os
import sys

EXCERPT_BYTES = 62_000
START_FRACTION = 0.10


def excerpt(text: str, limit: int = EXCERPT_BYTES, start_fraction: float = START_FRACTION) -> str:
    start = text.find("\n\n", int(len(text) * start_fraction))
    start = 0 if start < 0 else start + 2
    paragraphs, size = [], 0
    for paragraph in text[start:].split("\n\n"):
        n = len(paragraph.encode("utf-8")) + 2
        if size + n > limit and paragraphs:
            break
        paragraphs.append(paragraph)
        size += n
    return "\n\n".join(paragraphs).strip()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus_dir", required=True, help="folder with train-*.jsonl.xz of the full book corpus")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    shards = sorted(f for f in os.listdir(args.corpus_dir) if f.startswith("train-") and f.endswith(".jsonl.xz"))
    if not shards:
        print(f"error: no train-*.jsonl.xz in {args.corpus_dir}", file=sys.stderr)
        return 2
    lines = []
    for shard in shards:
        with lzma.open(os.path.join(args.corpus_dir, shard), "rt", encoding="utf-8") as f:
            for line in f:
                text = excerpt(json.loads(line)["text"])
                if text:
                    lines.append(json.dumps({"text": text}, ensure_ascii=False))
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path = os.path.join(args.out, "train-00000.jsonl.xz")
    with open(path, "wb") as f:
        f.write(lzma.compress(data, preset=9))
    text_bytes = sum(len(json.loads(l)["text"].encode("utf-8")) for l in lines)
    print(f"{path}: {len(lines)} docs, {text_bytes:,} text bytes, {os.path.getsize(path):,} compressed, "
          f"sha256 {hashlib.sha256(open(path, 'rb').read()).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
