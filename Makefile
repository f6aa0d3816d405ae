# The two commands of the README. Both create .venv with the project's own pins.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,tensorflow]'

## demo: install, fetch the real samples, build cubes/earth.zarr, verify and describe it
demo: install
	$(BIN)/esdc samples fetch --all
	$(BIN)/esdc build recipes/earth.yaml --overwrite
	$(BIN)/esdc verify cubes/earth.zarr
	$(BIN)/esdc info cubes/earth.zarr

## test: install with the test extra, fetch the real samples, run the whole suite
test: install-test
	$(BIN)/esdc samples fetch --all
	$(BIN)/ruff check esdc tests benchmarks
	$(BIN)/pytest

clean:
	rm -rf $(VENV) cubes/*.zarr .pytest_cache
