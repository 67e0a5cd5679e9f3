# Two commands do all the set-up on a fresh machine:
#   make demo   install the package and run the main job
#   make test   install the package with its dev tools, lint, and run the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo quant-demo test lint bench install install-dev clean

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

# The main job: PTQ over the grid (8/4/2 bits x sym/asym x per-channel/g128/g32 x clip
# none/mse) and a short 2-bit QAT with its float control, on the shipped synthetic model;
# prints the study table and findings (runs/synthetic_study_main/report/). ~6 min here.
demo: install
	MODE=main CKPT=models/cpu_synthetic_float.safetensors bash recipes/synthetic/sweep.sh

# Seconds: seven recipes on a torchaudio Conformer (size, bits per weight, output error).
quant-demo: install
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
