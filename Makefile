# The two commands: `make run` and `make test`. Both set up everything they need first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
WEBSOCKET_PORT ?= 8765
PYTEST_ARGS ?=

.PHONY: run demo test setup setup-test system-deps bench lint lock clean

run: setup system-deps ## start the whole gateway (and a local broker) in the foreground
	@mkdir -p .run
	@echo "Gateway starting: WebSocket ws://localhost:$(WEBSOCKET_PORT)/  dashboard http://localhost:$(WEBSOCKET_PORT)/  (Ctrl-C stops it all)"
	@exec $(VENV)/bin/supervisord -n -c supervisord.conf

demo: setup system-deps ## the same, with a simulator publishing voltage and current uplinks
	@mkdir -p .run
	@echo "Demo starting: WebSocket ws://localhost:$(WEBSOCKET_PORT)/  dashboard http://localhost:$(WEBSOCKET_PORT)/  (Ctrl-C stops it all)"
	@exec $(VENV)/bin/supervisord -n -c deploy/supervisord-demo.conf

test: setup-test ## set up everything and run the whole test suite
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup-test ## benchmarks (see bench/README.md)
	$(PY) -m bench.run

setup: $(VENV)/.installed

setup-test: $(VENV)/.installed-test
	@./scripts/system-deps.sh --test

system-deps:
	@./scripts/system-deps.sh

$(VENV)/.installed: requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || $(PY) -m pip install -q --no-deps -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	@touch $@

lint: setup-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

lock: ## re-pin requirements*.txt from the bounds in pyproject.toml
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv && .lockvenv/bin/pip install -q -e .
	{ echo "# Pinned runtime dependencies (reproducible installs). Bounds live in pyproject.toml."; \
	  echo "# Regenerate: make lock"; .lockvenv/bin/pip freeze --exclude-editable; } > requirements.txt
	rm -rf .lockvenv

clean:
	rm -rf $(VENV) .run .pytest_cache
