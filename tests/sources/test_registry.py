"""The reader and resampler registries: names defined once, modules imported when used."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pyproj
import pytest
import xarray as xr

from esdc.errors import RegridError, SourceError
from esdc.grid import Grid
from esdc.recipe import SourceSpec, VariableSpec
from esdc.regrid import METHODS, overlaps, regrid, resampler_for
from esdc.regrid.registry import RESAMPLERS, resampler
from esdc.sources import LOCATIONS, Geolocated, open_source
from esdc.sources.registry import FORMATS, READERS, reader
from tests.conftest import ROOT, need_sample


def test_recipe_formats_and_methods_come_from_the_registries():
    assert typing.get_args(SourceSpec.model_fields["format"].annotation) == FORMATS
    assert FORMATS == tuple(READERS)
    assert typing.get_args(VariableSpec.model_fields["resampling"].annotation) == METHODS
    assert set(RESAMPLERS) == set(LOCATIONS)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_has_a_reader(fmt):
    module, function = READERS[fmt]
    fn = reader(fmt)
    assert callable(fn) and fn.__name__ == function and fn.__module__ == module


def test_unknown_format_and_location_are_refused():
    with pytest.raises(SourceError, match="no reader"):
        reader("grib")
    with pytest.raises(RegridError, match="no resampler"):
        resampler("healpix")


def test_an_earth_plan_imports_no_solar_module():
    """Readers and resamplers load by name: an Earth cube never imports astropy or sunpy."""
    for name in ("ostia-monthly", "bmng", "pvlib-linke-turbidity"):
        need_sample(name)
    code = (
        "import json, sys\n"
        "from esdc.build import plan\n"
        "from esdc.recipe import load_recipe\n"
        f"ds = plan(load_recipe({str(ROOT / 'recipes' / 'earth.yaml')!r}))\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('astropy', 'sunpy', 'reproject') or m in ('esdc.solar', 'esdc.sources.fits', "
        "'esdc.regrid.wcs', 'esdc.regrid.swath'))))\n"
        "print(json.dumps(sorted(ds.data_vars)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=600).stdout.splitlines()
    assert json.loads(out[0]) == []
    assert "sst" in json.loads(out[1])


def _regular(values: np.ndarray) -> Geolocated:
    lat = 3.5 - np.arange(values.shape[0], dtype=float)
    lon = 0.5 + np.arange(values.shape[1], dtype=float)
    ds = xr.Dataset({"v": (("lat", "lon"), values)}, coords={"lat": lat, "lon": lon})
    return Geolocated(ds.chunk(), pyproj.CRS.from_epsg(4326), "lat", "lon", Path("r.nc"))


def test_location_chooses_the_resampler():
    src = _regular(np.arange(32, dtype="float32").reshape(4, 8))
    assert src.location == "regular" and src.body == "earth"
    r = resampler_for(src)
    assert type(r).__name__ == "RegularResampler" and not r.per_observation
    lons, lats = np.meshgrid(src.data.lon.values, src.data.lat.values)
    swath = Geolocated(src.data, src.crs, "lat", "lon", Path("s.nc"), lons, lats)
    assert swath.location == "swath"
    assert type(resampler_for(swath)).__name__ == "SwathResampler"
    grid = Grid.from_bbox("earth", "EPSG:4326", (0, 0, 8, 4), 2.0)
    both = [regrid(g.data["v"], g, grid, "bucket_average").values for g in (src, swath)]
    np.testing.assert_allclose(both[0], both[1])
    np.testing.assert_allclose(both[0][0, 0], np.mean([0, 1, 8, 9]))


def test_a_regular_source_needs_a_crs():
    ds = xr.Dataset({"v": (("lat", "lon"), np.zeros((2, 2)))})
    with pytest.raises(SourceError, match="needs a PROJ CRS"):
        Geolocated(ds, None, "lat", "lon", Path("x.nc"))


def test_solar_images_are_located_by_wcs_and_resampled_per_observation():
    pytest.importorskip("sunpy.map")
    need_sample("sunpy-aia-171")
    spec = SourceSpec(name="aia", sample="sunpy-aia-171", format="fits", time="series",
                      variables=[dict(name="v", source="image", resampling="bilinear",
                                      units="1")])
    geo = open_source(spec)
    assert geo.location == "wcs" and geo.crs is None and geo.body == "sun"
    r = resampler_for(geo)
    assert type(r).__name__ == "WcsResampler" and r.per_observation
    sun = Grid.from_bbox("sun", "helioprojective", (-1228.8, -1228.8, 1228.8, 1228.8), 4.8)
    assert overlaps(geo, sun)
    earth = Grid.from_bbox("earth", "EPSG:4326", (-180, -90, 180, 90), 1.0)
    with pytest.raises(RegridError, match="helioprojective"):
        overlaps(geo, earth)
    # and a source located in a PROJ CRS does not go onto a helioprojective grid
    src = _regular(np.ones((4, 8), "float32"))
    with pytest.raises(RegridError, match="only solar images"):
        regrid(src.data["v"], src, sun, "nearest")
