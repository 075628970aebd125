"""Plan a compute-efficient run: `python -m experiments.plan --compute=C [--law=kaplan|chinchilla|FIT.json]`.

Prints N_opt, the chosen shape, B_crit (batch), S_min and steps, D, the expected loss and a ready gin file
for the trainer (written to --out_gin when given). C is in FLOPs. With no fit file the paper's constants
are used, and the output says so. `--list_models` prints the model table instead.

Examples:
  python -m experiments.plan --compute=1e18
  python -m experiments.plan --compute=3e19 --law=runs/fit_chinchilla.json --out_gin=gin/planned.gin
"""
import os
import sys

from absl import app, flags

from scaling.core import fileio
from scaling.analysis import frontier, io

FLAGS = flags.FLAGS
flags.DEFINE_float("compute", None, "Compute budget in FLOPs (C = 6·N·D).")
flags.DEFINE_string("law", "kaplan", "kaplan, chinchilla (paper constants) or a fit JSON from experiments.fit.")
flags.DEFINE_string("bcrit_fit", None, "Optional fit JSON (law=bcrit) whose B*, alpha_B set the batch.")
flags.DEFINE_integer("n_ctx", 1024, "Context length (the batch in sequences is B_crit tokens / n_ctx).")
flags.DEFINE_string("out_gin", None, "Where to write the gin file for the planned run.")
flags.DEFINE_bool("list_models", False, "Print the table of model shapes and exit.")


def _fail(message: str) -> None:
    print(f"plan: error: {message}", file=sys.stderr)
    sys.exit(2)


def _command() -> str:
    return f"experiments.plan --compute={FLAGS.compute:g}"


def make_plan() -> dict:
    """Parse the law / fit flags into a plan (raises on bad input)."""
    if FLAGS.compute is None:
        raise io.InputError("--compute=FLOPS is required (e.g. --compute=1e18)")
    if FLAGS.n_ctx < 1:
        raise io.InputError(f"--n_ctx must be >= 1, got {FLAGS.n_ctx}")
    fit = None
    if FLAGS.law not in ("kaplan", "chinchilla"):
        if not FLAGS.law.endswith(".json") and not os.path.exists(FLAGS.law):
            raise io.InputError(f"unknown --law={FLAGS.law}; use kaplan, chinchilla or a fit JSON file")
        fit = io.read_json(FLAGS.law)
    bcrit = io.read_json(FLAGS.bcrit_fit) if FLAGS.bcrit_fit else None
    if bcrit is not None and bcrit.get("law") != "bcrit":
        raise io.InputError(f"--bcrit_fit={FLAGS.bcrit_fit} holds law {bcrit.get('law')!r}, not 'bcrit'")
    return frontier.plan(FLAGS.compute, FLAGS.law, fit=fit, bcrit=bcrit, n_ctx=FLAGS.n_ctx)


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}")
    if FLAGS.list_models:
        from experiments.model_table import print_model_table
        print_model_table()
        return
    try:
        p = make_plan()
    except (io.InputError, FileNotFoundError, ValueError, KeyError) as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    s = p["shape"]
    loss = "n/a (the law predicts no loss)" if p["expected_loss"] is None else f"{p['expected_loss']:.4f} nats/token"
    print(f"Plan for C = {p['compute_flops']:.4g} FLOPs ({p['compute_pf_days']:.4g} PF-days); constants: {p['constants']}")
    if p["law"] in ("kaplan", "chinchilla"):
        print("  (no fit file given: using the paper's published constants)")
    print(f"  N_opt          {p['N_opt']:.4g} non-embedding params")
    print(f"  shape          n_layer={s['n_layer']} d_model={s['d_model']} d_ff={s['d_ff']} n_heads={s['n_heads']} "
          f"(N = {p['N']:.4g}, d_model/n_layer = {p['aspect_ratio']:.0f})")
    print(f"  B_crit         {p['B_crit_tokens']:.4g} tokens -> batch {p['batch_size']} x {p['n_ctx']} = "
          f"{p['batch_tokens']} tokens ({p['batch_source']})")
    print(f"  steps          {p['num_steps']} (S_min = {p['S_min']:.4g})")
    print(f"  D              {p['D_tokens']:.4g} tokens ({p['tokens_per_param']:.1f} tokens/param)")
    print(f"  expected loss  {loss}")
    text = frontier.gin_text(p, _command())
    print("\n" + text)
    if FLAGS.out_gin:
        fileio.write_text_atomic(FLAGS.out_gin, text)
        print(f"wrote {FLAGS.out_gin}")


if __name__ == "__main__":
    app.run(main)
