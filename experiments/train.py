"""Train (or resume) one language model: `python -m experiments.train --gin_file=gin/smoke.gin --workdir=DIR`.

Gin files and --gin_param bindings configure scaling.train.TrainConfig (model, data, batch, steps,
optimizer, mesh). The workdir receives metrics.jsonl, eval.jsonl, TensorBoard events, config.gin,
summary.json and checkpoints/. Rerunning on the same workdir resumes exactly from the latest
checkpoint, or reports that the run already finished. SIGTERM saves a checkpoint and exits cleanly.

Multi-host (TPU pod slices, multi-node GPU): run the same command on every host with --distributed,
which calls jax.distributed.initialize() (on Cloud TPU it needs no arguments; elsewhere set
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID or use SLURM/Open MPI auto-detection).
"""
import sys

from absl import app, flags, logging

_GIN_FILE = flags.DEFINE_multi_string("gin_file", [], "Gin config file(s), applied in order.")
_GIN_PARAM = flags.DEFINE_multi_string("gin_param", [], "Gin bindings, e.g. TrainConfig.num_steps=100.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; an existing one is resumed).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")


def fail(message: str) -> None:
    print(f"train: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; use --gin_file / --gin_param / --workdir")
    if not _WORKDIR.value:
        fail("--workdir is required")
    if not _GIN_FILE.value:
        fail("at least one --gin_file is required (e.g. --gin_file=gin/smoke.gin)")
    import jax
    if _DISTRIBUTED.value:
        jax.distributed.initialize()
    from scaling.train import trainer
    from scaling.train.config import TrainConfig

    logging.set_verbosity(logging.WARNING)
    try:
        trainer.parse_gin(_GIN_FILE.value, _GIN_PARAM.value)
        config = TrainConfig()
    except (ValueError, TypeError, FileNotFoundError) as e:
        fail(str(e).replace("\n", " | "))
    try:
        summary = trainer.train(config, _WORKDIR.value)
    except trainer.NonFiniteLossError as e:
        print(f"train: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e).replace("\n", " | "))
    if summary.get("status") == "finished":
        print(f"done: {summary['steps']} steps, {summary['tokens']:,} tokens, "
              f"final eval loss {summary['final_eval_loss']:.4f} (best {summary['best_eval_loss']:.4f} "
              f"at step {summary['best_eval_step']}), {summary['tokens_per_sec']:,.0f} tokens/s, "
              f"MFU {summary['mfu']:.3f}; results in {_WORKDIR.value}", flush=True)


if __name__ == "__main__":
    app.run(main)
