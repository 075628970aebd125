"""Safety: no pickle/eval/exec (or other code-executing loaders) on user-supplied files anywhere in the
library or the CLIs; names that come from configs cannot make a run write outside its directory; a
malformed sweep file is a clear error."""
import ast
import os

import pytest

from scaling import sweep as sweep_lib
from scaling.train import checkpointing

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE_DIRS = ("scaling", "data", "models", "experiments")

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
CODE_BUILTINS = {"eval", "exec", "__import__", "compile"}
LOADERS = {("yaml", "load"), ("yaml", "unsafe_load"), ("torch", "load")}
# Explicit, reviewed exceptions: (path, finding) -> why it is safe. Empty today.
ALLOWED: dict[tuple[str, str], str] = {}


def unsafe_constructs(source: str) -> list[tuple[int, str]]:
    """(line, finding) for code (not comments or strings) that can execute or unpickle file contents."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            found.append((node.lineno, f"from {node.module} import"))
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in CODE_BUILTINS:
                found.append((node.lineno, f"{func.id}()"))
            if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                    and (func.value.id, func.attr) in LOADERS):
                found.append((node.lineno, f"{func.value.id}.{func.attr}()"))
            for kw in node.keywords:
                if kw.arg in ("shell", "allow_pickle") and isinstance(kw.value, ast.Constant) and kw.value.value is True:
                    found.append((node.lineno, f"{kw.arg}=True"))
    return found


def python_sources():
    for top in SOURCE_DIRS:
        for directory, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    yield os.path.relpath(os.path.join(directory, name), ROOT)


def test_no_pickle_eval_or_exec_in_the_source_tree():
    sources = list(python_sources())
    assert len(sources) > 30 and "scaling/train/trainer.py" in sources  # the scan sees the tree
    found = [f"{path}:{line}: {what}" for path in sources
             for line, what in unsafe_constructs(open(os.path.join(ROOT, path), encoding="utf-8").read())
             if (path, what) not in ALLOWED]
    assert not found, "unsafe constructs (or add a reviewed entry to ALLOWED):\n" + "\n".join(found)


def test_the_scan_would_catch_them():
    """The detector is live: each construct in a sample is flagged; look-alikes are not."""
    sample = ("import pickle\nfrom dill import loads\nx = eval(t)\nexec(t)\nyaml.load(f)\ntorch.load(p)\n"
              "np.load(p, allow_pickle=True)\nsubprocess.run(c, shell=True)\n")
    assert [line for line, _ in unsafe_constructs(sample)] == [1, 2, 3, 4, 5, 6, 7, 8]
    benign = "# eval(x) pickle\njax.eval_shape(f)\nmodel.eval()\ns = 'exec(x)'\nyaml.safe_load(f)\nre.compile(p)\n"
    assert unsafe_constructs(benign) == []


@pytest.mark.parametrize("name", ["../outside", "/etc/passwd", "a/../../outside", "", "."])
def test_output_names_cannot_escape_the_workdir(tmp_path, name):
    with pytest.raises(ValueError, match="workdir"):
        checkpointing.output_path(str(tmp_path / "run"), name)


def test_symlink_out_of_the_workdir_is_refused(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "link").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="escapes the workdir"):
        checkpointing.output_path(str(workdir), "link/stolen.json")
    assert checkpointing.output_path(str(workdir), "checkpoints/10") == str(workdir / "checkpoints" / "10")


def test_sweep_run_names_stay_inside_the_sweep_root(tmp_path):
    """Run names are built from sweep-file values; hostile ones still name a directory under ROOT/runs."""
    name = sweep_lib.run_name("../../etc", 10 ** 6, 16, [("TrainConfig.seed", "../../x")], tag="/abs/../y")
    assert "/" not in name and name not in ("", ".", "..")
    path = checkpointing.output_path(str(tmp_path / "runs"), name)
    assert os.path.dirname(path) == str(tmp_path / "runs")


@pytest.mark.parametrize("text,needle", [
    ("Sweep.name = 'x'\nSweep.blocks = [{'group': 'ladder', 'models': ['cpu_55k'],\n", "cannot parse"),
    ("Sweep.name = 'x'\nSweep.blocks = [{'group': 'ladder', 'models': ['cpu_55k'], 'bogus': 1}]\n", "bogus"),
])
def test_malformed_sweep_file_is_a_clear_error(tmp_path, text, needle):
    path = tmp_path / "sweep.gin"
    path.write_text(text)
    with pytest.raises(sweep_lib.SweepError) as error:
        sweep_lib.expand(str(path))
    assert str(path) in str(error.value) and needle in str(error.value), str(error.value)


def test_a_sweep_root_on_object_storage_is_refused_before_anything_is_written(tmp_path):
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-m", "experiments.sweep", "--gin_file=gin/sweeps/smoke.gin",
                           "--root=gs://bucket/sweep"], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=repo),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "gs://bucket/sweep" in proc.stderr and "object storage" in proc.stderr
    assert not (tmp_path / "gs:").exists()


def test_the_report_names_the_corpus_it_was_trained_on():
    from scaling.report import document
    assert document.corpus_kind("books_20m") == "embedded corpus"
    assert document.corpus_kind("local_files_1a2b") == "your local files"
    assert document.corpus_kind("c4_en") == "corpus named by DataConfig.task"
