"""The embedded-corpus path with an existing token cache never imports TensorFlow or seqio."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CHILD = r"""
import json, sys
sys.path.insert(0, {root!r})
from data import pipeline
config = pipeline.DataConfig(vocab_size=512, cache_dir={cache!r}, eval_tokens=2048)
data = pipeline.build_data(config, n_ctx=32, global_batch_size=4, seed=0)
batch = data.train.batch(0)
print(json.dumps({{"tf": "tensorflow" in sys.modules, "seqio": "seqio" in sys.modules,
                  "vocab_size": data.vocab_size, "task": data.manifest["seqio_task"],
                  "batch": batch[0, :8].tolist()}}))
"""


def _child(cache):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", _CHILD.format(root=ROOT, cache=cache)], check=True,
                         capture_output=True, text=True, timeout=600, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cached_embedded_corpus_does_not_import_tensorflow(tmp_path):
    cache = str(tmp_path / "cache")
    first = _child(cache)            # trains the vocabulary and builds the token caches
    second = _child(cache)           # reads them
    assert not second["tf"] and not second["seqio"], second
    assert first["vocab_size"] == second["vocab_size"] == 512
    assert first["batch"] == second["batch"] and second["task"].startswith("books_mini.spm")
    # the name and vocabulary size agree with the seqio task of that name
    from data import tasks
    model = [f for f in os.listdir(os.path.join(cache, "vocab")) if f.endswith(".model")]
    task = tasks.get_task("books_mini", "spm", os.path.join(cache, "vocab", model[0]))
    assert task.name == second["task"]
    assert task.output_features["targets"].vocabulary.vocab_size == 512
