# `make run` and `make test` create .venv with the pinned dependencies on first use.
# JAX 0.11 and later need Python 3.12 or newer: PYTHON is the first such interpreter found
# (python3.12, python3.13, python3, then pyenv's installed versions); set it to choose another.
PYTHON ?= $(shell for p in python3.12 python3.13 python3 \
  $$(ls -d "$${PYENV_ROOT:-$$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -V); \
  do "$$p" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null \
  && { command -v "$$p"; break; }; done)
# Python writes each module's bytecode when it is first imported, even where the environment
# says not to: without it every process (each test worker, each `archbench run` a test
# starts) compiles jax, flax and the rest again, about 4.5 s of CPU a process. pip leaves
# the compiling to the first import (--no-compile): the test suite's processes import about
# a fifth of the venv's 9,000 modules, and only those are compiled.
unexport PYTHONDONTWRITEBYTECODE
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test docs-test lint clean tpu-compiler

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "archbench needs Python 3.12 or newer (for JAX 0.12);" \
	  "none found: make PYTHON=/path/to/python3.12" >&2; exit 1; }
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-compile -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The main job: every architecture at its small size, train and infer, float32, one device.
# RESULTS names the results file; `make run RUN_ARGS=--resume` finishes a killed run.
RESULTS ?= results/main-job.json
RUN_ARGS ?= --overwrite
run: $(STAMP)
	$(BIN)/archbench run --out $(RESULTS) $(RUN_ARGS); status=$$?; \
	if [ -f $(RESULTS) ]; then $(BIN)/archbench report $(RESULTS) --table \
	  -o $(RESULTS:.json=.html) --md $(RESULTS:.json=.md); fi; exit $$status

# libtpu beside the venv, not in it: tests/test_topology.py compiles for a TPU topology with it
# (PYTHONPATH=.libtpu), while every other process runs without libtpu's start-up warnings.
LIBTPU := .libtpu
$(LIBTPU)/.installed: constraints.txt
	$(BIN)/pip install -q --no-deps --upgrade --target $(LIBTPU) -c constraints.txt libtpu
	touch $@
tpu-compiler: $(STAMP) $(LIBTPU)/.installed

# One pytest-xdist worker per core, each taking whole test files (a file's fixtures are built
# once), the slowest files first (tests/conftest.py orders them; --no-loadscope-reorder keeps
# that order); plain `pytest` runs the same suite in one process.
test: $(STAMP) $(LIBTPU)/.installed
	$(BIN)/pytest -n auto --dist loadfile --no-loadscope-reorder

# Every shell and Python block of README.md and docs/*.md, run as written (at tiny sizes, as
# each block's comment declares): minutes of compiling, so not part of `make test`.
docs-test: $(STAMP)
	$(BIN)/pytest tests/test_docs.py -m docs -n auto --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(LIBTPU)
