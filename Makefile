# One entry point for set-up, code generation, the demo, tests and benchmarks. Every target does its own set-up.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PROTOS  := $(wildcard proto/slperf/v1/*.proto)
CONFIG  ?= configs/mnist_splitfed_v1.yaml

.PHONY: setup proto demo test test-fast test-stress lint bench bench-suite data clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install --upgrade --quiet pip
	# torch==2.13.0 resolves to the CPU wheel on the project's machines (never a multi-GB CUDA build).
	$(VPY) -m pip install --quiet "torch==2.13.0"
	$(VPY) -m pip install --quiet -e ".[dev,ray,docker]"
	touch $(STAMP)

setup: $(STAMP)

# Regenerates the committed stubs in slperf/v1/ from proto/ (tests/test_proto_stubs.py fails when they are stale).
proto: $(STAMP)
	$(VPY) -m tools.protogen

data: $(STAMP)
	for d in mnist fashionmnist adult german; do $(VPY) -m slperf.cli data prepare $$d || exit 1; done

# The main job: a local federation (server + 3 client daemons over mutual TLS) training on MNIST.
demo: $(STAMP)
	$(VPY) -m slperf.cli federation $(CONFIG)

# The suite starts hundreds of Python processes (daemons, CLI runs): with PYTHONDONTWRITEBYTECODE set (as on
# these machines) each one compiled the project's sources again and pytest rewrote every test module on each run.
# Letting them write __pycache__ (git- and docker-ignored) made `make test-fast` 1.8x faster here (3 min 24 s ->
# 1 min 53 s, same load).
TESTENV := env -u PYTHONDONTWRITEBYTECODE

test: $(STAMP)
	$(TESTENV) $(VPY) -m pytest -q

# ruff (lint + format check), mypy (strict on the core) and the import-linter layer contracts in pyproject.toml.
lint: $(STAMP)
	$(VPY) tools/lint.py

# The suite under CPU load (one busy loop per core) and in random order, 3 times; prints each run's seed.
test-stress: $(STAMP)
	$(TESTENV) $(VPY) tools/stress.py --repeats $(or $(REPEATS),3)

test-fast: $(STAMP)
	$(TESTENV) $(VPY) -m pytest -q -m "not slow"

# Performance benchmarks (split overhead, codec, stream throughput, scaling): print figures, write JSON to
# benchmarks/results/; none is a pass/fail test. `slperf bench --suite quick` is the research matrix.
bench: $(STAMP)
	$(VPY) -m benchmarks.run_all

bench-suite: $(STAMP)
	$(VPY) -m slperf.cli bench --suite quick

clean:
	rm -rf $(VENV) runs .pytest_cache .lint .mypy_cache .ruff_cache

include deploy/deploy.mk
