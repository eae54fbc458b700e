# Two entry points that work on a fresh machine: `make test` and `make run`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint run bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check modelcache tests bench
	$(BIN)/ruff format --check modelcache tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest

# Origin, coordinator and three agents under ./.run/, the examples applied; Ctrl-C stops them.
run: $(STAMP)
	$(BIN)/python -m modelcache.devrun

# Byte-compiled first, as an installed package is: an editable install compiles on every run
# when PYTHONDONTWRITEBYTECODE is set, and that start-up time would be timed as pull time.
bench: $(STAMP)
	$(BIN)/python -m compileall -q modelcache
	$(BIN)/python -m bench.pull_bench

clean:
	rm -rf $(VENV) .run .mypy_cache .pytest_cache .ruff_cache
