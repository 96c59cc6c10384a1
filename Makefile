# Two commands matter: `make demo` and `make test`. Both create .venv on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST  := $(BIN)/python -m pytest

.PHONY: demo test test-all bench proto lint serve clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned to the local CPU build; anything else downloads gigabytes
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
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

proto: $(STAMP)
	$(BIN)/python -m ragloom.services.protogen

lint: $(STAMP)
	$(BIN)/ruff check ragloom generation retrieval services cache connectors tests benchmarks
	$(BIN)/mypy ragloom generation retrieval services cache connectors

serve: $(STAMP)
	$(BIN)/ragloom serve

clean:
	rm -rf $(VENV) .ragloom
