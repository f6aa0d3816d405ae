"""Data cards, model cards and the STAC catalog of cubes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from esdc.cli import app

pystac = pytest.importorskip("pystac")

RECIPE_SHA = "5" * 64


def _synthetic(path: Path, body: str = "earth", bbox=(-10.0, 30.0, 20.0, 50.0),
               times: int = 0, target: bool = False) -> Path:
    """A small cube on ``body``; with ``target``, a class variable learnable from ``a``."""
    from esdc.grid import Grid
    from esdc.testing import new_cube

    ds = new_cube(shape=(40, 60), times=times, variables=("a", "b"), bbox=bbox, seed=1)
    if body != "earth":
        res = ((bbox[2] - bbox[0]) / 60, (bbox[3] - bbox[1]) / 40)
        g = Grid.from_bbox(body, "IAU_2015:30100", bbox, res, None)
        ds.attrs["esdc_grid"] = json.dumps(g.to_dict())
    if target:
        a = ds["a"].values
        cls = (a > 0).astype("uint8") + (a > 1).astype("uint8")
        ds["cls"] = (ds["a"].dims, cls, {"units": "1", "long_name": "class of a",
                                          "flag_values": [0, 1, 2],
                                          "flag_meanings": "low mid high",
                                          "grid_mapping": "crs"})
    ds.attrs.update(title=f"synthetic {body} cube", summary="a test cube",
                    esdc_recipe_sha256=RECIPE_SHA, date_created="2026-01-02T03:04:05+00:00",
                    esdc_body=body)
    ds.to_zarr(path, zarr_format=3, consolidated=True)
    return path


# ------------------------------------------------------------------------- data cards
@pytest.mark.slow
def test_data_card_of_the_earth_cube(earth_cube, tmp_path):
    from esdc.cards import data_card
    from esdc.storage import open_cube

    ds = open_cube(earth_cube)
    card = data_card(earth_cube)
    assert card.startswith(f"# Data card: {ds.attrs['title']}")
    assert ds.attrs["esdc_recipe_sha256"] in card
    assert len(ds.esdc.sources) == 6
    for s in ds.esdc.sources:
        assert s["product"] in card and s["licence"] in card and s["citation"] in card
        assert s["mission"] in card and s["instrument"] in card and s["sha256"] in card
    for name in ds.data_vars:
        assert f"`{name}`" in card
    assert "0 = ocean, 1 = A_tropical" in card  # class meanings of koppen_class
    assert "| shape | lat = 720, lon = 1440 |" in card
    assert "54 steps, 2006-04-01 .. 2010-09-01" in card
    assert ds.attrs["date_created"] in card and "xarray" in card  # build time, versions
    assert "## How to cite" in card and "```yaml" in card

    out = tmp_path / "cards" / "earth.md"
    r = CliRunner().invoke(app, ["card", str(earth_cube), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_text(encoding="utf-8") == card


def test_data_card_of_a_synthetic_cube(tmp_path):
    from esdc.cards import data_card

    cube = _synthetic(tmp_path / "c.zarr", target=True)
    card = data_card(cube)
    assert "no sources" in card and RECIPE_SHA in card
    assert "0 = low, 1 = mid, 2 = high" in card
    r = CliRunner().invoke(app, ["card", str(cube)])
    assert r.exit_code == 0 and "# Data card: synthetic earth cube" in r.output


# ------------------------------------------------------------------------ model cards
@pytest.fixture
def tracking(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    return f"sqlite:///{tmp_path / 'mlruns.db'}"


def test_model_card_of_a_real_training_run(tmp_path, tracking):
    pytest.importorskip("mlflow")
    pytest.importorskip("skops")
    from esdc.cards import model_card
    from esdc.ml.train import train

    cube = _synthetic(tmp_path / "c.zarr", target=True)
    cfg = {"name": "card_rf", "framework": "sklearn", "task": "classification",
           "inputs": ["a", "b"], "target": "cls", "patch": [8, 8],
           "split": {"block": [16, 16], "fractions": [0.5, 0.2, 0.3], "seed": 1},
           "max_train_pixels": 2000,
           "model": {"kind": "random_forest", "n_estimators": 10, "max_depth": 6}}
    res = train(str(cube), cfg, tracking)
    assert res.beats_baseline

    card = model_card(res.run_id, tracking)
    assert card.startswith("# Model card: card_rf (sklearn random_forest, classification)")
    assert res.run_id in card and str(cube) in card and RECIPE_SHA in card
    row = next(line for line in card.splitlines() if line.startswith("| accuracy"))
    assert f"{res.test:.4f}" in row and f"{res.baseline:.4f}" in row
    assert f"{res.test - res.baseline:+.4f}" in row and row.endswith("| yes |")
    assert "majority class" in card
    for section in ("## MLTRL", "## Model details", "## Data", "## Parameters",
                    "## Intended use", "## Caveats"):
        assert section in card
    # A synthetic cube (no upstream sources) is not a proof of concept: level 3.
    assert "**Level 3: system development (research prototype).**" in card
    assert "synthetic data" in card and "Spatial block split" in card
    assert "Trained from scratch" in card and "No external validation" in card
    assert "| max_train_pixels | 2000 |" in card and "fractions [0.5, 0.2, 0.3]" in card

    out = tmp_path / "model.md"
    r = CliRunner().invoke(app, ["card", res.run_id, "--tracking-uri", tracking,
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_text(encoding="utf-8") == card


def test_mltrl_level_is_stated_honestly():
    from esdc.cards import mltrl_level

    assert mltrl_level(True, True)[0] == 4
    assert mltrl_level(True, False)[0] == 3
    assert mltrl_level(False, True)[0] == 3
    assert mltrl_level(True, None)[0] == 3
    assert mltrl_level(True, True, "embedding")[0] == 3  # a loss is a proxy


def test_card_of_an_unknown_run_or_path_is_a_user_error(tmp_path, tracking):
    r = CliRunner().invoke(app, ["card", "no-such-run", "--tracking-uri",
                                 f"sqlite:///{tmp_path / 'none.db'}"])
    assert r.exit_code == 2 and "no cube at that path" in r.output
    assert "no MLflow tracking store" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "none.db").exists()  # not created by looking


# --------------------------------------------------------------------------- catalog
def _check_catalog(path: Path) -> dict[str, pystac.Item]:
    """Read back from disk, validate (core schemas offline), return the items by id."""
    from esdc.catalog import ZARR_MEDIA_TYPE, validate_catalog

    cat = pystac.read_file(str(path))
    assert isinstance(cat, pystac.Catalog)
    report = validate_catalog(cat)
    items = {i.id: i for i in cat.get_items(recursive=True)}
    assert report["objects"] == 1 + len(list(cat.get_children())) + len(items)
    assert set(report["skipped"]) <= {  # extension schemas: not fetched offline
        "https://stac-extensions.github.io/datacube/v2.2.0/schema.json",
        "https://stac-extensions.github.io/scientific/v1.0.0/schema.json"}
    for item in items.values():
        zarr = item.assets["zarr"]
        assert zarr.media_type == ZARR_MEDIA_TYPE and zarr.roles == ["data"]
        assert not Path(zarr.href).is_absolute()  # self-contained: relative hrefs
        assert (Path(zarr.get_absolute_href()) / "zarr.json").exists()
        assert Path(item.assets["datacard"].get_absolute_href()).read_text().startswith(
            "# Data card")
        assert item.properties["esdc:recipe_sha256"]
        assert "cube:dimensions" in item.properties and "cube:variables" in item.properties
        assert any("datacube" in e for e in item.stac_extensions)
        for pub in item.properties.get("sci:publications", []):  # no "doi": null
            assert None not in pub.values() and (pub.get("doi") or pub.get("citation"))
    return items


@pytest.mark.slow
def test_stac_catalog_of_the_earth_cube(earth_cube, tmp_path):
    from esdc.storage import open_cube

    ds = open_cube(earth_cube)
    out = tmp_path / "catalog" / "catalog.json"
    r = CliRunner().invoke(app, ["catalog", str(earth_cube), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "1 item(s) (earth)" in r.output
    item = _check_catalog(out)["earth"]
    assert item.bbox == [-180.0, -90.0, 180.0, 90.0]
    assert item.geometry["type"] == "Polygon"
    assert item.properties["esdc:body"] == "earth"
    assert item.properties["esdc:recipe_sha256"] == ds.attrs["esdc_recipe_sha256"]
    assert item.datetime is None
    assert item.common_metadata.start_datetime.isoformat() == "2006-04-01T00:00:00+00:00"
    assert item.common_metadata.end_datetime.isoformat() == "2010-10-01T00:00:00+00:00"
    products = {s["product"] for s in item.properties["esdc:sources"]}
    assert products == {s["product"] for s in ds.esdc.sources}
    dims = item.properties["cube:dimensions"]
    assert dims["lon"]["extent"] == [-179.875, 179.875] and dims["lon"]["step"] == 0.25
    assert dims["lat"]["reference_system"] == 4326
    assert dims["time"]["step"] == "P1M"
    assert dims["time"]["extent"] == ["2006-04-01T00:00:00Z", "2010-09-01T00:00:00Z"]
    vars_ = item.properties["cube:variables"]
    assert set(vars_) == set(map(str, ds.data_vars))
    assert vars_["sst"] == {"dimensions": ["time", "lat", "lon"], "type": "data",
                            "unit": "K", "description": ds.sst.attrs["long_name"]}
    coll = pystac.read_file(str(out.parent / "esdc-earth" / "collection.json"))
    assert coll.extent.spatial.bboxes == [[-180.0, -90.0, 180.0, 90.0]]


def test_stac_catalog_update_regional_and_moon(tmp_path):
    from esdc.catalog import update_catalog

    cubes = tmp_path / "cubes"
    cubes.mkdir()
    region = _synthetic(cubes / "region.zarr", times=3)
    _synthetic(cubes / "moon.zarr", body="moon", bbox=(-180.0, -90.0, 180.0, 90.0))
    out = cubes / "catalog.json"
    update_catalog([region], out)
    assert set(_check_catalog(out)) == {"region"}
    # the CLI without cubes catalogs every *.zarr beside the catalog; the update keeps items
    r = CliRunner().invoke(app, ["catalog", "--out", str(out)])
    assert r.exit_code == 0, r.output
    items = _check_catalog(out)
    assert set(items) == {"region", "moon"}
    reg = items["region"]
    assert reg.bbox == pytest.approx([-10.0, 30.0, 20.0, 50.0])
    assert reg.properties["cube:dimensions"]["time"]["step"] == "P1M"
    m = items["moon"]
    assert m.geometry is None and m.bbox is None
    assert m.properties["esdc:body"] == "moon" and m.properties["esdc:static"] is True
    assert m.datetime.isoformat() == "2026-01-02T03:04:05+00:00"
    assert "Moon (2015)" in m.properties["cube:dimensions"]["lon"]["reference_system"]
    cat = pystac.read_file(str(out))
    assert {c.id for c in cat.get_children()} == {"esdc-earth", "esdc-moon"}
    assert cat.get_child("esdc-earth").extent.spatial.bboxes == [
        pytest.approx([-10.0, 30.0, 20.0, 50.0])]
    # the catalog moves with the cubes: all hrefs are relative
    moved = tmp_path / "moved"
    (cubes).rename(moved)
    assert set(_check_catalog(moved / "catalog.json")) == {"region", "moon"}


def test_catalog_user_errors(tmp_path):
    r = CliRunner().invoke(app, ["catalog", "--out", str(tmp_path / "catalog.json")])
    assert r.exit_code == 2 and "no *.zarr" in r.output
    r = CliRunner().invoke(app, ["catalog", str(tmp_path / "missing.zarr"), "--out",
                                 str(tmp_path / "catalog.json")])
    assert r.exit_code == 2 and "no cube at" in r.output
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    cube = _synthetic(tmp_path / "c.zarr")
    r = CliRunner().invoke(app, ["catalog", str(cube), "--out", str(bad)])
    assert r.exit_code == 2 and "not a readable STAC catalog" in r.output
