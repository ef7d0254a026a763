# Everything a fresh machine with python3 and make needs: `make demo`, `make test`, `make docs`,
# `make test-pythons`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LINT_PATHS := aioipc tests mkdocs_hooks.py .ci/pythons.py .ci/type_completeness.py \
	$(wildcard benchmarks examples)

.PHONY: demo test test-pythons lint typecheck types pytest docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/aioipc demo

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: $(STAMP)
	$(BIN)/mypy --strict aioipc

# The public API as a user's type checker sees it: pyright's --verifytypes score (the share
# of exported symbols whose types are fully known) must be at least 95%. basedpyright is
# pyright packaged with its own node, so this needs nothing beyond pip.
types: $(STAMP)
	$(BIN)/python .ci/type_completeness.py --minimum 95

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

# The documentation site, into site/ (gitignored); --strict turns every warning (a broken
# link, a docstring griffe cannot parse) into a failure.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test: lint typecheck types docs pytest

# The docs build and the suite on every CPython 3.N this machine has, from requires-python's
# 3.11 up, each in a venv of its own (.venv-3.N, made by the $(STAMP) rule above); a version
# not installed is skipped with a line saying so. .ci/pythons.py says where it looks.
# TESTED_VENV=.venv skips that venv's version (.ci/run: `make test` has just run it).
test-pythons:
	$(PYTHON) .ci/pythons.py $(if $(TESTED_VENV),--skip-tested-by $(TESTED_VENV))

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/bench.py
	$(BIN)/python benchmarks/bench_queues.py
	$(BIN)/python benchmarks/bench_shm.py
	$(BIN)/python benchmarks/bench_pubsub.py

clean:
	rm -rf $(VENV) .venv-3.* build dist site *.egg-info
