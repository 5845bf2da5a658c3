# mnist-lab: `make report` is the main job, `make test` the test suite.
# Both set up everything they need on a fresh clone (a virtual environment in .venv).

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PROFILE ?= full

.PHONY: setup test clean

setup: $(VENV)/.installed

# Re-installs only when the pins change.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf artifacts report/build
