"""The NetCDF reader on curvilinear files (2-D lat/lon), with small generated files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from esdc.errors import SourceError
from esdc.grid import Grid
from esdc.recipe import SourceSpec
from esdc.regrid import regrid
from esdc.sources import open_source
from esdc.testing import raise_if_dask_computes


def rotated(ny: int = 30, nx: int = 20, lon0: float = 280.0, lat0: float = 35.0,
            step: float = 0.1, theta_deg: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres of a grid rotated by ``theta_deg``; row 0 south (like Stage IV)."""
    jj, ii = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    t = np.deg2rad(theta_deg)
    u, v = (ii - nx / 2) * step, (jj - ny / 2) * step
    return lon0 + u * np.cos(t) - v * np.sin(t), lat0 + u * np.sin(t) + v * np.cos(t)


def write(path, lons, lats, *, lat_attrs=None, lon_attrs=None, times=3):
    ny, nx = lats.shape
    field = (lons - 360.0 * (lons >= 180)) + 2 * lats  # a linear field of position
    data = np.stack([field + k for k in range(times)]).astype("float32")
    ds = xr.Dataset(
        {"precip": (("time", "y", "x"), data, {"units": "kg m-2",
                                               "coordinates": "time lat lon"}),
         "lat": (("y", "x"), lats.astype("float32"), lat_attrs or {"units": "degrees_north"}),
         "lon": (("y", "x"), lons.astype("float32"), lon_attrs or {"units": "degrees_east"})},
        coords={"time": pd.date_range("2018-09-13T19:00", periods=times, freq="h")})
    ds.to_netcdf(path)
    return path


def spec(path, **kw) -> SourceSpec:
    return SourceSpec(name="swath", path=str(path), format="netcdf", time="series", variables=[
        dict(name="p", source="precip", resampling="nearest", units="kg m-2")], **kw)


def test_curvilinear_file_opens_as_a_swath_lazily(tmp_path):
    lons, lats = rotated()
    path = write(tmp_path / "curvi.nc", lons, lats)
    with raise_if_dask_computes():
        geo = open_source(spec(path))
    assert geo.is_swath and (geo.ydim, geo.xdim) == ("y", "x")
    assert geo.data["precip"].dims == ("time", "y", "x") and geo.data["precip"].chunks
    assert "lat" not in geo.data.coords and "lon" not in geo.data.coords
    assert geo.lons.shape == geo.lats.shape == (30, 20)
    # longitudes 0..360 come back in [-180, 180); latitudes untouched
    np.testing.assert_allclose(geo.lons, lons.astype("float32") - 360.0, atol=1e-4)
    np.testing.assert_allclose(geo.lats, lats.astype("float32"))
    assert geo.data["time"].dtype.kind == "M"
    w, s, e, n = geo.bbox
    assert w < -80.5 and e > -79.5 and s < 34.0 and n > 36.0


def test_curvilinear_values_land_where_their_coordinates_say(tmp_path):
    lons, lats = rotated()
    path = write(tmp_path / "curvi.nc", lons, lats)
    geo = open_source(spec(path))
    grid = Grid.from_bbox("earth", "EPSG:4326", (-81.5, 33.5, -78.5, 36.5), 0.1)
    out = regrid(geo.data["precip"], geo, grid, "nearest")
    assert out.dims == ("time", "lat", "lon")
    expect = grid.x[None, :] + 2 * grid.y[:, None]
    err = np.abs(out.values[1] - 1 - expect)
    assert np.nanmax(err) < 0.25  # within one source pixel of the linear field
    assert np.isnan(out.values[0, 0, 0])  # the grid's corner lies outside the rotated grid


@pytest.mark.parametrize("lat_attrs, lon_attrs", [
    ({"standard_name": "latitude"}, {"standard_name": "longitude"}),
    ({"_CoordinateAxisType": "Lat"}, {"_CoordinateAxisType": "Lon"}),
])
def test_coordinates_recognised_by_cf_attributes(tmp_path, lat_attrs, lon_attrs):
    lons, lats = rotated()
    path = write(tmp_path / "curvi.nc", lons, lats, lat_attrs=lat_attrs, lon_attrs=lon_attrs)
    assert open_source(spec(path)).is_swath


def test_latitudes_beyond_the_pole_are_refused(tmp_path):
    lons, lats = rotated()
    path = write(tmp_path / "bad.nc", lons, lats * 3)  # 105 degrees north
    with pytest.raises(SourceError, match=r"outside \[-90, 90\]"):
        open_source(spec(path))


def test_nan_coordinates_are_refused(tmp_path):
    """A curvilinear source needs a position for every pixel (issue 3, bad input)."""
    lons, lats = rotated()
    lats = lats.copy()
    lats[0, 0] = np.nan
    path = write(tmp_path / "gap.nc", lons, lats)
    with pytest.raises(SourceError, match="1 NaN or infinite values"):
        open_source(spec(path))
