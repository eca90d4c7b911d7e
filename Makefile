# Graftwork developer commands. `make demo` and `make test` set up .venv first when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test bench bench-codec replicate lint

$(BIN)/graft: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch first (a local wheel on our machines), so that the looser torch
	# requirement is already met and pip pulls no CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/graft

demo: setup
	$(BIN)/graft demo

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/bench_transfer.py

bench-codec: setup
	$(BIN)/python benchmarks/bench_codec.py

# The paper's effects on the test bed, three seeds: benchmarks/results/replicate/report.md (< 10 min).
replicate: setup
	$(BIN)/python benchmarks/replicate.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
