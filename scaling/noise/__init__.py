"""Gradient noise scale (McCandlish et al. 2018) and critical batch size (Kaplan et al. 2020 §5.1).

estimator   in-step raw sums S_small/S_big (microbatch scan), unbiased |G|² and trΣ
smoothing   bias-corrected per-token EMAs → B_simple = EMA(trΣ)/EMA(|G|²)
"""
