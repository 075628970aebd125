"""One entry point per law name: table of points → fit record (the JSON of experiments.fit) + predictor.

`fit_law(name, table)` validates the columns, runs the right fitter (WLS in log-log for single power laws,
the multi-start Huber fitter for the parametric forms, approach 2 for `isoflop`, the hyperbola + power law
for `bcrit`), bootstraps it, and returns a `LawFit` whose `record` is the JSON contract:
law, params, ci95, objective, n_points, derived, convention (plus solver and bootstrap details).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from scaling.core import formulas
from scaling.analysis import bcrit, fitting, isoflop, laws, specs
from scaling.analysis.io import InputError

LAWS = ("kaplan_n", "kaplan_n_fixed_s", "kaplan_d", "kaplan_c", "kaplan_nd", "kaplan_ns", "bcrit", "chinchilla", "isoflop",
        "muennighoff")

# Columns each law needs besides `loss` (kaplan_c and isoflop accept N and D instead of C: C = 6·N·D).
REQUIRED = dict(kaplan_n=("N",), kaplan_n_fixed_s=("N",), kaplan_d=("D",), kaplan_c=("C",), kaplan_nd=("N", "D"),
                kaplan_ns=("N", "S"), bcrit=("B",), chinchilla=("N", "D"), isoflop=("N", "C"), muennighoff=("N", "D", "U"))

CONVENTION = dict(N="non-embedding parameters (Kaplan)", D="tokens", C="training FLOPs, C = 6*N*D",
                  loss="nats/token", B="batch size in tokens", S="optimizer steps (S_min for kaplan_ns)",
                  U="unique tokens", C_c="PF-days (1 PF-day = 8.64e19 FLOP)",
                  objective="sum over points of Huber_1e-3(log Lhat - log L) for parametric laws; "
                            "sum of squared log residuals for power-law (WLS) fits")


@dataclasses.dataclass
class LawFit:
    record: dict                                    # the JSON written by experiments.fit
    predict: Callable | None = None                 # table -> (pred, lo, hi) arrays


def check_columns(law: str, table: dict, need_loss: bool = True) -> dict:
    """Check the columns `law` needs (deriving C = 6ND where allowed); returns the augmented table."""
    table = dict(table)
    if law not in LAWS:
        raise InputError(f"unknown law {law!r}; choose one of {', '.join(LAWS)}")
    if law in ("kaplan_c", "isoflop") and "C" not in table and "N" in table and "D" in table:
        table["C"] = formulas.training_flops(np.asarray(table["N"]), np.asarray(table["D"]))
    needed = (("loss",) if need_loss else ()) + REQUIRED[law] + (("S",) if law == "bcrit" and "S" in table else ())
    missing = [c for c in needed if c not in table]
    if missing:
        raise InputError(f"law {law} needs column(s) {missing} (has {sorted(table)})")
    for c in needed:
        v = _numeric_column(table[c], c)
        bad = np.flatnonzero(~np.isfinite(v) | (v <= 0))
        if len(bad):
            raise InputError(f"row {bad[0] + 2}, column {c!r}: value {v[bad[0]]!r} must be finite and > 0")
        table[c] = v
    if law == "muennighoff":
        # D' = U + U·R*·(1 − e^(−(D/U − 1)/R*)) is below U, and the loss can be NaN, when U > D: the unique
        # tokens of a run cannot exceed the tokens it trained on.
        bad = np.flatnonzero(table["U"] > table["D"] * (1 + 1e-12))
        if len(bad):
            i = bad[0]
            raise InputError(f"row {i + 2}: U = {table['U'][i]:.6g} unique tokens > D = {table['D'][i]:.6g} tokens "
                             f"trained on; U must be <= D (law muennighoff; {len(bad)} such row(s))")
    return table


def _numeric_column(values, name: str) -> np.ndarray:
    """A column as float64; a cell that is not a number is an InputError naming its row and column."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        pass
    for i, value in enumerate(values):
        try:
            float(value)
        except (TypeError, ValueError):
            raise InputError(f"row {i + 2}, column {name!r}: {value!r} is not a number") from None
    return np.asarray([float(v) for v in values], dtype=np.float64)


# The report's thresholds for a poorly determined parameter (scaling/analysis/report_tables.ci_notes).
CI_RATIO_MAX = 3.0   # hi/lo of a positive parameter's 95 % interval
CI_REL_MAX = 1.0     # interval width relative to |value|


def ci_flags(params: dict, ci95: dict) -> dict:
    """{parameter: [flag, ...]} for 95 % intervals that span zero, are wider than 3× (hi/lo) or than 100 %
    of the value, or are missing; parameters with a tight interval are left out."""
    out = {}
    for name, value in params.items():
        lo, hi = (ci95.get(name) or [None, None])[:2]
        flags = []
        if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
            flags.append("no bootstrap interval")
        else:
            if lo <= 0 <= hi:
                flags.append("the 95% interval spans zero")
            if lo > 0 and hi / lo > CI_RATIO_MAX:
                flags.append(f"wide: hi/lo = {hi / lo:.3g}x (> {CI_RATIO_MAX:g}x)")
            elif isinstance(value, (int, float)) and value and (hi - lo) / abs(value) > CI_REL_MAX:
                flags.append(f"wide: width {100 * (hi - lo) / abs(value):.0f}% of the value (> 100%)")
        if flags:
            out[name] = flags
    return out


def _ci(replicates: np.ndarray, names) -> dict:
    lo, hi = fitting.percentile_ci(replicates)
    return {n: [float(a), float(b)] for n, a, b in zip(names, lo, hi)}


def _check_count(law: str, n: int, p: int):
    if n <= p:
        raise InputError(f"law {law} has {p} parameters but only {n} points; give at least {p + 1} points")


# --- single power laws (Kaplan eqs 1.1-1.3) by WLS in log-log ----------------------------------------
def _power_law(law, table, n_boot, seed, groups):
    x_col, (c_name, a_name) = dict(kaplan_n=("N", ("N_c", "alpha_N")), kaplan_d=("D", ("D_c", "alpha_D")),
                                   kaplan_c=("C", ("C_c", "alpha_C")))[law]
    x = table[x_col] / (laws.PF_DAY_FLOPS if law == "kaplan_c" else 1.0)  # Kaplan's C_c is in PF-days
    y = table["loss"]
    _check_count(law, len(y), 2)
    fit = fitting.wls_loglog(x, y)
    if fit.slope >= 0:
        raise fitting.FitError(f"law {law}: loss does not fall with {x_col} (log-log slope {fit.slope:.3g} >= 0)")
    to_params = lambda slope, icpt: (np.exp(icpt / -slope), -slope)  # log L = α log X_c − α log X
    x_c, alpha = to_params(fit.slope, fit.intercept)
    record = dict(params={c_name: float(x_c), a_name: float(alpha)}, objective=fit.objective,
                  solver=dict(method="weighted least squares in log-log", slope_se=fit.slope_se))
    reps = None
    if n_boot:
        b = fitting.bootstrap_wls_loglog(x, y, n_boot=n_boot, seed=seed, groups=groups)
        reps = np.stack(to_params(b[:, 0], b[:, 1]), axis=1)
        record["ci95"] = _ci(reps, (c_name, a_name))
    scale = laws.PF_DAY_FLOPS if law == "kaplan_c" else 1.0

    def predict(rows):
        xr = np.asarray(rows[x_col], dtype=np.float64) / scale
        pred = (x_c / xr) ** alpha
        if reps is None:
            return pred, pred * np.nan, pred * np.nan
        p = (reps[:, :1] / xr[None]) ** reps[:, 1:]
        return (pred, *fitting.percentile_ci(p))
    return record, predict


# --- parametric (Huber multi-start) -----------------------------------------------------------------------
def _parametric(law, table, n_boot, seed, groups, init=None, varpro=True):
    spec = specs.PARAMETRIC_LAWS[law]
    _check_count(law, len(table["loss"]), len(spec.theta_names))
    if law == "muennighoff" and not np.any(table["D"] > table["U"] * (1 + 1e-9)):
        raise InputError("law muennighoff: no row repeats data (D > U); R_D* and R_N* are not identifiable -- "
                         "fit law=chinchilla instead")
    cols = spec.cols(table)
    fit = fitting.fit_huber(spec.log_pred, cols, table["loss"], spec.theta_names,
                            grid=None if init is not None else spec.grid, init=init)
    params = spec.to_params(fit.theta)
    record = dict(params=params, objective=fit.objective, solver=dict(
        method="Huber(delta=1e-3) summed, log-space LSE, vmapped multi-start L-BFGS (float64) + BFGS polish",
        n_starts=fit.n_starts, n_refined=fit.n_refined, n_at_best=fit.n_at_best, grad_norm=fit.grad_norm,
        best_start=dict(zip(spec.theta_names, fit.best_start.tolist()))))
    derived = {}
    if law in ("chinchilla", "muennighoff"):
        fr = laws.chinchilla_frontier(laws.CHINCHILLA_BUDGET, params["A"], params["B"], params["alpha"],
                                      params["beta"], params["E"])
        derived.update(a=fr["a"], b=fr["b"], G=fr["G"], at_5_88e23=dict(N_opt=fr["N_opt"], D_opt=fr["D_opt"],
                                                                        tokens_per_param=fr["tokens_per_param"]))
    if law == "chinchilla" and varpro:
        vp = fitting.varpro_chinchilla(table["N"], table["D"], table["loss"])
        vparams = specs.PARAMETRIC_LAWS["chinchilla"].to_params(vp["theta"])
        agrees = (abs(vp["objective"] - fit.objective) <= 1e-6 * max(fit.objective, 1e-12)
                  and abs(vparams["alpha"] - params["alpha"]) < 1e-3 and abs(vparams["beta"] - params["beta"]) < 1e-3)
        derived["varpro"] = dict(objective=vp["objective"], params=vparams, agrees=bool(agrees))
    record["derived"] = derived
    reps = None
    if n_boot:
        reps, _ = fitting.bootstrap_huber(spec.log_pred, cols, table["loss"], fit.theta, n_boot, seed, groups)
        rep_params = np.array([[v for v in spec.to_params(t).values()] if np.all(np.isfinite(t))
                               else [np.nan] * len(params) for t in reps])
        record["ci95"] = _ci(rep_params, list(params))
        record["bootstrap_failed"] = int(np.sum(~np.isfinite(reps).all(axis=1)))
        if law in ("chinchilla", "muennighoff"):
            ok = np.isfinite(rep_params).all(axis=1)
            al, be = rep_params[ok, list(params).index("alpha")], rep_params[ok, list(params).index("beta")]
            derived["ci95"] = dict(a=list(fitting.percentile_ci(be / (al + be))),
                                   b=list(fitting.percentile_ci(al / (al + be))))

    def predict(rows):
        pred = spec.predict(fit.theta, rows)
        if reps is None:
            return pred, pred * np.nan, pred * np.nan
        p = np.stack([spec.predict(t, rows) for t in reps if np.all(np.isfinite(t))])
        return (pred, *fitting.percentile_ci(p))
    return record, predict


# --- approach 2 and B_crit ------------------------------------------------------------------------------
def _isoflop(table, n_boot, seed, method):
    fit = isoflop.fit_isoflop(table["C"], table["N"], table["loss"], method)
    record = dict(params=dict(a=fit.a, k_N=fit.k_N, b=fit.b, k_D=fit.k_D),
                  objective=float(np.sum(fitting.wls_loglog([o.C for o in fit.optima],
                                                            [o.n_star for o in fit.optima]).residuals ** 2)),
                  derived=dict(a=fit.a, b=fit.b, a_se=fit.a_se, b_se=fit.b_se, method=method,
                               optima=[dataclasses.asdict(o) for o in fit.optima],
                               dropped_budgets={f"{c:.6g}": r for c, r in fit.dropped.items()}),
                  solver=dict(method=f"approach 2: {method} per budget, interior minima, OLS in log-log"))
    if n_boot:
        reps = isoflop.bootstrap_isoflop(table["C"], table["N"], table["loss"], n_boot, seed, method)
        lo, hi = fitting.percentile_ci(reps)
        record["ci95"] = dict(a=[lo[0], hi[0]], b=[lo[1], hi[1]])
    return record, None


def _bcrit(table, n_boot, seed, groups):
    if "S" in table:
        scan = bcrit.scan_from_rows(table["loss"], table["B"], table["S"], groups)
        fit = bcrit.fit_scans([scan], n_boot=n_boot, seed=seed)
        per = fit["per_target"]
        law = bcrit.fit_bcrit_law([t["target_loss"] for t in per], [t["B_crit"] for t in per])[2]
        record = dict(params=dict(B_star=fit["B_star"], alpha_B=fit["alpha_B"]), objective=law.objective,
                      derived=dict(per_target={f"{t['target_loss']:.6g}": {k: t[k] for k in (
                          "S_min", "E_min", "B_crit", "bracketed")} for t in per}),
                      solver=dict(method="per-target S = S_min + E_min/B (NLS in log S), then WLS of "
                                         "log B_crit on log L (scaling.analysis.bcrit.fit_scans)"))
        if n_boot:
            record["ci95"] = fit["ci95"]
    else:
        b_star, alpha_b, fit = bcrit.fit_bcrit_law(table["loss"], table["B"])
        record = dict(params=dict(B_star=b_star, alpha_B=alpha_b), objective=fit.objective, derived={},
                      solver=dict(method="WLS of log B_crit on log L (rows are (loss, B_crit) pairs)"))
        if n_boot:
            b = fitting.bootstrap_wls_loglog(table["loss"], table["B"], n_boot=n_boot, seed=seed, groups=groups)
            reps = np.stack([np.exp(b[:, 1]), -1.0 / b[:, 0]], axis=1)
            record["ci95"] = _ci(reps, ("B_star", "alpha_B"))
    return record, None


def fit_law(law: str, table: dict, n_boot: int = 0, seed: int = 0, groups=None, method: str = "parabola",
            init=None, varpro: bool = True) -> LawFit:
    """Fit `law` to the points in `table` (columns by name); see module docstring."""
    table = check_columns(law, table)
    n = len(table["loss"])
    if law in ("kaplan_n", "kaplan_d", "kaplan_c"):
        record, predict = _power_law(law, table, n_boot, seed, groups)
    elif law in specs.PARAMETRIC_LAWS:
        record, predict = _parametric(law, table, n_boot, seed, groups, init=init, varpro=varpro)
    elif law == "isoflop":
        record, predict = _isoflop(table, n_boot, seed, method)
    else:
        record, predict = _bcrit(table, n_boot, seed, groups)
    record.setdefault("derived", {})
    record.setdefault("ci95", {})
    out = dict(law=law, params=record.pop("params"), ci95=record.pop("ci95"), objective=float(record.pop("objective")),
               n_points=n, derived=record.pop("derived"), convention=CONVENTION,
               bootstrap=dict(n=int(n_boot), seed=int(seed), resample="runs" if groups is not None else "points"))
    out.update(record)
    return LawFit(record=out, predict=predict)
