"""Synthetic sweep roots for the report tests: run directories generated from known Kaplan laws.

Ladder learning curves follow L(N, S) = (N_c/N)^α_N + (S_c/S)^α_S at one batch size (so the compute
frontier is N_opt ∝ C^(α_S/(α_N+α_S)) and the envelope L ∝ C^-(α_N α_S/(α_N+α_S))); the data group follows
eq. 1.5 with Table 2's constants; noise/ files follow eq. 1.6 and B_crit = B*/L^(1/α_B).
"""
from __future__ import annotations

import csv
import json
import os

import numpy as np

from scaling.analysis import laws

PF_DAY = laws.PF_DAY_FLOPS
ALPHA_N, N_C = 0.076, 8.8e13          # ladder (Table 5)
ALPHA_S, S_C = 0.76, 2.1e3
BATCH_TOKENS = 2048.0
EMBEDDING = 4096 * 64                 # vocabulary × d_model: the embedding-inclusive count bends at small N
LADDER_N = [1e4 * 3.0 ** k for k in range(6)]
DATA_N = [1e5, 1e6, 1e7, 1e8, 1e9]
DATA_D = [1e6, 3e6, 1e7, 3e7, 1e8]
NS_N = [1e5, 1e6, 1e7]
FRONTIER_P = ALPHA_S / (ALPHA_N + ALPHA_S)
ENVELOPE_ALPHA_C = ALPHA_N * ALPHA_S / (ALPHA_N + ALPHA_S)
COLUMNS = ["run", "group", "status", "workdir", "error", "model", "model_family", "n_params_nonembedding",
           "n_params_total", "n_params_embedding", "flops_per_token", "tokens", "steps", "batch_size", "batch_tokens",
           "compute_pf_days", "final_eval_loss", "best_eval_loss", "tokens_per_sec", "mfu", "n_ctx", "learning_rate",
           "data_budget_tokens", "b_simple", "final_eval_loss_wiki_mini", "epochs"]


def ladder_loss(N, S):
    return (N_C / N) ** ALPHA_N + (S_C / S) ** ALPHA_S


def _positions(final_loss, n_ctx=128):
    t = np.arange(1, n_ctx + 1)
    shape = 1.2 * t ** -0.5
    return (final_loss + shape - shape.mean()).tolist()


def _write_run(root, row, evals, summary_extra=None):
    workdir = os.path.join(root, "runs", row["run"])
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "eval.jsonl"), "w") as f:
        for e in evals:
            f.write(json.dumps(e) + "\n")
    summary = {k: v for k, v in row.items() if k not in ("run", "group", "workdir", "error") and v != ""}
    summary.update(status="finished", n_ctx=128, vocab_size=4096,
                   data=dict(task="books_mini", vocab_size=4096, n_ctx=128, train_tokens=1416735,
                             unique_train_tokens=1416704), **(summary_extra or {}))
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f)


def _row(name, group, N, steps, final, best, **kw):
    tokens = steps * BATCH_TOKENS
    row = dict(run=name, group=group, status="finished", workdir=f"runs/{name}", error="", model=name,
               model_family="transformer", n_params_nonembedding=N, n_params_total=N + EMBEDDING,
               n_params_embedding=EMBEDDING, flops_per_token=6 * N, tokens=tokens, steps=steps, batch_size=16,
               batch_tokens=BATCH_TOKENS, compute_pf_days=6 * N * tokens / PF_DAY, final_eval_loss=final,
               best_eval_loss=best, tokens_per_sec=1e5 / (1 + N / 1e5), mfu=0.05, n_ctx=128, learning_rate=1e-3,
               data_budget_tokens="", b_simple=1e4, final_eval_loss_wiki_mini="", epochs=0.5)
    row.update(kw)
    return row


def ladder_runs(root, rng=None, noise=0.0, n_eval=100, steps=1e7, sizes=LADDER_N, group="ladder", prefix="lad",
                factor=1.0, wiki_offset=0.3):
    """Ladder-like runs with learning curves from L(N, S); `noise` multiplies losses by exp(N(0, noise))."""
    rows = []
    S = np.exp(np.linspace(np.log(100), np.log(steps), n_eval))
    for i, N in enumerate(sizes):
        loss = factor * ladder_loss(N, S)
        if noise:
            loss = loss * np.exp(rng.normal(0, noise, size=len(S)))
        evals = [dict(step=int(s), tokens=float(s * BATCH_TOKENS), eval_loss=float(l), eval_bpb=float(l / 2.2))
                 for s, l in zip(S, loss)]
        evals[-1]["loss_per_position"] = _positions(float(loss[-1]))
        evals[-1]["eval_loss_wiki_mini"] = float(loss[-1] + wiki_offset)
        row = _row(f"{prefix}{i}", group, N, steps, float(loss[-1]), float(loss.min()),
                   final_eval_loss_wiki_mini=float(loss[-1] + wiki_offset))
        _write_run(root, row, evals)
        rows.append(row)
    return rows


def data_runs(root):
    rows = []
    for N in DATA_N:
        for D in DATA_D:
            best = float(laws.loss_of_nd(N, D))  # Table 2 constants
            steps = 3 * D / BATCH_TOKENS       # three epochs: the minimum is the early-stopping point
            tok = np.geomspace(BATCH_TOKENS * 10, 3 * D, 20)
            curve = best * (1 + 0.02 * np.log(tok / D) ** 2)
            evals = [dict(step=int(t / BATCH_TOKENS), tokens=float(t), eval_loss=float(l)) for t, l in zip(tok, curve)]
            name = f"data_N{N:.0e}_D{D:.0e}".replace("+", "")
            row = _row(name, "data", N, steps, float(curve[-1]), float(curve.min()), data_budget_tokens=D, epochs=3)
            _write_run(root, row, evals)
            rows.append(row)
    return rows


def recurrent_runs(root):
    rows = []
    for i, (N, rep) in enumerate(((98304.0, 4), (331776.0, 2))):
        loss = float(ladder_loss(N * rep ** 0.8, 1e7))   # between N and N × repeats
        evals = [dict(step=10 ** 7, tokens=1e7 * BATCH_TOKENS, eval_loss=loss, loss_per_position=_positions(loss),
                      eval_loss_wiki_mini=loss + 0.3)]
        row = _row(f"rec{i}", "recurrent", N, 1e7, loss, loss, model_family="recurrent_transformer",
                   flops_per_token=6 * N * rep, final_eval_loss_wiki_mini=loss + 0.3)
        _write_run(root, row, evals, dict(model=dict(n_layer=2, n_recurrence=rep)))
        rows.append(row)
    return rows


def noise_files(root):
    os.makedirs(os.path.join(root, "noise"), exist_ok=True)
    with open(os.path.join(root, "noise", "smin_cmin.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "n_params_nonembedding", "batch_tokens", "step", "tokens", "loss", "S_min", "E_min",
                    "C_min_pf_days"])
        for N in NS_N:
            for s_min in np.geomspace(1e3, 1e5, 8):
                loss = float(laws.loss_of_ns(N, s_min))  # Table 3 constants
                e_min = s_min * 1e5
                w.writerow([f"bs_N{N:.0e}", N, 4096, int(2 * s_min), 2 * s_min * 4096, loss, s_min, e_min,
                            6 * N * e_min / PF_DAY])
    targets = np.linspace(3.0, 5.0, 6)
    bc = laws.critical_batch(targets)
    bcrit = dict(B_star=2.1e8, alpha_B=0.21, ci95=dict(B_star=[1.5e8, 3e8], alpha_B=[0.18, 0.25]),
                 per_target=[dict(target_loss=float(t), S_min=1e3, E_min=1e3 * float(b), B_crit=float(b),
                                  B_crit_lo=0.8 * float(b), B_crit_hi=1.2 * float(b), bracketed=True)
                             for t, b in zip(targets, bc)],
                 n_runs=10, models=["cpu_55k", "cpu_332k"],
                 b_simple_vs_loss=[dict(run="bs0", loss=float(t), b_simple=0.5 * float(b), lo=0.4 * float(b),
                                        hi=0.6 * float(b)) for t, b in zip(targets, bc)],
                 paper=dict(B_star=2.1e8, alpha_B=0.21))
    l_pivot = float(np.exp(np.mean(np.log(targets))))
    b_pivot = float(laws.critical_batch(l_pivot, 2.1e8, 0.21))
    bcrit["pivot"] = dict(loss=l_pivot, B_crit=b_pivot, ci95=[0.9 * b_pivot, 1.1 * b_pivot])
    with open(os.path.join(root, "noise", "bcrit.json"), "w") as f:
        json.dump(bcrit, f)


def write_runs_csv(root, rows):
    with open(os.path.join(root, "runs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def holdout(root, finished: bool, N=2e7):
    measured = float(ladder_loss(N, 1e7))
    pred = dict(law="kaplan_n", fit_runs=[f"lad{i}" for i in range(len(LADDER_N))], target_run="holdout_big",
                n_params_nonembedding=N, loss_pred=measured * 1.01, loss_pred_lo=measured * 0.98,
                loss_pred_hi=measured * 1.04, written_at="2026-11-23T12:00:00+00:00")
    with open(os.path.join(root, "prediction.json"), "w") as f:
        json.dump(pred, f)
    if not finished:
        return _row("holdout_big", "holdout", N, 1e7, "", "", status="pending")
    evals = [dict(step=10 ** 7, tokens=1e7 * BATCH_TOKENS, eval_loss=measured)]
    row = _row("holdout_big", "holdout", N, 1e7, measured, measured)
    _write_run(root, row, evals)
    return row


def full_sweep(root):
    """Every group and every input the report reads; returns the measured holdout loss."""
    rows = ladder_runs(root)
    rows += data_runs(root)
    rows += ladder_runs(root, sizes=[3e4, 3e5], group="lstm", prefix="lstm", factor=1.08, n_eval=10)
    rows += recurrent_runs(root)
    rows.append(holdout(root, finished=True))
    rows.append(_row("lad_broken", "ladder", 5e6, 1e7, "", "", status="failed",
                     error="RuntimeError: XLA out of memory while compiling the train step"))
    write_runs_csv(root, rows)
    noise_files(root)
    return rows


def ladder_only_sweep(root, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    rows = ladder_runs(root, rng=rng, noise=noise, n_eval=30)
    rows.append(holdout(root, finished=False))
    write_runs_csv(root, rows)
    return rows
