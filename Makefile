# Two commands from a fresh clone:  make demo  (the whole notebook course, headless, demo profile: ~10 min on
# 2 CPU cores)  and  make test.  make quick trains and evaluates one small model (~3 min).
# Each creates .venv with Python 3.11 and the pinned requirements on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo course quick test lint format clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

demo: course

course: $(STAMP)
	$(PY) -m helpers run-notebooks --profile demo

quick: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(PY) -m ruff check helpers tests scripts

format: $(STAMP)
	$(PY) -m ruff format helpers tests scripts

clean:
	rm -rf runs .pytest_cache
