"""`python -m experiments.train` with two test hooks, for the multi-process tests (not collected by pytest).

MULTIHOST_RECORD_DIR=DIR   every process saves the rows its loader hands the trainer, one
                           p<i>_step<s>.npy per step (what each process loads).
MULTIHOST_DIE=I:S[:raise]  process I dies abruptly (os._exit, no cleanup) once checkpoint S is on disk,
                           or with ":raise" fails with a Python exception there (normal exit path).
Everything else is the real entry point: flags, jax.distributed start-up, trainer.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

from data import loader  # noqa: E402
from experiments import train as train_cli  # noqa: E402
from scaling.train import trainer  # noqa: E402

_record_dir = os.environ.get("MULTIHOST_RECORD_DIR")
if _record_dir:
    _batch = loader.TrainLoader.batch

    def _recording_batch(self, step):
        rows = _batch(self, step)
        np.save(os.path.join(_record_dir, f"p{self.process_index}_step{step}.npy"), rows)
        return rows

    loader.TrainLoader.batch = _recording_batch

_die = os.environ.get("MULTIHOST_DIE")
if _die:
    _process, _step = map(int, _die.split(":")[:2])
    _raise = _die.endswith(":raise")
    _train = trainer.train

    def _train_then_die(config, workdir, **kwargs):
        import jax

        def after_checkpoint(step):
            if step == _step and jax.process_index() == _process:
                print(f"multihost_worker: process {_process} dies after checkpoint {step}", flush=True)
                if _raise:
                    raise RuntimeError(f"multihost_worker: process {_process} fails after checkpoint {step}")
                os._exit(17)

        return _train(config, workdir, after_checkpoint=after_checkpoint, **kwargs)

    trainer.train = _train_then_die

if __name__ == "__main__":
    train_cli.run()
