import numpy as np
import pytest
import xarray as xr

from esdc.derive import FUNCTIONS, accumulate
from esdc.errors import RecipeError
from esdc.grid import Grid
from esdc.recipe import Recipe, load_recipe
from tests.conftest import ROOT


def test_accumulate_running_sum_keeps_never_seen_nan():
    x = xr.DataArray(np.array([[[1.0, np.nan]], [[np.nan, np.nan]], [[2.0, 3.0]]]),
                     dims=("time", "lat", "lon"))
    grid = Grid.from_bbox("earth", "EPSG:4326", (0, 0, 2, 1), 1.0)
    out = accumulate([x], grid).values
    np.testing.assert_array_equal(out[:, 0, 0], [1.0, 1.0, 3.0])
    assert np.isnan(out[0, 0, 1]) and np.isnan(out[1, 0, 1]) and out[2, 0, 1] == 3.0
    assert "accumulate" in FUNCTIONS


def test_recipe_checks_derived_and_combine():
    d = load_recipe(ROOT / "recipes" / "earth.yaml").to_dict()
    d["derived"] = [dict(name="sst_acc", function="nope", inputs=["sst"], units="K")]
    with pytest.raises(RecipeError, match=r"derived\[0\].function"):
        Recipe.from_dict(d)
    d["derived"] = [dict(name="sst_acc", function="accumulate", inputs=["sstt"], units="K")]
    with pytest.raises(RecipeError, match=r"derived\[0\].inputs"):
        Recipe.from_dict(d)
    d["derived"] = []
    d["sources"][1]["variables"][0]["name"] = "linke_turbidity"
    with pytest.raises(RecipeError, match="combine: first_valid"):
        Recipe.from_dict(d)
