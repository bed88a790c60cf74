# Two commands from a fresh clone:  make demo  (the whole notebook course, headless, demo profile: ~5 min on
# 2 CPU cores)  and  make test.  make quick trains and evaluates one small model (~3 min).
# Each creates .venv with Python 3.11 and the pinned requirements on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo course quick test test-fast lint format clean lab git-filter

# The project's Jupyter kernel: notebooks ask for it by name (kernelspec "food101").
KERNEL_NAME := food101
KERNEL_DISPLAY := Food-101 workbook (.venv)
# Notebooks are committed without outputs: a git filter (nbstripout) strips them from what `git add` and
# `git status` see, so running a notebook in JupyterLab leaves the repository clean. It keeps cell ids, and drops
# the language_info the kernel writes when a notebook opens (it differs between Python releases; the paired .py
# scripts do not carry it either); on checkout scripts/lab.py writes this environment's, so a notebook opens
# unchanged.
STRIP_KEYS := metadata.language_info
REPO ?= .

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL_NAME) --display-name "$(KERNEL_DISPLAY)" >/dev/null
	$(MAKE) --no-print-directory git-filter
	touch $(STAMP)

# The output filter of .gitattributes, set up in REPO's git config (the install step runs it; REPO=DIR for another
# clone). Outside a git repository (an unpacked archive) there is nothing to set up.
git-filter:
	@if git -C "$(REPO)" rev-parse --git-dir >/dev/null 2>&1; then \
		git -C "$(REPO)" config filter.nbstripout.clean '"$(abspath $(PY))" "$(CURDIR)/scripts/lab.py" strip --keep-id' && \
		git -C "$(REPO)" config filter.nbstripout.smudge '"$(abspath $(PY))" "$(CURDIR)/scripts/lab.py" smudge' && \
		git -C "$(REPO)" config filter.nbstripout.required true && \
		git -C "$(REPO)" config filter.nbstripout.extrakeys "$(STRIP_KEYS)" && \
		git -C "$(REPO)" config diff.ipynb.textconv '"$(abspath $(PY))" "$(CURDIR)/scripts/lab.py" strip --keep-id -t' && \
		echo "git filter nbstripout set up in $(REPO): notebook outputs stay out of git"; \
	else echo "$(REPO) is not a git repository: no output filter set up"; fi

# JupyterLab on the project's environment, opened on the notebooks; pick the kernel "$(KERNEL_DISPLAY)". Saving a
# notebook keeps git clean (scripts/lab.py: its post-save hook); LAB_ARGS="--port 8899" passes arguments on.
lab: $(STAMP)
	$(PY) scripts/lab.py $(LAB_ARGS)

demo: course

course: $(STAMP)
	$(PY) -m helpers run-notebooks --profile demo

quick: $(STAMP)
	$(PY) scripts/demo.py

# The whole suite (what CI runs), with its 25 slowest tests listed at the end; PYTEST_ARGS="-x -k name" passes more.
test: $(STAMP)
	$(PY) -m pytest -q tests --durations=25 $(PYTEST_ARGS)

# The inner loop of a change (under 5 minutes): every test not marked `slow` (pyproject.toml: the session's course,
# its Try-its, the rehearsals, the browser and the fault tests that kill real processes).
test-fast: $(STAMP)
	$(PY) -m pytest -q tests -m "not slow" --durations=10 $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check helpers tests scripts
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(PY) -m ruff format helpers tests scripts

clean:
	rm -rf runs .pytest_cache
