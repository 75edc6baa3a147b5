# fluxgraph: `make run` and `make test` work on a fresh machine with Python 3.10+, make and git.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HOST ?= 127.0.0.1
PORT ?= 8188
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DIFFUSERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test lint install install-test models serve bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# Without CUDA, the CPU torch wheel first: an unpinned torch pulls gigabytes of CUDA libraries.
	if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install -q "torch>=2.4,<=2.14.1"; \
	else $(PIP) install -q torch==2.13.0; fi
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e ".[test,ray,export,frontend,templates,train]"
	touch $@

# ComfyUI's official frontend (the optional 'frontend' extra), served at / by `make run`; 'train' (peft) for
# LoRA training.
$(VENV)/.installed-frontend: $(VENV)/.installed
	$(PIP) install -q -e ".[frontend,templates,train]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

models: install
	$(PY) -m engine.cli models prepare

# ComfyUI's official frontend at /, fluxgraph's builtin editor at /fluxgraph/editor/ (FRONT_END=builtin: at /).
FRONT_END ?= comfyui
run: models $(VENV)/.installed-frontend
	$(PY) -m engine.cli serve --host $(HOST) --port $(PORT) --front-end $(FRONT_END)

# Layer contracts (pyproject.toml [tool.importlinter]) and the lint rules the code cites ([tool.ruff]).
lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: install-test lint
	bash tests/browser_setup.sh
	$(PY) -m pytest -q -p no:cacheprovider

bench: install
	$(PY) bench/engine_overhead.py
	$(PY) bench/server.py
	$(PY) bench/flux_step.py
	$(PY) bench/segment.py

clean:
	rm -rf $(VENV) .pytest_cache
