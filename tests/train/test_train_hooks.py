"""The training loop's hooks (scaling/train/hooks.py), each on its own with fakes around it: what the non-finite
policy accepts, skips and stops on; what a metrics window logs (window means, noise-scale EMA in step order after
the warm-up, skipped steps, excluded time); what the evaluator keeps as best / last and when it scores the extra
corpora; what a checkpoint's record holds. End-to-end behaviour (resume, NaN, preemption) is in test_train_resume.py
and tests/reliability/."""
import time
import types

import jax.numpy as jnp
import numpy as np
import pytest

from scaling.noise.smoothing import NoiseScaleEMA
from scaling.train import hooks
from scaling.train.config import TrainConfig
from scaling.train.step import NonFiniteLossError


class FakeCheckpointer:
    directory = "/ckpt"

    def __init__(self, latest=None):
        self.latest, self.waits, self.saved = latest, 0, []

    def wait(self):
        self.waits += 1

    def latest_step(self):
        return self.latest

    def save(self, step, state, record):
        self.saved.append((step, state, record))


class Lines:
    def __init__(self):
        self.lines, self.records, self.synced = [], [], 0

    def write(self, message):
        self.lines.append(message)

    def log_line(self, step, rec):
        pass

    def append(self, rec):
        self.records.append(rec)

    def scalars(self, step, values, prefix=""):
        pass

    def sync(self):
        self.synced += 1

    def flush(self):
        pass


def device(**values):
    return {k: jnp.asarray(v, jnp.int32 if k == "skipped" else jnp.float32) for k, v in values.items()}


def config(**kw):
    base = dict(batch_size=8, microbatches=2, num_steps=20, log_every=4, nonfinite="skip", max_skipped_steps=3,
                noise_scale_ema_tokens=1024.0)
    base.update(kw)
    return TrainConfig(**base)


def test_nonfinite_policy_skips_counts_and_stops():
    ckpt, progress = FakeCheckpointer(latest=8), Lines()
    policy = hooks.NonFinitePolicy(config(), ckpt, progress, skipped_before=2)
    assert policy.accept(9, {"loss": 2.0, "grad_norm": 1.0})
    assert not policy.accept(10, {"loss": np.nan, "grad_norm": 1.0, "skipped": 1})
    assert not policy.accept(11, {"loss": 2.0, "grad_norm": np.inf, "skipped": 1})   # the gradient norm too
    assert (policy.total, policy.in_a_row) == (4, 2)
    assert "step 11" in progress.lines[-1] and "2 in a row, 4 in total" in progress.lines[-1]
    assert policy.accept(12, {"loss": 2.0, "grad_norm": 1.0}) and policy.in_a_row == 0 and policy.total == 4
    for step in (13, 14):
        assert not policy.accept(step, {"loss": np.nan, "grad_norm": 1.0, "skipped": 1})
    with pytest.raises(NonFiniteLossError) as error:                     # the 3rd in a row = max_skipped_steps
        policy.accept(15, {"loss": np.nan, "grad_norm": 1.0, "skipped": 1})
    assert error.value.step == 15 and error.value.last_checkpoint == 8 and ckpt.waits == 1
    assert "3 consecutive skipped steps" in str(error.value)
    # nonfinite='stop': the step was not skipped on the device, so the run stops at once.
    stop = hooks.NonFinitePolicy(config(nonfinite="stop"), FakeCheckpointer(latest=None), Lines())
    with pytest.raises(NonFiniteLossError, match="no checkpoint had been written yet"):
        stop.accept(3, {"loss": np.inf, "grad_norm": 1.0})


def make_window(cfg, noise_skip=2, skipped_before=0):
    log = Lines()
    policy = hooks.NonFinitePolicy(cfg, FakeCheckpointer(), Lines(), skipped_before=skipped_before)
    window = hooks.MetricsWindow(cfg, batch_tokens=cfg.batch_size * 16, flops_per_token=100.0,
                                 mfu_flops_per_token=120.0, peak=1e12, noise_ema=NoiseScaleEMA(1024.0, 16),
                                 noise_skip=noise_skip, policy=policy, metrics_log=log, tb=log, progress=log,
                                 lead=True)
    return window, log


def test_metrics_window_logs_window_means_and_updates_the_noise_ema_in_step_order():
    cfg = config()
    window, log = make_window(cfg)
    reference = NoiseScaleEMA(1024.0, 16)
    sums = {1: (5.0, 2.0), 2: (6.0, 2.5), 3: (4.0, 1.0), 4: (7.0, 3.0)}
    for step in range(1, 5):
        s_small, s_big = sums[step]
        window.add(step, device(loss=10.0 - step, grad_norm=1.0, lr=0.1 * step, gns_s_small=s_small, gns_s_big=s_big,
                                skipped=0))
        if step > 2:   # noise_skip: the warm-up steps' sums are logged but do not enter the EMA
            reference.update(s_small, s_big, 4, 8)
    assert window.steps == 4 and len(window.pending) == 4
    window.process_all_but_newest()
    assert [s for s, _ in window.pending] == [4]                   # the newest step may still run on the device
    window.flush()
    window.exclude(0.0)
    rec = window.log(4)
    assert rec["step"] == 4 and rec["tokens"] == 4 * 8 * 16
    assert rec["loss"] == 6.0 and rec["loss_avg"] == np.mean([9.0, 8.0, 7.0, 6.0])
    assert rec["lr"] == pytest.approx(0.4) and rec["grad_norm"] == 1.0
    assert rec["gns_s_small"] == np.mean([5.0, 6.0, 4.0, 7.0]) and rec["gns_s_big"] == np.mean([2.0, 2.5, 1.0, 3.0])
    assert (rec["gns_b_small"], rec["gns_b_big"], rec["gns_steps"]) == (4, 8, 4)
    assert rec["b_simple"] == reference.b_simple_tokens and rec["gns_g2_ema"] == reference.g2_mean
    assert rec["skipped_steps"] == 0                                # logged with nonfinite='skip'
    assert log.records == [rec] and window.session_train_time > 0 and window.last_loss == 6.0
    assert (window.steps, window.losses, window.gns) == (0, [], [])  # the next window starts empty


def test_metrics_window_skipped_steps_and_excluded_time():
    cfg = config(noise_scale=False)
    window, log = make_window(cfg, skipped_before=5)
    window.add(1, device(loss=3.0, grad_norm=1.0, lr=0.1, skipped=0))
    window.add(2, device(loss=np.nan, grad_norm=1.0, lr=0.1, skipped=1))
    window.flush()
    assert window.last["_step"] == 2 and window.losses == [3.0] and window.last_loss == 3.0
    time.sleep(0.05)
    window.exclude(10.0)                                            # more than the window's wall time
    rec = window.log(2)
    assert rec["skipped_steps"] == 6 and "gns_s_small" not in rec and np.isnan(rec["loss"])
    assert np.isnan(rec["tokens_per_sec"]) and np.isnan(window.last_rate)   # no positive time left: no rate
    stopping, _ = make_window(config(nonfinite="stop", noise_scale=False))
    stopping.add(1, device(loss=3.0, grad_norm=1.0, lr=0.1))
    stopping.flush()
    assert "skipped_steps" not in stopping.log(1)                   # logged only with nonfinite='skip'


class FakeRun:
    def __init__(self, cfg, extra=True, position=False):
        self.config = cfg
        self.model_config = types.SimpleNamespace(n_ctx=16)
        self.mesh = None
        self.data = types.SimpleNamespace(eval_windows=np.zeros((4, 17), np.int32), eval_bytes_per_token=2.0,
                                          extra_evals={"other": (np.zeros((2, 17), np.int32), 3.0)} if extra else {},
                                          position_eval_windows=np.zeros((2, 17), np.int32) if position else None)


def make_evaluator(monkeypatch, cfg, losses, history=(), **kw):
    results = iter(losses)

    def evaluate(eval_step, params, windows, bytes_per_token, batch, put):
        loss = next(results)
        return types.SimpleNamespace(loss=loss, bits_per_byte=loss / bytes_per_token, n_windows=len(windows),
                                     loss_per_position=np.full(16, loss))
    monkeypatch.setattr(hooks.eval_lib, "evaluate", evaluate)
    monkeypatch.setattr(hooks, "NamedSharding", lambda mesh, spec: None)
    log = Lines()
    run = FakeRun(cfg, **kw)
    run.batch_sharding = types.SimpleNamespace(spec=("data",))
    return hooks.Evaluator(run, None, flops_per_token=100.0, eval_log=log, tb=log, progress=log, lead=True,
                           history=list(history)), log


def test_evaluator_keeps_best_and_last_across_a_resume_and_scores_extras_where_asked(monkeypatch):
    history = [{"step": 5, "eval_loss": 3.0}, {"step": 10, "eval_loss": 2.5}]
    evaluator, log = make_evaluator(monkeypatch, config(num_steps=20), [2.7, 2.8, 2.4, 2.6], history=history)
    assert (evaluator.best_loss, evaluator.best_step) == (2.5, 10) and evaluator.done_at(10)
    rec = evaluator(15, params=None)
    assert rec["eval_loss"] == 2.7 and rec["eval_loss_other"] == 2.8 and rec["eval_bpb_other"] == 2.8 / 3.0
    assert (rec["best_eval_loss"], rec["best_eval_step"]) == (2.5, 10)
    assert rec["tokens"] == 15 * 8 * 16 and rec["eval_windows"] == 4
    rec = evaluator(20, params=None)
    assert (rec["best_eval_loss"], rec["best_eval_step"]) == (2.4, 20) and evaluator.done_at(20)
    assert [r["step"] for r in log.records] == [15, 20]
    # extra_eval_final_only: the extra corpus only at the final eval; the position eval only at the final eval.
    evaluator, log = make_evaluator(monkeypatch, config(num_steps=20, extra_eval_final_only=True),
                                    [2.0, 1.9, 1.8, 1.7], position=True)
    assert "eval_loss_other" not in evaluator(10, params=None)
    final = evaluator(20, params=None)
    assert final["eval_loss_other"] == 1.8 and final["position_eval_loss"] == 1.7
    assert final["position_eval_loss_per_position"] == [1.7] * 16


def test_checkpoint_record_holds_what_a_resume_needs(monkeypatch):
    cfg = config()
    window, log = make_window(cfg, skipped_before=3)
    window.session_train_time = 7.0
    window.noise_ema.update(5.0, 2.0, 4, 8)
    evaluator = types.SimpleNamespace(best_loss=float("inf"), best_step=None)
    ckpt, calls = FakeCheckpointer(), []
    saver = hooks.Checkpointing(ckpt, batch_tokens=128, previous={"wall_time": 100.0, "train_time": 50.0},
                                wall_start=time.time() - 2.0, evaluator=evaluator, window=window,
                                policy=window.policy, logs=(log, log), tb=log, lead=True, last_saved=None,
                                after_checkpoint=lambda step: calls.append((step, ckpt.waits)))
    saver.save(12, "STATE")
    step, state, record = ckpt.saved[-1]
    assert (step, state, saver.last_saved) == (12, "STATE", 12)
    assert record["data_step"] == 12 and record["tokens"] == 12 * 128
    assert record["best_eval_loss"] is None and record["best_eval_step"] is None       # no eval yet: not inf
    assert record["train_time"] == 57.0 and 101.9 < record["wall_time"] < 110.0
    assert record["skipped_steps"] == 3 and record["noise_ema"] == window.noise_ema.state_dict()
    assert log.synced == 2 and calls == [(12, 1)]                   # logs fsynced; callback after the write
    restored = NoiseScaleEMA(1024.0, 16)
    restored.load_state_dict(record["noise_ema"])
    assert restored.b_simple_tokens == window.noise_ema.b_simple_tokens
    evaluator.best_loss, evaluator.best_step = 2.5, 10
    saver.save(13, "STATE")
    assert ckpt.saved[-1][2]["best_eval_loss"] == 2.5 and ckpt.saved[-1][2]["best_eval_step"] == 10

