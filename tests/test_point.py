"""``esdc point`` / ``ds.esdc.point``: every variable at the cell nearest to a place.

On tests/own_data.py's cube (0.25 degree over the Carolinas: hourly rain, a categorical
land mask, land fraction, altitude), on a projected (UTM) build of the same files, and on
a helioprojective grid (X, Y in arcsec).
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from esdc.cli import app
from esdc.errors import SelectionError
from esdc.export import point, point_record
from esdc.storage import open_cube
from tests.own_data import own_data_cube, own_data_recipe
from tests.test_export import cf_check

# Wilmington, NC: land, under Florence's rain on 2018-09-14
LAT, LON = 34.2, -77.9


@pytest.fixture(scope="module")
def cube(tmp_path_factory) -> Path:
    return own_data_cube(tmp_path_factory)


def test_point_json_has_every_variable_at_the_nearest_cell(cube):
    res = CliRunner().invoke(app, ["point", str(cube), str(LAT), str(LON), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["query"] == {"lat": LAT, "lon": LON}
    assert doc["cell"] == {"lat": 34.125, "lon": -77.875}  # rounded to the grid: no 34.12499
    assert set(doc["variables"]) == {"precipitation", "altitude", "land_fraction",
                                     "land_sea_mask"}
    ds = open_cube(cube)
    at = ds.sel(lat=34.125, lon=-77.875)
    rain = doc["variables"]["precipitation"]
    assert rain["units"] == "kg m-2" and len(rain["time"]) == len(rain["values"]) == 12
    assert rain["time"][0] == "2018-09-13T19:00:00"
    np.testing.assert_allclose(rain["values"], at["precipitation"].values, rtol=1e-6)
    assert max(rain["values"]) > 20  # Florence's rain, kg m-2 per hour
    alt = doc["variables"]["altitude"]
    assert "time" not in alt and alt["units"] == "m"  # static: one value, no time
    assert alt["values"] == [pytest.approx(float(at["altitude"]))]
    mask = doc["variables"]["land_sea_mask"]
    assert mask["values"] == [1] and mask["meanings"] == ["land"]


def test_point_csv_text_and_variables(cube):
    runner = CliRunner()
    res = runner.invoke(app, ["point", str(cube), str(LAT), str(LON), "--csv",
                              "--variables", "precipitation", "--variables", "altitude"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.output)))
    assert {r["variable"] for r in rows} == {"precipitation", "altitude"}
    assert len(rows) == 13 and rows[0]["lat"] == "34.125" and rows[0]["lon"] == "-77.875"
    alt = next(r for r in rows if r["variable"] == "altitude")
    assert alt["time"] == "" and alt["units"] == "m"
    res = runner.invoke(app, ["point", str(cube), str(LAT), str(LON)])
    assert res.exit_code == 0, res.output
    assert "lat 34.2 lon -77.9 -> nearest cell lat 34.125 lon -77.875" in res.output
    assert "land_sea_mask [1]: 1 (land)" in res.output
    assert "precipitation [kg m-2]: 12 time steps" in res.output
    res = runner.invoke(app, ["point", str(cube), str(LAT), str(LON), "--json", "--csv"])
    assert res.exit_code == 2 and "not both" in res.output


def test_accessor_point_and_longitudes_in_0_360(cube):
    ds = open_cube(cube)
    cell = ds.esdc.point(LAT, LON)
    assert isinstance(cell, xr.Dataset) and cell["precipitation"].dims == ("time",)
    assert float(cell.lat) == 34.125 and float(cell.lon) == -77.875
    assert cell.attrs["query"] == {"lat": LAT, "lon": LON}
    east = point(ds, LAT, LON + 360, ["altitude"])
    assert float(east.lon) == -77.875 and float(east.altitude) == float(cell.altitude)
    # a place on a cell edge goes to one of the two cells, and the last edge is inside
    assert float(point(ds, 37.5, -75.0, ["altitude"]).lat) == 37.375


@pytest.mark.parametrize(("lat", "lon"), [(44.2, -77.9), (34.2, -70.0), (-91.0, 0.0)])
def test_a_place_outside_the_cube_names_its_extent(cube, lat, lon):
    with pytest.raises(SelectionError, match="outside the cube, whose cells span west -80.5, "
                                             "south 32.5, east -75, north 37.5"):
        point_record(open_cube(cube), lat, lon)
    res = CliRunner().invoke(app, ["point", str(cube), str(lat), str(lon)])
    assert res.exit_code == 2 and "outside the cube" in res.output


def test_unknown_variable_gets_a_suggestion(cube):
    res = CliRunner().invoke(app, ["point", str(cube), str(LAT), str(LON), "--variables",
                                   "land_sea"])
    assert res.exit_code == 2
    assert "'land_sea' is not in the cube (did you mean 'land_sea_mask'?)" in res.output


def test_point_on_a_projected_cube_takes_degrees(tmp_path):
    from esdc.build import build
    from esdc.recipe import Recipe

    d = own_data_recipe()
    d["name"] = "own_data_utm"
    d["grid"] = {"body": "earth", "crs": "EPSG:32617", "resolution": 25000,
                 "bbox": [500000, 3600000, 900000, 4100000]}  # UTM 17N, metres
    d["output"] = {"chunks": {"y": 10, "x": 8}}
    d["sources"] = [s for s in d["sources"] if s["name"] == "my_altitude"]
    ds = open_cube(build(Recipe.from_dict(d), tmp_path / "utm.zarr", fetch=False))
    doc = point_record(ds, LAT, LON)
    cell = doc["cell"]
    assert doc["query"] == {"lat": LAT, "lon": LON}
    assert (cell["x"], cell["y"]) == (787500.0, 3787500.0)  # the cell holding Wilmington
    assert abs(cell["lat"] - LAT) < 0.2 and abs(cell["lon"] - LON) < 0.2
    want = float(ds["altitude"].sel(x=787500.0, y=3787500.0))
    assert doc["variables"]["altitude"]["values"] == [pytest.approx(want)]
    with pytest.raises(SelectionError, match="in the grid's CRS.*south 3600000"):
        point_record(ds, 45.0, -77.9)
    nc = ds.esdc.export(tmp_path / "utm.nc")[0]  # projected: x/y and a UTM grid mapping
    assert re.search(r"ERRORS detected: 0\b", cf_check(nc))
    tif = pytest.importorskip("rasterio")
    path = ds.esdc.export(tmp_path / "utm.tif")[0]
    with tif.open(path) as t:
        assert t.crs.to_epsg() == 32617 and tuple(t.bounds) == (500000.0, 3600000.0,
                                                               900000.0, 4100000.0)


def test_point_on_a_helioprojective_grid_takes_x_then_y():
    from esdc.grid import Grid

    grid = Grid("sun", "helioprojective", (10.0, 0.0, -1000.0, 0.0, -10.0, 1000.0), (200, 200))
    c = grid.coords()
    ys, xs = np.meshgrid(c["y"].values, c["x"].values, indexing="ij")
    ds = xr.Dataset({"x_of_cell": (("y", "x"), xs, {"units": "arcsec"}),
                     "y_of_cell": (("y", "x"), ys, {"units": "arcsec"})}, coords=c,
                    attrs={"esdc_grid": json.dumps(grid.to_dict())})
    doc = point_record(ds, 512.0, -303.0)  # X (solar west), then Y (solar north)
    assert doc["query"] == {"x": 512.0, "y": -303.0}
    assert doc["cell"] == {"x": 515.0, "y": -305.0}
    assert doc["variables"]["x_of_cell"]["values"] == [515.0]
    assert doc["variables"]["y_of_cell"]["values"] == [-305.0]
    with pytest.raises(SelectionError, match="X=1500.0 Y=0.0 arcsec is outside"):
        point_record(ds, 1500.0, 0.0)
