"""The sweep report: every Kaplan et al. 2020 figure a sweep measured, our constants beside the paper's.

    from scaling.report import build; build(root, n_boot=200, seed=0)   # or python -m experiments.report

loader.py (the sweep on disk), document.py (the report being built, formatting, tables), one module per
section family (laws, compute, batch, context, families, prediction), build.py (assembly). The math of the
figures is scaling/analysis/report_tables.py (pure, tested on tests/report/report_synth_sweep.py); this
package reads files and writes report.md, figures/ and fits/.
"""
from scaling.report.build import SECTIONS, build  # noqa: F401
