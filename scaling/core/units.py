"""Units and the published constants shared across packages (each defined once, here)."""
from __future__ import annotations

PF_DAY = 8.64e19  # FLOP in one petaflop/s-day: 1e15 FLOP/s × 86,400 s (Kaplan et al. 2020 §1.3).

# Kaplan et al. 2020 Table 5 (= eqs 1.1-1.4, 5.3): single-variable fits. C constants in PF-days, B in tokens.
KAPLAN_TABLE5 = dict(alpha_N=0.076, N_c=8.8e13, alpha_D=0.095, D_c=5.4e13, alpha_C=0.057, C_c=1.6e7,
                     alpha_C_min=0.050, C_c_min=3.1e8, alpha_B=0.21, B_star=2.1e8, alpha_S=0.76, S_c=2.1e3)

# The critical-batch law's paper constants (eq 5.3), the pair the noise and report code compare against.
KAPLAN_BCRIT = {"B_star": KAPLAN_TABLE5["B_star"], "alpha_B": KAPLAN_TABLE5["alpha_B"]}
