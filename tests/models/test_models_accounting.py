"""Accounting: Kaplan's N and FLOPs against the real parameter tree, a traced matmul count and XLA's
cost analysis; every gin model file; the conventions; logical axis names onto a mesh."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax.core import meta
from jax.sharding import Mesh

from models import accounting, axes, build_model
from models.lstm import LSTMConfig
from models.recurrent_transformer import RecurrentTransformerConfig
from models.transformer import TransformerConfig

GPT2_SMALL = TransformerConfig(vocab_size=50257, n_ctx=1024, n_layer=12, d_model=768, d_ff=3072,
                               d_attn=768, n_heads=12)


def shapes(config, batch=1):
    module = build_model(config)
    tokens = jax.ShapeDtypeStruct((batch, config.n_ctx), jnp.int32)
    return module, jax.eval_shape(module.init, jax.random.PRNGKey(0), tokens)


def test_gpt2_small_has_kaplan_n_84934656():
    assert accounting.nonembedding_params(GPT2_SMALL) == 84_934_656
    counts = accounting.param_counts(shapes(GPT2_SMALL)[1])
    assert counts["nonembedding_kernels"] == 84_934_656
    # Biases and LayerNorms are real parameters, just not in Kaplan's N.
    assert counts["nonembedding"] > 84_934_656
    assert counts["embedding"] == 50257 * 768 + 1024 * 768
    assert counts["total"] == counts["embedding"] + counts["nonembedding"]


def test_every_gin_model_file_formula_matches_its_tree():
    from experiments.model_table import model_rows

    rows = model_rows()
    assert len([r for r in rows if r["file"].startswith("gin/models/cpu_")]) >= 8
    for row in rows:
        assert row["N_kaplan"] == row["N_tree_kernels"], row["file"]
    cpu = sorted(r["N_kaplan"] for r in rows if r["file"].startswith("gin/models/cpu_"))
    assert cpu[0] <= 2e4 and cpu[-1] >= 3e6 and math.log10(cpu[-1] / cpu[0]) >= 2.5
    for r in rows:
        if r["file"].startswith("gin/models/cpu_"):
            if r["n_layer"] == 2 and r["d_model"] < 32:
                # The quick preset's 2-layer width ladder below d = 32 (cpu_3k5, cpu_6k, cpu_14k): at these widths a
                # second layer of the same width bought nothing (README "The quick study"), so their aspect ratio
                # is below Kaplan's flat region by design; they are still no deeper than 2 layers.
                assert 6 <= r["d_model"] / r["n_layer"] < 16, r
            elif r["n_layer"] == 2 and r["d_model"] > 256:
                # The full preset's held-out width (cpu_3m54, d = 384): aspect 192, at the wide end of Kaplan Fig. 5
                # (a few percent of loss over aspect ratios ~10-200), kept 2 layers to stay on the ladder's family.
                assert r["d_model"] / r["n_layer"] <= 192, r
            else:
                assert 16 <= r["d_model"] / r["n_layer"] <= 128, r  # Kaplan Fig. 5's flat region
    paper = [r["N_kaplan"] for r in rows if r["file"].startswith("gin/models/paper_")]
    assert max(paper) >= 1.4e9
    families = {r["family"] for r in rows}
    assert families == {"transformer", "lstm", "recurrent_transformer"}


def _dot_flops(eqn):
    (lhs, rhs), out = [v.aval for v in eqn.invars], eqn.outvars[0].aval
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    contracted = int(np.prod([lhs.shape[d] for d in lhs_contract]))
    return 2 * int(np.prod(out.shape)) * contracted, lhs.shape, rhs.shape, out.shape


def _all_dot_generals(jaxpr):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn
        for sub in jax.core.jaxprs_in_params(eqn.params):
            yield from _all_dot_generals(sub)


@pytest.mark.parametrize("config", [
    TransformerConfig(vocab_size=1000, n_ctx=40, n_layer=3, d_model=96, d_ff=384, d_attn=96, n_heads=4),
    TransformerConfig(vocab_size=1500, n_ctx=56, n_layer=2, d_model=160, d_ff=448, d_attn=128, n_heads=8),
    RecurrentTransformerConfig(vocab_size=1000, n_ctx=40, n_layer=1, n_recurrence=3, d_model=96, d_ff=384,
                               d_attn=96, n_heads=4),
])
def test_kaplan_forward_flops_match_traced_matmuls_and_xla_cost(config):
    batch = 2
    module, params = shapes(config, batch)
    params = meta.unbox(params)
    tokens = jnp.zeros((batch, config.n_ctx), jnp.int32)
    jaxpr = jax.make_jaxpr(module.apply)(params, tokens).jaxpr
    weights = attention = unembed = 0
    for eqn in _all_dot_generals(jaxpr):
        flops, lhs, rhs, out = _dot_flops(eqn)
        if config.vocab_size in out:
            unembed += flops
        elif max(list(s).count(config.n_ctx) for s in (lhs, rhs, out)) >= 2:
            attention += flops  # QK^T and AV over the full (masked) context
        else:
            weights += flops
    tokens_count = batch * config.n_ctx
    kaplan = accounting.flops_per_token(config, "kaplan", "forward").flops * tokens_count
    # Causal masking: on average a token attends to half the context, hence attention / 2.
    traced = weights + attention / 2
    assert traced == pytest.approx(kaplan, rel=0.05)
    assert weights == pytest.approx(2 * tokens_count * (accounting.nonembedding_params(config)
                                    * (getattr(config, "n_recurrence", 1))), rel=1e-9)
    assert unembed == 2 * tokens_count * config.d_model * config.vocab_size
    # XLA's own count (adds elementwise work and the masked half of attention) within 5 %.
    cost = jax.jit(module.apply).lower(params, tokens).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    assert cost["flops"] == pytest.approx(kaplan + unembed + attention / 2, rel=0.05)


def test_training_flops_conventions():
    n = accounting.nonembedding_params(GPT2_SMALL)
    kaplan = accounting.flops_per_token(GPT2_SMALL)
    assert kaplan.convention == "kaplan" and kaplan.mode == "train" and not kaplan.include_context
    assert kaplan.flops == 6 * n  # C = 6N per token
    with_context = accounting.flops_per_token(GPT2_SMALL, include_context=True)
    assert with_context.flops == 6 * n + 6 * 12 * 1024 * 768
    porian = accounting.flops_per_token(GPT2_SMALL, "porian")
    assert porian.flops == 6 * (n + 50257 * 768)
    chinchilla = accounting.flops_per_token(GPT2_SMALL, "chinchilla")
    assert chinchilla.include_context
    # Hoffmann et al. Table A4: for large models their op count is within ~10 % of 6·(all parameters);
    # for small ones the embedding and attention terms make it much larger.
    big = TransformerConfig(vocab_size=32000, n_ctx=2048, n_layer=80, d_model=8192, d_ff=32768,
                            d_attn=8192, n_heads=64)
    ratio_big = accounting.flops_per_token(big, "chinchilla").flops / (
        6 * accounting.params_for_convention(big, "chinchilla"))
    assert 1.0 < ratio_big < 1.1
    ratio_small = chinchilla.flops / (6 * accounting.params_for_convention(GPT2_SMALL, "chinchilla"))
    assert ratio_small > 1.3
    with pytest.raises(ValueError, match="unknown FLOP convention"):
        accounting.flops_per_token(GPT2_SMALL, "palm")
    with pytest.raises(ValueError, match="always counts attention"):
        accounting.flops_per_token(GPT2_SMALL, "chinchilla", include_context=False)


def test_compute_in_pf_days():
    c = accounting.training_compute(GPT2_SMALL, tokens=1e9)
    assert c["flops"] == 6 * 84_934_656 * 1e9
    assert c["pf_days"] == pytest.approx(c["flops"] / 8.64e19)
    assert c["convention"] == "kaplan"


def test_lstm_and_recurrent_accounting():
    lstm = LSTMConfig(vocab_size=100, n_ctx=32, n_layer=3, d_model=48)
    assert accounting.nonembedding_params(lstm) == 3 * 8 * 48 * 48
    assert accounting.param_counts(shapes(lstm)[1])["nonembedding_kernels"] == 3 * 8 * 48 * 48
    assert accounting.flops_per_token(lstm, mode="forward").flops == 2 * 3 * 8 * 48 * 48
    rec = RecurrentTransformerConfig(vocab_size=100, n_ctx=32, n_layer=1, n_recurrence=4, d_model=64,
                                     d_ff=256, d_attn=64, n_heads=4)
    deep = TransformerConfig(vocab_size=100, n_ctx=32, n_layer=4, d_model=64, d_ff=256, d_attn=64, n_heads=4)
    # Shared parameters: N of one block; compute of four.
    assert accounting.nonembedding_params(rec) * 4 == accounting.nonembedding_params(deep)
    assert accounting.flops_per_token(rec, mode="forward").flops == accounting.flops_per_token(deep, mode="forward").flops


@pytest.mark.parametrize("config", [
    TransformerConfig(vocab_size=64, n_ctx=16, n_layer=2, d_model=32, d_ff=64, d_attn=32, n_heads=4),
    TransformerConfig(vocab_size=64, n_ctx=16, n_layer=2, d_model=32, d_ff=64, d_attn=32, n_heads=4,
                      scan_layers=True, tie_embeddings=False),
    RecurrentTransformerConfig(vocab_size=64, n_ctx=16, n_layer=1, n_recurrence=2, d_model=32, d_ff=64,
                               d_attn=32, n_heads=4, scan_layers=True),
    LSTMConfig(vocab_size=64, n_ctx=16, n_layer=2, d_model=32),
])
def test_every_parameter_has_logical_axes_that_map_onto_a_mesh(config):
    module, boxed = shapes(config, batch=8)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    known = set(axes.PARAM_AXES) | {None}
    for leaf in leaves:
        assert len(leaf.names) == leaf.value.ndim
        assert set(leaf.names) <= known, leaf.names
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), axes.MESH_AXES)
    specs = nn.get_partition_spec(boxed)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, axes.DEFAULT_RULES)
    tokens = jnp.zeros((8, config.n_ctx), jnp.int32)
    # jax.set_mesh makes every activation constraint bind (a rank mismatch would raise here).
    with jax.set_mesh(mesh), nn.logical_axis_rules(axes.DEFAULT_RULES):
        params = jax.jit(module.init, out_shardings=shardings)(jax.random.PRNGKey(0), tokens)
        logits = jax.jit(module.apply)(params, tokens)
    assert logits.shape == (8, 16, 64)
    # FSDP really splits d_model on a weight: the 'embed' axis is sharded over 'fsdp'.
    flat = jax.tree_util.tree_flatten_with_path(meta.unbox(params))[0]
    sharded = [leaf for path, leaf in flat if "fsdp" in str(leaf.sharding.spec)]
    assert sharded
    unsharded = jax.jit(module.apply)(meta.unbox(jax.device_get(params)), tokens)
    np.testing.assert_allclose(logits, unsharded, rtol=1e-5, atol=1e-5)


def test_model_table_lists_every_gin_model_file():
    import io

    from experiments.model_table import model_gin_files, print_model_table

    out = io.StringIO()
    rows = print_model_table(out=out)
    text = out.getvalue()
    assert len(rows) == len(model_gin_files()) >= 8 + 9 + 2 + 2
    for row in rows:
        assert row["file"] in text
    assert "84,934,656" in text  # paper_85m = GPT-2 small shape


def test_plan_list_models_cli_prints_the_table():
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-m", "experiments.plan", "--list_models"], cwd=root,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "gin/models/cpu_12k.gin" in out.stdout and "gin/models/paper_1b5.gin" in out.stdout
    assert "1,474,560,000" in out.stdout  # 48 layers × d_model 1600: Kaplan's largest size


def test_mfu_flops_count_every_matmul_including_the_unembedding():
    cfg = TransformerConfig(vocab_size=4096, n_ctx=128, n_layer=6, d_model=256, d_ff=1024, d_attn=256, n_heads=8)
    n = 12 * 6 * 256 ** 2
    attention = 6 * 6 * 128 * 256          # Kaplan's causal context term, x3 for training
    unembedding = 6 * 256 * 4096           # logits matmul forward (2dV) + its two backward matmuls
    assert accounting.mfu_flops_per_token(cfg) == 6 * n + attention + unembedding
    # Kaplan's C = 6N undercounts the work the step actually runs by the unembedding share (18% here).
    kaplan = accounting.flops_per_token(cfg, "kaplan", "train", include_context=True).flops
    assert accounting.mfu_flops_per_token(cfg) / kaplan == pytest.approx(1 + unembedding / (6 * n + attention))
