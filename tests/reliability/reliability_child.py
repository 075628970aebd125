"""Test-only training process for the reliability tests (not collected by pytest: no test_ prefix).

`python tests/reliability/reliability_child.py WORKDIR` trains (or resumes) a tiny Transformer on the
synthetic Markov corpus of tests/train/conftest.py, one CPU device, async checkpoints every 3 steps,
loss logged every step, printing "step k/24 ..." lines; exit code 0 when finished or preempted
(SIGTERM), as `python -m experiments.train` does. The harness in test_reliability_kill.py kills it.

RELIABILITY_HOLD_CHECKPOINT_STEP=s makes the write of checkpoint s stall (30 s) after orbax has written
everything into its temporary directory and before the rename that commits it, printing
"HOLDING_CHECKPOINT_WRITE <tmp dir>": the harness SIGKILLs it there, i.e. during a checkpoint write.
This is done by patching orbax here, in test code; the library has no test hook.
"""
import asyncio
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
STEPS = 24


def make_data():
    spec = importlib.util.spec_from_file_location("train_conftest_for_reliability",
                                                  os.path.join(ROOT, "tests", "train", "conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_synthetic_data(vocab_size=64, n_ctx=32, batch_size=16)


def make_config(**kw):
    from models.transformer import TransformerConfig
    from scaling.train.config import MeshConfig, TrainConfig
    model = TransformerConfig(vocab_size=64, n_ctx=32, n_layer=2, d_model=32, d_ff=64, d_attn=32, n_heads=4)
    base = dict(model=model, batch_size=16, num_steps=STEPS, learning_rate=3e-3, warmup_steps=3, log_every=1,
                eval_every=12, checkpoint_every=3, keep_checkpoints=2, progress_bar=False, microbatches=2,
                async_checkpointing=True, mesh=MeshConfig(data=1))
    base.update(kw)
    return TrainConfig(**base)


def hold_checkpoint_write(step: str) -> None:
    from orbax.checkpoint._src.path import atomicity
    original = atomicity.AtomicRenameTemporaryPath.finalize

    async def stalled_finalize(self):
        if os.path.basename(str(self.get_final())) == step:
            print(f"HOLDING_CHECKPOINT_WRITE {self.get()}", flush=True)
            await asyncio.sleep(30)
        return await original(self)

    atomicity.AtomicRenameTemporaryPath.finalize = stalled_finalize


def main(workdir: str) -> int:
    sys.path.insert(0, ROOT)
    import jax
    from scaling.train import trainer
    if os.environ.get("RELIABILITY_HOLD_CHECKPOINT_STEP"):
        hold_checkpoint_write(os.environ["RELIABILITY_HOLD_CHECKPOINT_STEP"])
    summary = trainer.train(make_config(), workdir, data=make_data(), devices=jax.devices()[:1])
    print(f"STATUS {summary['status']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
