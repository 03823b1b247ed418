# tickhub — `make start` runs the demo market, `make test` the test suite. Both install into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install start start-live start-cluster test lint bench bench-quick soak clean template screenshot

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

start: install
	$(BIN)/tickhub demo

start-live: install
	$(BIN)/tickhub demo --live binance

start-cluster: install  # 3 hub replicas on ports 8000-8002 sharing the machine's Redis (TICKHUB_BROKER_URL)
	$(BIN)/tickhub demo --replicas 3

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src sources bots tests benchmarks
	$(BIN)/ruff format --check src sources bots tests benchmarks

# Benchmarks over loopback against the PostgreSQL of TICKHUB_DATABASE_URL (default: the test database).
# Nothing here asserts a time; results go to BENCHMARKS.md (bench-quick: .tickhub/BENCHMARKS-quick.md).
bench: install
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

bench-quick: install
	$(BIN)/python -m benchmarks.run --quick $(BENCH_ARGS)

# The fault, restart, fuzz and replica tests, three times over in shuffled orders, with longer variants
# (more outages, random schemathesis seeds and 300 examples a route). Bounded: about 15 minutes.
SOAK_TESTS := tests/test_faults.py tests/test_fuzz.py tests/test_hostile_requests.py tests/test_wire_properties.py tests/test_writer_stateful.py tests/test_fanout_stateful.py tests/test_poison.py tests/test_gaps.py tests/test_source_fuzz.py tests/test_crash.py tests/test_bridge_restart.py tests/test_wal.py tests/test_restart.py tests/test_ingest.py tests/test_bots.py tests/test_cluster.py tests/test_broker.py tests/test_partitions.py
soak: install
	@for round in 1 2 3; do \
	  echo "== soak round $$round"; \
	  TICKHUB_SOAK=1 $(BIN)/python -m pytest -q $(SOAK_TESTS) $(PYTEST_ARGS) || exit 1; \
	done

template: install  # regenerate .env_template and the README's settings table from src/tickhub/config.py
	$(BIN)/tickhub settings > .env_template
	$(BIN)/tickhub settings --readme README.md

screenshot: install  # the demo market for ~30 s, then docs/dashboard.png (needs /usr/bin/chromium)
	$(BIN)/python docs/screenshot.py

clean:
	rm -rf $(VENV) .tickhub .pytest_cache
