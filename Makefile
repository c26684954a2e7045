# inferstream — run `make help` for the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup demo test check lint typecheck proto bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) ## Create .venv and install inferstream with its dev extras

demo: $(STAMP) ## Run the flagship pipeline end to end on the embedded defaults
	$(BIN)/inferstream example eggs

lint: $(STAMP) ## ruff
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP) ## mypy (strict on the package)
	$(BIN)/mypy

check: lint typecheck ## Lint and type-check

test: check ## Lint, type-check and run the whole test suite
	$(BIN)/pytest -q

proto: $(STAMP) ## Regenerate the committed protobuf code from proto/
	$(BIN)/python -m inferstream.protogen .

bench: $(STAMP) ## Run the benchmarks (prints figures; not part of the tests)
	$(BIN)/python bench/bus_bench.py

clean: ## Remove the virtualenv and local run data
	rm -rf $(VENV) .inferstream .pytest_cache .mypy_cache .ruff_cache
