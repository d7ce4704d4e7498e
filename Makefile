# make run             - create .venv, install convocationsd, run the daemon in the foreground
# make test            - install what the tests need (system packages on Debian/Ubuntu), lint, type-check, run the tests
# make test-root       - as root (sudo make test-root): the tests that need root, which make test skips unless root
# make lint            - ruff check, ruff format --check, mypy
# make bench           - run the benchmarks, write bench/RESULTS.md
# make mutation        - mutants of the core and the guards against the unit tests (minutes; not in make test)
# make bench-check     - the target rows only (a few minutes); exits non-zero when a target is missed
# make fake-openrouter - a fake OpenRouter on 127.0.0.1:8787 (FAKE_ARGS=--help for its switches)
# make rust-example    - build examples/rust with cargo, for the tests (which take this build when they cannot run cargo)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test test-root lint system-deps bench bench-check mutation fake-openrouter rust-example clean

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

# pytest -m needs_root: another uid, a daemon as root, a container. In the venv `make test` made (order-only: root
# installs nothing into it), writing no root-owned .pyc or cache into the checkout.
test-root: | $(VENV)/.test
	PYTHONDONTWRITEBYTECODE=1 tests/with-keyring.sh $(BIN)/python -m pytest -p no:cacheprovider -m needs_root $(PYTEST_ARGS)

# Under the same private session bus as the tests, so that section 8 also measures the OS keyring backend.
bench: $(VENV)/.test
	tests/with-keyring.sh $(BIN)/python -m bench

bench-check: $(VENV)/.test
	$(BIN)/python -m bench --check

# Every small change to core/, the uid and path checks and the HTTP guards must fail a unit test, or be listed in
# tests/mutation/equivalent.py with why none can fail; writes its section of docs/robustness.md. About 9 minutes
# on two cores; MUTATION_JOBS=1 leaves one core free.
MUTATION_JOBS ?= 2
mutation: $(VENV)/.test
	tests/with-keyring.sh $(BIN)/python -m tests.mutation -j $(MUTATION_JOBS)

fake-openrouter: $(VENV)/.run
	$(BIN)/python -m convocationsd.testing.fake_openrouter $(FAKE_ARGS)

# Standard library only, so it runs before the venv exists; CI runs it as root (.ci/run): see its docstring.
rust-example:
	$(PYTHON) -m tests.helpers.rust_example

clean:
	rm -rf $(VENV) test-artifacts .pytest_cache
