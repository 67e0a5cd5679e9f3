# Two commands do all the set-up on a fresh machine:
#   make demo   install the package and run the main job
#   make test   install the package with its dev tools, lint, and run the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test lint bench install install-dev clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: $(PY) pyproject.toml constraints.txt
	$(PIP) install -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/asrquant-demo

lint: install-dev
	$(PY) -m ruff check .

# pytest exits 5 when it collects no test: make stops on any non-zero exit.
test: lint
	$(PY) -m pytest -q

bench: install-dev
	$(PY) bench/quant_bench.py --threads 2

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
