# One command each: `make demo` (set up and run the halt loop: SQL metrics from a generated DuckDB warehouse, the built-in fake flag API), `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint setup

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

setup: $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"

demo: $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	$(BIN)/guardrail demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
