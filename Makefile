# The README's two commands: `make demo` and `make test`. Each creates .venv on its own.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch lies on these machines' disk; an unpinned torch downloads GBs of CUDA.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[airflow,probe,qa,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m vlmprobe.demo

test: $(STAMP)
	$(BIN)/pytest -m "not gpu" $(PYTEST_ARGS)

bench: $(STAMP)
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf demo-output .pytest_cache
