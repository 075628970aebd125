#!/usr/bin/env bash
# The performance issue's GPU checks in one call on a GPU machine (README "Benchmarks", GPU):
#   1. `python -m experiments.bench gpu`: the GPT-2-small step (12 x 768, n_ctx 1024, bf16) through the
#      trainer, its MFU against the platform table and a measured bf16 matmul peak -> $OUT/bench_gpu.{json,md}
#   2. the 8-fake-device sharding tests (sharded training equal to one device, sharded optimizer states, the
#      sharded noise-scale estimator, the model families), on that machine's CPU -> $OUT/sharding_tests.log
# Usage: OUT=<dir> bash experiments/gpu_check.sh   (PY=python3 by default: the machine's own jax, e.g. a CUDA build)
# A machine whose Python lacks gin-config (this workplace's CUDA image has jax, flax, optax and orbax but not
# gin) takes it as a wheel: `make gpu-wheels` here puts it in .whl/ (git-ignored); carry .whl with the tree.
# The multi-process training test and the data tests need seqio + TensorFlow and are not run here.
# Time: the bench is cut at BENCH_TIMEOUT (300 s; four GPT-2-small compiles and ~1 min of timing) and the tests
# at TEST_TIMEOUT (240 s), so one call fits a 10-minute command limit with the machine's start-up besides.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
  "$PY" -c "import jax, flax, optax, gin; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', \
optax.__version__, jax.devices())"; } 2>&1 | tee "$OUT/versions.txt"

timeout "${BENCH_TIMEOUT:-300}" "$PY" -m experiments.bench gpu --out="$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.log"
bench_rc=${PIPESTATUS[0]}
JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 timeout "${TEST_TIMEOUT:-240}" \
  "$PY" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning tests/train/test_train_sharding.py \
  tests/noise/test_noise_estimator.py tests/train/test_losses.py tests/models 2>&1 | tee "$OUT/sharding_tests.log"
test_rc=${PIPESTATUS[0]}
[ -f "$OUT/bench_gpu.md" ] && cat "$OUT/bench_gpu.md"
tail -1 "$OUT/sharding_tests.log"
echo "gpu_check: bench exit $bench_rc, sharding tests exit $test_rc"
[ "$bench_rc" -eq 0 ] && [ "$test_rc" -eq 0 ]
