"""PyTorch reference for the train benchmark: the same GPT-2 pre-LN model and Adam step as the JAX trainer.

Only for benchmarking (requirements-bench.txt installs a CPU build of torch; the library never imports
it). The model mirrors models/transformer.py for a TransformerConfig: token + learned position
embeddings, n_layer pre-LN blocks (fused QKV projection, causal scaled-dot-product attention, output
projection; GELU-tanh MLP d_model -> d_ff -> d_model), final LayerNorm, tied unembedding; float32.
The step mirrors scaling/train/optimizers.py: mean next-token cross-entropy, global-norm clipping at
1.0, Adam(β1 0.9, β2 0.95, eps 1e-8), one optimizer step per batch (K = 1, no noise-scale sums).

`TorchStepTimer(model_config, batch, compile=...)` holds it eagerly or under torch.compile and times
windows of steps, steady state (the first steps, which compile, are timed separately), so that the
train benchmark can interleave its windows with the JAX step's.
"""
from __future__ import annotations

import math
import os
import time


def _torch():
    try:
        import torch
    except ImportError as exc:  # a clear message instead of a traceback deep in the benchmark
        raise ImportError("the PyTorch reference needs torch (CPU build): "
                          ".venv/bin/pip install -r requirements-bench.txt") from exc
    return torch


def build_model(model_config):
    """A torch.nn.Module with the parameter shapes and initialisation of models.transformer."""
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional
    cfg = model_config
    out_std = cfg.init_std / math.sqrt(2 * cfg.n_layer)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_epsilon)
            self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_attn)
            self.out = nn.Linear(cfg.d_attn, cfg.d_model)
            self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_epsilon)
            self.wi = nn.Linear(cfg.d_model, cfg.d_ff)
            self.wo = nn.Linear(cfg.d_ff, cfg.d_model)
            for layer, std in ((self.qkv, cfg.init_std), (self.out, out_std), (self.wi, cfg.init_std),
                               (self.wo, out_std)):
                nn.init.normal_(layer.weight, std=std)
                nn.init.zeros_(layer.bias)

        def forward(self, x):
            b, t, _ = x.shape
            qkv = self.qkv(self.ln_1(x)).view(b, t, 3, cfg.n_heads, cfg.head_dim)
            q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))        # [b, heads, t, head_dim]
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.out(y.transpose(1, 2).reshape(b, t, cfg.d_attn))
            return x + self.wo(F.gelu(self.wi(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.wpe = nn.Parameter(torch.randn(cfg.n_ctx, cfg.d_model) * 0.01)
            nn.init.normal_(self.wte.weight, std=cfg.init_std)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.n_layer))
            self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_epsilon)

        def forward(self, tokens):
            x = self.wte(tokens) + self.wpe[:tokens.shape[1]]
            for block in self.blocks:
                x = block(x)
            return self.ln_f(x) @ self.wte.weight.T   # tied unembedding

    if not cfg.tie_embeddings:
        raise ValueError("the PyTorch reference implements tied embeddings only (TransformerConfig.tie_embeddings)")
    return GPT()


def make_train_step(model, learning_rate: float = 1e-3, grad_clip: float = 1.0):
    """windows [B, n_ctx + 1] int64 -> loss: forward, backward, clip, Adam, as the JAX train step."""
    torch = _torch()
    F = torch.nn.functional
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, betas=(0.9, 0.95), eps=1e-8,
                                 foreach=True)

    def loss_fn(windows):
        logits = model(windows[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))

    def step(windows):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(windows)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
        optimizer.step()
        return loss

    return step, loss_fn


class TorchStepTimer:
    """The torch reference step with its model and batches, timed in windows of steps (steady state).

    Built eagerly or with the forward+backward under torch.compile with ``backend`` ("eager" only traces,
    for smoke tests); the first ``warmup`` steps, which compile, are timed separately as ``warmup_s``.
    """

    def __init__(self, model_config, batch: int, compile: bool = False, warmup: int = 2,
                 backend: str = "inductor"):
        torch = _torch()
        torch.manual_seed(0)
        torch.set_num_threads(os.cpu_count() or 1)
        self.model = build_model(model_config)
        # The optimizer step stays eager (foreach kernels) in both modes, the usual torch.compile set-up.
        self.step, _ = make_train_step(torch.compile(self.model, backend=backend) if compile else self.model)
        generator = torch.Generator().manual_seed(0)
        self.batches = [torch.randint(0, model_config.vocab_size, (batch, model_config.n_ctx + 1),
                                      generator=generator) for _ in range(4)]
        self.batch, self.n_ctx, self.i, self.loss = batch, model_config.n_ctx, 0, None
        self.torch_version = torch.__version__
        self.n_params = sum(p.numel() for p in self.model.parameters())
        start = time.perf_counter()
        self.steps(warmup)
        self.warmup_s = time.perf_counter() - start

    def steps(self, n: int) -> None:
        loss = None
        for _ in range(n):
            loss = self.step(self.batches[self.i % len(self.batches)])
            self.i += 1
        self.loss = loss.item()  # torch on CPU is synchronous; this only reads the value

    def window(self, n: int) -> float:
        """Seconds per step over one window of n steps."""
        start = time.perf_counter()
        self.steps(n)
        return (time.perf_counter() - start) / n
