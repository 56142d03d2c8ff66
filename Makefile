# cadence: `make demo` runs the whole path on the default task, `make test` runs the tests.
# Both create .venv and install the project on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU wheel by default; on a CUDA machine use e.g. `make TORCH=torch demo`.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-all peer-env gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cadence demo

# One pytest worker per core (most tests use one), an idle worker taking tests queued for the other
# (a module fixture may then be built in both). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= auto
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist worksteal

test-all: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

# Every GPU path's parity and latency in one JSON (gpu-check.json); on a CUDA machine install the
# CUDA build first (`make TORCH=torch gpu-check`). Without a GPU it prints what it would run.
gpu-check: $(STAMP)
	$(PY) -m cadence.bench.gpu_check --out gpu-check.json

# LeRobot in its own environment (it pins torch < 2.11) for `cadence bench peer`; a download of a few GB.
PEER_VENV ?= .venv-peer
peer-env: $(PEER_VENV)/.installed

$(PEER_VENV)/.installed:
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install -q "lerobot==0.4.4"
	touch $@

clean:
	rm -rf $(VENV) $(PEER_VENV) .pytest_cache
