"""Correctness of the real Earth cube (built once per session through the CLI)."""

import json

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from esdc.cli import app
from esdc.storage import open_cube
from esdc.testing import raise_if_dask_computes
from esdc.verify import verify_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ds(earth_cube):
    return open_cube(earth_cube)


def test_opening_and_metadata_compute_nothing(earth_cube):
    with raise_if_dask_computes():
        ds = open_cube(earth_cube)
        _ = ds.attrs["esdc_recipe"], ds.sst.attrs, ds.esdc.grid, ds.esdc.sources
        assert ds.esdc.verify() == []


def test_store_conventions(earth_cube):
    assert verify_store(earth_cube) == []
    meta = json.loads((earth_cube / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["consolidated_metadata"]
    sst_meta = json.loads((earth_cube / "sst" / "zarr.json").read_text())
    assert sst_meta["chunk_grid"]["configuration"]["chunk_shape"] == [6, 180, 360]
    assert any(c["name"] == "blosc" for c in sst_meta["codecs"][-1:] + sst_meta["codecs"])


def test_dims_and_time_axis(ds):
    assert ds.sizes["lat"] == 720 and ds.sizes["lon"] == 1440 and ds.sizes["time"] == 54
    assert str(ds.time.values[0])[:7] == "2006-04" and str(ds.time.values[-1])[:7] == "2010-09"
    assert ds.sst.dims == ("time", "lat", "lon")
    assert ds.altitude.dims == ("lat", "lon")  # static: no time
    # ACDD time coverage: first cell start .. last cell end (September's cell ends 1 Oct)
    assert ds.attrs["time_coverage_start"] == "2006-04-01T00:00:00"
    assert ds.attrs["time_coverage_end"] == "2010-10-01T00:00:00"


def test_provenance(ds):
    sources = json.loads(ds.attrs["esdc_sources"])
    products = {s["source"]: s for s in sources}
    assert products["ostia"]["product"].startswith("OSTIA")
    assert products["blue_marble"]["instrument"] == "MODIS"
    assert all(len(s["sha256"]) == 64 for s in sources)
    versions = json.loads(ds.attrs["esdc_versions"])
    assert {"esdc", "xarray", "zarr", "dask", "pyresample"} <= set(versions)
    assert "name: earth" in ds.attrs["esdc_recipe"]
    assert len(ds.attrs["esdc_recipe_sha256"]) == 64


def test_cf_attributes(ds):
    assert ds.altitude.attrs["standard_name"] == "surface_altitude"
    assert ds.altitude.attrs["units"] == "m"
    assert ds.sst.attrs["standard_name"] == "sea_surface_temperature"
    assert ds.land_fraction.attrs["standard_name"] == "land_area_fraction"
    assert ds.koppen_class.attrs["flag_meanings"].split()[2] == "B_arid"
    assert list(ds.koppen_class.attrs["flag_values"]) == [0, 1, 2, 3, 4, 5]
    assert "time: mean over years" in ds.linke_turbidity.attrs["cell_methods"]
    assert "month of year" in ds.linke_turbidity.attrs["esdc_time_placement"]


def test_altitude(ds):
    himalaya = ds.altitude.sel(lat=slice(36, 27), lon=slice(75, 95))
    assert float(himalaya.max()) > 4000
    ocean = ds.altitude.sel(lat=0.125, lon=-150.125, method="nearest")  # central Pacific
    assert np.isnan(float(ocean))


def test_land_fraction(ds):
    # an indicator mean over a gap-free source: every cell has a value (no lost chunk)
    assert int(ds.land_fraction.isnull().sum()) == 0
    assert int((ds.koppen_class == 255).sum()) == 0
    w = xr.DataArray(np.cos(np.deg2rad(ds.lat.values)), dims="lat", coords={"lat": ds.lat})
    frac = float(ds.land_fraction.weighted(w).mean())
    assert 0.27 <= frac <= 0.31


@pytest.mark.parametrize("where, lat, lon, cls", [
    ("Sahara", 23.0, 10.0, 2), ("Amazon", -4.0, -62.0, 1), ("Antarctica", -80.0, 30.0, 5),
    ("Pacific", 0.0, -150.0, 0),
])
def test_koppen(ds, where, lat, lon, cls):
    assert int(ds.koppen_class.sel(lat=lat, lon=lon, method="nearest")) == cls, where


def test_sst_series(ds):
    eq = ds.sst.sel(lat=0.125, method="nearest").sel(lon=slice(-160, -100))
    assert 290 < float(eq.mean()) < 305  # equatorial Pacific, K
    assert np.isnan(float(ds.sst.sel(lat=45, lon=0, method="nearest").isel(time=0)))  # off band
    assert int(ds.sst.isel(time=0).count()) > 0 and int(ds.sst.isel(time=-1).count()) > 0
    assert float(ds.sst.max()) < 310 and float(ds.sst.min()) > 265  # the file's _FillValue
    assert np.isnan(float(ds.sst.sel(lat=-0.125, lon=-60.125).isel(time=0)))  # Amazon: land


def test_climatology_by_month(ds):
    lt = ds.linke_turbidity.sel(lat=20.125, lon=10.125, method="nearest").values
    months = ds.time.dt.month.values
    for m in range(1, 13):
        vals = lt[months == m]
        assert np.all(vals == vals[0])  # same month of year, same climatology value
    assert 0.65 <= np.nanmin(ds.linke_turbidity.isel(time=0).values) <= 7.65


def test_cli_info_and_verify(earth_cube):
    r = CliRunner().invoke(app, ["verify", str(earth_cube)])
    assert r.exit_code == 0 and "OK" in r.output
    r = CliRunner().invoke(app, ["info", str(earth_cube), "--json"])
    info = json.loads(r.output)
    assert info["dims"]["time"] == 54 and "koppen_class" in info["variables"]


def test_verify_lists_every_problem(tmp_path):
    from esdc.testing import new_cube

    ds = new_cube()
    ds["a"].attrs.pop("units")
    ds["b"] = ds["b"].transpose("lat", "time", "lon")
    del ds.attrs["esdc_sources"]
    ds.to_zarr(tmp_path / "bad.zarr", zarr_format=3, consolidated=False)
    r = CliRunner().invoke(app, ["verify", str(tmp_path / "bad.zarr")])
    assert r.exit_code == 1
    for needle in ("'a' has no units", "'b' has dims", "esdc_sources", "consolidated"):
        assert needle in r.output
