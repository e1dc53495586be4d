# zoomorph: two commands for a fresh machine.
#   make demo   set up .venv and run the demo (synthetic galaxies -> prepare -> train -> accuracy)
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test setup clean

demo: setup
	$(BIN)/zoomorph demo

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install-torch
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	scripts/install-torch $(BIN)/pip
	$(BIN)/pip install -q -e ".[dev,ray,serve,healpix,cutouts]"
	touch $@

clean:
	rm -rf $(VENV) demo
