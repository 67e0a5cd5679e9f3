# Two commands do all the set-up on a fresh machine:
#   make demo   install the package and run the main job
#   make test   install the package with its dev tools, lint, and run the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo quant-demo test check lint bench install install-dev clean

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
# prints the study table and findings (runs/synthetic_study_main/report/) and the wall time
# per stage (timing.json there). 481 s on the 2-core VM (docs/results/main_job/).
demo: install
	MODE=main CKPT=models/cpu_synthetic_float.safetensors bash recipes/synthetic/sweep.sh

# Seconds: seven recipes on a torchaudio Conformer (size, bits per weight, output error).
quant-demo: install
	$(VENV)/bin/asrquant-demo

# ruff, then the import contracts of pyproject.toml (the rooms' one-way arrows).
lint: install-dev
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports

# The inner loop (< 2 minutes here): lint, import contracts, and the fast tests (the math,
# specs and recipes, models, data readers, config checks); `make test` runs everything.
check: lint
	$(PY) -m pytest -q -x tests/test_quant_spec.py tests/test_quant_recipe.py \
	  tests/test_quant_conf.py tests/test_quant_pack.py tests/test_quant_allocate.py \
	  tests/test_models_sizes.py tests/test_models_decoding.py tests/test_conf.py \
	  tests/reliability/test_config_errors.py tests/data/test_data_text.py \
	  tests/data/test_data_tokenizer.py tests/test_architecture.py

# pytest exits 5 when it collects no test: make stops on any non-zero exit.
test: lint
	$(PY) -m pytest -q

bench: install-dev
	$(PY) bench/quant_bench.py --threads 2

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
