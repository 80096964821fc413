# `make test` and `make demo` do all set-up on a fresh machine: a .venv with the CPU build of
# torch pinned (a newer torch would pull GBs of CUDA wheels), then the project with its extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_CPU := torch==2.13.0
PYTEST_ARGS ?=

DEMO_SWEEP := toy2d_smoke
DEMO_OUT := imm-runs/demo

.PHONY: test demo venv lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "== setting up $(VENV): pip, $(TORCH_CPU) (CPU build), then the project and its test tools (a few minutes, once)"
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_CPU)"
	$(BIN)/pip install --quiet -e ".[test]" "$(TORCH_CPU)"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The new-user path on the embedded default (local Ray, MLflow in imm-runs/mlflow.db, artifacts beside it):
# sweep IMM's axes on the 2D toy at toy2d's full budget, promote the best trial, sample from the promoted
# model. Rerunning resumes each step.
demo: venv
	@echo "== 1/3 sweep: $(DEMO_SWEEP) (8 trials of IMM on 8 Gaussians, up to 3000 steps each; ~3 min on 2 cores)"
	@if $(BIN)/imm-orch status $(DEMO_SWEEP) >/dev/null 2>&1; then resume=--resume; fi; \
	  $(BIN)/imm-orch sweep sweeps/$(DEMO_SWEEP).yaml $$resume
	@echo "== 2/3 promote: the best run of the sweep by its 2-step energy distance -> models:/$(DEMO_SWEEP)@champion"
	$(BIN)/imm-orch promote --sweep $(DEMO_SWEEP) --metric energy/steps_2
	@echo "== 3/3 sample: 5000 points from the champion at 1, 2 and 4 steps, over the data in grey"
	for k in 1 2 4; do \
	  $(BIN)/imm-orch sample --model models:/$(DEMO_SWEEP)@champion --steps $$k --n 5000 --out $(DEMO_OUT)/champion_$${k}steps.png \
	    || exit 1; done
	@echo
	@echo "Done. Samples from the champion: $(DEMO_OUT)/champion_{1,2,4}steps.png. The MLflow UI:"
	@echo "    $(BIN)/imm-orch ui        # prints the links: the sweep's trials best first, its sample grid, the models"
	@echo "In experiment 'imm', run '$(DEMO_SWEEP)' is the sweep: its description names the best trial, its"
	@echo "Artifacts hold sweep_samples.png (a row per trial) and plots/; its nested runs are the trials, each"
	@echo "with samples.png; Models > $(DEMO_SWEEP) > @champion is the best trial's model."

lint: venv
	$(BIN)/ruff check .

bench: venv
	$(BIN)/python benchmarks/step_cost.py
	$(BIN)/python benchmarks/sweep_overhead.py

clean:
	rm -rf $(VENV) imm-runs .pytest_cache
