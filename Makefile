# `make test`, `make demo` and `make bench` set up their own virtualenv: a fresh clone
# needs nothing but Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Two stamps: the package with the test and bench extras (make venv, test,
# lint, bench), and the package alone (make demo).  The first install holds
# everything the second does, so it renews both stamps; the demo's install
# renews only its own, so a later make test still installs the extras.
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

# Editable installs, so the venv runs the working tree.  setuptools warns on
# each one that a folder named like the package in the working directory may
# be imported instead of it; here that folder is the package's own source
# (the very files the install points to), so the warning, which pip shows
# even with --quiet, is filtered by its text.  editable_mode=compat would
# trade it for a deprecation warning, strict for one about build/.
PIP_INSTALL := PYTHONWARNINGS='ignore:Editable installation' $(PY) -m pip install --quiet

.PHONY: demo lint test test-fast bench bench-backfill venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PIP_INSTALL) -e '.[test,bench]'
	touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PIP_INSTALL) -e .
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/gpubackfill demo

# One pytest run: a failure or a timeout fails the target.  A test gets
# 120 s (pyproject.toml); faulthandler dumps every thread's stack first, from
# a C thread that needs no GIL, so even a deadlocked run shows where it was.
# The outer bound only keeps a wedged run inside CI's limit; it retries nothing.
test: $(STAMP) lint
	timeout -k 30 4500 $(PY) -m pytest

# ruff (pyflakes, pycodestyle, bugbear, import order, pyupgrade) and mypy on
# the package; settings in pyproject.toml.  make test runs it first.
lint: $(STAMP)
	$(PY) -m ruff check gpubackfill kernels tests bench tools
	$(PY) -m mypy
	$(PY) tools/check_imports.py

# Unit tests only: no Redis, no chDB, seconds (tests/unit).
test-fast: $(STAMP)
	$(PY) -m pytest tests/unit -m "not slow"

bench: $(STAMP)
	$(PY) bench/labels_speed.py

bench-backfill: $(STAMP)
	$(PY) bench/backfill.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
