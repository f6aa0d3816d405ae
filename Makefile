# The two commands of the README. Both create .venv with the project's own pins.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-test clean xcube-env xcube-test lab web

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[ml,search,plot]'

# The search page's browser test (tests/search/test_page_browser.py) drives Debian's
# Chromium at /usr/bin/chromium with Playwright: installed here when missing (sudo if not root).
# The CF checker of exported NetCDF (tests/test_export.py: cfchecker's cfunits) loads Debian's
# UDUNITS-2 library (libudunits2-0), installed here when missing.
install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,tensorflow,lab]'
	test -x /usr/bin/chromium || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium; }
	/sbin/ldconfig -p | grep -q libudunits2 || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends \
	  libudunits2-0; }

## demo: install, then the whole pipeline on real data into out/demo (cube, encoder,
## embeddings, index, search, pictures, summary.json); FULL=1 for the 0.25 degree grid
demo: install
	$(BIN)/esdc demo --out out/demo $(if $(FULL),--full,)

## web: rebuild the search page's vendored Leaflet (esdc/search/static/vendor/leaflet) from
## the version pinned in web/package-lock.json (needs node and npm; the result is committed)
web:
	web/build.sh

## lab: JupyterLab in notebooks/ on 127.0.0.1 (the `lab` extra, installed when missing:
## the Dask panel, ipywidgets), its news and update checks off; build cubes/earth.zarr first
LAB_FLAGS := --ServerApp.ip=127.0.0.1 --ServerApp.root_dir=notebooks \
	--LabApp.news_url=None --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate \
	$(if $(filter 0,$(shell id -u)),--allow-root,)
lab: install
	$(BIN)/python -c 'import jupyterlab, dask_labextension, ipywidgets' 2>/dev/null || \
	  $(BIN)/pip install --quiet -e '.[ml,search,plot,lab]'
	$(BIN)/jupyter lab $(LAB_FLAGS)

## test: install with the test extra, fetch the real samples, run the whole suite
test: install-test
	$(BIN)/esdc samples fetch --all
	$(BIN)/ruff check esdc tests benchmarks
	$(BIN)/pytest
	$(MAKE) xcube-test

# xcube interoperability (tests/interop/test_xcube.py) in its own environment, .venv-xcube:
# xcube-core pins pandas<3 and esdc pandas 3. Debian's GDAL (libgdal-dev, when gdal-config is
# missing; sudo if not root), GDAL's Python bindings built against it and NumPy (so that
# osgeo.gdal_array exists), then esdc's core pins with the `xcube` extra's pins replacing
# them (ci/xcube_requirements.py) and esdc itself with --no-deps.
XVENV := .venv-xcube
XBIN := $(XVENV)/bin

$(XBIN)/python:
	$(PY) -m venv $(XVENV)
	$(XBIN)/pip install --quiet --upgrade pip

xcube-env: $(XBIN)/python
	command -v gdal-config >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq libgdal-dev; }
	$(XBIN)/python ci/xcube_requirements.py pyproject.toml > $(XVENV)/requirements.txt
	$(XBIN)/pip install --quiet setuptools wheel $$(grep '^numpy==' $(XVENV)/requirements.txt)
	$(XBIN)/pip install --quiet --no-build-isolation "gdal==$$(gdal-config --version)"
	$(XBIN)/pip install --quiet -r $(XVENV)/requirements.txt
	$(XBIN)/pip install --quiet --no-deps -e .

## xcube-test: esdc cubes checked by xcube itself (verification, file data store, grid mapping)
xcube-test: xcube-env
	$(XBIN)/pytest -m xcube tests/interop/test_xcube.py

clean:
	rm -rf $(VENV) $(XVENV) cubes/*.zarr .pytest_cache
