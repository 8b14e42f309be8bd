# Two commands for a new user: `make demo` and `make test`. Each sets up .venv once
# (torch CPU build first, then the pinned requirements, then tuneforge itself) and reuses it.
# `make test` runs `make lint` first (ruff: lint rules and formatting, settings in pyproject.toml),
# so CI (.ci/run: make test) enforces them; `make format` applies the formatter and the safe fixes.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# llama-cpp-python builds llama.cpp from source (once: pip caches the wheel): portable, only the libraries the
# Python package loads (no tests, examples, tools, server or multimodal library), on every core: ~670 CPU-seconds
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
	-DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF -DMTMD_BUILD=OFF -DLLAMA_CURL=OFF

.PHONY: setup demo lint format test test-fast bench clean browser fuzz

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tuneforge quickstart

LINTED := tuneforge tests bench

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

format: $(STAMP)
	$(BIN)/ruff check --fix $(LINTED)
	$(BIN)/ruff format $(LINTED)

# The console's browser tests drive Debian's Chromium (never `playwright install`, which downloads a browser).
browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium)

test: $(STAMP) lint browser
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# schemathesis against the service's own OpenAPI: 10 generated requests per operation and mode (fits the
# schema / does not), fixed seed; fails on any 5xx or status the schema does not declare (~3-4 min on 2 cores).
fuzz: $(STAMP)
	TUNEFORGE_FUZZ_EXAMPLES=10 TUNEFORGE_FUZZ_MODES=positive,negative $(BIN)/python -m pytest -q -s tests/test_serve_fuzz.py

clean:
	rm -rf $(VENV) runs .pytest_cache
