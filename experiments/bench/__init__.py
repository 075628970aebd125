"""Benchmarks: `python -m experiments.bench [all|SECTION ...] [--out=FILE.json] [--tiny]` (README "Benchmarks").

suite.py runs the sections and writes the JSON + markdown table; one module per section (matmul, train,
noise, data, fit, compile, memory, gpu, sweep), torch_reference.py (the PyTorch step the train section times side
by side) and xla.py (this project's XLA CPU flags, set here before jax initialises its CPU client).
"""
from experiments.bench import xla as _xla

_xla.configure()

from experiments.bench.suite import REQUIRED_KEYS, RUNGS, SECTIONS, machine_info, main, markdown_table, run_sections  # noqa: E402,F401
