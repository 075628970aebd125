"""The MFU peak of a sweep's runs (scaling/train/mfu.py peak_flops, experiments/sweep_executor.py cpu_peak_for_runs).

A CPU run's peak is that of the cores it may run on: the cached machine peak scaled to them, else the per-core
figure its sweep launcher measured once before any run started (SCALING_CPU_PEAK_FLOPS_PER_CORE), else its own
probe. Inside a sweep the runs must report the launcher's figure and never probe while the other workers train.
"""
import json
import os

import jax
import pytest

from experiments import sweep_executor, sweep_inprocess
from scaling.train import mfu

SWEEP = """
Sweep.name = 'tiny_peak'
Sweep.base_gin_files = ['gin/data/embedded.gin', 'gin/optim/adam.gin', 'gin/optim/constant.gin']
Sweep.base_gin_params = {
    'TransformerConfig.n_ctx': 32, 'TransformerConfig.d_ff': 64, 'TransformerConfig.n_heads': 2,
    'TrainConfig.batch_size': 16, 'TrainConfig.microbatches': 2, 'TrainConfig.num_steps': 6,
    'TrainConfig.warmup_steps': 1, 'TrainConfig.log_every': 2, 'TrainConfig.eval_every': 6,
    'TrainConfig.checkpoint_every': 6, 'TrainConfig.keep_checkpoints': 1, 'DataConfig.eval_tokens': 1024,
    'DataConfig.extra_eval_tasks': (),
}
Sweep.blocks = [
    {'group': 'ladder', 'models': ['cpu_12k'],
     'grid': {'TransformerConfig.d_model,TransformerConfig.d_attn': [(16, 16), (24, 24)]}},
]
"""


@pytest.fixture
def no_cached_peak(tmp_path, monkeypatch):
    """No cached peak for this machine and no launcher figure in the environment."""
    monkeypatch.setenv("SCALING_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(mfu.PEAK_ENV, raising=False)
    return tmp_path


def _no_probe(*args, **kwargs):
    raise AssertionError("the per-run matmul probe ran")


def test_peak_precedence_cache_then_launcher_then_probe(no_cached_peak, monkeypatch):
    cpu = jax.devices("cpu")[:1]
    cores = mfu.process_cores()
    probes = []
    monkeypatch.setattr(mfu, "measure_matmul_flops", lambda **kw: probes.append(kw) or 5e10)

    # Nothing cached, nothing handed down: the run probes, on its own cores.
    peak, source = mfu.peak_flops(cpu)
    assert (peak, len(probes)) == (5e10, 1) and "probe" in source
    monkeypatch.setenv(mfu.PEAK_ENV, "not a number")
    assert mfu.peak_flops(cpu)[0] == 5e10 and len(probes) == 2

    # The launcher's per-core figure: times the cores this process may run on; no probe.
    monkeypatch.setenv(mfu.PEAK_ENV, "1e11")
    peak, source = mfu.peak_flops(cpu)
    assert peak == pytest.approx(1e11 * cores) and mfu.PEAK_ENV in source and source.startswith("measured")
    assert len(probes) == 2

    # A cached peak of this machine wins over the launcher's, scaled from the cores it was measured on.
    path = mfu.write_cpu_peak(3e11)
    assert mfu.peak_flops(cpu) == (3e11, f"measured: experiments.bench matmul ({path})")
    with open(path) as f:
        record = json.load(f)
    with open(path, "w") as f:
        json.dump(dict(record, cores=2 * cores), f)
    peak, source = mfu.peak_flops(cpu)
    assert peak == pytest.approx(1.5e11) and f"x {cores}/{2 * cores}" in source
    # ... but not one measured on another machine.
    with open(path, "w") as f:
        json.dump(dict(record, cpu_model="another processor"), f)
    assert mfu.peak_flops(cpu)[0] == pytest.approx(1e11 * cores) and len(probes) == 2


def test_launcher_measures_once_unless_a_cached_peak_exists(no_cached_peak, monkeypatch):
    calls = []
    monkeypatch.setattr(sweep_executor, "measure_slot_peak", lambda cores: calls.append(cores) or 7e10)
    with sweep_executor.cpu_peak_for_runs([[0], [1]]) as extra:
        assert extra == {mfu.PEAK_ENV: repr(7e10)} and os.environ[mfu.PEAK_ENV] == repr(7e10)
        with sweep_executor.cpu_peak_for_runs([[0], [1]]) as inner:   # already handed down: not again
            assert inner == {}
    assert calls == [[0]] and mfu.PEAK_ENV not in os.environ
    mfu.write_cpu_peak(3e11)
    with sweep_executor.cpu_peak_for_runs([[0], [1]]) as extra:
        assert extra == {} and mfu.PEAK_ENV not in os.environ
    assert calls == [[0]]


def _sweep(tmp_path):
    path = tmp_path / "tiny_peak.gin"
    path.write_text(SWEEP)
    return str(path)


def _summaries(result):
    assert result.ok, [(o.run.name, o.error) for o in result.outcomes]
    out = []
    for run in result.runs:
        with open(os.path.join(result.root, "runs", run.name, "summary.json")) as f:
            out.append(json.load(f))
    return out


@pytest.mark.parametrize("executor", ["inprocess", "subprocess"])
def test_sweep_runs_report_the_peak_their_launcher_measured(no_cached_peak, monkeypatch, executor):
    """Two workers (pinned to their core slots when there are two cores): the launcher measures one slot once,
    for real, before the workers start, and both runs report that figure times their cores (no run probes:
    the probe's source would say so)."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)   # one CPU device per run process
    measured = []
    real = sweep_executor.measure_slot_peak
    monkeypatch.setattr(sweep_executor, "measure_slot_peak", lambda cores: measured.append(real(cores)) or measured[-1])
    result = sweep_executor.run_sweep(_sweep(no_cached_peak), str(no_cached_peak / executor), workers=2,
                                      executor=sweep_inprocess.executor_for(executor))
    assert len(measured) == 1 and measured[0] > 1e8
    cores = len(sweep_executor.core_slots(2)[0] or sweep_executor.available_cores())
    for summary in _summaries(result):
        assert summary["mfu_peak_flops"] == pytest.approx(measured[0] * cores, rel=1e-12)
        assert mfu.PEAK_ENV in summary["mfu_peak_source"] and "probe" not in summary["mfu_peak_source"]
        assert 0 < summary["mfu"] < 1
    assert mfu.PEAK_ENV not in os.environ


def test_inprocess_single_worker_measures_here_once(no_cached_peak, monkeypatch):
    """One worker: the launcher's own process trains the runs, measures once itself, and no run probes."""
    calls = []
    monkeypatch.setattr(mfu, "measure_cpu_peak", lambda: calls.append(1) or 6e10)
    monkeypatch.setattr(mfu, "measure_matmul_flops", _no_probe)
    monkeypatch.setattr(sweep_executor, "measure_slot_peak", _no_probe)   # no child process either
    result = sweep_executor.run_sweep(_sweep(no_cached_peak), str(no_cached_peak / "here"), workers=1,
                                      executor=sweep_inprocess.executor_for("inprocess"))
    assert calls == [1]
    for summary in _summaries(result):
        assert summary["mfu_peak_flops"] == pytest.approx(6e10) and mfu.PEAK_ENV in summary["mfu_peak_source"]


@pytest.mark.parametrize("executor", ["inprocess", "subprocess"])
def test_a_lone_run_keeps_its_core_slot(no_cached_peak, monkeypatch, executor):
    """With two workers configured, a sweep with one run left still pins it to one worker's share of the cores:
    its thread count, hence its float rounding, must not depend on what else remains (on one core and on two,
    XLA's CPU matmuls round differently). The run's peak is the launcher's per-core figure times the cores it
    was allowed to use, so it shows the pinning."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    if len(sweep_executor.available_cores()) < 2:
        pytest.skip("needs two cores to pin one run to one of them")
    measured = []
    real = sweep_executor.measure_slot_peak
    monkeypatch.setattr(sweep_executor, "measure_slot_peak", lambda cores: measured.append(real(cores)) or measured[-1])
    path = no_cached_peak / "lone.gin"
    path.write_text(SWEEP.replace("[(16, 16), (24, 24)]", "[(16, 16)]"))
    result = sweep_executor.run_sweep(str(path), str(no_cached_peak / executor), workers=2,
                                      executor=sweep_inprocess.executor_for(executor))
    (summary,) = _summaries(result)
    slot = sweep_executor.core_slots(2)[0]
    assert len(slot) < len(sweep_executor.available_cores())
    assert summary["mfu_peak_flops"] == pytest.approx(measured[0] * len(slot), rel=1e-12)
