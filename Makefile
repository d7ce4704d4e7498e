# make run             - create .venv, install convocationsd, run the daemon in the foreground
# make test            - install what the tests need (system packages on Debian/Ubuntu), lint, type-check, run the tests
# make lint            - ruff check, ruff format --check, mypy
# make bench           - run the benchmarks, write bench/RESULTS.md
# make bench-check     - the target rows only (a few minutes); exits non-zero when a target is missed
# make fake-openrouter - a fake OpenRouter on 127.0.0.1:8787 (FAKE_ARGS=--help for its switches)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint system-deps bench bench-check fake-openrouter clean

# The desktop extra (pydbus, PyGObject: notifications, the D-Bus interface) needs C headers to build. Where it
# does not build, install without it: the daemon says so in one log line, and the desktop tests skip.
NO_DESKTOP := echo "make: the desktop extra did not build here (see above); installing without desktop notifications"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[desktop]' || { $(NO_DESKTOP); $(BIN)/python -m pip install -q -e .; }
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,desktop]' || { $(NO_DESKTOP); $(BIN)/python -m pip install -q -e '.[test]'; }
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

# Under the same private session bus as the tests, so that section 8 also measures the OS keyring backend.
bench: $(VENV)/.test
	tests/with-keyring.sh $(BIN)/python -m bench

bench-check: $(VENV)/.test
	$(BIN)/python -m bench --check

fake-openrouter: $(VENV)/.run
	$(BIN)/python -m convocationsd.testing.fake_openrouter $(FAKE_ARGS)

clean:
	rm -rf $(VENV) test-artifacts .pytest_cache
