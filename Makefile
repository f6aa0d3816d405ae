# The two commands of the README. Both create .venv with the project's own pins.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[ml,search,plot]'

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,tensorflow]'

## demo: install, then the whole pipeline on real data into out/demo (cube, encoder,
## embeddings, index, search, pictures, summary.json); FULL=1 for the 0.25 degree grid
demo: install
	$(BIN)/esdc demo --out out/demo $(if $(FULL),--full,)

## test: install with the test extra, fetch the real samples, run the whole suite
test: install-test
	$(BIN)/esdc samples fetch --all
	$(BIN)/ruff check esdc tests benchmarks
	$(BIN)/pytest

clean:
	rm -rf $(VENV) cubes/*.zarr .pytest_cache
