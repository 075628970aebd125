"""Data benchmark: vocabulary training, tokenization throughput, and loader vs trainer throughput.

`python -m experiments.bench data --out=F.json`. All figures are measured in this run, side by side:
  * SentencePiece training time (4096 pieces on the embedded books-mini train split);
  * tokenization throughput of the token-cache build on all cores (fresh temporary cache);
  * loader throughput at the mid CPU rung (32 sequences x n_ctx 256, through the prefetch thread);
  * the trainer's consumption: a jitted forward+backward of models.transformer.Transformer
    (d_model 128, 4 layers, same batch), or, if that module is missing, a jitted matmul stand-in
    (the figure names then say "standin");
  * their ratio (goal: the loader is >= 20x faster than the trainer consumes). ``loader_over_consumption``
    divides by the fastest trainer consumption measured in this run: the train section's fastest rung
    when it ran before this section (its real train step), else the fwd+bwd figure above.
Set SCALING_BENCH_DATA_FULL=1 to also tokenize the full shared book corpus (~117 MB, minutes).
"""
import os
import tempfile
import time

import numpy as np

from data import pipeline
from data.pipeline import DataConfig

BATCH, N_CTX = 32, 256


def _loader_figures(data: pipeline.LMData, n_batches: int = 400) -> dict:
    loader = data.train
    start = time.perf_counter()
    for _ in loader.iterate(0, n_batches):
        pass
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    for step in range(100):
        loader.batch(10_000 + step)
    call_ms = (time.perf_counter() - start) / 100 * 1e3
    return {"data_loader_batches_per_sec": n_batches / seconds,
            "data_loader_tokens_per_sec": n_batches * BATCH * N_CTX / seconds,
            "data_loader_batch_call_ms": call_ms}


def _trainer_tokens_per_sec(vocab_size: int, n_steps: int = 5) -> tuple[str, float]:
    """Tokens/s the trainer consumes: jitted fwd+bwd of the d_model 128 / 4-layer Transformer."""
    import jax
    import jax.numpy as jnp
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, vocab_size, size=(BATCH, N_CTX + 1)), jnp.int32)
    try:
        from models.transformer import Transformer, TransformerConfig
    except ImportError:
        name = "data_trainer_standin_matmul_tokens_per_sec"
        w = jnp.ones((128, 128 * 4 * 12), jnp.float32) * 0.01   # ~6N FLOPs/token of a 4-layer d128 model

        @jax.jit
        def step(x):
            return jax.grad(lambda w_: jnp.sum(jnp.tanh(x @ w_)))(w)
        args = (jnp.ones((BATCH * N_CTX, 128), jnp.float32),)
    else:
        name = "data_trainer_fwd_bwd_tokens_per_sec"
        model = Transformer(TransformerConfig(vocab_size=vocab_size, n_ctx=N_CTX, n_layer=4, d_model=128,
                                              d_ff=512, d_attn=128, n_heads=4))
        params = model.init(jax.random.PRNGKey(0), tokens[:, :-1])

        @jax.jit
        def step(p, w):
            def loss_fn(p_):
                logits = model.apply(p_, w[:, :-1])
                logp = jax.nn.log_softmax(logits)
                return -jnp.mean(jnp.take_along_axis(logp, w[:, 1:, None], axis=-1))
            return jax.value_and_grad(loss_fn)(p)
        args = (params, tokens)
    jax.block_until_ready(step(*args))                    # compile
    start = time.perf_counter()
    for _ in range(n_steps):
        out = step(*args)
    jax.block_until_ready(out)
    seconds = (time.perf_counter() - start) / n_steps
    return name, BATCH * N_CTX / seconds


def run(previous: dict | None = None, tiny: bool = False) -> dict:
    del tiny  # no smaller variant: the embedded corpus is the smallest real data
    previous = previous or {}
    figures = {"data_bench_batch_sequences": BATCH, "data_bench_n_ctx": N_CTX}
    with tempfile.TemporaryDirectory(prefix="bench-data-") as cache_dir:
        config = DataConfig(task="books_mini", vocab_size=4096, cache_dir=cache_dir)
        start = time.perf_counter()
        data = pipeline.build_data(config, n_ctx=N_CTX, global_batch_size=BATCH, seed=0)
        figures["data_build_seconds_embedded"] = time.perf_counter() - start   # incl. spm + 3 caches
        from data import cache
        train_manifest = cache.TokenCache(data.manifest["train_cache"]).manifest
        figures["data_tokenize_tokens_per_sec"] = train_manifest["tokens_per_second"]
        figures["data_tokenize_mbytes_per_sec"] = train_manifest["n_bytes"] / train_manifest["build_seconds"] / 1e6
        figures["data_tokenize_workers"] = train_manifest["num_workers"]
        figures["data_train_tokens_embedded"] = data.manifest["train_tokens"]
        figures["data_bytes_per_token_embedded_spm4096"] = data.manifest["train_bytes_per_token"]
        from data import vocab as vocab_lib
        from data import corpora
        docs = list(corpora.BOOKS_MINI.documents("train"))
        start = time.perf_counter()
        vocab_lib._train_spm(vocab_lib.training_paragraphs(docs), 4096)      # pylint: disable=protected-access
        figures["data_spm4096_train_seconds"] = time.perf_counter() - start

        figures.update(_loader_figures(data))
        name, consumed = _trainer_tokens_per_sec(data.vocab_size)
        figures[name] = consumed
        figures["data_loader_over_trainer_ratio"] = figures["data_loader_tokens_per_sec"] / consumed
        figures["data_loader_meets_20x_goal"] = int(figures["data_loader_over_trainer_ratio"] >= 20)
        train_rates = {k: v for k, v in previous.items() if k.startswith("train_") and k.endswith("_tokens_per_sec")}
        if train_rates:
            source, consumption = max(train_rates.items(), key=lambda kv: kv[1])
        else:
            source, consumption = name, consumed
        figures["loader_over_consumption"] = figures["data_loader_tokens_per_sec"] / consumption
        figures["loader_consumption_source"] = source

        if os.environ.get("SCALING_BENCH_DATA_FULL") == "1":
            full = DataConfig(task="books", vocab_size=8192, extra_eval_tasks=(), cache_dir=cache_dir)
            start = time.perf_counter()
            big = pipeline.build_data(full, n_ctx=N_CTX, global_batch_size=BATCH, seed=0)
            figures["data_build_seconds_books_full"] = time.perf_counter() - start
            m = cache.TokenCache(big.manifest["train_cache"]).manifest
            figures["data_tokenize_tokens_per_sec_books_full"] = m["tokens_per_second"]
            figures["data_train_tokens_books_full_spm8192"] = m["n_tokens"]
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()}
