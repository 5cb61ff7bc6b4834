# `make run` and `make test` create .venv with the pinned dependencies on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The main job: every architecture at its small size, train and infer, float32, one device.
# RESULTS names the results file; `make run RUN_ARGS=--resume` finishes a killed run.
RESULTS ?= results/main-job.json
RUN_ARGS ?= --overwrite
run: $(STAMP)
	$(BIN)/archbench run --out $(RESULTS) $(RUN_ARGS); status=$$?; \
	if [ -f $(RESULTS) ]; then $(BIN)/archbench report $(RESULTS) --table \
	  -o $(RESULTS:.json=.html) --md $(RESULTS:.json=.md); fi; exit $$status

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV)
