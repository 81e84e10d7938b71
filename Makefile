# mixit: set-up, tests, benchmarks. Recipes for the paper's tables live in recipes/.

# Commands run inside the project's .venv (made by `make install`) unless a virtual or conda
# environment is active, in which case that one is used, as `make install` did.
ifeq ($(VIRTUAL_ENV)$(CONDA_PREFIX),)
ifneq ($(wildcard .venv/bin/python),)
export VIRTUAL_ENV := $(CURDIR)/.venv
export PATH := $(CURDIR)/.venv/bin:$(PATH)
endif
endif
PYTHON ?= $(if $(VIRTUAL_ENV)$(CONDA_PREFIX),python,python3)

.PHONY: install test lint format bench gpu-check docs help

help:
	@echo "make install   ffmpeg and Chromium (apt), then torch and mixit (editable) with test tools, in .venv unless an environment is active"
	@echo "make test      run the test suite"
	@echo "make lint      ruff: lint and formatting check (make format rewrites the files)"
	@echo "make bench     run the benchmarks in bench/ (slow; prints figures)"
	@echo "make docs      regenerate docs/commands.md from the command-line app"
	@echo "make gpu-check the whole CUDA path in one run, one JSON report (bench/gpu_check.py; about 8 min on a GPU)"
	@echo "make demo      the whole pipeline on synthesised music with the tiny model (about 20 min on 2 CPU cores)"
	@echo "make demo-stems  after make demo: a fifth instrument (guitar) learnt from 3 songs, as guitar + rest (docs/stems.md)"
	@echo "make table1 FMA=... MUSDB=... GPUS=N   (also table2, table3): reproduce the paper's tables"

install:
	./scripts/install.sh

test:
	$(PYTHON) -m pytest -q -n 2 tests

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

bench:
	$(PYTHON) bench/model.py
	$(PYTHON) bench/mixit.py
	$(PYTHON) bench/prepare.py
	$(PYTHON) bench/dataloader.py

docs:
	$(PYTHON) scripts/commands_doc.py

gpu-check:
	$(PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)

include recipes/tables.mk
include recipes/demo.mk
