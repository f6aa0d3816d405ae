"""Declared provenance of one's own files (``provenance:`` of ``path:``/``files:`` sources).

The recipe of tests/own_data.py gives the GSHHG land mask by ``path:`` with a provenance
block and pvlib's altitude grid by ``path:`` without one; the cube must carry the block in
``esdc_sources`` and ``esdc info``, the data card and the STAC catalog must show it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from esdc.cli import app
from esdc.errors import RecipeError
from esdc.recipe import Recipe, parse_recipe
from tests.own_data import GSHHG_PROVENANCE, own_data_cube, own_data_recipe

DOI = "10.1029/96JB00104"


@pytest.fixture(scope="module")
def cube(tmp_path_factory) -> Path:
    return own_data_cube(tmp_path_factory)


def _source(ds, name):
    return next(s for s in ds.esdc.sources if s["source"] == name)


def test_the_cube_records_the_declared_provenance(cube):
    from esdc.storage import open_cube

    ds = open_cube(cube)
    rec = _source(ds, "my_land_mask")
    assert rec["product"] == GSHHG_PROVENANCE["product"]
    assert rec["licence"] == "LGPL-3.0-or-later"  # given as `license`, kept as `licence`
    assert rec["doi"] == DOI  # the https://doi.org/ prefix removed
    assert rec["url"] == GSHHG_PROVENANCE["url"]
    assert rec["citation"].startswith("Wessel, P. and Smith")
    assert len(rec["sha256"]) == 64 and rec["file"].endswith("lsmask_5min_h.bin")
    bare = _source(ds, "my_altitude")
    assert not any(k in bare for k in ("product", "licence", "doi", "citation"))
    assert _source(ds, "stageiv")["product"].startswith("NCEP/EMC Stage IV")  # the registry's


def test_info_shows_provenance_and_says_when_there_is_none(cube):
    runner = CliRunner()
    res = runner.invoke(app, ["info", str(cube)])
    assert res.exit_code == 0, res.output
    text = res.output
    assert f"my_land_mask: {GSHHG_PROVENANCE['product']} (compilation, World Vector " \
           "Shoreline, CIA World Data Bank II); licence LGPL-3.0-or-later" in text
    assert f"doi: {DOI}" in text and f"url: {GSHHG_PROVENANCE['url']}" in text
    assert "cite: Wessel, P. and Smith" in text
    assert "my_altitude: " in text and "no provenance declared" in text
    assert "None" not in text  # never "None (None, None); licence None"
    res = runner.invoke(app, ["info", str(cube), "--json"])
    sources = {s["source"]: s for s in json.loads(res.output)["sources"]}
    assert sources["my_land_mask"]["doi"] == DOI
    assert sources["my_land_mask"]["instrument"].startswith("World Vector Shoreline")
    assert sources["my_altitude"]["product"] is None and sources["my_altitude"]["file"]


def test_data_card_and_stac_catalog_show_provenance(cube, tmp_path):
    pystac = pytest.importorskip("pystac")
    from esdc.cards import data_card
    from esdc.catalog import cube_item

    card = data_card(cube)
    assert f"| my_land_mask | {GSHHG_PROVENANCE['product']} | compilation |" in card
    assert "LGPL-3.0-or-later" in card
    assert (f"- {GSHHG_PROVENANCE['product']}: Wessel, P. and Smith, W. H. F. (1996)" in card
            and f"DOI [{DOI}](https://doi.org/{DOI})" in card
            and f"<{GSHHG_PROVENANCE['url']}>" in card)
    item = cube_item(cube)
    sources = {s["source"]: s for s in item.properties["esdc:sources"]}
    assert sources["my_land_mask"]["doi"] == DOI
    assert sources["my_land_mask"]["citation"] == GSHHG_PROVENANCE["citation"]
    assert sources["my_land_mask"]["licence"] == "LGPL-3.0-or-later"
    assert sources["my_altitude"]["product"] is None
    pubs = item.properties["sci:publications"]
    assert {"doi": DOI, "citation": GSHHG_PROVENANCE["citation"]} in pubs
    assert any("scientific" in e for e in item.stac_extensions)
    assert pystac.Item.from_dict(item.to_dict()).properties["sci:publications"] == pubs


def _recipe_with(provenance: dict, where: str = "my_land_mask") -> dict:
    d = copy.deepcopy(own_data_recipe())
    src = next(s for s in d["sources"] if s["name"] == where)
    src["provenance"] = provenance
    return d


@pytest.mark.parametrize(("provenance", "match"), [
    ({"doi": "96JB00104"}, "not a DOI"),
    ({"url": "www.soest.hawaii.edu"}, "not a URL"),
    ({"licence": "A", "license": "B"}, "both 'license' and 'licence'"),
    ({"produkt": "x"}, r"provenance.produkt: unknown key \(did you mean 'product'\?\)"),
])
def test_bad_provenance_is_refused_with_the_field(provenance, match):
    import yaml

    with pytest.raises(RecipeError, match=match):
        parse_recipe(yaml.safe_dump(_recipe_with(provenance)))


def test_a_sample_keeps_the_registry_provenance():
    d = _recipe_with({"product": "mine"}, where="stageiv")
    with pytest.raises(ValueError, match="sample registry"):
        Recipe.from_dict(d)


def test_provenance_round_trips_and_changes_the_recipe_hash():
    r = Recipe.from_dict(own_data_recipe())
    assert Recipe.from_dict(r.to_dict()) == r
    other = Recipe.from_dict(_recipe_with({**GSHHG_PROVENANCE, "doi": "10.1000/other"}))
    assert other.sha256() != r.sha256()
