# Two entry points on a fresh machine: `make demo` (the main job) and `make test`.
# Both build .venv themselves: the CPU torch build first where no GPU is present.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: demo test test-gpu venv clean wheels

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
ifeq ($(HAS_GPU),1)
	$(BIN)/pip install -q "torch>=2.4" "cupti-python>=13.0" pyelftools  # the `cupti` extra: CUPTI timing
else
	$(BIN)/pip install -q torch==2.13.0
endif
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps "flashinfer-bench>=0.1.2"  # the `flashinfer` extra, without its CUDA stack
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/avo evolve --config configs/quickstart.yaml

test: venv
	$(BIN)/python -m pytest -q -x -ra

test-gpu: venv
	$(BIN)/python -m pytest -q -ra -m gpu

wheels:
	bash scripts/prepare_device_wheels.sh

clean:
	rm -rf $(VENV) *.egg-info
