# The README's two commands: `make demo` and `make test`. Each creates .venv on its own.
# `make up` / `make down`: a local Airflow UI with the DAG in local pod mode (scripts/local_airflow.py).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The policy scanners (checkov, hadolint) live in their own venv: their pins must not meet Airflow's.
SCAN_VENV := .venv-scan
SCAN_STAMP := $(SCAN_VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test scan bench clean up down

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch lies on these machines' disk; an unpinned torch downloads GBs of CUDA.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[airflow,probe,qa,dev]"
	touch $(STAMP)

$(SCAN_STAMP): tests/policy/requirements.txt
	$(PYTHON) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/pip install --quiet --upgrade pip
	$(SCAN_VENV)/bin/pip install --quiet -r tests/policy/requirements.txt
	touch $(SCAN_STAMP)

demo: $(STAMP)
	$(BIN)/python -m vlmprobe.demo

up: $(STAMP)
	$(BIN)/python scripts/local_airflow.py up

# Standard library only: stops what `make up` started even without the venv.
down:
	$(PYTHON) scripts/local_airflow.py down

test: $(STAMP) $(SCAN_STAMP)
	VLMPROBE_SCAN_VENV=$(SCAN_VENV) $(BIN)/pytest -m "not gpu" $(PYTEST_ARGS)

# Only the policy scan: the chart's manifests, the DAG's pods and both Dockerfiles.
scan: $(STAMP) $(SCAN_STAMP)
	VLMPROBE_SCAN_VENV=$(SCAN_VENV) $(BIN)/pytest tests/unit/test_policy_scan.py

# The CPU benchmarks, each a ratio against a baseline run in the same process (minutes in all).
# The GPU ones (bench/probe_gpu.sh, bench/target_load_memory.py) need CUDA.
CPU_BENCHES := bench_dag_parse bench_target_batching bench_teacher probe_throughput sample_scale teacher_quota teacher_cost night
bench: $(STAMP)
	for b in $(CPU_BENCHES); do echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py || exit 1; done

clean:
	rm -rf demo-output .pytest_cache
