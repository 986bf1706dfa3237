# kdlab: `make figures` regenerates every figure and table; `make test` runs the test suite.
# Both create the virtual environment on first use.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= default
ARGS ?=

.PHONY: setup test figures teacher student bench clean-runs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: setup
	$(PY) -m pytest -q

figures: setup
	$(PY) -m kdlab.figures --profile $(PROFILE) $(ARGS)

bench: setup
	$(PY) -m kdlab.cli bench -c configs/student.yaml

clean-runs:
	rm -rf runs
