# The README's commands. Every target creates .venv itself from nothing but python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test browser bench bench-full lint fmt typecheck clean pg-server mutate

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

## test: the whole suite (unit, socket, end-to-end, the dashboard in Chromium)
test: $(STAMP) browser
	$(BIN)/python -m pytest

## browser: Debian's chromium and chromium-driver for the dashboard's browser tests, installed
## when missing and we are root (never a browser download of Playwright's own)
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "keepa-fleet: installing chromium and chromium-driver for the browser tests"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver \
	  || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }; \
	else echo "keepa-fleet: no chromium and not root: the browser tests will skip"; fi

## bench: the quick benchmark profile; writes BENCHMARKS.md
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	$(BIN)/python -m bench --profile quick

## bench-full: the full benchmark profile, soak and long fuzzing included
bench-full: $(STAMP)
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	$(BIN)/python -m bench --profile full

## pg-server: install the PostgreSQL server the storage and two-host tests start (Debian, root)
pg-server:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		(apt-get update && apt-get install -y --no-install-recommends postgresql)
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
