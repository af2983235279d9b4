# Inzwa: `make run` starts the assistant, `make test` runs every test. Both set up from nothing:
# a .venv, the Python packages, espeak-ng, and the default models (all cached after the first run).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# llama-cpp-python builds from source; the CPU here advertises AMX but may not run it, so a native
# build dies with SIGILL (design notes §5). These flags build a portable AVX2 library.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

.PHONY: setup system-deps models run test test-fast lint bench clean

setup: system-deps $(STAMP) models

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev,webrtc]'
	touch $@

system-deps:
	@bash scripts/install-system-deps.sh

models: $(STAMP)
	$(BIN)/inzwa models fetch

run: setup
	exec $(BIN)/inzwa run

# The suite runs in TEST_WORKERS processes (pytest-xdist): most of its wall time is real
# processes and real-time audio waiting, not CPU; tests sharing a stack stay in one worker
# (tests/conftest.py). TEST_WORKERS=0 runs it in one process.
# Bytecode caching back on for the suite where the environment turns it off
# (PYTHONDONTWRITEBYTECODE, as on these machines): else each xdist worker rewrites every test
# module's asserts anew (collection 2.9 -> 6.7 CPU-s) and each of the suite's ~150 process
# starts compiles our modules again.
TEST_WORKERS ?= 5
test: setup lint
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -ra --durations=25 -n $(TEST_WORKERS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -ra -m "not e2e and not models"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .run .pytest_cache .ruff_cache
