"""Conservative (area-weighted) resampling: exact areas, both directions, NaN, laziness.

The weights are checked against spherical cell areas computed here independently (a cell
between longitudes l1, l2 and latitudes p1, p2 on a sphere of radius R has the area
``R**2 * (l2 - l1) * (sin p2 - sin p1)``), then the method on real samples: the issue's
case (the 5' GSHHG land mask onto a 0.05 degree grid), global conservation, and the
refusal of the bucket methods onto finer grids.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pyproj
import pytest
import xarray as xr

from esdc.build import plan
from esdc.errors import RegridError, UpsamplingWarning
from esdc.grid import Grid
from esdc.harmonize import decode
from esdc.recipe import Recipe, SourceSpec
from esdc.regrid import regrid
from esdc.regrid.conservative import conservative_weights, grid_bounds
from esdc.sources import Geolocated, open_source
from esdc.testing import raise_if_dask_computes

R = 6_371_008.8  # the mean Earth radius, metres
LAND_MASK = dict(sample="basemap-lsmask-5min", format="raw", dtype="uint8",
                 shape=[2160, 4320], compression="gzip",
                 georeference=dict(crs="EPSG:4326", bbox=[-180, -90, 180, 90],
                                   row_order="south_up", dims=["lat", "lon"]))
PNW = (-125.0, 42.0, -116.0, 49.0)  # the issue's Pacific Northwest region


def lat_lon_source(values: np.ndarray, lat: np.ndarray, lon: np.ndarray,
                   crs: str = "EPSG:4326") -> Geolocated:
    ds = xr.Dataset({"v": (("lat", "lon"), values)}, coords={"lat": lat, "lon": lon})
    return Geolocated(ds.chunk({"lat": 7, "lon": 9}), pyproj.CRS(crs), "lat", "lon",
                      Path("synthetic"))


def sphere_area(west: float, south: float, east: float, north: float) -> float:
    """Exact area (m2) of a longitude/latitude rectangle on the sphere of radius R."""
    if east <= west or north <= south:
        return 0.0
    return R ** 2 * math.radians(east - west) * (math.sin(math.radians(north))
                                                   - math.sin(math.radians(south)))


def mercator_latitudes(south: float, north: float, n: int) -> np.ndarray:
    """``n`` cell centres evenly spaced in Mercator y between two latitudes, north first."""
    y = np.log(np.tan(np.pi / 4 + np.radians([south, north]) / 2))
    edges = np.linspace(y[1], y[0], n + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    return np.degrees(2 * np.arctan(np.exp(centres)) - np.pi / 2)


def test_weights_are_exact_spherical_overlap_areas():
    """Every weight is the exact area of a source/target overlap, for uneven cells too."""
    lat = mercator_latitudes(10.0, 60.0, 13)  # uneven rows
    lon = np.sort(np.random.default_rng(0).uniform(0.0, 20.0, 11))  # uneven columns
    src = lat_lon_source(np.zeros((13, 11), "float32"), lat, lon)
    grid = Grid.from_bbox("earth", "EPSG:4326", (2.0, 15.0, 18.0, 55.0), 2.5)
    wy, wx, area_y, area_x = conservative_weights(src, grid)
    syb, sxb = src.cell_bounds()
    gyb, gxb = grid_bounds(grid)
    to_m2 = R ** 2 * math.pi / 180  # weights: sin(lat) x degrees
    for k in range(grid.shape[0]):
        for c in range(grid.shape[1]):
            for i in range(len(lat)):
                for j in range(len(lon)):
                    want = sphere_area(max(gxb[c, 0], sxb[j, 0]), max(gyb[k, 0], syb[i, 0]),
                                       min(gxb[c, 1], sxb[j, 1]), min(gyb[k, 1], syb[i, 1]))
                    got = wy[k, i] * wx[c, j] * to_m2
                    assert got == pytest.approx(want, rel=1e-9, abs=1e-3), (k, c, i, j)
            # the source covers the whole grid: the overlaps add up to the cell's area
            cell = sphere_area(gxb[c, 0], gyb[k, 0], gxb[c, 1], gyb[k, 1])
            assert wy[k].sum() * wx[c].sum() * to_m2 == pytest.approx(cell, rel=1e-12)
            assert area_y[k] * area_x[c] * to_m2 == pytest.approx(cell, rel=1e-12)


def test_weights_cover_the_sphere_across_the_antimeridian_and_poles():
    """A global source shifted by half a cell (ETOPO5-like edges beyond 180 and the poles)."""
    lat = np.linspace(90, -90, 37)  # centres on the poles: edges at +-92.5, cut at the pole
    lon = np.arange(0, 360, 5.0) - 180.0 + 2.5 - 5.0 / 2  # -180 .. 175: edges -182.5 ..
    src = lat_lon_source(np.zeros((37, 72), "float32"), lat, lon)
    grid = Grid.from_bbox("earth", "EPSG:4326", (-180, -90, 180, 90), 3.0)
    wy, wx, _, _ = conservative_weights(src, grid)
    total = wy.sum() * wx.sum() * R ** 2 * math.pi / 180
    assert total == pytest.approx(4 * math.pi * R ** 2, rel=1e-12)
    # the last grid column (177 .. 180) takes 2.5 degrees of the first source column
    # (-182.5 .. -177.5, i.e. 177.5 .. 182.5 wrapped) and 0.5 of the last (172.5 .. 177.5)
    assert wx[-1, 0] == pytest.approx(2.5) and wx[-1, 71] == pytest.approx(0.5)
    assert wx[0, 0] == pytest.approx(2.5) and wx[0, 1] == pytest.approx(0.5)


def test_downsampling_is_the_exact_area_mean():
    rng = np.random.default_rng(1)
    lat = np.arange(59.5, 40, -1.0)
    lon = np.arange(0.5, 30, 1.0)
    vals = rng.random((20, 30)).astype("float32")
    src = lat_lon_source(vals, lat, lon)
    grid = Grid.from_bbox("earth", "EPSG:4326", (0, 40, 30, 60), 5.0)
    with raise_if_dask_computes():
        lazy = regrid(src.data["v"], src, grid, "conservative")
    out = lazy.values
    w = np.sin(np.radians(lat + 0.5)) - np.sin(np.radians(lat - 0.5))
    for k in range(4):
        for c in range(6):
            block = vals[5 * k:5 * k + 5, 5 * c:5 * c + 5].astype("float64")
            want = (block * w[5 * k:5 * k + 5, None]).sum() / (5 * w[5 * k:5 * k + 5].sum())
            assert out[k, c] == pytest.approx(want, rel=1e-6)


def test_upsampling_gives_each_cell_its_source_cell():
    lat = np.arange(59.0, 40, -2.0)
    lon = np.arange(1.0, 30, 2.0)
    vals = np.random.default_rng(2).random((10, 15)).astype("float32")
    src = lat_lon_source(vals, lat, lon)
    grid = Grid.from_bbox("earth", "EPSG:4326", (0, 40, 30, 60), 0.5)
    with pytest.warns(UpsamplingWarning, match="4 x 4 times"):
        out = regrid(src.data["v"], src, grid, "conservative").values
    np.testing.assert_allclose(out, np.kron(vals, np.ones((4, 4))), rtol=1e-6)
    # cells not aligned with the source: one straddling two source cells takes the
    # area mean of its two halves, the others their source cell
    odd = Grid.from_bbox("earth", "EPSG:4326", (0.25, 40.25, 29.75, 59.75), 0.5)
    with pytest.warns(UpsamplingWarning):
        part = regrid(src.data["v"], src, odd, "conservative").values
    assert odd.x[3] == 2.0 and odd.y[0] == 59.5
    assert part[0, 3] == pytest.approx((vals[0, 0] + vals[0, 1]) / 2, rel=1e-6)
    assert part[0, 2] == pytest.approx(vals[0, 0], rel=1e-6)


def test_min_valid_fraction_counts_area_not_pixels():
    """A cell is the mean of its valid parts, NaN when they cover less than the fraction."""
    lat = np.array([0.5, -0.5])  # two rows of 1 degree
    lon = np.array([0.25, 0.75])  # two columns of 0.5 degree
    vals = np.array([[1.0, 3.0], [np.nan, np.nan]], "float32")  # the southern half is NaN
    src = lat_lon_source(vals, lat, lon)
    grid = Grid.from_bbox("earth", "EPSG:4326", (0, -1, 1, 1), (1.0, 2.0))  # one cell
    mean = regrid(src.data["v"], src, grid, "conservative", min_valid_fraction=0.5).values
    assert mean[0, 0] == pytest.approx(2.0)  # valid half: exactly 0.5 of the area (sphere)
    assert np.isnan(regrid(src.data["v"], src, grid, "conservative",
                           min_valid_fraction=0.6).values[0, 0])
    # beyond the source counts as not covered: a cell 3/4 outside is NaN at 0.5
    far = Grid.from_bbox("earth", "EPSG:4326", (0.5, 0.5, 2.5, 2.5), 2.0)
    assert np.isnan(regrid(src.data["v"], src, far, "conservative").values[0, 0])
    assert regrid(src.data["v"], src, far, "conservative",
                  min_valid_fraction=0.01).values[0, 0] == pytest.approx(3.0)
    with pytest.raises(RegridError, match="min_valid_fraction"):
        regrid(src.data["v"], src, grid, "conservative", min_valid_fraction=0.0)


def test_projected_grid_of_the_same_crs_takes_planar_areas():
    """EPSG:3035 (equal-area) source and grid: 2 x 2 blocks of cells, exact means."""
    rng = np.random.default_rng(3)
    vals = rng.random((8, 12)).astype("float32")
    y = 3_000_000 + 5_000 * (np.arange(8)[::-1] + 0.5)
    x = 4_000_000 + 5_000 * (np.arange(12) + 0.5)
    ds = xr.Dataset({"v": (("y", "x"), vals)}, coords={"y": y, "x": x}).chunk()
    src = Geolocated(ds, pyproj.CRS("EPSG:3035"), "y", "x", Path("laea"))
    grid = Grid.from_bbox("earth", "EPSG:3035", (4_000_000, 3_000_000, 4_060_000, 3_040_000),
                          10_000)
    out = regrid(ds["v"], src, grid, "conservative").values
    want = vals.reshape(4, 2, 6, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(out, want, rtol=1e-6)


def test_refused_where_cell_bounds_cannot_be_weighed():
    lat, lon = np.arange(9.5, 0, -1.0), np.arange(0.5, 10, 1.0)
    src = lat_lon_source(np.ones((10, 10), "float32"), lat, lon)
    utm = Grid.from_bbox("earth", "EPSG:32631", (200_000, 0, 800_000, 1_000_000), 100_000)
    with pytest.raises(RegridError, match="conservative.*one CRS.*bucket_average"):
        regrid(src.data["v"], src, utm, "conservative")
    lons, lats = np.meshgrid(lon, lat)
    swath = Geolocated(src.data.rename({"lat": "row", "lon": "col"}).drop_vars(["row", "col"]),
                       pyproj.CRS("EPSG:4326"), "row", "col", Path("swath"), lons, lats)
    grid = Grid.from_bbox("earth", "EPSG:4326", (0, 0, 10, 10), 2.0)
    with pytest.raises(RegridError, match="conservative.*no cell bounds.*nearest"):
        regrid(swath.data["v"], swath, grid, "conservative")


@pytest.fixture(scope="module")
def land_mask(samples) -> tuple[SourceSpec, Geolocated, xr.DataArray]:
    spec = SourceSpec(name="land_mask", variables=[dict(
        name="land_fraction", source="mask", resampling="conservative", select_values=[1, 2],
        units="1")], **LAND_MASK)
    geo = open_source(spec)
    return spec, geo, decode(geo.data["mask"], spec.variables[0])


def test_the_issue_case_bucket_average_onto_finer_cells_is_refused(land_mask):
    """5' land mask onto 0.05 degree: refused at plan time, both sizes and the way out."""
    _, geo, frac = land_mask
    grid = Grid.from_bbox("earth", "EPSG:4326", PNW, 0.05)
    with raise_if_dask_computes(), pytest.raises(RegridError) as err:
        regrid(frac, geo, grid, "bucket_average")
    msg = str(err.value)
    for needle in ("bucket_average", "0.05 degrees", "0.0833333 x 0.0833333 degrees",
                   "1.67 x 1.67 cells", "conservative", "bilinear", "nearest"):
        assert needle in msg, (needle, msg)
    with pytest.raises(RegridError, match="bucket_mode onto grid cells of 0.05"):
        regrid(geo.data["mask"], geo, grid, "bucket_mode", flag_values=[0, 1, 2])
    # conservative: no hole, fractional coastal cells, values in [0, 1]
    with raise_if_dask_computes():
        lazy = regrid(frac, geo, grid, "conservative")
    out = lazy.values
    assert not np.isnan(out).any()
    assert 0 < ((out > 0) & (out < 1)).mean() < 0.1 and out.min() == 0 and out.max() == 1


def test_land_share_of_the_globe_is_kept_both_ways(land_mask):
    """Area-weighted land share: identical on a coarser and on a finer global grid."""
    _, geo, frac = land_mask
    lat = geo.data["lat"].values
    w_src = (np.sin(np.radians(lat + 1 / 24)) - np.sin(np.radians(lat - 1 / 24)))[:, None]
    src_share = float((frac.values * w_src).sum() / (w_src.sum() * frac.shape[1]))
    assert src_share == pytest.approx(0.2919, abs=1e-3)
    for res in (0.25, 0.05):
        grid = Grid.from_bbox("earth", "EPSG:4326", (-180, -90, 180, 90), res)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = regrid(frac, geo, grid, "conservative").values
        w = grid.cell_area_weights()
        share = float((out * w).sum() / (w.sum() * grid.shape[1]))
        assert share == pytest.approx(src_share, rel=1e-6), res


def test_plan_records_coverage_and_warns_on_upsampling(samples):
    """The plan computes nothing; >2x upsampling warns unless the recipe allows it."""
    def recipe(res: float, **var: object) -> Recipe:
        return Recipe.from_dict({
            "name": "pnw", "title": "PNW", "grid": {"body": "earth", "bbox": list(PNW),
                                                     "resolution": res},
            "sources": [{"name": "land_mask", **LAND_MASK, "variables": [{
                "name": "land_fraction", "source": "mask", "resampling": "conservative",
                "select_values": [1, 2], "units": "1", **var}]}]})

    with raise_if_dask_computes():
        ds = plan(recipe(0.05))  # 1.67x: no warning
    attrs = ds["land_fraction"].attrs
    assert attrs["esdc_min_valid_fraction"] == 0.5 and attrs["cell_methods"] == "area: mean"
    assert '"pixel": [1.666667, 1.666667]' in attrs["esdc_coverage"]
    with pytest.warns(UpsamplingWarning, match=r"sources.land_mask variable land_fraction.*"
                                               r"4.17 x 4.17 times.*allow_upsampling"):
        plan(recipe(0.02))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan(recipe(0.02, allow_upsampling=True, min_valid_fraction=0.9))
