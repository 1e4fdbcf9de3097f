# The two commands of the README: `make run` (the default benchmark) and `make test`.
# Each creates or reuses .venv, installs torch==2.13.0 first (so that nothing pulls a CUDA
# build), then this project in editable mode with its dev extras.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
CONFIG ?= configs/default.yaml
# one worker per core: every stage runs on one torch thread (the configs' `threads: 1`), so
# stages, not threads, share the cores
WORKERS ?= $(shell nproc 2>/dev/null || echo 1)
ARGS   ?=
STAMP   = $(VENV)/.installed

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup run smoke test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/nftbench run $(CONFIG) --workers $(WORKERS) $(ARGS)

smoke: $(STAMP)
	$(BIN)/nftbench run configs/smoke.yaml --workers $(WORKERS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf runs .pytest_cache
