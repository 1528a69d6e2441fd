# `make test` and `make bench` set up their own virtualenv: a fresh clone
# needs nothing but Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo lint test test-fast bench bench-backfill venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
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

# Unit tests only: no Redis, no chDB, seconds (tests/unit).
test-fast: $(STAMP)
	$(PY) -m pytest tests/unit -m "not slow"

bench: $(STAMP)
	$(PY) bench/labels_speed.py

bench-backfill: $(STAMP)
	$(PY) bench/backfill.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
