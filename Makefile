# Set-up and entry points. Every target builds the environment it needs first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
# On a Linux machine with internet access, TORCH_INDEX=https://download.pytorch.org/whl/cpu
# keeps pip from fetching a multi-GB CUDA build.
TORCH_INDEX ?=
DEMO_OUT ?= out/demo

.PHONY: venv demo test test-all bench clean

# torch first, from the CPU build, so that the project's dependencies never pull a CUDA torch.
$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/fourm demo --out $(DEMO_OUT)

test: venv
	$(BIN)/python -m pytest -q

test-all: venv
	$(BIN)/python -m pytest -q -m ""

clean:
	rm -rf $(VENV) out .pytest_cache
