# The README's commands. Every target creates .venv itself from nothing but python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench bench-full lint fmt typecheck clean mutate

$(STAMP): pyproject.toml
	@echo "keepa-fleet: installing into $(VENV) (first run, or pyproject.toml changed)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e '.[dev]'
	@touch $(STAMP)
	@echo "keepa-fleet: installed"

## run: the whole fleet under supervisord, in the foreground (Ctrl-C stops it)
run: $(STAMP)
	$(BIN)/keepa-fleet run

## test: the whole suite (unit, socket, end-to-end)
test: $(STAMP)
	$(BIN)/python -m pytest

## bench: the quick benchmark profile; writes BENCHMARKS.md
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	$(BIN)/python -m bench --profile quick

## bench-full: the full benchmark profile, soak and long fuzzing included
bench-full: $(STAMP)
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	$(BIN)/python -m bench --profile full

## mutate: mutation testing of the money modules against the fast unit tests (docs/MUTATION.md)
mutate: $(STAMP)
	$(BIN)/python tests/mutate.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
