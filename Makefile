# sandboxer developer tasks. `make` alone lists them.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := .stamp-venv
RUN_STAMP := .stamp-venv-run

.DEFAULT_GOAL := help
.PHONY: help venv constraints bytecode system-deps demo-deps demo test lint bench chaos clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

venv: $(STAMP) ## create .venv and install sandboxer with dev extras, at constraints.txt's versions

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -c constraints.txt -e '.[dev]'
	touch $@ $(RUN_STAMP)

# The demo needs sandboxer and its dependencies, not the test and lint tools.
$(RUN_STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -c constraints.txt -e .
	touch $@

# The newest versions pyproject.toml allows, installed into a scratch venv and written down.
# Run `make test` after it: what it pins is what every clean checkout will get.
constraints: ## pin constraints.txt to the newest versions pyproject.toml allows
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/pip install -q -e '.[dev]'
	grep '^#' constraints.txt > constraints.txt.new
	.venv-constraints/bin/pip freeze --exclude-editable | grep -v '^sandboxer' >> constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-constraints

# Where PYTHONDONTWRITEBYTECODE is set (as on these machines), no process writes the
# package's bytecode, so every `sandboxer` the suite or the demo starts compiled all it
# imported: about 1 s of CPU for each `sandboxer up`. Compiled once here, they only read it.
bytecode: $(RUN_STAMP) ## compile sandboxer's modules (again only those that changed)
	$(PY) -m compileall -q sandboxer

system-deps: ## install every missing Debian package the tests use (needs root; else prints the command)
	bash scripts/install-system-deps.sh test

demo-deps: ## install only what the demo needs (bubblewrap, util-linux, procps, iproute2)
	bash scripts/install-system-deps.sh demo

demo: $(RUN_STAMP) bytecode demo-deps ## run the end-to-end demo (local bubblewrap sandboxes only)
	$(PY) -m sandboxer.demo

test: venv bytecode system-deps ## ruff, mypy and the whole test suite
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q -n 3 --dist worksteal --durations=25

lint: venv ## ruff check, ruff format --check, mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: venv bytecode system-deps ## run the benchmarks and print one table, each figure beside its baseline (docs/performance.md)
	$(PY) bench/run.py

chaos: venv bytecode system-deps ## the fault suite: kills, freezes and hostile input against real processes (docs/reliability.md)
	$(PY) -m chaos

clean: ## remove caches, build output and the venv stamp (keeps .venv)
	rm -rf $(STAMP) $(RUN_STAMP) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
