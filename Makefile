# kdlab: `make figures` regenerates every figure and table; `make test` runs the test suite.
# `make lab` starts JupyterLab at the repository root. All create the virtual environment on first use.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= default
ARGS ?=
LAB_ARGS ?=

.PHONY: setup test figures lab teacher student bench clean-runs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Two test processes of one thread each (tests/conftest.py), each running whole test files: on 2
# cores that is 1.5x faster than one process on two threads. TEST_JOBS=0 runs them in this process. Files go
# out in collection order, the longest first (tests/conftest.py), so that none runs alone at the end.
TEST_JOBS ?= 2

test: setup
	$(PY) -m pytest -q $(if $(filter 0,$(TEST_JOBS)),,-n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder)

figures: setup
	$(PY) -m kdlab.figures --profile $(PROFILE) $(ARGS)

# JupyterLab on this venv's kernel, at the repository root (open notebooks/ from its file browser).
# LAB_ARGS passes options, e.g. LAB_ARGS='--port=8890 --no-browser'; as root it adds --allow-root.
lab: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m jupyter lab --ServerApp.root_dir="$(CURDIR)" \
		$(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

bench: setup
	$(PY) -m kdlab.cli bench -c configs/student.yaml --json runs/bench.json

clean-runs:
	rm -rf runs
