# make run   - create .venv, install convocationsd, run the daemon in the foreground
# make test  - install what the tests need (system packages on Debian/Ubuntu), lint, type-check, run the tests
# make lint  - ruff check, ruff format --check, mypy
# make bench - run the benchmarks, write bench/RESULTS.md

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint system-deps bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

# The desktop extra (pydbus, PyGObject) needs C headers; without them its tests skip.
$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,desktop]' || $(BIN)/python -m pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.run
	$(BIN)/convocationsd

system-deps:
	.ci/system-deps

# Lint and types first: they take seconds and fail fast.
lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Under a temporary HOME, with a private session bus and a gnome-keyring of their own: nothing of yours is touched.
test: system-deps lint
	tests/with-keyring.sh $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.test
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) test-artifacts .pytest_cache
