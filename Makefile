# The two commands: `make run` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench lint clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)
	$(PY) scripts/run.py

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/ingest.py
	$(PY) bench/rollup.py
	$(PY) bench/detect.py
	$(PY) bench/alert_latency.py
	$(PY) bench/train.py

lint: $(STAMP)  # ruff and mypy, both clean
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy config tenants analytics mlops alerts tests scripts

clean:
	rm -rf $(VENV) .run vigil.sqlite3 staticfiles
