"""The table of every model size in gin/models/: N (each convention), exact counts, FLOPs per token.

Used by ``python -m experiments.plan --list_models``; ``python -m experiments.model_table`` works too.
Exact counts come from ``jax.eval_shape`` of the real ``init`` (no memory is allocated), so even the
1.5e9-parameter paper sizes are listed instantly.
"""
import glob
import os
import sys

import gin

from models import accounting, build_model
from scaling import configurables


def model_gin_files(root: str = configurables.REPO_ROOT) -> list[str]:
    files = sorted(glob.glob(os.path.join(root, "gin", "models", "*.gin")))
    return [f for f in files if not os.path.basename(f).endswith("base.gin")]


def load_model_config(path: str):
    gin.clear_config()
    try:
        configurables.parse_gin([path], [])
        return configurables.bound_model_config()
    finally:
        gin.clear_config()


def exact_counts(config) -> dict:
    import jax
    import jax.numpy as jnp

    module = build_model(config)
    tokens = jax.ShapeDtypeStruct((1, config.n_ctx), jnp.int32)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), tokens)
    return accounting.param_counts(shapes)


def model_rows(files=None) -> list[dict]:
    rows = []
    for path in files or model_gin_files():
        config = load_model_config(path)
        counts = exact_counts(config)
        rows.append({
            "file": os.path.relpath(path, configurables.REPO_ROOT),
            "family": config.family,
            "n_layer": config.n_layer,
            "d_model": config.d_model,
            "n_ctx": config.n_ctx,
            "N_kaplan": accounting.nonembedding_params(config),
            "N_tree_kernels": counts["nonembedding_kernels"],
            "N_tree_nonembedding": counts["nonembedding"],
            "N_total": counts["total"],
            "fwd_flops_per_token_kaplan": accounting.flops_per_token(config, "kaplan", "forward").flops,
            "train_flops_per_token_6N": accounting.flops_per_token(config, "kaplan", "train").flops,
            "train_flops_per_token_chinchilla": accounting.flops_per_token(config, "chinchilla", "train").flops,
            "train_flops_per_token_porian": accounting.flops_per_token(config, "porian", "train").flops,
        })
    family_order = {"transformer": 0, "recurrent_transformer": 1, "lstm": 2}
    rows.sort(key=lambda r: (r["file"].split("/")[-1].split("_")[0] == "paper",
                             family_order[r["family"]], r["N_kaplan"]))
    return rows


def print_model_table(files=None, out=sys.stdout) -> list[dict]:
    rows = model_rows(files)
    header = (f"{'gin file':<38s} {'family':<22s} {'L':>3s} {'d':>5s} {'N (Kaplan)':>12s} "
              f"{'N total':>13s} {'fwd/tok':>10s} {'6N':>10s} {'Chinchilla':>10s} {'Porian':>10s}")
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in rows:
        print(f"{r['file']:<38s} {r['family']:<22s} {r['n_layer']:>3d} {r['d_model']:>5d} "
              f"{r['N_kaplan']:>12,d} {r['N_total']:>13,d} {r['fwd_flops_per_token_kaplan']:>10.3e} "
              f"{r['train_flops_per_token_6N']:>10.3e} {r['train_flops_per_token_chinchilla']:>10.3e} "
              f"{r['train_flops_per_token_porian']:>10.3e}", file=out)
    print("N (Kaplan) = non-embedding parameters without biases/LayerNorm; FLOPs are per token "
          "(fwd: 2N + 2 n_layer n_ctx d_attn; train: 6N Kaplan, Chinchilla App. F, Porian adds unembedding). "
          "N total uses each file's vocab_size (the trainer replaces it with the data's).", file=out)
    return rows


if __name__ == "__main__":
    print_model_table()
