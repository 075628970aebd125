"""Gradient noise scale (McCandlish et al. 2018) and critical batch size (Kaplan et al. 2020 §5.1).

Spec: docs/noise-scale.md. B is in sequences (the estimator's examples) or tokens (×n_ctx),
as each name says.

estimator   in-step raw sums S_small/S_big, three ways to get the K sub-batch gradients: strided
            lax.scan over microbatches (jit/GSPMD, the trainer's), per-example vmap(grad) (K = B),
            shard_map over 'data' (b = B/(D·K), check_vma handled with pcast); unbiased |G|² and trΣ
smoothing   bias-corrected per-token EMAs → online B_simple = EMA(trΣ)/EMA(|G|²) (the trainer's log)
offline     metrics.jsonl → B_simple per ~1% loss bin and per token window: ratio of sums weighted by
            steps, block-bootstrap 95% CIs (the authoritative estimate); pure numpy
batch_scan  B_crit measured directly from a batch-size scan: targets, steps-to-target, per-target
            S = S_min + E_min/B, B_crit(L) = B*/L^(1/α_B) with whole-run bootstrap CIs, and Kaplan's
            pointwise S_min, E_min, C_min along every curve (scaling.analysis.bcrit does the fits)
plots       noise_scale.png (one run) and bcrit.png (B_crit(L) beside B_simple(L), Kaplan's line)

CLI: experiments/noise_scale.py (one run with --gin_file/--workdir, or a sweep with --root).
"""
