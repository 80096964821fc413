# `make test` and `make demo` do all set-up on a fresh machine: a .venv with every package at the version
# requirements.lock pins (torch's CPU build here, whose version the lock pins), then this project.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# The lock's input besides pyproject.toml: the one torch version of laptops, CI (CPU build) and the image (CUDA).
TORCH := torch==2.13.0
LOCK_TOOLS := .venv-lock

DEMO_SWEEP := toy2d_smoke
DEMO_OUT := imm-runs/demo

.PHONY: test demo venv lint bench lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.lock pyproject.toml | $(BIN)/python
	@echo "== setting up $(VENV): the packages of requirements.lock, then this project (a few minutes, once)"
	$(BIN)/pip install --quiet --no-compile -r requirements.lock
	$(BIN)/pip install --quiet --no-compile --no-deps -e .
	@# pip compiles bytecode one file at a time; compileall on every core takes less wall time. As with pip, a file
	@# this Python cannot compile is skipped (torch ships one in Python 3.12 syntax among its test helpers)
	@$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null 2>&1 || true
	touch $@

venv: $(VENV)/.installed

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The new-user path on the embedded default (local Ray, MLflow in imm-runs/mlflow.db, artifacts beside it):
# sweep IMM's axes on the 2D toy at toy2d's full budget, promote the best trial, sample from the promoted
# model. Rerunning resumes each step.
demo: venv
	@echo "== 1/3 sweep: $(DEMO_SWEEP) (8 trials of IMM on 8 Gaussians, up to 3000 steps each; ~6 min on 2 cores)"
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

# The speed benchmarks that measure this machine's CPU (benchmarks/README.md), each printing a ratio against a baseline
# measured in the same run; the GPU ones (speed/gpu_step.py, device_check.py) and speed/cluster_overhead.py (a
# multi-node Ray cluster of its own) are left out.
bench: venv
	$(BIN)/python -m benchmarks.speed.step_cost
	$(BIN)/python -m benchmarks.speed.sweep_overhead
	$(BIN)/python -m benchmarks.speed.latent_reads
	$(BIN)/python -m benchmarks.speed.fid_throughput
	$(BIN)/python -m benchmarks.speed.encode_throughput

# requirements.lock: every package of the environment (pyproject.toml's with the test extra, transitives included)
# resolved by pip's own resolver through pip-tools, so that it sees the same indexes as `pip install`. Two edits
# follow: torch's local label (+cpu) is dropped, so that the same line installs the CPU build here and the CUDA
# build in the image; the project's own line (a file:// path, from the test extra) goes: `pip install -e .` adds it.
lock:
	$(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/pip install --quiet "pip-tools==7.7.0"
	echo "$(TORCH)" > $(LOCK_TOOLS)/torch.in
	$(LOCK_TOOLS)/bin/pip-compile --quiet --upgrade --extra test --strip-extras --allow-unsafe --no-emit-index-url \
	  --no-emit-find-links --output-file requirements.lock pyproject.toml $(LOCK_TOOLS)/torch.in
	$(LOCK_TOOLS)/bin/python -c "import re, pathlib; p = pathlib.Path('requirements.lock'); \
	  text = re.sub(r'(?m)^(torch==[^+\s]+)\+\S+', r'\1', p.read_text()); \
	  p.write_text(re.sub(r'(?m)^imm-orch @ file:.*\n(    #.*\n)*', '', text))"

clean:
	rm -rf $(VENV) $(LOCK_TOOLS) imm-runs .pytest_cache
