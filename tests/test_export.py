"""``esdc export``: a cube or a subset to CF NetCDF (checked by the CF checker) or COGs.

The cube is tests/own_data.py's (Stage IV hourly rain, a categorical land mask, a land
fraction and altitude at 0.25 degree). NetCDF files are checked with cfchecker 4.1 against
CF-1.8, offline: the area-type and region tables are vendored in tests/data/cf, the
standard-name table is compliance-checker's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from esdc.cli import app
from esdc.errors import GridError, OutputPathError, SelectionError
from esdc.export import export, subset
from esdc.storage import open_cube
from tests.own_data import own_data_cube

CF_TABLES = Path(__file__).parent / "data" / "cf"


@pytest.fixture(scope="module")
def cube(tmp_path_factory) -> Path:
    return own_data_cube(tmp_path_factory)


def cf_check(path: Path) -> str:
    """``cfchecks -v CF-1.8`` on ``path`` with local tables; its report (no network)."""
    import compliance_checker

    names = Path(compliance_checker.__file__).parent / "data" / "cf-standard-name-table.xml"
    exe = Path(sys.executable).parent / "cfchecks"
    res = subprocess.run(
        [str(exe), "-v", "CF-1.8", "-s", str(names),
         "-a", str(CF_TABLES / "area-type-table.xml"),
         "-r", str(CF_TABLES / "standardized-region-list.xml"), str(path)],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "no_proxy": "*", "http_proxy": "http://127.0.0.1:9",
             "https_proxy": "http://127.0.0.1:9"})  # any attempt to fetch a table fails
    return res.stdout + res.stderr


def test_netcdf_export_passes_the_cf_checker(cube, tmp_path):
    out = tmp_path / "own.nc"
    assert export(open_cube(cube), out) == [out]
    report = cf_check(out)
    assert "Checking against CF Version CF-1.8" in report, report
    assert "Using Area Type Table Version 13" in report, report
    assert re.search(r"ERRORS detected: 0\b", report), report
    assert re.search(r"WARNINGS given: 0\b", report), report
    with xr.open_dataset(out, decode_times=False) as raw:
        assert raw["land_sea_mask"].attrs["flag_values"].dtype == np.uint8  # its own dtype
        assert raw["land_sea_mask"].dtype == np.uint8
        assert "_FillValue" not in raw["time_bnds"].encoding
        assert "_FillValue" not in raw["lat"].encoding and "_FillValue" not in raw["time"].encoding
        assert raw["time"].dtype.kind == "f" and raw["time"].attrs["units"].startswith("seconds")
        assert raw["time_bnds"].attrs == {}  # bounds inherit the time's units
        assert raw.attrs["Conventions"] == "CF-1.8, ACDD-1.3"
        assert raw["precipitation"].attrs["grid_mapping"] == "crs"
    src = open_cube(cube)
    with xr.open_dataset(out) as back:
        assert back["time"].values.tolist() == src["time"].values.tolist()
        np.testing.assert_array_equal(back["time_bnds"].values, src["time_bnds"].values)
        for name in ("precipitation", "altitude", "land_fraction", "land_sea_mask"):
            np.testing.assert_array_equal(back[name].values, src[name].values)
        assert back.esdc.grid == src.esdc.grid  # esdc_grid kept: the file is still a cube
        assert "exported by esdc" in back.attrs["history"]
        assert {s["source"] for s in back.esdc.sources} == {"stageiv", "my_land_mask",
                                                             "my_altitude"}


def test_subset_to_netcdf_by_cli(cube, tmp_path):
    out = tmp_path / "sub.nc"
    res = CliRunner().invoke(app, ["export", str(cube), str(out), "--variables",
                                   "precipitation,land_sea_mask", "--bbox=-79,33,-76,36",
                                   "--time", "2018-09-14T00:00/2018-09-14T03:00"])
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.output
    assert re.search(r"ERRORS detected: 0\b", cf_check(out))
    src = open_cube(cube)
    with xr.open_dataset(out) as sub:
        assert set(sub.data_vars) == {"precipitation", "land_sea_mask", "time_bnds", "crs"}
        assert sub.sizes["time"] == 4 and sub.sizes["lat"] == 12 and sub.sizes["lon"] == 12
        assert float(sub.lon.min()) == -78.875 and float(sub.lat.max()) == 35.875
        want = src["precipitation"].sel(time=sub.time, lat=sub.lat, lon=sub.lon)
        np.testing.assert_array_equal(sub["precipitation"].values, want.values)
        grid = sub.esdc.grid
        assert grid.bbox == (-79.0, 33.0, -76.0, 36.0) and grid.shape == (12, 12)
        assert len(grid.time) == 4
        assert (sub.attrs["geospatial_lon_min"], sub.attrs["geospatial_lat_max"]) == (-79.0,
                                                                                      36.0)
        assert sub.attrs["time_coverage_start"] == "2018-09-14T00:00:00"
        assert sub.attrs["time_coverage_end"] == "2018-09-14T04:00:00"


def test_geotiff_export_is_one_cog_per_variable(cube, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    paths = export(open_cube(cube), tmp_path / "own.tif", bbox=(-79, 33, -76, 36),
                   time="2018-09-13T22:00/2018-09-14T01:00")
    assert [p.name for p in paths] == ["own_altitude.tif", "own_land_fraction.tif",
                                       "own_land_sea_mask.tif", "own_precipitation.tif"]
    src = open_cube(cube).sel(lon=slice(-79, -76), lat=slice(36, 33))
    with rasterio.open(tmp_path / "own_precipitation.tif") as tif:
        assert tif.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert tif.count == 4 and tif.crs.to_epsg() == 4326
        assert tuple(tif.bounds) == (-79.0, 33.0, -76.0, 36.0)
        assert tif.descriptions == ("2018-09-13T22:00:00", "2018-09-13T23:00:00",
                                    "2018-09-14T00:00:00", "2018-09-14T01:00:00")
        assert np.isnan(tif.nodata)
        want = src["precipitation"].sel(time="2018-09-13T23:00").values
        np.testing.assert_array_equal(tif.read(2), want)
    with rasterio.open(tmp_path / "own_land_sea_mask.tif") as tif:
        assert tif.count == 1 and tif.descriptions == ("land_sea_mask",)
        assert tif.dtypes[0] == "uint8"
        np.testing.assert_array_equal(tif.read(1), src["land_sea_mask"].values)
    # one variable: the file is OUT.tif itself
    one = CliRunner().invoke(app, ["export", str(cube), str(tmp_path / "alt.tif"),
                                   "--variables", "altitude"])
    assert one.exit_code == 0, one.output
    assert (tmp_path / "alt.tif").is_file() and not (tmp_path / "alt_altitude.tif").exists()


def test_export_refuses_what_it_cannot_do(cube, tmp_path):
    ds = open_cube(cube)
    with pytest.raises(SelectionError, match=r"'precip' is not in the cube \(did you mean "
                                             r"'precipitation'\?\)"):
        export(ds, tmp_path / "a.nc", variables=["precip"])
    with pytest.raises(SelectionError, match="holds no cell centre.*west -80.5, south 32.5"):
        subset(ds, bbox="0,0,1,1")
    with pytest.raises(SelectionError, match="crosses the antimeridian"):
        subset(ds, bbox="170,33,-170,36")
    with pytest.raises(GridError, match="four numbers"):
        subset(ds, bbox="0,0,1")
    with pytest.raises(SelectionError, match="selects no time step; the cube's steps run "
                                             "from 2018-09-13T19:00:00 to 2018-09-14T06:00:00"):
        subset(ds, time="2019-01-01")
    with pytest.raises(SelectionError, match="ISO date"):
        subset(ds, time="yesterday")
    with pytest.raises(SelectionError, match="static"):
        subset(ds[["altitude"]].assign_attrs(esdc_grid=_static_grid(ds)), time="2018-09-14")
    with pytest.raises(OutputPathError, match=r"\.nc or \.tif"):
        export(ds, tmp_path / "a.csv")
    with pytest.raises(OutputPathError, match="does not exist"):
        export(ds, tmp_path / "missing" / "a.nc")
    (tmp_path / "there.nc").write_bytes(b"keep")
    with pytest.raises(OutputPathError, match="overwrite=True"):
        export(ds, tmp_path / "there.nc")
    assert (tmp_path / "there.nc").read_bytes() == b"keep"
    res = CliRunner().invoke(app, ["export", str(cube), str(tmp_path / "there.nc")])
    assert res.exit_code == 2 and "--overwrite" in res.output and "Traceback" not in res.output
    assert export(ds, tmp_path / "there.nc", variables=["altitude"], overwrite=True)
    assert not list(tmp_path.glob(".*.partial"))  # nothing half-written left behind


def _static_grid(ds: xr.Dataset) -> str:
    import json

    g = json.loads(ds.attrs["esdc_grid"])
    return json.dumps({**g, "time": None, "time_bounds": None})
