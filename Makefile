# Every target sets itself up: a virtual environment that reuses an installed torch (a GPU box keeps
# its CUDA build); where none is installed, TORCH is installed (a CPU build on machines that carry one).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
READY := $(VENV)/.ready

.PHONY: setup test test-reference test-interpreter demo bench clean

$(READY): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,bench,demo]"
	touch $@

setup: $(READY)

# The reference path, the controller and the demo; then the Triton kernels under the CPU interpreter
# (TRITON_INTERPRET must be set before triton is imported, hence a process of their own).
test: test-reference test-interpreter

test-reference: $(READY)
	$(PY) -m pytest -q -m "not interpreter" tests

test-interpreter: $(READY)
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m interpreter tests

demo: $(READY)
	$(PY) -m aer.demo

bench: $(READY)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) demo_output .pytest_cache .hypothesis
