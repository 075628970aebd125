"""Scaling-law analysis: pure math on CSV/JSON (no model, data or trainer imports).

Modules:
  laws      law forms in the papers' symbols (Kaplan eqs 1.x, 4.x, 5.x, App. B; Chinchilla; Muennighoff)
  specs     parametric laws in fitting form (log-space θ, log-sum-exp log L̂, start grids)
  fitting   Huber-in-log objective, vmapped multi-start L-BFGS (float64 only inside), BFGS polish,
            variable projection, bootstrap, WLS in log-log
  isoflop   Chinchilla approaches 1 (training-curve envelope) and 2 (IsoFLOP profiles)
  bcrit     S = S_min + E_min/B per target loss, B_crit(L) = B*/L^(1/α_B), whole-run bootstrap
  frontier  compute-efficient frontier, shape choice and the run planner (gin text)
  api       law name + table -> the fit JSON record and a predictor (used by experiments.fit)
  io        validated CSV reading, atomic JSON/CSV writing
  plots     matplotlib (Agg) figures, one function per figure
"""
