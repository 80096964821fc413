# `make test` and `make demo` do all set-up on a fresh machine: a .venv with the CPU build of
# torch pinned (a newer torch would pull GBs of CUDA wheels), then the project with its extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_CPU := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: test venv lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_CPU)"
	$(BIN)/pip install --quiet -e ".[test]" "$(TORCH_CPU)"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .

bench: venv
	$(BIN)/python benchmarks/step_cost.py
	$(BIN)/python benchmarks/sweep_overhead.py

clean:
	rm -rf $(VENV) imm-runs .pytest_cache
