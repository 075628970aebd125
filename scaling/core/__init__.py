"""The project's leaf package: definitions every other package shares, importing nothing of the project.

- `units`:    PF_DAY and the published constants that more than one package uses (Kaplan Table 5).
- `formulas`: the pure N, training-FLOPs and B_crit(L) formulas (models.accounting, scaling.analysis,
              scaling.noise and the report all call these; none writes them out again).
- `records`:  the run record: summary.json fields, runs.csv columns, the one "is this run finished" check.
- `fileio`:   atomic text/JSON writes, strict-JSON conversion, tolerant JSON readers.

Nothing here imports models/, data/, scaling.* or experiments/ (tests/test_layering.py checks it), and
nothing here imports jax: every function works on floats, numpy arrays and jax arrays alike.
"""
