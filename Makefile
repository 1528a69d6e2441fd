# `make test` and `make bench` set up their own virtualenv: a fresh clone
# needs nothing but Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench bench-backfill venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gpubackfill demo

# --sw: a run stopped by a failure, or by a test that timed out on a stuck
# chDB statement, is resumed from that test in a fresh process (twice at
# most); a real failure fails every time and the target fails.
test: $(STAMP)
	rm -rf .pytest_cache/v/cache/stepwise
	@for attempt in 1 2 3; do \
		timeout 3000 $(PY) -m pytest --sw && exit 0; \
		echo "pytest stopped (attempt $$attempt of 3); resuming from the test that stopped it"; \
	done; exit 1

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) bench/kernels.py

bench-backfill: $(STAMP)
	$(PY) bench/backfill.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
