"""Static climatologies (esdc.climatology, derived function `climatology`) on real cube data."""

from __future__ import annotations

import numpy as np
import pytest

from esdc.build import build
from esdc.climatology import CELL_METHODS, climatology_statistic, monthly_climatology
from esdc.errors import RecipeError
from esdc.recipe import Recipe
from esdc.storage import open_cube
from tests.conftest import earth_source

STATS = [("lt_mean", "mean", None), ("lt_amplitude", "amplitude", None),
         ("lt_m01", "month", 1), ("lt_m07", "month", 7),
         ("lt_h1c", "harmonic_cos", None), ("lt_h1s", "harmonic_sin", None),
         ("sst_mean", "mean", None)]


@pytest.fixture(scope="module")
def clim_cube(tmp_path_factory, samples):
    """A real 1 degree cube of the Linke turbidity climatology and OSTIA SST (two years
    of months, a band across the equator where OSTIA has data) with climatology layers."""
    derived = [dict(name=name, function="climatology",
                    inputs=["sst" if name.startswith("sst") else "linke_turbidity"],
                    units="K" if name.startswith("sst") else "1",
                    params={"statistic": stat, **({"month": m} if m else {})})
               for name, stat, m in STATS]
    recipe = Recipe.from_dict({
        "name": "clim", "title": "climatology test",
        "grid": {"body": "earth", "crs": "EPSG:4326", "bbox": [-40, -4, 40, 4],
                 "resolution": 1.0,
                 "time": {"start": "2006-04-01", "end": "2008-03-01", "freq": "MS"}},
        "sources": [earth_source("linke_turbidity"), earth_source("ostia")],
        "derived": derived,
    })
    return build(recipe, tmp_path_factory.mktemp("clim") / "clim.zarr", fetch=False)


def test_climatology_layers_equal_groupby_month_mean(clim_cube):
    ds = open_cube(clim_cube).load()
    lt = ds["linke_turbidity"].groupby("time.month").mean()
    sst = ds["sst"].groupby("time.month").mean()
    assert lt.sizes["month"] == sst.sizes["month"] == 12
    assert np.isfinite(sst.values).mean() > 0.5  # real OSTIA values in the band
    # the Linke turbidity varies by month (a real seasonal cycle to summarise)
    assert float((lt.max("month") - lt.min("month")).mean()) > 0.1
    np.testing.assert_allclose(ds["lt_m01"], lt.sel(month=1), rtol=1e-6)
    np.testing.assert_allclose(ds["lt_m07"], lt.sel(month=7), rtol=1e-6)
    np.testing.assert_allclose(ds["lt_mean"], lt.mean("month"), rtol=1e-6)
    np.testing.assert_allclose(ds["sst_mean"], sst.mean("month", skipna=False), rtol=1e-6)
    np.testing.assert_allclose(ds["lt_amplitude"], lt.max("month") - lt.min("month"),
                               rtol=1e-5, atol=1e-6)
    angle = 2 * np.pi * (np.arange(1, 13) - 0.5) / 12
    h1c = np.tensordot(np.cos(angle), lt.values, axes=(0, 0)) / 6
    h1s = np.tensordot(np.sin(angle), lt.values, axes=(0, 0)) / 6
    np.testing.assert_allclose(ds["lt_h1c"], h1c, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ds["lt_h1s"], h1s, rtol=1e-4, atol=1e-6)
    for name, *_ in STATS:
        assert ds[name].dims == ("lat", "lon")
        # once, also for the Linke turbidity that is a climatology on the time axis already
        assert ds[name].attrs["cell_methods"].count(CELL_METHODS) == 1
        assert ds[name].attrs["esdc_derived"].startswith("climatology(")
    assert ds["lt_amplitude"].attrs["cell_methods"].endswith("time: range")


def test_climatology_over_years_of_a_real_series(clim_cube):
    """OSTIA differs between years: each month's climatology is the mean of its years."""
    sst = open_cube(clim_cube)["sst"].load()
    clim = monthly_climatology(sst)
    assert clim.attrs["cell_methods"].endswith(CELL_METHODS)
    for month in (1, 4, 9):
        years = sst.sel(time=sst["time.month"] == month)
        assert years.sizes["time"] == 2
        assert float(np.abs(years[0] - years[1]).max()) > 0  # the years differ
        np.testing.assert_allclose(clim.sel(month=month), years.mean("time"), rtol=1e-6)


def test_climatology_bad_input(clim_cube):
    ds = open_cube(clim_cube)
    with pytest.raises(RecipeError, match="unknown"):
        climatology_statistic(ds["sst"], "median")
    with pytest.raises(RecipeError, match="month=1..12"):
        climatology_statistic(ds["sst"], "month")
    with pytest.raises(RecipeError, match="month=1..12"):
        climatology_statistic(ds["sst"], "mean", month=3)
    with pytest.raises(RecipeError, match="not a month"):
        climatology_statistic(ds["sst"], "month", month=13)
    with pytest.raises(RecipeError, match="`time` dim"):
        climatology_statistic(ds["lt_mean"], "mean")
    with pytest.raises(RecipeError, match=r"no step in month\(s\) \[1, 2"):
        climatology_statistic(ds["sst"].isel(time=slice(0, 6)), "mean")
    # one month present is enough for that month
    assert climatology_statistic(ds["sst"].isel(time=slice(0, 6)), "month", 4).dims == \
        ("lat", "lon")
