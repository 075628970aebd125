"""Every law name of the fit contract recovers its own generating constants (api.fit_law), and figures."""
import numpy as np
import pytest

from scaling.analysis import api, isoflop, laws, plots, specs

RNG = np.random.default_rng(0)


def noisy(x, sigma=0.003):
    return x * np.exp(sigma * RNG.standard_normal(np.shape(x)))


def test_kaplan_single_power_laws():
    N, D, C = np.logspace(6, 10, 15), np.logspace(8, 11, 15), np.logspace(17, 21, 15)
    rec = api.fit_law("kaplan_n", dict(N=N, loss=laws.loss_of_n(N)), n_boot=50).record
    assert rec["params"]["alpha_N"] == pytest.approx(0.076, rel=1e-9)
    assert rec["params"]["N_c"] == pytest.approx(8.8e13, rel=1e-6)
    rec = api.fit_law("kaplan_d", dict(D=D, loss=laws.loss_of_d(D))).record
    assert rec["params"]["alpha_D"] == pytest.approx(0.095, rel=1e-9)
    # kaplan_c: C in FLOPs in the CSV, C_c reported in PF-days like Table 5.
    rec = api.fit_law("kaplan_c", dict(C=C, loss=laws.loss_of_cmin(C / laws.PF_DAY_FLOPS))).record
    assert rec["params"]["C_c"] == pytest.approx(3.1e8, rel=1e-6)
    assert rec["params"]["alpha_C"] == pytest.approx(0.050, rel=1e-9)


def test_kaplan_nd_recovers_table2():
    N, D = (g.ravel() for g in np.meshgrid(np.logspace(6, 10, 8), np.logspace(7, 11, 8)))
    rec = api.fit_law("kaplan_nd", dict(N=N, D=D, loss=noisy(laws.loss_of_nd(N, D), 0.002))).record
    assert rec["params"]["alpha_N"] == pytest.approx(0.076, abs=0.01)
    assert rec["params"]["alpha_D"] == pytest.approx(0.103, abs=0.01)


def test_kaplan_ns_recovers_table3():
    N, S = (g.ravel() for g in np.meshgrid(np.logspace(6, 10, 8), np.logspace(2, 5, 8)))
    rec = api.fit_law("kaplan_ns", dict(N=N, S=S, loss=laws.loss_of_ns(N, S))).record
    assert rec["params"]["alpha_N"] == pytest.approx(0.077, abs=1e-3)
    assert rec["params"]["alpha_S"] == pytest.approx(0.76, abs=1e-2)
    assert rec["params"]["S_c"] == pytest.approx(2.1e3, rel=0.05)


def test_muennighoff_recovers_repetition_constants():
    m = laws.MUENNIGHOFF
    U = np.repeat(np.logspace(9, 11, 5), 24)
    N = np.tile(np.repeat(np.logspace(7.5, 10, 6), 4), 5)
    epochs = np.tile([1.0, 4.0, 16.0, 60.0], 30)
    D = U * epochs
    loss = laws.muennighoff_loss(N, D, U, **m)
    rec = api.fit_law("muennighoff", dict(N=N, D=D, U=U, loss=loss)).record
    assert rec["params"]["alpha"] == pytest.approx(m["alpha"], abs=0.01)
    assert rec["params"]["R_D_star"] == pytest.approx(m["R_D_star"], rel=0.1)
    assert rec["objective"] < 1e-8


def test_muennighoff_without_repetition_is_refused():
    with pytest.raises(ValueError, match="not identifiable"):
        api.fit_law("muennighoff", dict(N=np.logspace(7, 9, 10), D=np.full(10, 1e10), U=np.full(10, 1e10),
                                        loss=np.linspace(3, 2, 10)))


def test_bcrit_pairs_and_scan():
    # (loss, B_crit) pairs: the law fit alone.
    L = np.linspace(2.5, 5, 8)
    rec = api.fit_law("bcrit", dict(loss=L, B=laws.critical_batch(L)), n_boot=30).record
    assert rec["params"]["alpha_B"] == pytest.approx(0.21, rel=1e-9)
    assert rec["params"]["B_star"] == pytest.approx(2.1e8, rel=1e-6)
    # A scan (loss target, batch, steps to reach it, run): per-target S = S_min + E_min/B, then B_crit(L),
    # whole runs resampled (each run one batch size, reaching every target with a shared 5% slowness).
    rng = np.random.default_rng(0)
    targets, batches = np.array([3.0, 3.4, 3.8, 4.2]), 2.0 ** np.arange(14, 24)
    rows = dict(loss=[], B=[], S=[], run=[])
    for r, b in enumerate(np.repeat(batches, 2)):
        slow = np.exp(0.05 * rng.standard_normal())
        for t in targets:
            rows["loss"].append(t), rows["B"].append(b), rows["run"].append(r)
            rows["S"].append(1e4 / (t - 2.0) * (1 + laws.critical_batch(t) / b) * slow)
    table = {k: np.asarray(v, dtype=float) for k, v in rows.items() if k != "run"}
    rec = api.fit_law("bcrit", table, n_boot=100, groups=np.asarray(rows["run"])).record
    assert rec["params"]["alpha_B"] == pytest.approx(0.21, rel=0.05)
    assert rec["params"]["B_star"] == pytest.approx(2.1e8, rel=0.3)
    per = rec["derived"]["per_target"]
    assert sorted(float(k) for k in per) == pytest.approx(sorted(targets))
    for t in targets:
        assert per[f"{t:.6g}"]["B_crit"] == pytest.approx(laws.critical_batch(t), rel=0.1) and per[f"{t:.6g}"]["bracketed"]
    lo, hi = rec["ci95"]["alpha_B"]
    assert lo < 0.21 < hi and hi / lo < 1.5
    assert "S = S_min + E_min/B" in rec["solver"]["method"]


def test_figures_are_written(tmp_path):
    C = np.repeat(np.logspace(18, 21, 4), 7)
    tex = laws.CHINCHILLA_TEX
    N = laws.chinchilla_frontier(C, tex["A"], tex["B"], tex["alpha"], tex["beta"])["N_opt"] * np.tile(
        np.logspace(-1, 1, 7), 4)
    loss = noisy(laws.chinchilla_loss(N, C / (6 * N), **tex))
    table = dict(N=N, D=C / (6 * N), C=C, loss=loss)
    result = api.fit_law("chinchilla", table, n_boot=20, varpro=False, init=specs.chinchilla_theta(tex))
    fit = isoflop.fit_isoflop(C, N, loss)
    L = np.linspace(2.5, 5, 6)
    brec = api.fit_law("bcrit", dict(loss=np.repeat(L, 5), B=np.tile(2.0 ** np.arange(14, 19), 6),
                                     S=np.repeat(1e3, 30) * (1 + np.repeat(laws.critical_batch(L), 5)
                                                              / np.tile(2.0 ** np.arange(14, 19), 6)))).record
    paths = [
        plots.plot_fit(result.record, table, str(tmp_path / "fit.png"), predict=result.predict),
        plots.plot_isoflop(C, N, loss, fit, str(tmp_path / "iso.png")),
        plots.plot_frontier([o.C for o in fit.optima], [o.n_star for o in fit.optima], fit.a, fit.k_N,
                            str(tmp_path / "frontier.png"), band=np.array([[fit.a, fit.k_N]] * 3)),
        plots.plot_bootstrap(RNG.normal(size=(100, 2)), ["alpha", "beta"], str(tmp_path / "boot.png")),
        plots.plot_bcrit(brec, str(tmp_path / "bcrit.png")),
    ]
    for p in paths:
        with open(p, "rb") as f:
            head = f.read(8)
        assert head == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / p).stat().st_size > 10_000


def test_kaplan_n_fixed_s_recovers_eq_1_6_at_one_step_count():
    # Table 3 constants at S = 300 steps: every rung carries L_S = (S_c/S)^α_S ≈ 4.4 nats.
    t3 = laws.KAPLAN_TABLE3
    N = np.logspace(4, 6, 8)
    L_S = (t3["S_c"] / 300.0) ** t3["alpha_S"]
    loss = laws.loss_of_ns(N, 300.0)
    rec = api.fit_law("kaplan_n_fixed_s", dict(N=N, loss=loss), n_boot=20).record
    assert rec["params"]["alpha_N"] == pytest.approx(t3["alpha_N"], rel=1e-3)
    assert rec["params"]["L_S"] == pytest.approx(L_S, rel=1e-3)
    assert rec["params"]["N_c"] == pytest.approx(t3["N_c"], rel=0.05)
    # A pure power law through the same points is the wrong form: its slope is well below α_N.
    pure = api.fit_law("kaplan_n", dict(N=N, loss=loss)).record
    assert pure["params"]["alpha_N"] < 0.6 * t3["alpha_N"]


def test_tiny_exponents_put_log_scales_far_out_and_the_grids_still_bracket_them():
    # Small, briefly trained models: α ~ 0.03, so log N_c ~ 80 (outside the old [10, 55] start grid).
    N, D = (g.ravel() for g in np.meshgrid(np.logspace(4, 6, 4), np.logspace(4.5, 6, 3)))
    loss = noisy(laws.loss_of_nd(N, D, N_c=np.exp(80.0), D_c=np.exp(70.0), alpha_N=0.03, alpha_D=0.035), 0.001)
    rec = api.fit_law("kaplan_nd", dict(N=N, D=D, loss=loss)).record
    assert rec["params"]["alpha_N"] == pytest.approx(0.03, abs=0.01)
    assert 60 < np.log(rec["params"]["N_c"]) < 100


def test_degenerate_bootstrap_replicates_give_unbounded_ci_not_overflow():
    # exp(log N_c) past float64's range becomes inf in the parameter map (an unbounded CI side).
    assert specs.PARAMETRIC_LAWS["kaplan_ns"].to_params(np.array([800.0, 5.0, 0.01, 0.5]))["N_c"] == np.inf
