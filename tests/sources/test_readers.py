"""One contract every reader passes (after zarr-python's abstract store test suite)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from esdc.recipe import SourceSpec
from tests.conftest import need_sample
from tests.sources.conftest import ReaderContract

GLOBAL = [-180, -90, 180, 90]


class TestNetCDF(ReaderContract):
    """OSTIA SST (real): longitudes 0..360 are rolled to -180..180."""

    shape = (18, 432)
    value_range = (270.0, 310.0)

    def spec(self, tmp_path):
        need_sample("ostia-monthly")
        return SourceSpec(name="ostia", sample="ostia-monthly", format="netcdf", time="series",
                          variables=[dict(name="sst", source="surface_temperature",
                                          resampling="bilinear", units="K")])

    def test_time_decoded(self, opened):
        _, geo = opened
        assert np.issubdtype(geo.data["time"].dtype, np.datetime64)
        assert geo.data.sizes["time"] == 54


class TestNetCDFSouthUp(ReaderContract):
    """A generated NetCDF with latitudes increasing (south first) is flipped north-up."""

    shape = (10, 20)
    value_range = (0.0, 200.0)

    def spec(self, tmp_path):
        lat = np.arange(-4.5, 5.0, 1.0)
        lon = np.arange(0.5, 20.0, 1.0)
        data = np.arange(200, dtype="float32").reshape(10, 20)
        xr.Dataset({"v": (("lat", "lon"), data)},
                   coords={"lat": lat, "lon": lon}).to_netcdf(tmp_path / "s.nc")
        return SourceSpec(name="s", path=str(tmp_path / "s.nc"), format="netcdf",
                          variables=[dict(name="v", source="v", resampling="nearest",
                                          units="1")])

    def test_flipped(self, opened):
        _, geo = opened
        assert geo.data["lat"].values[0] == 4.5
        assert float(geo.data["v"][0, 0]) == 180.0  # last stored row is the northernmost


class TestHDF5(ReaderContract):
    """pvlib altitude (real HDF5, no georeference in the file)."""

    shape = (2160, 4320)
    value_range = (0, 255)

    def spec(self, tmp_path):
        need_sample("pvlib-altitude")
        return SourceSpec(name="alt", sample="pvlib-altitude", format="hdf5",
                          georeference=dict(bbox=GLOBAL, dims=["lat", "lon"]),
                          variables=[dict(name="altitude", source="Altitude",
                                          resampling="bucket_average", units="m")])


class TestGeoTIFF(ReaderContract):
    """Köppen-Geiger (real GeoTIFF, EPSG:4326 from the file)."""

    shape = (21600, 43200)
    value_range = (0, 5)

    def spec(self, tmp_path):
        need_sample("koppen-geiger")
        return SourceSpec(name="kg", sample="koppen-geiger", format="geotiff",
                          variables=[dict(name="k", source="band_1", resampling="bucket_mode",
                                          units="1", flag_values=[0, 1],
                                          flag_meanings=["a", "b"])])

    def test_crs_from_file(self, opened):
        assert opened[1].crs.to_epsg() == 4326


class TestImage(ReaderContract):
    """Blue Marble NG JPEG (real) with a declared georeference."""

    shape = (2700, 5400)
    value_range = (0, 255)

    def spec(self, tmp_path):
        need_sample("bmng")
        return SourceSpec(name="bm", sample="bmng", format="image", bands=["r", "g", "b"],
                          georeference=dict(bbox=GLOBAL),
                          variables=[dict(name="red", source="r", resampling="bucket_average",
                                          units="1")])


class TestRaw(ReaderContract):
    """basemap land/sea mask (real gzip raw), stored south-first."""

    shape = (2160, 4320)
    value_range = (0, 2)

    def spec(self, tmp_path):
        need_sample("basemap-lsmask-5min")
        return SourceSpec(name="ls", sample="basemap-lsmask-5min", format="raw", dtype="uint8",
                          shape=[2160, 4320], compression="gzip",
                          georeference=dict(bbox=GLOBAL, row_order="south_up"),
                          variables=[dict(name="m", source="mask", resampling="bucket_mode",
                                          units="1", flag_values=[0, 1, 2],
                                          flag_meanings=["o", "l", "k"])])

    def test_antarctica_is_south(self, opened):
        _, geo = opened
        assert float(geo.data["mask"].isel(lat=slice(-20, None)).mean()) == 1.0  # all land
