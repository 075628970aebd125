"""Benchmarks: `python -m experiments.bench SECTION [SECTION ...] --out=FILE.json`.

Each section lives in its own module `experiments/bench_<section>.py` exposing
``run() -> dict[str, float | int | str]`` and returns a flat dict of named figures
(ratios are measured side by side in one run). ``all`` runs every section. The merged,
flat JSON object goes to --out; a human-readable table goes to stdout.
"""
import importlib
import sys

from absl import app, flags

from scaling import fileio

SECTIONS = ("data", "fit", "train")

FLAGS = flags.DEFINE_string("out", "runs/bench.json", "Where to write the flat JSON object of figures.")


def main(argv):
    names = argv[1:] or ["all"]
    if names == ["all"]:
        names = list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        print(f"bench: unknown section(s) {unknown}; choose from {list(SECTIONS)} or 'all'", file=sys.stderr)
        sys.exit(2)
    figures = {}
    for name in names:
        module = importlib.import_module(f"experiments.bench_{name}")
        print(f"== bench {name} ==", flush=True)
        result = module.run()
        for key, value in result.items():
            print(f"  {key:<40s} {value}", flush=True)
        figures.update(result)
    fileio.write_json_atomic(FLAGS.value, figures, sort_keys=True)
    print(f"wrote {FLAGS.value}")


if __name__ == "__main__":
    app.run(main)
