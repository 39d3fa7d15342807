# Two commands for a new user: `make demo` and `make test`. Both create the virtualenv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench lint up down status

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24"
	# The CPU wheel first: with torch 2.13.0 present, nothing later pulls a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/pip check
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/loopwright demo $(if $(SEED),--seed $(SEED))

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu"

bench: $(STAMP)
	$(BIN)/pip install -q -c constraints.txt -e '.[bench]'
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy loopwright models tasks flows

up: $(STAMP)
	$(BIN)/loopwright up

down: $(STAMP)
	$(BIN)/loopwright down

status: $(STAMP)
	$(BIN)/loopwright status
