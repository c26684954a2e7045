# inferstream — run `make help` for the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup system-deps demo test check lint typecheck proto bench faults fuzz clean

# Debian packages the tests drive for real: DICOM tools, a browser, promtool, and
# libfaketime (one process's clock stepped, tests/test_faults_clock.py).
SYSTEM_TOOLS := dcmconv:dcmtk chromium:chromium promtool:prometheus faketime:faketime node:nodejs

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) ## Create .venv and install inferstream with its dev extras

system-deps: ## Install the Debian packages the tests use (dcmtk, chromium, prometheus, faketime), if missing
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
		command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

demo: $(STAMP) ## Run the flagship pipeline end to end on the embedded defaults
	$(BIN)/inferstream example eggs

faults: $(STAMP) ## Longer fault runs than CI's: 40 SIGKILLs of a join-and-window pipeline, 3,000 photos, both buses; the database down 5 minutes; the tests marked long (the scale test, the slow link and partition, the Kafka variants of the hot-swap and dataflow faults)
	FAULT_KILLS=40 FAULT_PHOTOS=3000 $(BIN)/pytest -q -p no:cacheprovider tests/dataflow/test_dataflow_faults.py
	DB_OUTAGE_S=300 $(BIN)/pytest -q -p no:cacheprovider tests/api/test_api_database_down.py
	$(BIN)/pytest -q -p no:cacheprovider -m long

fuzz: $(STAMP) ## Fuzz every reader of outside bytes for FUZZ_SECONDS each (300; corpus kept in .fuzz/)
	@PYTHONPATH=tests:tests/fuzz $(BIN)/python tests/fuzz/fuzz_seeds.py .fuzz
	@for target in dicom image envelopes pipeline; do \
		echo "fuzzing $$target for $${FUZZ_SECONDS:-300}s"; \
		PYTHONPATH=tests $(BIN)/python tests/fuzz/fuzz.py $$target -max_total_time=$${FUZZ_SECONDS:-300} \
			-max_len=4096 -artifact_prefix=.fuzz/$$target- -print_final_stats=1 .fuzz/$$target \
			2>&1 | grep -E "^stat::number_of_executed_units|^==|Error|crash" || true; \
	done; ls .fuzz/*-crash-* 2>/dev/null && echo "crashes above: add each to tests/fuzz/regressions/" || echo "no crash"

lint: $(STAMP) ## ruff, and the import contracts in pyproject.toml (lint-imports)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP) ## mypy (strict on the package)
	$(BIN)/mypy

check: lint typecheck ## Lint and type-check

# Three test processes, a test file each at a time: most tests wait on a broker, a
# database or a child process (two processes kept the two cores about 60 % busy in CI);
# TEST_PROCESSES=0 runs them in this one process.
TEST_PROCESSES ?= 3

test: $(STAMP) system-deps ## Set up, lint, type-check and run the test suite (all but the tests marked long)
	@# The v2 model server's own virtualenv (tests/model_server.py) is built beside the
	@# checks rather than in the first test that needs it; that test waits on its lock.
	PYTHONPATH=tests $(BIN)/python -c 'from model_server import mlserver_venv; mlserver_venv()' > .venv-mlserver.log 2>&1 &
	$(MAKE) --no-print-directory check
	$(BIN)/pytest -q -n $(TEST_PROCESSES) --dist loadfile -m "not long" --durations=40

proto: $(STAMP) ## Regenerate the committed protobuf code from proto/
	$(BIN)/python -m inferstream.protogen .

bench: $(STAMP) ## Run the main benchmarks (figures in docs/benchmarks.md; not tests)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/bus_bench.py
	$(BIN)/python bench/flagship_bench.py
	$(BIN)/python bench/api_bench.py

clean: ## Remove the virtualenv and local run data
	rm -rf $(VENV) .inferstream .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
