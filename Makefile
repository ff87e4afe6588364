# Every target sets itself up: a virtual environment that reuses an installed torch (a GPU box keeps
# its CUDA build); where none is installed, TORCH is installed (a CPU build on machines that carry one).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
READY := $(VENV)/.ready
# verl's own dependencies are a training cluster (Ray, inference engines, GPUs): its integration tests need only
# verl's loss module, so verl installs without them, plus the few packages that module imports.
VERL ?= verl>=0.9,<0.10
VERL_LOSS_DEPS ?= ray "tensordict>=0.8,<=0.10,!=0.9.0" omegaconf codetiming pillow

INTEGRATION := tests/test_integration_*.py

.PHONY: setup lint test test-reference test-interpreter test-integration demo study bench clean

$(READY): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,bench,demo,trl]"
	if $(PY) -c "import sys; sys.exit(sys.version_info >= (3, 13))"; then \
		$(PY) -m pip install -q $(VERL_LOSS_DEPS) && $(PY) -m pip install -q --no-deps "$(VERL)"; \
	else echo "verl supports Python < 3.13: its integration tests skip"; fi
	touch $@

setup: $(READY)

# The lint check; the reference path, the controller and the demo; then the Triton kernels under the CPU
# interpreter (TRITON_INTERPRET must be set before triton is imported, hence a process of their own); then AER
# inside TRL's and verl's trainers.
test: lint test-reference test-interpreter test-integration

# Config in pyproject.toml; `ruff format .` and `ruff check --fix .` repair most of what this reports.
lint: $(READY)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test-reference: $(READY)
	$(PY) -m pytest -q -m "not interpreter" --ignore-glob="$(INTEGRATION)" tests

test-interpreter: $(READY)
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m interpreter --ignore-glob="$(INTEGRATION)" tests

# TRITON_INTERPRET: trl 1.15 (the newest release on Python 3.10) runs its fused LM head's Triton kernels even on
# CPU tensors; later releases run plain PyTorch on CPU, so for them it changes nothing.
test-integration: $(READY)
	TRITON_INTERPRET=1 $(PY) -m pytest -q $(INTEGRATION)

demo: $(READY)
	$(PY) -m aer.demo

# The experiment behind the README's demo figures: 12 minutes on a shared 2-core CPU.
study: $(READY)
	$(PY) -m aer.demo --study --seeds 5 --target-ratios 0.5 0.6 0.7 0.8 --jobs 2 --output-dir demo_output/study

bench: $(READY)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) demo_output .pytest_cache .hypothesis
