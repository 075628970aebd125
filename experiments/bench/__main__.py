"""`python -m experiments.bench ...`: see experiments/bench/__init__.py."""
from absl import app

from experiments.bench import main

if __name__ == "__main__":
    app.run(main)
