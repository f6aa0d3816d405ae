from pathlib import Path

import numpy as np
import pytest

from esdc.errors import RecipeError
from esdc.recipe import Recipe, load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_round_trip(path):
    r = load_recipe(path)
    d = r.to_dict()
    assert Recipe.from_dict(d) == r
    assert parse_recipe(r.to_yaml()) == r
    assert r.sha256() == Recipe.from_dict(d).sha256()


def test_earth_grid():
    g = load_recipe(ROOT / "recipes" / "earth.yaml").grid.to_grid()
    assert g.shape == (720, 1440)
    assert len(g.time) == 54
    assert g.time[0] == np.datetime64("2006-04-01")
    assert g.time_bounds[-1][1] == np.datetime64("2010-10-01")


def _earth() -> dict:
    return load_recipe(ROOT / "recipes" / "earth.yaml").to_dict()


@pytest.mark.parametrize("edit, path", [
    (lambda d: d["grid"].update(resolutoin=1), "grid.resolutoin"),
    (lambda d: d["grid"].update(resolution="fine"), "grid.resolution"),
    (lambda d: d["grid"].update(resolution=-1), "grid.resolution"),
    (lambda d: d["grid"].update(bbox=[10, 0, 0, 10]), "grid.bbox"),
    (lambda d: d["grid"].update(crs="EPSG:999999"), "grid.crs"),
    (lambda d: d["sources"][0]["variables"][0].update(resampling="cubic"),
     "sources[0].variables[0].resampling"),
    (lambda d: d["sources"][1].update(sample=None, path=None), "sources[1]"),
    (lambda d: d["sources"][4]["variables"][0].pop("flag_values"), "sources[4].variables[0]"),
    (lambda d: d["output"]["compressor"].update(clevel=12), "output.compressor.clevel"),
    (lambda d: d["output"]["chunks"].update(depth=3), "output.chunks"),
    (lambda d: d.update(sources=[]), "sources"),
])
def test_rejected_with_field_path(edit, path):
    d = _earth()
    edit(d)
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(d)
    assert path in str(info.value)


def test_malformed_yaml_names_line():
    with pytest.raises(RecipeError, match=r"r\.yaml: malformed YAML at line \d+, column \d+"):
        parse_recipe("name: x\ngrid: {a: 1\n  b: [1\nsources: 3\n", "r.yaml")


def test_yaml_is_data_not_code():
    with pytest.raises(RecipeError, match="malformed YAML"):
        parse_recipe("name: !!python/object/apply:os.system ['true']\n", "evil.yaml")
