# tickhub — `make start` runs the demo market, `make test` the test suite. Both install into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install start start-live test lint bench bench-quick soak clean template

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

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src sources bots tests benchmarks
	$(BIN)/ruff format --check src sources bots tests benchmarks

template: install
	$(BIN)/tickhub settings > .env_template

clean:
	rm -rf $(VENV) .tickhub .pytest_cache
