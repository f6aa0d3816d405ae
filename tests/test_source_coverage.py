"""A source's coverage of the grid is told at plan time, with its own extent and the grid's.

Issue 18: a source that misses the grid's bbox was found only after computing ("no valid
value anywhere in the grid", the cluster started), without the source's extent; one that
covers part of the grid said nothing. Now :func:`esdc.build.plan` refuses a source whose
layers would be NaN everywhere before anything is computed, and notes (``report``) a
source that covers only part of the grid; both name the source's own extent
``[west, south, east, north]`` with its CRS, and the grid's. Real OSTIA sample (its
equatorial band, 5.28 S .. 4.72 N) and pvlib's global altitude grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from esdc.build import plan
from esdc.cli import app
from esdc.errors import RegridError
from esdc.recipe import Recipe
from tests.conftest import earth_source, need_sample
from tests.test_bad_input import ostia_recipe

OSTIA_EXTENT = "[west, south, east, north] = [-180.417, -5.27777, 179.583, 4.72223] in " \
               "geographic degrees"


def _ostia(bbox: list[float], *extra: dict[str, Any]) -> dict[str, Any]:
    need_sample("ostia-monthly")
    recipe = ostia_recipe()
    recipe["grid"]["bbox"] = bbox
    recipe["sources"].extend(extra)
    return recipe


def test_a_source_missing_the_grid_is_refused_at_plan_time() -> None:
    need_sample("pvlib-altitude")
    recipe = Recipe.from_dict(_ostia([0, 40, 10, 50], earth_source("altitude")))
    notes: list[str] = []
    with pytest.raises(RegridError) as err:
        plan(recipe, report=notes.append)
    msg = str(err.value)
    assert msg.startswith("sources.ostia: ")
    assert "ostia_monthly.nc covers " + OSTIA_EXTENT in msg
    assert "outside grid.bbox [0, 40, 10, 50] (EPSG:4326)" in msg
    assert "sst would be NaN everywhere" in msg and "altitude" not in msg
    assert notes == []


def test_a_source_covering_part_of_the_grid_is_noted_with_both_extents() -> None:
    notes: list[str] = []
    ds = plan(Recipe.from_dict(_ostia([-10, -10, 10, 10])), report=notes.append)
    assert list(ds.data_vars) == ["sst"]
    assert notes == [
        "sources.ostia: " + str(need_sample("ostia-monthly")) + " covers " + OSTIA_EXTENT
        + ", 50% of grid.bbox [-10, -10, 10, 10] (EPSG:4326); sst stays NaN outside "
        "[-10, -5.27777, 10, 4.72223]."]


def test_a_source_covering_the_whole_grid_says_nothing() -> None:
    notes: list[str] = []
    plan(Recipe.from_dict(_ostia([-10, -4, 10, 4])), report=notes.append)
    assert notes == []


@pytest.mark.slow
def test_the_cli_prints_the_note_before_computing(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_ostia([-10, -10, 10, 10])), encoding="utf-8")
    res = CliRunner().invoke(app, ["build", str(path), "--out", str(tmp_path / "c.zarr"),
                                   "--no-fetch"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    note = out.index("sources.ostia: ")
    assert "50% of grid.bbox [-10, -10, 10, 10] (EPSG:4326)" in out[note:]
    assert note < out.index("Dask dashboard: ") < out.index("built ")
