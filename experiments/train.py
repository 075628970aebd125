"""Train (or resume) one language model: `python -m experiments.train --gin_file=gin/smoke.gin --workdir=DIR`.

Gin files and --gin_param bindings configure scaling.train.TrainConfig (model, data, batch, steps,
optimizer, mesh). The workdir receives metrics.jsonl, eval.jsonl, TensorBoard events, config.gin,
summary.json and checkpoints/. Rerunning on the same workdir resumes exactly from the latest
checkpoint, or reports that the run already finished. SIGTERM saves a checkpoint and exits cleanly.

Multi-process (TPU pod slices, GPU clusters, N local processes): run the same command in every
process; jax.distributed.initialize joins them (scaling/train/distributed.py) when --distributed is
given (Cloud TPU, SLURM and Open MPI are auto-detected), when --coordinator_address/--num_processes/
--process_id are given, or when JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID are set
(experiments.launch sets them for N local processes). README "Scaling out" has the commands.
"""
import sys

from absl import app, flags, logging

_GIN_FILE = flags.DEFINE_multi_string("gin_file", [], "Gin config file(s), applied in order.")
_GIN_PARAM = flags.DEFINE_multi_string("gin_param", [], "Gin bindings, e.g. TrainConfig.num_steps=100.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; an existing one is resumed).")
# Reliability (README "What the trainer guarantees"): a workdir belongs to one configuration.
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "The workdir holds a run with another configuration: move its "
                               "outputs to <workdir>/previous-<time>/ and start fresh (nothing is deleted).")
_RESUME_CHANGED = flags.DEFINE_bool("resume_changed_config", False, "Resume the workdir's checkpoint although "
                                    "hyperparameters changed (e.g. a lower learning rate after a NaN); the model "
                                    "and optimizer must be the same.")
_FROM_SCRATCH = flags.DEFINE_bool("from_scratch_if_corrupt", False, "If no checkpoint in the workdir can be "
                                  "restored (all corrupt; they are moved aside), start from step 0 instead of "
                                  "refusing.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Join a multi-process job via jax.distributed "
                                  "(coordinator from the flags below, JAX_* variables or cluster auto-detection).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (multi-process; "
                                   "default $JAX_COORDINATOR_ADDRESS or auto-detected).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (default $JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0-based (default $JAX_PROCESS_ID).")
_INIT_TIMEOUT = flags.DEFINE_integer("initialization_timeout", 300, "Seconds to wait for all processes to connect.")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer("heartbeat_timeout", 100, "Seconds of silence after which a process is "
                                          "declared dead and the job stops with an error.")


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
    from scaling.train import distributed
    try:
        join = distributed.DistributedConfig(
            coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value, initialization_timeout=_INIT_TIMEOUT.value,
            heartbeat_timeout=_HEARTBEAT_TIMEOUT.value)
        if _DISTRIBUTED.value or distributed.requested(join):
            distributed.initialize(join)   # before anything asks JAX for devices
    except (ValueError, RuntimeError) as e:
        fail(str(e).replace("\n", " | "))
    from scaling import configurables
    from scaling.train import checkpointing, trainer

    logging.set_verbosity(logging.WARNING)
    try:
        config, operative = configurables.build_train_config(_GIN_FILE.value, _GIN_PARAM.value)
    except (ValueError, TypeError, FileNotFoundError) as e:
        fail(str(e).replace("\n", " | "))
    try:
        summary = trainer.train(config, _WORKDIR.value, operative_config=operative, overwrite=_OVERWRITE.value,
                                resume_changed_config=_RESUME_CHANGED.value,
                                from_scratch_if_corrupt=_FROM_SCRATCH.value)
    except (trainer.NonFiniteLossError, checkpointing.NonFiniteStateError, checkpointing.CheckpointWriteError,
            checkpointing.NoGoodCheckpointError) as e:
        # The run stopped; its last good checkpoint is named in the message and kept.
        print(f"train: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e).replace("\n", " | "))
    if summary.get("status") == "finished":
        print(f"done: {summary['steps']} steps, {summary['tokens']:,} tokens, "
              f"final eval loss {summary['final_eval_loss']:.4f} (best {summary['best_eval_loss']:.4f} "
              f"at step {summary['best_eval_step']}), {summary['tokens_per_sec']:,.0f} tokens/s, "
              f"MFU {summary['mfu']:.3f}; results in {_WORKDIR.value}", flush=True)


def run() -> None:
    """The entry point; a process of a multi-process job that fails leaves at once (distributed.fail_fast)."""
    from scaling.train import distributed
    with distributed.fail_fast():
        app.run(main)


if __name__ == "__main__":
    run()
