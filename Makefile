# Heron's two commands: `make demo` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
BASE_STAMP := $(VENV)/.heron-base-installed
STAMP := $(VENV)/.heron-installed
# Two workers on the 2-core reference machine; override with `make test PYTEST_WORKERS=1`.
PYTEST_WORKERS ?= auto

.PHONY: setup test lint format demo clean

setup: $(STAMP)

# Heron and its runtime dependencies: all `make demo` needs.
$(BASE_STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e .
	@touch $(BASE_STAMP)

# + what the tests and lint use. The LVIS API is the tests' reference for LVISEvaluator;
# its declared dependencies (opencv-python, Cython) are not needed to import it, so it is
# installed without them. The serving page test drives Debian's chromium: the script
# installs it where it can (root with apt-get) and never fails; the test skips otherwise.
$(STAMP): $(BASE_STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps 'lvis==0.5.3'
	@bash tools/install_chromium.sh
	@touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check heron tests benchmarks tools
	$(VENV)/bin/ruff format --check heron tests benchmarks tools

format: $(STAMP)
	$(VENV)/bin/ruff check --fix heron tests benchmarks tools
	$(VENV)/bin/ruff format heron tests benchmarks tools

test: lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q

demo: $(BASE_STAMP)
	$(PY) -m heron demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
