# avatarpipe: two commands on a fresh machine with Python 3.11 and make.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export AVATARPIPE_HOME ?= $(CURDIR)/.avatarpipe
export AVATARPIPE_CACHE ?= $(HOME)/.cache/avatarpipe
export GX_ANALYTICS_ENABLED := false
export DAGSTER_DISABLE_TELEMETRY := 1
SAMPLE := samples/person_standing.png

.PHONY: demo test ui bench lint clean-home

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	# torch first, alone: the pinned CPU build (a combined resolve may pick the CUDA wheel)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/avatarpipe run $(SAMPLE) --subject demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

ui: $(STAMP)
	DAGSTER_HOME=$(AVATARPIPE_HOME)/dagster $(VENV)/bin/python -c "from orchestration.settings import Settings, prepare_environment; prepare_environment(Settings.from_env())"
	DAGSTER_HOME=$(AVATARPIPE_HOME)/dagster $(VENV)/bin/dagster dev -m orchestration.definitions

bench: $(STAMP)
	$(PY) benchmarks/run_benchmarks.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean-home:
	rm -rf $(AVATARPIPE_HOME)
