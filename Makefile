# make run   - create .venv, install convocationsd, run the daemon in the foreground
# make test  - install what the tests need (system packages on Debian/Ubuntu), lint, type-check, run the tests
# make lint  - ruff check, ruff format --check, mypy
# make bench - run the benchmarks, write bench/RESULTS.md

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

# The tests use a real Secret Service: a private session bus with an unlocked gnome-keyring.
WITH_KEYRING := $(shell command -v dbus-run-session >/dev/null 2>&1 && echo "dbus-run-session -- tests/with-keyring.sh")

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

test: system-deps lint
	$(WITH_KEYRING) $(BIN)/python -m pytest $(PYTEST_ARGS)

# Under the same private session bus as the tests, so that section 8 also measures the OS keyring backend.
bench: $(VENV)/.test
	$(WITH_KEYRING) $(BIN)/python -m bench

clean:
	rm -rf $(VENV) test-artifacts .pytest_cache
