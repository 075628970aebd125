"""The layer table of WORKSPACE.md ("Layers"), enforced on the import graph.

Every import statement of scaling/, models/, data/ and experiments/ (module level or inside a function:
a lazy import is still a dependency) is read with `ast`, resolved to a project module and checked against
LAYERS: a module may import only the packages its layer lists. gin may be imported only where GIN_ALLOWED
says. test_the_check_catches_violations feeds the checker sources that break each rule.
"""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROJECT = ("scaling", "models", "data", "experiments")

# layer (module prefix, longest match wins) -> project packages it may import (prefixes).
LAYERS = {
    "scaling.core": ("scaling.core",),                                   # the leaf
    "models": ("models", "scaling.core"),
    "data": ("data", "scaling.core"),
    "scaling.analysis": ("scaling.analysis", "scaling.core"),            # pure math: no train, models or data
    "scaling.noise": ("scaling.noise", "scaling.analysis", "scaling.core"),
    "scaling.report": ("scaling.report", "scaling.analysis", "scaling.core"),
    "scaling.train": ("scaling.train", "scaling.noise", "scaling.core", "models", "data"),
    "scaling.sweep": ("scaling.sweep", "scaling.configurables", "scaling.core", "models",
                      "scaling.train.optimizers"),                        # the plan: Kaplan eq D.1 learning rate
    "scaling.configurables": ("scaling.configurables", "scaling.sweep", "scaling.train.config", "models", "data",
                              "scaling.core"),
    "scaling": ("scaling",),                                              # scaling/__init__.py
    "experiments": PROJECT,                                               # entry points: anything
}
# The library reads no gin state: gin is imported by the registration module only (and by TrainConfig's own
# registration, scaling/train/config.py).
GIN_ALLOWED = ("scaling.configurables", "scaling.train.config", "experiments")


def module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def imports_of(source: str, module: str) -> list[tuple[int, str]]:
    """(line, imported module) of every import in ``source`` (relative imports resolved against ``module``)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: -node.level]
                base = ".".join(parts + ([base] if base else []))
            # `from scaling import sweep` imports the module scaling.sweep; `from pkg import name` imports pkg.
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((node.lineno, sub if existing(sub) else base))
    return out


def layer_of(module: str) -> str | None:
    matches = [layer for layer in LAYERS if module == layer or module.startswith(layer + ".")]
    return max(matches, key=len) if matches else None


def is_project_module(name: str) -> bool:
    return name.split(".")[0] in PROJECT


def existing(name: str) -> bool:
    """Whether ``name`` is a project module or package (``from pkg import function`` names a function)."""
    path = os.path.join(ROOT, *name.split("."))
    return os.path.exists(path + ".py") or os.path.exists(os.path.join(path, "__init__.py"))


def violations(source: str, module: str) -> list[str]:
    layer = layer_of(module)
    if layer is None:
        return [f"{module}: no layer in LAYERS (add it to the table here and in WORKSPACE.md)"]
    allowed = LAYERS[layer]
    found = []
    for line, name in imports_of(source, module):
        top = name.split(".")[0]
        if top == "gin" and not any(module == g or module.startswith(g + ".") for g in GIN_ALLOWED):
            found.append(f"{module}:{line} imports gin (only {', '.join(GIN_ALLOWED)} may)")
        if not is_project_module(name) or not existing(name):
            continue
        if not any(name == a or name.startswith(a + ".") for a in allowed):
            found.append(f"{module}:{line} imports {name}, outside layer {layer!r} (may import {', '.join(allowed)})")
    return found


def project_files():
    for top in PROJECT:
        for directory, _, files in os.walk(os.path.join(ROOT, top)):
            if "results" in directory.split(os.sep) or "__pycache__" in directory:
                continue
            for f in sorted(files):
                if f.endswith(".py"):
                    yield os.path.join(directory, f)


def test_every_import_respects_the_layer_table():
    found = []
    for path in project_files():
        with open(path) as f:
            found += violations(f.read(), module_name(path))
    assert not found, "\n".join(found)


@pytest.mark.parametrize("module,source,needle", [
    ("scaling.core.units", "from scaling.analysis import laws\n", "imports scaling.analysis"),
    ("scaling.core.units", "import models\n", "imports models"),
    ("models.transformer", "def f():\n    from scaling.train import trainer\n", "imports scaling.train"),
    ("data.loader", "from scaling.noise import estimator\n", "imports scaling.noise"),
    ("scaling.analysis.fitting", "from scaling.train import config\n", "imports scaling.train"),
    ("scaling.analysis.fitting", "import data.pipeline\n", "imports data"),
    ("scaling.analysis.fitting", "from models import accounting\n", "imports models"),
    ("scaling.report.laws", "from data import pipeline\n", "imports data"),
    ("scaling.train.trainer", "from experiments import train_gin\n", "imports experiments"),
    ("scaling.train.trainer", "import gin\n", "imports gin"),
    ("scaling.sweep", "from scaling.train import trainer\n", "imports scaling.train"),
    ("scaling.noise.offline", "from ..train import trainer\n", "imports scaling.train"),
])
def test_the_check_catches_violations(module, source, needle):
    found = violations(source, module)
    assert found and needle in found[0], found


def test_the_check_allows_what_the_table_allows():
    assert violations("from scaling.core import formulas\nimport numpy\n", "models.accounting") == []
    assert violations("from scaling.analysis import fitting\n", "scaling.noise.batch_scan") == []
    assert violations("import gin\nfrom scaling.train import trainer\n", "experiments.train") == []
