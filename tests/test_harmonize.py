"""esdc.harmonize on real samples and small arrays: decoding, time alignment, climatologies,
validity masks, CF attributes and first-valid combination."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from esdc.conventions import ATTR_RESAMPLING, ATTR_SOURCE
from esdc.errors import SourceError
from esdc.harmonize import (
    align_series,
    cf_attrs,
    combine_first_valid,
    decode,
    place_climatology,
    validity_mask,
)
from esdc.recipe import GridSpec, SourceSpec, VariableSpec
from esdc.sources import open_source
from esdc.testing import raise_if_dask_computes
from tests.conftest import need_sample


def var(**kw) -> VariableSpec:
    return VariableSpec(**{"name": "v", "source": "v", "resampling": "bilinear", "units": "1",
                           **kw})


def time_grid(start: str, end: str, freq: str):
    return GridSpec(body="earth", bbox=(0, 0, 1, 1), resolution=1.0,
                    time={"start": start, "end": end, "freq": freq}).to_grid()


@pytest.fixture(scope="module")
def ostia() -> xr.DataArray:
    """OSTIA monthly SST (real): float32 with the file's _FillValue 1e20 over land."""
    need_sample("ostia-monthly")
    spec = SourceSpec(name="ostia", sample="ostia-monthly", format="netcdf", time="series",
                      variables=[dict(name="sst", source="surface_temperature",
                                      resampling="bilinear", units="K")])
    return open_source(spec).data["surface_temperature"]


# ----------------------------------------------------------------------------- decode
def test_decode_honours_the_files_fill_value(ostia):
    raw = ostia.isel(time=slice(0, 3)).values
    with raise_if_dask_computes():
        out = decode(ostia, var(source="surface_temperature"))
    got = out.isel(time=slice(0, 3)).values
    assert out.dtype == np.float32
    land = raw == np.float32(1e20)
    assert land.any() and (~land).any()
    assert np.isnan(got[land]).all()
    np.testing.assert_array_equal(got[~land], raw[~land])
    assert 260 < np.nanmin(got) and np.nanmax(got) < 310


def test_decode_scale_offset_then_valid_range_in_physical_units():
    raw = xr.DataArray(np.array([0, 10, 20, 255], dtype="uint8"), dims="x").chunk()
    spec = var(fill_value=255, scale_factor=0.5, add_offset=1.0, valid_min=2.0, valid_max=8.0)
    with raise_if_dask_computes():
        out = decode(raw, spec)
    # physical values 1, 6, 11, fill: valid range [2, 8] applies after scaling (CF 8.1)
    np.testing.assert_array_equal(out.values, np.array([np.nan, 6.0, np.nan, np.nan],
                                                       dtype="float32"))


def test_decode_takes_cf_attributes_when_the_recipe_leaves_them_unset():
    raw = xr.DataArray(np.array([-32768, 0, 1000], dtype="int16"), dims="x",
                       attrs={"_FillValue": -32768, "scale_factor": 0.01,
                              "add_offset": 273.15})
    out = decode(raw, var())
    np.testing.assert_allclose(out.values, [np.nan, 273.15, 283.15], rtol=1e-6)
    # the recipe's own values win over the file's
    out = decode(raw, var(scale_factor=1.0, add_offset=0.0, fill_value=0))
    np.testing.assert_allclose(out.values, [-32768 * 0.01 + 273.15, np.nan, 283.15], rtol=1e-6)


def test_decode_select_values_is_an_indicator_and_bucket_mode_keeps_codes():
    raw = xr.DataArray(np.array([[1, 2], [3, 9]], dtype="uint8"), dims=("y", "x"))
    out = decode(raw, var(select_values=[2, 3], fill_value=9))
    np.testing.assert_array_equal(out.values, np.array([[0, 1], [1, np.nan]], "float32"))
    codes = decode(raw, var(resampling="bucket_mode", flag_values=[1, 2, 3],
                            flag_meanings=["a", "b", "c"], fill_value=9))
    assert codes.dtype == np.uint8
    np.testing.assert_array_equal(codes.values, raw.values)


# ----------------------------------------------------------------------------- time
def test_align_series_averages_the_steps_of_each_cell(ostia):
    grid = time_grid("2006-01-01", "2010-01-01", "YS")
    with raise_if_dask_computes():
        out = align_series(ostia, grid, "sources.ostia")
    assert out.dims == ("time", *ostia.dims[1:]) and out.sizes["time"] == 5
    assert [str(t)[:10] for t in out["time"].values] == [
        "2006-01-01", "2007-01-01", "2008-01-01", "2009-01-01", "2010-01-01"]
    src = decode(ostia, var(source="surface_temperature"))
    aligned = align_series(src, grid, "sources.ostia").values
    years = pd.DatetimeIndex(ostia["time"].values).year
    for k, year in enumerate(range(2006, 2011)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # land: NaN in every month
            want = np.nanmean(src.values[years == year], axis=0)
        np.testing.assert_allclose(aligned[k], want, rtol=1e-6)
    assert (years == 2006).sum() == 9 and (years == 2010).sum() == 9  # partial years too


def test_align_series_leaves_cells_without_a_step_empty(ostia):
    grid = time_grid("2006-01-01", "2006-06-01", "MS")
    out = align_series(ostia, grid, "sources.ostia").values
    assert out.shape[0] == 6
    assert np.isnan(out[:3]).all()  # January to March 2006: before the first step
    np.testing.assert_array_equal(out[3:], ostia.isel(time=slice(0, 3)).values)


def test_align_series_refuses_a_series_outside_the_axis(ostia):
    with pytest.raises(SourceError, match="no time step"):
        align_series(ostia, time_grid("1990-01-01", "1991-01-01", "MS"), "sources.ostia")
    with pytest.raises(SourceError, match="datetime `time` dim"):
        align_series(ostia.isel(time=0), time_grid("2006-01-01", "2007-01-01", "MS"), "x")


def test_place_climatology_takes_the_month_of_year():
    need_sample("pvlib-linke-turbidity")
    spec = SourceSpec(name="linke", sample="pvlib-linke-turbidity", format="hdf5",
                      time="climatology_monthly",
                      georeference=dict(bbox=[-180, -90, 180, 90], dims=["lat", "lon", "month"]),
                      variables=[dict(name="linke", source="LinkeTurbidity", scale_factor=0.05,
                                      resampling="bucket_average", units="1")])
    clim = open_source(spec).data["LinkeTurbidity"].isel(lat=slice(1000, 1010),
                                                         lon=slice(2000, 2010))
    assert clim.dims == ("month", "lat", "lon")
    grid = time_grid("2020-11-01", "2021-02-01", "MS")
    with raise_if_dask_computes():
        out = place_climatology(clim, grid)
    assert out.dims == ("time", "lat", "lon") and "month" not in out.coords
    assert [str(t)[:7] for t in out["time"].values] == ["2020-11", "2020-12", "2021-01",
                                                        "2021-02"]
    months = clim.values
    assert len({months[m].tobytes() for m in range(12)}) > 1  # the months differ
    for k, m in enumerate((10, 11, 0, 1)):
        np.testing.assert_array_equal(out.values[k], months[m])
    with pytest.raises(SourceError, match="`month` dim of 12"):
        place_climatology(clim.isel(month=slice(0, 6)), grid)


def test_place_climatology_in_region_tiles(monkeypatch):
    """With the regions' tile on the grid, a placed layer too large for whole bands of a
    row of regions comes in tiles, so each region computes the months of its own tile
    (not a band of whole rows times every step)."""
    import dataclasses

    import esdc.harmonize

    months = xr.DataArray(np.arange(12 * 6 * 8, dtype="float32").reshape(12, 6, 8),
                          dims=("month", "lat", "lon")).chunk({"month": -1, "lat": 6, "lon": 8})
    grid = GridSpec(body="earth", bbox=(0, 0, 8, 6), resolution=1.0,
                    time={"start": "2020-01-01", "end": "2021-06-01", "freq": "MS"}).to_grid()
    assert grid.shape == (6, 8)
    grid = dataclasses.replace(grid, tile=(3, 4))
    assert place_climatology(months, grid).chunks[1:] == ((6,), (8,))  # fits whole
    monkeypatch.setattr(esdc.harmonize, "PLACED_BLOCK", 18 * 3 * 4)  # one tile of 18 steps
    with raise_if_dask_computes():
        out = place_climatology(months, grid)
    assert out.chunks[1:] == ((3, 3), (4, 4))
    assert out.sizes["time"] == 18
    np.testing.assert_array_equal(out.values[13], months.values[1])  # 2021-02: February


# ----------------------------------------------------------------------------- attributes
def test_validity_mask_flags_where_a_value_is():
    data = xr.DataArray(np.array([[1.0, np.nan], [np.nan, 0.0]], "float32"), dims=("y", "x"),
                        name="aia")
    mask = validity_mask(data)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask.values, [[1, 0], [0, 1]])
    assert mask.attrs["flag_values"] == [0, 1] and mask.attrs["flag_meanings"] == "missing valid"
    assert mask.attrs["long_name"] == "aia holds a value" and mask.attrs["units"] == "1"


def test_cf_attrs_of_a_categorical_and_a_continuous_variable():
    cat = cf_attrs(var(name="koppen_class", resampling="bucket_mode", flag_values=[1, 2],
                       flag_meanings=["Af", "Am"], standard_name="area_type"), "koppen")
    assert cat == {"long_name": "koppen class", "units": "1", "standard_name": "area_type",
                   "flag_values": [1, 2], "flag_meanings": "Af Am",
                   "cell_methods": "area: mode", ATTR_SOURCE: "koppen",
                   ATTR_RESAMPLING: "bucket_mode"}
    cont = cf_attrs(var(resampling="bucket_average", long_name="V", comment="c"), "s")
    assert cont["cell_methods"] == "area: mean" and cont["comment"] == "c"
    assert "cell_methods" not in cf_attrs(var(), "s")


def test_combine_first_valid_keeps_earlier_sources_where_valid():
    first = xr.DataArray(np.array([1.0, np.nan, 3.0]), dims="x",
                         attrs={ATTR_SOURCE: "a", "units": "K"})
    later = xr.DataArray(np.array([9.0, 2.0, np.nan]), dims="x", attrs={ATTR_SOURCE: "b"})
    out = combine_first_valid(first, later, "b")
    np.testing.assert_array_equal(out.values, [1.0, 2.0, 3.0])
    assert out.attrs == {ATTR_SOURCE: "a then b (first valid value)", "units": "K"}
    third = combine_first_valid(out, xr.full_like(later, 7.0), "c")
    assert third.attrs[ATTR_SOURCE] == "a then b (first valid value) then c (first valid value)"
