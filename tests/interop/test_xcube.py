"""esdc cubes in xcube (xcube-core): its cube verification, its file data store, its grids.

Two small real cubes are built from recipes/earth.yaml (1 degree, tropical Atlantic and
Africa, 2006-04..2006-09): ``series.zarr`` with the time-varying layers only (OSTIA SST,
Linke turbidity climatology placed by month) and ``mixed.zarr`` with the static surface
altitude as well. xcube then checks them with its own code: ``verify_cube``, the ``file``
data store (``new_data_store("file", root=...)``), ``GridMapping.from_dataset``,
``get_dataset_bounds`` and the store's dataset descriptor. Two static Moon cubes (LOLA
elevation, IAU 2015 geographic and equirectangular metres) check that xcube reads the
CRS of other bodies too.

xcube-core pins pandas<3 while esdc pins pandas 3, so these tests run in the separate
environment ``.venv-xcube`` (``make xcube-test``, part of ``make test``); in the main
environment the module is skipped. Needs the real samples in ``$ESDC_CACHE``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pytest.importorskip(
    "xcube.core.verify",
    reason="xcube-core lives in .venv-xcube (it pins pandas<3): run `make xcube-test`",
)

import pyproj  # noqa: E402
import xarray as xr  # noqa: E402
from xcube.core.geom import get_dataset_bounds, get_dataset_geometry  # noqa: E402
from xcube.core.gridmapping import GridMapping  # noqa: E402
from xcube.core.store import new_data_store  # noqa: E402
from xcube.core.update import update_dataset_attrs  # noqa: E402
from xcube.core.verify import assert_cube, verify_cube  # noqa: E402

from esdc import open_cube  # noqa: E402
from esdc.build import build  # noqa: E402
from esdc.grid import Grid  # noqa: E402
from esdc.recipe import Recipe  # noqa: E402
from esdc.testing import raise_if_dask_computes  # noqa: E402
from esdc.xcube import to_xcube  # noqa: E402
from tests.conftest import need_sample  # noqa: E402

pytestmark = pytest.mark.xcube

ROOT = Path(__file__).resolve().parents[2]
SERIES = ("ostia", "linke_turbidity")  # recipe sources
SERIES_VARS = ("sst", "linke_turbidity")  # their variables


def recipe(sources: tuple[str, ...]) -> dict[str, Any]:
    """recipes/earth.yaml reduced to ``sources`` on a 1 degree grid, 6 months."""
    r = yaml.safe_load((ROOT / "recipes" / "earth.yaml").read_text(encoding="utf-8"))
    r["name"] = "xcube_interop"
    r["sources"] = [copy.deepcopy(s) for s in r["sources"] if s["name"] in sources]
    r["derived"] = []
    r["grid"].update(bbox=[-30, -20, 30, 20], resolution=1.0,
                     time={"start": "2006-04-01", "end": "2006-09-01", "freq": "MS"})
    r["output"]["chunks"] = {"time": 3, "lat": 20, "lon": 30}
    return r


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A folder with the two cubes, as an xcube ``file`` store root."""
    for name in ("ostia-monthly", "pvlib-linke-turbidity", "pvlib-altitude"):
        need_sample(name)
    root = tmp_path_factory.mktemp("xcube-store")
    build(Recipe.from_dict(recipe(SERIES)), root / "series.zarr")
    build(Recipe.from_dict(recipe((*SERIES, "altitude"))), root / "mixed.zarr")
    return root


@pytest.fixture(scope="module")
def store(root):
    return new_data_store("file", root=str(root))


def grid_of(ds: xr.Dataset) -> Grid:
    return Grid.from_dict(json.loads(ds.attrs["esdc_grid"]))


def test_series_cube_is_a_valid_xcube_cube(root, store):
    ds = open_cube(root / "series.zarr")
    assert verify_cube(ds) == []
    # as xcube itself opens it, too
    xds = store.open_data("series.zarr")
    assert verify_cube(xds) == []
    assert assert_cube(xds) is xds


def test_static_layers_are_the_only_difference_and_to_xcube_resolves_it(root):
    ds = open_cube(root / "mixed.zarr")
    issues = verify_cube(ds)
    # esdc stores static layers once, (lat, lon); xcube wants (time, ..., lat, lon)
    assert issues, "xcube now accepts static layers: to_xcube may be unnecessary"
    assert all("'altitude'" in i for i in issues), issues
    assert "data variable 'altitude' must be ('time', ..., 'lat', 'lon')" in issues[0]
    assert verify_cube(ds.drop_vars("altitude")) == []
    with raise_if_dask_computes():
        cube = to_xcube(ds)
    assert verify_cube(cube) == []
    assert cube["altitude"].dims == ("time", "lat", "lon")
    assert cube["altitude"].attrs["esdc_static"] == 1
    assert cube["altitude"].attrs["units"] == "m"
    assert cube["altitude"].chunks == cube["sst"].chunks
    alt = ds["altitude"].values
    assert np.isfinite(alt).any()
    for t in range(cube.sizes["time"]):
        np.testing.assert_array_equal(cube["altitude"].isel(time=t).values, alt)
    for name in SERIES_VARS:
        xr.testing.assert_identical(cube[name], ds[name])


def test_file_store_lists_and_opens_the_cubes_with_the_same_values(root, store):
    ids = set(store.get_data_ids())
    assert {"series.zarr", "mixed.zarr"} <= ids
    assert store.has_data("mixed.zarr")
    assert any("zarr" in o for o in store.get_data_opener_ids("mixed.zarr"))
    xds = store.open_data("mixed.zarr")
    ds = open_cube(root / "mixed.zarr")
    assert dict(xds.sizes) == dict(ds.sizes)
    assert set(xds.data_vars) == set(ds.data_vars) == {"altitude", *SERIES_VARS}
    for name in ("lat", "lon", "time"):
        np.testing.assert_array_equal(xds[name].values, ds[name].values)
        assert xds[name].attrs == ds[name].attrs
    for name in ds.data_vars:
        assert xds[name].dims == ds[name].dims
        assert xds[name].dtype == ds[name].dtype
        assert xds[name].attrs["units"] == ds[name].attrs["units"]
        assert xds[name].attrs["grid_mapping"] == "crs"
        a, b = xds[name].values, ds[name].values
        assert np.isfinite(b).any()
        np.testing.assert_array_equal(a, b)  # NaN == NaN here
    assert xds.attrs["esdc_recipe_sha256"] == ds.attrs["esdc_recipe_sha256"]
    assert "crs_wkt" in xds["crs"].attrs


def test_xcube_grid_mapping_agrees_with_the_esdc_grid(store):
    xds = store.open_data("mixed.zarr")
    grid = grid_of(xds)
    gm = GridMapping.from_dataset(xds)
    assert gm.crs == pyproj.CRS.from_user_input(grid.crs)
    assert gm.is_regular
    assert not gm.is_j_axis_up  # north-up: row 0 is the northernmost
    assert gm.size == (grid.shape[1], grid.shape[0])
    np.testing.assert_allclose(gm.xy_res, grid.resolution)
    np.testing.assert_allclose(gm.xy_bbox, grid.bbox)
    assert gm.xy_dim_names == ("lon", "lat")
    np.testing.assert_allclose(get_dataset_bounds(xds), grid.bbox)
    np.testing.assert_allclose(get_dataset_geometry(xds).bounds, grid.bbox)
    assert grid.bbox == (-30.0, -20.0, 30.0, 20.0)


def test_xcube_dataset_descriptor_agrees_with_the_cube(store):
    desc = store.describe_data("series.zarr")
    xds = store.open_data("series.zarr")
    grid = grid_of(xds)
    np.testing.assert_allclose(desc.bbox, grid.bbox)
    assert desc.spatial_res == pytest.approx(grid.resolution[1])
    # time_bnds are half-open month cells: 2006-04-01 .. 2006-10-01
    assert desc.time_range == ("2006-04-01", "2006-10-01")
    assert set(desc.data_vars) == set(SERIES_VARS)
    assert desc.dims == {"time": 6, "lat": 40, "lon": 60, "nv": 2}
    assert desc.data_vars["sst"].attrs["standard_name"] == "sea_surface_temperature"


def test_xcube_derives_the_same_extent_attributes_as_esdc_writes(store):
    xds = store.open_data("mixed.zarr")
    updated = update_dataset_attrs(xds.copy())
    for key in ("geospatial_lon_min", "geospatial_lat_min", "geospatial_lon_max",
                "geospatial_lat_max"):
        assert updated.attrs[key] == pytest.approx(xds.attrs[key]), key
    # xcube adds the ACDD time coverage from time_bnds, which esdc does not write
    assert updated.attrs["time_coverage_start"].startswith("2006-04-01")
    assert updated.attrs["time_coverage_end"].startswith("2006-10-01")


def test_the_xcube_view_round_trips_through_the_xcube_store(root, store):
    ds = open_cube(root / "mixed.zarr")
    store.write_data(to_xcube(ds), "mixed_xcube.zarr", replace=True)
    back = store.open_data("mixed_xcube.zarr")
    assert verify_cube(back) == []
    assert back["altitude"].dims == ("time", "lat", "lon")
    np.testing.assert_array_equal(back["altitude"].isel(time=-1).values, ds["altitude"].values)
    np.testing.assert_array_equal(back["sst"].values, ds["sst"].values)
    assert GridMapping.from_dataset(back).xy_bbox == pytest.approx(grid_of(ds).bbox)


MOON_GRIDS = {
    # the IAU 2015 lunar sphere, geographic: lat/lon
    "moon_geographic": {"crs": "IAU_2015:30100", "bbox": [-180, -90, 180, 90],
                        "resolution": 2.0},
    # the equirectangular metres of recipes/moon_100m.yaml, coarser: y/x
    "moon_eqc": {"crs": "+proj=eqc +lat_ts=26.13 +lat_0=26.13 +lon_0=3.63 +x_0=0 +y_0=0 "
                        "+R=1737400 +units=m +no_defs +type=crs",
                 "bbox": [-25000, -25000, 25000, 25000], "resolution": 1000.0},
}


@pytest.mark.parametrize("name", sorted(MOON_GRIDS))
def test_xcube_reads_the_crs_of_moon_cubes(tmp_path, name):
    need_sample("lola-dem-global")
    r = yaml.safe_load((ROOT / "recipes" / "moon.yaml").read_text(encoding="utf-8"))
    r["name"] = name
    r["sources"] = [s for s in r["sources"] if s["name"] == "lola_global"]
    r["derived"] = []
    r["grid"].update(MOON_GRIDS[name])
    r["output"]["chunks"] = {}
    build(Recipe.from_dict(r), tmp_path / f"{name}.zarr")
    xds = new_data_store("file", root=str(tmp_path)).open_data(f"{name}.zarr")
    grid = grid_of(xds)
    gm = GridMapping.from_dataset(xds)
    assert gm.crs.equals(grid.pyproj_crs)
    assert gm.crs.ellipsoid.semi_major_metre == 1737400.0
    assert gm.xy_dim_names == tuple(reversed(grid.dims))
    np.testing.assert_allclose(gm.xy_res, grid.resolution)
    np.testing.assert_allclose(gm.xy_bbox, grid.bbox)
    assert np.isfinite(xds["elevation"].values).mean() > 0.9
