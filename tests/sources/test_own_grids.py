"""Reading a scientist's own files: CF axes, declared georeference checked, 0-360 longitudes,
unevenly spaced (Mercator) latitudes, CF bounds and projected grids with a grid mapping.

Every test file is cut from the real ETOPO5 sample (NOAA NGDC, the 5' relief of the floods
recipe) and written to NetCDF in ``tmp_path``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyproj
import pytest
import xarray as xr

from esdc.errors import SourceError
from esdc.grid import Grid
from esdc.harmonize import decode
from esdc.recipe import SourceSpec
from esdc.regrid import regrid
from esdc.sources import Geolocated, open_source
from esdc.testing import raise_if_dask_computes
from tests.conftest import need_sample

#: ETOPO5's true outer edges (the 5' node lattice: columns 0 .. 359.9167 E, rows -90 .. 90).
TRUE_BBOX = [-0.041666666666666664, -90.04166666666667, 359.9583333333333, 90.04166666666667]
#: ... declared as in recipes/floods.yaml (the file's own columns drift by up to 0.0033 degree
#: from it, so read without a declaration they are unevenly spaced at the 180 degree seam).
LATTICE = dict(bbox=TRUE_BBOX, row_order="south_up", dims=["lat", "lon"])


def spec(path: Path | None = None, georeference: dict | None = None, source: str = "ROSE",
         **var: object) -> SourceSpec:
    where = {"path": str(path)} if path is not None else {"sample": "etopo5"}
    return SourceSpec(name="relief", format="netcdf", georeference=georeference, **where,
                      variables=[dict(name="elevation", source=source, resampling="bilinear",
                                      units="m", **var)])


@pytest.fixture(scope="module")
def etopo() -> xr.DataArray:
    """ETOPO5 as stored: ROSE(ETOPO05_Y south first, ETOPO05_X 0 .. 359.92 E)."""
    with xr.open_dataset(need_sample("etopo5")) as ds:
        return ds["ROSE"].load()


def cut(etopo: xr.DataArray, south: float, north: float, west: float, east: float
        ) -> xr.DataArray:
    """A lat/lon window of ETOPO5 (longitudes 0..360 as in the file), as lat/lon."""
    sub = etopo.sel(ETOPO05_Y=slice(south, north), ETOPO05_X=slice(west, east))
    return sub.rename(ETOPO05_Y="lat", ETOPO05_X="lon").astype("float32")


def write(path: Path, values: np.ndarray, lat: np.ndarray, lon: np.ndarray, *,
          dims: tuple[str, str] = ("lat", "lon"), lat_attrs: dict | None = None,
          lon_attrs: dict | None = None, extra: dict | None = None) -> Path:
    ds = xr.Dataset({"ROSE": (dims, np.asarray(values, "float32"), {"units": "m"})},
                    coords={dims[0]: (dims[0], lat, {"units": "degrees_north"} if lat_attrs
                                      is None else lat_attrs),
                            dims[1]: (dims[1], lon, {"units": "degrees_east"} if lon_attrs
                                      is None else lon_attrs)})
    ds.update(extra or {})
    ds.to_netcdf(path)
    return path


# --------------------------------------------------------------------- CF axes, ETOPO5
def test_etopo5_is_read_by_its_cf_units_without_a_georeference(etopo):
    """ETOPO05_Y/X (units degrees_north/east) are latitude and longitude; 0..360 rolled."""
    with raise_if_dask_computes():
        own = open_source(spec())
    assert (own.ydim, own.xdim) == ("ETOPO05_Y", "ETOPO05_X")
    x, y = own.data["ETOPO05_X"].values, own.data["ETOPO05_Y"].values
    assert -180.0 < x[0] < -179.99 and x[-1] < 180.0 and np.all(np.diff(x) > 0)
    assert y[0] == 90.0 and y[-1] == -90.0
    # the same pixels as the floods recipe's declared exact lattice, a few metres apart
    declared = open_source(spec(georeference=LATTICE))
    np.testing.assert_array_equal(own.data["ROSE"][::200, ::300].values,
                                  declared.data["ROSE"][::200, ::300].values)
    np.testing.assert_allclose(x, declared.data["lon"].values, atol=0.0034)
    np.testing.assert_allclose(y, declared.data["lat"].values, atol=1e-9)


@pytest.mark.parametrize("lat_attrs, lon_attrs", [
    ({"standard_name": "latitude"}, {"standard_name": "longitude"}),
    ({"axis": "Y"}, {"axis": "X"}),
    ({"_CoordinateAxisType": "Lat"}, {"_CoordinateAxisType": "Lon"}),
    ({"units": "degree_N"}, {"units": "degrees_E"}),
])
def test_axes_recognised_by_cf_attributes_whatever_the_dim_names(tmp_path, etopo, lat_attrs,
                                                                  lon_attrs):
    sub = cut(etopo, 42, 49, 235, 244)
    path = write(tmp_path / "cf.nc", sub.values, sub.lat.values, sub.lon.values - 360.0,
                 dims=("Y1", "X1"), lat_attrs=lat_attrs, lon_attrs=lon_attrs)
    geo = open_source(spec(path))
    assert (geo.ydim, geo.xdim) == ("Y1", "X1") and geo.evenly_spaced
    lon, lat = sub.lon.values - 360.0, sub.lat.values
    dx, dy = np.diff(lon).mean() / 2, np.diff(lat).mean() / 2
    np.testing.assert_allclose(geo.bbox, (lon[0] - dx, lat[0] - dy, lon[-1] + dx, lat[-1] + dy))
    assert float(geo.data["ROSE"][0, 0]) == float(sub.values[-1, 0])  # flipped north up


def test_unrecognised_axes_say_what_would_identify_them(tmp_path, etopo):
    sub = cut(etopo, 42, 43, 235, 236)
    path = write(tmp_path / "bare.nc", sub.values, sub.lat.values, sub.lon.values,
                 dims=("a", "b"), lat_attrs={}, lon_attrs={})
    with pytest.raises(SourceError, match=r"cannot tell which dims.*standard_name, units "
                                          r"\(degrees_north/degrees_east\), axis"):
        open_source(spec(path))


# ----------------------------------------------------------- declared georeference checked
def test_a_naive_etopo5_bbox_is_refused_with_both_values():
    naive = dict(bbox=[0, -90, 360, 90], row_order="south_up", dims=["lat", "lon"])
    with pytest.raises(SourceError) as err:
        open_source(spec(georeference=naive))
    msg = str(err.value)
    for needle in ("sources.relief", "georeference.bbox [0.0, -90.0, 360.0, 90.0]",
                   "[-0.041667, -90.041667, 359.961667, 90.041667]", "etopo5.cdf",
                   "a tenth of a pixel", "leave `georeference` out"):
        assert needle in msg, (needle, msg)
    # the declared row order must be the file's too
    flipped = dict(bbox=TRUE_BBOX, row_order="north_up", dims=["lat", "lon"])
    with pytest.raises(SourceError, match=r"rows run from south to north.*row_order is "
                                          r"north_up"):
        open_source(spec(georeference=flipped))


def test_a_geotiff_bbox_a_fifth_of_a_pixel_off_is_refused(tmp_path):
    import rasterio
    from rasterio.transform import from_bounds

    path = tmp_path / "g.tif"
    with rasterio.open(path, "w", driver="GTiff", width=10, height=10, count=1,
                       dtype="float32", crs="EPSG:4326",
                       transform=from_bounds(0, 0, 10, 10, 10, 10)) as f:
        f.write(np.ones((1, 10, 10), "float32"))

    def tif(bbox: list[float]) -> SourceSpec:
        return SourceSpec(name="g", path=str(path), format="geotiff", bands=["v"],
                          georeference=dict(crs="EPSG:4326", bbox=bbox),
                          variables=[dict(name="v", source="v", resampling="nearest",
                                          units="1")])

    assert open_source(tif([0.05, 0, 10.05, 10])).bbox == (0, 0, 10, 10)  # 0.05 px: fine
    with pytest.raises(SourceError, match=r"differs from the bounds \[0.0, 0.0, 10.0, 10.0\]"
                                          r".*tenth of a pixel"):
        open_source(tif([0.2, 0, 10.2, 10]))


# ------------------------------------------------------------------- 0-360 longitudes
def test_longitudes_of_0_to_360_land_where_those_of_minus_180_do(tmp_path, etopo):
    sub = cut(etopo, 42, 49, 235, 244)
    east = write(tmp_path / "east.nc", sub.values, sub.lat.values, sub.lon.values)
    west = write(tmp_path / "west.nc", sub.values, sub.lat.values, sub.lon.values - 360.0)
    a, b = open_source(spec(east)), open_source(spec(west))
    np.testing.assert_allclose(a.data["lon"].values, b.data["lon"].values, atol=1e-9)
    grid = Grid.from_bbox("earth", "EPSG:4326", (-124, 43, -117, 48), 0.25)
    for method in ("bilinear", "conservative", "nearest"):
        ra = regrid(a.data["ROSE"], a, grid, method).values
        rb = regrid(b.data["ROSE"], b, grid, method).values
        np.testing.assert_array_equal(ra, rb)
        assert np.isfinite(ra).all()


def test_a_regional_file_across_180_degrees_is_refused(tmp_path, etopo):
    sub = cut(etopo, 40, 42, 175, 185)
    path = write(tmp_path / "dateline.nc", sub.values, sub.lat.values, sub.lon.values)
    with pytest.raises(SourceError, match=r"cross 180 degrees.*Split the file"):
        open_source(spec(path))


# ----------------------------------------------------- unevenly spaced (Mercator) latitudes
def mercator_latitudes(south: float, north: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` cell centres and ``n + 1`` edges evenly spaced in Mercator y, south first."""
    def merc(lat):
        return np.log(np.tan(np.pi / 4 + np.radians(lat) / 2))

    def inverse(y):
        return np.degrees(2 * np.arctan(np.exp(y)) - np.pi / 2)

    edges = np.linspace(merc(south), merc(north), n + 1)
    return inverse((edges[:-1] + edges[1:]) / 2), inverse(edges)


@pytest.fixture(scope="module")
def mercator(tmp_path_factory, etopo) -> dict[str, Path]:
    """ETOPO5 over western North America, regular and at Mercator-spaced latitudes."""
    folder = tmp_path_factory.mktemp("mercator")
    sub = cut(etopo, 19, 61, 235, 261)
    lon = sub.lon.values - 360.0
    regular = write(folder / "regular.nc", sub.values, sub.lat.values, lon)
    lat, edges = mercator_latitudes(20.0, 60.0, 360)  # 0.058 .. 0.112 degrees
    values = sub.interp(lat=lat).values
    plain = write(folder / "mercator.nc", values, lat, lon)
    bnds = np.stack([edges[:-1], edges[1:]], axis=1)
    bounded = write(folder / "mercator_bnds.nc", values, lat, lon,
                    lat_attrs={"units": "degrees_north", "bounds": "lat_bnds"},
                    extra={"lat_bnds": (("lat", "nv"), bnds)})
    return {"regular": regular, "mercator": plain, "bounded": bounded}


def test_mercator_latitudes_are_read_as_they_are(mercator):
    with raise_if_dask_computes():
        geo = open_source(spec(mercator["mercator"]))
    assert not geo.evenly_spaced and geo.location == "regular"
    lat, edges = mercator_latitudes(20.0, 60.0, 360)
    np.testing.assert_allclose(geo.data["lat"].values, lat[::-1])
    yb, _ = geo.cell_bounds()  # midway between centres when the file gives no bounds
    np.testing.assert_allclose(yb[1:-1, 1], ((lat[1:] + lat[:-1]) / 2)[::-1][:-1])
    assert geo.resolution[1] == pytest.approx(np.diff(lat).max(), rel=0.02)
    bounded = open_source(spec(mercator["bounded"]))
    np.testing.assert_allclose(bounded.ybounds[:, 0], edges[:-1][::-1])  # the file's own
    np.testing.assert_allclose(bounded.bbox[1::2], (20.0, 60.0))


@pytest.mark.parametrize("method, res, tol", [
    ("conservative", 0.5, 5.0), ("bilinear", 0.25, 12.0), ("nearest", 0.25, 40.0)])
def test_mercator_file_regrids_like_the_same_data_on_a_regular_grid(mercator, method, res,
                                                                    tol):
    """Median difference in metres of relief (ETOPO5 relief spans about 7000 m here).

    Measured: conservative 1.35 m, bilinear 4.0 m, nearest 13.5 m; the same file read as
    if its rows were evenly spaced: 260-273 m.
    """
    grid = Grid.from_bbox("earth", "EPSG:4326", (-124, 21, -100, 59), res)
    reg = open_source(spec(mercator["regular"]))
    want = regrid(reg.data["ROSE"], reg, grid, method).values
    for name in ("mercator", "bounded"):
        geo = open_source(spec(mercator[name]))
        with raise_if_dask_computes():
            lazy = regrid(geo.data["ROSE"], geo, grid, method)
        got = lazy.values
        assert np.isfinite(got).all()
        err = float(np.median(np.abs(got - want)))
        assert err < tol, (name, err)
    # read as if evenly spaced, the same rows land up to 2 degrees off: far worse
    ds = geo.data.assign_coords(lat=np.linspace(59.94, 20.06, geo.data.sizes["lat"]))
    naive = Geolocated(ds, geo.crs, "lat", "lon", geo.path)
    wrong = regrid(naive.data["ROSE"], naive, grid, method).values
    assert float(np.median(np.abs(wrong - want))) > 5 * tol


# ------------------------------------------------------ projected grids, CF grid_mapping
@pytest.fixture(scope="module")
def laea(etopo) -> tuple[Grid, np.ndarray]:
    """ETOPO5 relief over the Alps on a 20 km ETRS89-LAEA (EPSG:3035) grid."""
    geo = open_source(spec(georeference=LATTICE))
    grid = Grid.from_bbox("earth", "EPSG:3035", (3_900_000, 2_300_000, 4_700_000, 2_900_000),
                          20_000)
    values = regrid(decode(geo.data["ROSE"], spec().variables[0]), geo, grid,
                    "bilinear").values
    return grid, values


@pytest.mark.parametrize("unit, factor", [("m", 1.0), ("km", 1000.0)])
def test_cf_grid_mapping_gives_the_crs_of_a_projected_file(tmp_path, laea, unit, factor):
    grid, values = laea
    crs = pyproj.CRS("EPSG:3035")
    ds = xr.Dataset(
        {"relief": (("y", "x"), values, {"units": "m", "grid_mapping": "crs"}),
         "crs": ((), 0, crs.to_cf())},
        coords={"y": ("y", grid.y / factor, {"units": unit,
                                             "standard_name": "projection_y_coordinate"}),
                "x": ("x", grid.x / factor, {"units": unit,
                                             "standard_name": "projection_x_coordinate"})})
    ds.to_netcdf(tmp_path / "laea.nc")
    geo = open_source(spec(tmp_path / "laea.nc", source="relief"))
    assert geo.crs.equals(crs) and geo.bbox == pytest.approx(grid.bbox)
    np.testing.assert_allclose(geo.data["x"].values, grid.x)
    same = regrid(geo.data["relief"], geo, grid, "nearest").values
    np.testing.assert_array_equal(same, values)
    coarse = Grid.from_bbox("earth", "EPSG:3035", grid.bbox, 40_000)
    block = regrid(geo.data["relief"], geo, coarse, "conservative").values
    np.testing.assert_allclose(block, values.reshape(15, 2, 20, 2).mean(axis=(1, 3)),
                               rtol=1e-5)
    # onto lat/lon: where the two interpolations agree with reading ETOPO5 directly
    ll = Grid.from_bbox("earth", "EPSG:4326", (6, 44, 14, 48), 0.25)
    via = regrid(geo.data["relief"], geo, ll, "bilinear").values
    direct_geo = open_source(spec(georeference=LATTICE))
    direct = regrid(direct_geo.data["ROSE"], direct_geo, ll, "bilinear").values
    ok = np.isfinite(via)
    assert ok.mean() > 0.9 and np.corrcoef(via[ok], direct[ok])[0, 1] > 0.95


def test_metres_without_a_grid_mapping_are_refused(tmp_path):
    ds = xr.Dataset({"relief": (("y", "x"), np.zeros((3, 4), "float32"))},
                    coords={"y": ("y", [2.5e6, 1.5e6, 0.5e6], {"units": "m"}),
                            "x": ("x", np.arange(4) * 1e6 + 5e5, {"units": "m"})})
    ds.to_netcdf(tmp_path / "nogm.nc")
    with pytest.raises(SourceError, match=r"projected coordinates.*no CF grid_mapping"):
        open_source(spec(tmp_path / "nogm.nc", source="relief"))
