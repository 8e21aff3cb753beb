# The README's two commands: `make demo` and `make test`. Each creates .venv on its own.
# `make up` / `make down`: a local Airflow UI with the DAG in local pod mode (scripts/local_airflow.py).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test bench clean up down

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch lies on these machines' disk; an unpinned torch downloads GBs of CUDA.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[airflow,probe,qa,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m vlmprobe.demo

up: $(STAMP)
	$(BIN)/python scripts/local_airflow.py up

# Standard library only: stops what `make up` started even without the venv.
down:
	$(PYTHON) scripts/local_airflow.py down

test: $(STAMP)
	$(BIN)/pytest -m "not gpu" $(PYTEST_ARGS)

bench: $(STAMP)
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf demo-output .pytest_cache
