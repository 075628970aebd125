"""Fit a scaling law to points: `python -m experiments.fit --law=NAME --points=FILE.csv --out=FILE.json`.

CSV columns by name: N (non-embedding params), D (tokens), loss (nats/token), and where the law needs them
C (FLOPs), B (batch tokens), S (steps), U (unique tokens). Laws: kaplan_n, kaplan_n_fixed_s (eq 1.6 with
every run at one step count: (N_c/N)^alpha_N + L_S), kaplan_d, kaplan_c, kaplan_nd, kaplan_ns, bcrit,
chinchilla (approach 3), isoflop (approach 2), muennighoff.

The JSON holds law, params (paper symbols), ci95 (bootstrap percentile intervals), objective, n_points,
derived (frontier exponents a, b for chinchilla/isoflop, ...), convention. `--predict=ROWS.csv
--predict_out=OUT.csv` writes loss_pred, loss_pred_lo, loss_pred_hi for each row (extrapolation with a
bootstrap interval). Bad input: one-line error, exit code 2, no output file.

Examples:
  python -m experiments.fit --law=chinchilla --points=runs.csv --out=fit.json --bootstrap=400
  python -m experiments.fit --law=kaplan_n --points=runs.csv --out=fit.json --predict=big.csv --predict_out=pred.csv
"""
import sys

from absl import app, flags

from scaling.analysis import api, fitting, io

FLAGS = flags.FLAGS
flags.DEFINE_string("law", None, f"Law to fit: {', '.join(api.LAWS)}.")
flags.DEFINE_string("points", None, "CSV of points with a header row (columns by name).")
flags.DEFINE_string("out", None, "Where to write the fit JSON.")
flags.DEFINE_integer("bootstrap", 200, "Bootstrap replicates for ci95 and prediction intervals (0 = none: NaN intervals).")
flags.DEFINE_integer("seed", 0, "Bootstrap seed.")
flags.DEFINE_string("group_column", None, "Resample whole groups (e.g. 'run') in the bootstrap instead of points.")
flags.DEFINE_enum("method", "parabola", ["parabola", "akima"], "isoflop: per-budget interpolation in log N.")
flags.DEFINE_bool("varpro", True, "chinchilla: cross-check with the variable-projection solver.")
flags.DEFINE_string("predict", None, "CSV of rows to predict the loss for (needs the law's columns).")
flags.DEFINE_string("predict_out", None, "Where to write the predictions CSV (with --predict).")
flags.DEFINE_string("plot", None, "Optional PNG: data, fitted law and residuals.")


def _fail(message: str) -> None:
    print(f"fit: error: {message}", file=sys.stderr)
    sys.exit(2)


def run(argv_flags=FLAGS) -> dict:
    """Everything after flag parsing; raises on bad input (main turns that into exit code 2)."""
    f = argv_flags
    for name in ("law", "points", "out"):
        if not getattr(f, name):
            raise io.InputError(f"--{name} is required (usage: --law=NAME --points=FILE.csv --out=FILE.json)")
    if f.law not in api.LAWS:
        raise io.InputError(f"unknown law {f.law!r}; choose one of {', '.join(api.LAWS)}")
    if bool(f.predict) != bool(f.predict_out):
        raise io.InputError("--predict and --predict_out go together")
    if f.bootstrap < 0:
        raise io.InputError(f"--bootstrap must be >= 0, got {f.bootstrap}")
    if f.predict and f.law in ("isoflop", "bcrit"):
        raise io.InputError(f"law {f.law} does not predict a loss; --predict works with loss laws "
                            "(kaplan_n/d/c/nd/ns, chinchilla, muennighoff)")
    # The law's columns (checked by name in api.check_columns) must be numbers: a non-numeric cell names
    # its row and column here.
    needed = ("loss",) + api.REQUIRED[f.law] + ("S",)
    table = io.read_table(f.points, positive=needed)
    rows = io.read_table(f.predict, positive=needed[1:]) if f.predict else None  # fail before fitting
    if rows is not None:
        rows = api.check_columns(f.law, rows, need_loss=False)
    groups = None
    if f.group_column:
        if f.group_column not in table:
            raise io.InputError(f"--group_column={f.group_column} is not a column of {f.points}")
        groups = table[f.group_column]
    result = api.fit_law(f.law, table, n_boot=f.bootstrap, seed=f.seed, groups=groups, method=f.method,
                         varpro=f.varpro)
    record = result.record
    prediction = None
    if rows is not None:
        pred, lo, hi = result.predict(rows)
        prediction = {k: v for k, v in rows.items()}
        prediction.update(loss_pred=pred, loss_pred_lo=lo, loss_pred_hi=hi)
    if f.plot:
        from scaling.analysis import plots
        plots.plot_fit(record, table, f.plot, predict=result.predict)
    io.write_json(f.out, record)  # only after everything succeeded: no partial output on bad input
    if prediction is not None:
        io.write_csv(f.predict_out, prediction)
    return record


def ci_lines(record: dict) -> list:
    """One line per parameter: value, 95 % bootstrap interval, and the report's flags (spans zero, > 3x wide)."""
    flags = api.ci_flags(record["params"], record.get("ci95") or {})
    lines = []
    for name, value in record["params"].items():
        lo, hi = (record.get("ci95", {}).get(name) or [None, None])[:2]
        interval = f"[{lo:.6g}, {hi:.6g}]" if lo is not None and hi is not None else "(no interval: --bootstrap=0)"
        note = f"  <- {'; '.join(flags[name])}" if name in flags and lo is not None else ""
        lines.append(f"  {name} = {value:.6g}  95% CI {interval}{note}")
    return lines


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}")
    try:
        record = run()
    except (io.InputError, fitting.FitError, FileNotFoundError, ValueError, KeyError) as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    params = ", ".join(f"{k}={v:.6g}" for k, v in record["params"].items())
    print(f"{record['law']}: {params}; objective={record['objective']:.7g}; n_points={record['n_points']} "
          f"-> {FLAGS.out}")
    for line in ci_lines(record):
        print(line)
    if record["derived"].get("dropped_budgets"):
        print(f"dropped budgets (no interior minimum): {record['derived']['dropped_budgets']}", file=sys.stderr)
    if "varpro" in record["derived"] and not record["derived"]["varpro"]["agrees"]:
        print("warning: the variable-projection solver disagrees with the multi-start fit", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
