# Two commands do all set-up on a fresh machine:
#   make demo   create .venv if missing, install, run a local federation (SQLite MLflow store)
#   make test   same set-up, then lint, type checks and the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.federator-installed
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

.PHONY: setup demo test test-unit bench clean

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing Federator into $(VENV) (first time: a few minutes)"
	# torch first, pinned: the CPU build. An unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/federator simulate simulations/demo.toml
	$(BIN)/federator models list simulations/demo.toml

test: $(STAMP)
	$(BIN)/python tests/check.py

test-unit: $(STAMP)
	$(BIN)/python tests/check.py --unit

bench: $(STAMP)
	$(BIN)/python -m federator.simulations.bench.hooks_overhead
	$(BIN)/python -m federator.simulations.bench.utility
	$(BIN)/python -m federator.simulations.bench.opacus_overhead
	$(BIN)/python -m federator.simulations.bench.privacy_accuracy --repeats 3 \
		--dp-task mnist-scatter --dp-rounds 15 --dp-epochs 1 --dp-batch-size 128 \
		--dp-lr 4 --dp-momentum 0.5 --max-grad-norm 0.25
	nice -n 15 $(BIN)/python -m federator.simulations.bench.round_latency
	$(BIN)/python -m federator.simulations.bench.serving
	nice -n 10 $(BIN)/python -m federator.simulations.bench.aggregation
	$(BIN)/python -m federator.simulations.bench.robustness

clean:
	rm -rf federator-runs .pytest_cache .mypy_cache .ruff_cache
