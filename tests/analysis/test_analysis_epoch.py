"""Chinchilla approach 3 on Epoch's 240 digitised points (validation.md §1.3, §3.4 items 4-6).

The Huber-sum optimum is objective 1.0182740e-3 at A=477.8, B=2143.5, E=1.8172, alpha=0.3473,
beta=0.3672; default-tolerance optimisers stop early near alpha≈0.339, beta≈0.285.
"""
import csv
import os

import numpy as np
import pytest
import scipy.optimize
import scipy.special

from scaling.analysis import api, fitting, laws, specs

DATA = os.path.join(os.path.dirname(__file__), "data", "epoch-chinchilla", "svg_extracted_data.csv")
CHIN = specs.PARAMETRIC_LAWS["chinchilla"]
TEX_THETA = specs.chinchilla_theta(laws.CHINCHILLA_TEX)
OBJECTIVE_BOUND = 1.01828e-3


def _epoch_points():
    with open(DATA) as f:
        rows = list(csv.DictReader(f))
    N = np.array([float(r["Model Size"]) for r in rows])
    C = np.array([float(r["Training FLOP"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    keep = loss < np.sort(loss)[-5]  # Epoch drops the 5 highest-loss points
    return dict(N=N[keep], D=C[keep] / (6 * N[keep]), loss=loss[keep])


@pytest.fixture(scope="module")
def points():
    p = _epoch_points()
    assert len(p["loss"]) == 240
    return p


@pytest.fixture(scope="module")
def grid_fit(points):
    """The full CLI path: 4,500-start grid, BFGS polish, variable projection, 400-resample bootstrap."""
    return api.fit_law("chinchilla", points, n_boot=400, seed=0).record


def _assert_epoch_optimum(params, objective):
    assert objective <= OBJECTIVE_BOUND
    assert params["alpha"] == pytest.approx(0.347, abs=0.002)
    assert params["beta"] == pytest.approx(0.367, abs=0.002)
    assert params["E"] == pytest.approx(1.817, abs=0.002)


def test_from_tex_start_reaches_huber_sum_optimum(points):
    fit = fitting.fit_huber(CHIN.log_pred, CHIN.cols(points), points["loss"], CHIN.theta_names, init=TEX_THETA)
    params = CHIN.to_params(fit.theta)
    _assert_epoch_optimum(params, fit.objective)
    # Early-stop regression: must not stall where default tolerances stop (alpha≈0.339, beta≈0.285).
    assert abs(params["alpha"] - 0.339) > 0.005 and abs(params["beta"] - 0.285) > 0.05


def test_mean_and_sum_reductions_reach_the_same_optimum(points):
    cols = CHIN.cols(points)
    fit_sum = fitting.fit_huber(CHIN.log_pred, cols, points["loss"], CHIN.theta_names, init=TEX_THETA)
    fit_mean = fitting.fit_huber(CHIN.log_pred, cols, points["loss"], CHIN.theta_names, init=TEX_THETA,
                                 reduction="mean")
    np.testing.assert_allclose(fit_mean.theta, fit_sum.theta, atol=2e-4)
    assert fit_mean.objective * 240 == pytest.approx(fit_sum.objective, rel=1e-7)


def test_default_tolerance_lbfgsb_does_stop_early(points):
    """The failure the fitter guards against is real: scipy L-BFGS-B, default tolerances, numeric gradients."""
    logN, logD, logL = np.log(points["N"]), np.log(points["D"]), np.log(points["loss"])

    def objective(t):
        pred = scipy.special.logsumexp([t[0] - t[3] * logN, t[1] - t[4] * logD, t[2] + 0 * logN], axis=0)
        return np.sum(scipy.special.huber(1e-3, pred - logL))

    res = scipy.optimize.minimize(objective, TEX_THETA, method="L-BFGS-B")
    assert res.fun > OBJECTIVE_BOUND + 1e-6
    assert res.x[3] == pytest.approx(0.339, abs=0.005)


def test_grid_fit_reaches_optimum_and_reports_starts(grid_fit):
    _assert_epoch_optimum(grid_fit["params"], grid_fit["objective"])
    # A and B are weakly identified: ±15 % of Epoch's estimates.
    assert grid_fit["params"]["A"] == pytest.approx(482.01, rel=0.15)
    assert grid_fit["params"]["B"] == pytest.approx(2085.43, rel=0.15)
    solver = grid_fit["solver"]
    assert solver["n_starts"] == 4500
    assert solver["n_at_best"] >= 10  # many starts agree: the optimum is not a lucky one
    # Inside Epoch's 95 % bootstrap intervals.
    for name, (lo, hi) in dict(E=(1.769, 1.871), alpha=(0.317, 0.373), beta=(0.331, 0.415)).items():
        assert lo < grid_fit["params"][name] < hi


def test_variable_projection_agrees(grid_fit):
    vp = grid_fit["derived"]["varpro"]
    assert vp["agrees"]
    assert vp["objective"] == pytest.approx(grid_fit["objective"], rel=1e-6)
    assert vp["params"]["alpha"] == pytest.approx(grid_fit["params"]["alpha"], abs=1e-4)


def test_bootstrap_ci_overlaps_epoch(grid_fit):
    lo, hi = grid_fit["ci95"]["alpha"]
    ref_lo, ref_hi = 0.317, 0.373
    overlap = max(0.0, min(hi, ref_hi) - max(lo, ref_lo))
    assert overlap / (ref_hi - ref_lo) >= 0.8
    assert lo < grid_fit["params"]["alpha"] < hi
    e_lo, e_hi = grid_fit["ci95"]["E"]
    assert e_lo < 1.817 < e_hi


def test_frontier_derived_from_fit(grid_fit):
    d = grid_fit["derived"]
    assert d["a"] == pytest.approx(0.513, abs=0.002)
    assert d["at_5_88e23"]["tokens_per_param"] == pytest.approx(17.9, abs=0.1)


def test_grid_that_does_not_bracket_the_optimum_is_refused(points):
    narrow = ((0.0, 10.0, 20.0), (0.0, 10.0, 20.0), (-1.0, 0.0, 1.0), (0.5, 1.0, 1.5), (0.5, 1.0, 1.5))
    small = fitting.DEFAULT_STAGES[:1] + ((32, True, 2000, 20),)
    with pytest.raises(fitting.FitError, match="alpha"):
        fitting.fit_huber(CHIN.log_pred, CHIN.cols(points), points["loss"], CHIN.theta_names, grid=narrow,
                          stages=small)


def test_too_few_points_refused(points):
    few = {k: v[:5] for k, v in points.items()}
    with pytest.raises(fitting.FitError, match="5 points"):
        fitting.fit_huber(CHIN.log_pred, CHIN.cols(few), few["loss"], CHIN.theta_names, init=TEX_THETA)
