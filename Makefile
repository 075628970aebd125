# Every target creates .venv from requirements.txt when it is missing and reuses it otherwise.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
ROOT ?= runs/reproduce
BENCH_OUT ?= runs/bench.json

.PHONY: venv test reproduce bench gpu-wheels smoke clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install --upgrade --quiet pip
	$(VPY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

test: $(STAMP)
	$(VPY) -m pytest tests -q -ra -W ignore::DeprecationWarning

reproduce: $(STAMP)
	$(VPY) -m experiments.reproduce --root=$(ROOT)

BENCH_STAMP := $(VENV)/.bench-requirements-installed

$(BENCH_STAMP): requirements-bench.txt $(STAMP)
	$(VPY) -m pip install --quiet -r requirements-bench.txt
	touch $(BENCH_STAMP)

# Writes $(BENCH_OUT) (flat JSON) and the markdown table beside it (.md); README "Benchmarks".
bench: $(BENCH_STAMP)
	$(VPY) -m experiments.bench all --out=$(BENCH_OUT)

# The wheels experiments/gpu_check.sh installs on a GPU machine whose Python lacks them (README "Benchmarks").
gpu-wheels: $(STAMP)
	$(VPY) -m pip download --quiet --no-deps --only-binary=:all: -d .whl gin-config==0.5.0

smoke: $(STAMP)
	$(VPY) -m experiments.train --gin_file=gin/smoke.gin --workdir=runs/smoke

clean-venv:
	rm -rf $(VENV)
