"""What the models are trained on: corpora, seqio tasks, vocabularies, token cache, loader.

  corpora.py      readers for .txt/.jsonl/.jsonl.xz/.jsonl.gz (errors name file and line), the
                  embedded corpora in corpora/ (books-mini, wiki-mini) and the shared ones
  tasks.py        seqio Task registry: books_mini, wiki_mini, books, wiki, lm1b, c4_en, wiki40b_en,
                  local files (imports seqio/TensorFlow)
  vocab.py        SentencePiece BPE trained deterministically on a train split, cached by content
                  hash; byte vocabulary; seqio ids pad 0 / eos 1 / unk 2; bytes per token
  cache.py        tokenize once on all cores into a memmap stream packed with EOS + JSON manifest
  permutation.py  Feistel permutation: O(1)-memory keyed shuffles
  loader.py       TrainLoader.batch(step): pure function of (seed, step, batch, D, host); eval sets
  pipeline.py     DataConfig and build_data(...) -> LMData, the trainer's single entry point

Everything except tasks.py (and build_data, which calls it) is importable without TensorFlow.
This package is gin-free; scaling/configurables.py registers DataConfig for gin.
"""
