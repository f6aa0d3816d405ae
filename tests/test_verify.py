"""esdc.verify: the conventions of a cube (verify_cube) and of its store (verify_store)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from esdc.errors import CubeNotFoundError, EsdcError
from esdc.storage import LocalTarget, resolve
from esdc.testing import new_cube
from esdc.verify import assert_cube, store_report, verify_cube, verify_store
from tests.storage.conftest import synthetic, write


def test_a_synthetic_cube_conforms() -> None:
    ds = new_cube()
    assert verify_cube(ds) == []
    assert assert_cube(ds) is ds


def test_every_problem_is_listed_at_once() -> None:
    ds = new_cube()
    ds["a"].attrs.pop("units")
    ds["b"] = ds["b"].transpose("lat", "time", "lon")
    ds["a"].attrs["grid_mapping"] = "nowhere"
    ds.attrs.pop("esdc_grid")
    ds.attrs["esdc_sources"] = "{not json"
    ds.attrs["Conventions"] = "none"
    problems = verify_cube(ds)
    assert "variable 'a' has no units attribute" in problems
    assert "variable 'a' names grid_mapping 'nowhere', which is missing" in problems
    assert any(p.startswith("variable 'b' has dims ('lat', 'time', 'lon')") for p in problems)
    assert "provenance attribute 'esdc_grid' is missing" in problems
    assert "attribute 'esdc_sources' is not a JSON list" in problems
    assert "global attribute Conventions must name CF (e.g. 'CF-1.10')" in problems
    with pytest.raises(EsdcError, match="not a valid esdc cube") as exc:
        assert_cube(ds)
    assert all(p in str(exc.value) for p in problems)


def test_axes_and_time() -> None:
    ds = new_cube()
    lat = ds["lat"].values.copy()
    lat[3] += 0.01
    ds = ds.assign_coords(lat=("lat", lat, ds["lat"].attrs),
                          time=ds["time"].values[::-1])
    problems = verify_cube(ds)
    assert "coordinate 'lat' is not evenly spaced" in problems
    assert "coordinate 'time' is not strictly increasing" in problems
    assert verify_cube(xr.Dataset({"v": ("n", np.zeros(3))})) == [
        "no spatial dims: expected (lat, lon) or (y, x), found ('n',)",
        "variable 'v' has no units attribute", "variable 'v' has no grid_mapping attribute",
        "global attribute Conventions must name CF (e.g. 'CF-1.10')",
        *[f"provenance attribute {k!r} is missing" for k in (
            "esdc_recipe", "esdc_recipe_sha256", "esdc_sources", "esdc_versions",
            "esdc_grid")]]


def test_an_embedding_variable_is_checked_as_one() -> None:
    ds = new_cube().assign(emb=(("tile_y_t8", "tile_x_t8", "feature_t8"), np.zeros((2, 3, 4)),
                                {"esdc_role": "embedding"}))
    problems = verify_cube(ds)
    assert "embedding 'emb': coordinate 'tile_y_t8' or tile_y_t8_bounds is missing" in problems
    assert "embedding 'emb' has no esdc_model_run attribute" in problems


def test_verify_store_takes_a_path_or_a_target(tmp_path: Path) -> None:
    cube = write(synthetic(), tmp_path / "cube.zarr")
    assert verify_store(cube) == [] and verify_store(str(cube)) == []
    assert verify_store(LocalTarget(cube), checksums=True) == []
    report = store_report(resolve(cube), checksums=True)
    assert report.problems == [] and report.checked is not None and report.checked > 16
    assert store_report(cube).checked is None  # checksums not asked for


def test_store_level_problems(tmp_path: Path) -> None:
    plain = tmp_path / "plain.zarr"
    new_cube().to_zarr(plain, zarr_format=3, consolidated=False)
    assert verify_store(plain) == [f"{plain} has no consolidated metadata"]
    problems = verify_store(plain, checksums=True)
    assert problems[1].startswith(f"{plain} has no chunk checksum record")
    v2 = tmp_path / "v2.zarr"
    new_cube().to_zarr(v2, zarr_format=2)
    assert verify_store(v2) == [f"{v2} is not a Zarr v3 store (no zarr.json)"]
    assert resolve(v2).exists()  # still a Zarr store that esdc opens
    assert verify_cube(resolve(v2).open(consolidated=False)) == []
    bad = write(synthetic(), tmp_path / "bad.zarr")
    meta = json.loads((Path(bad) / "sst" / "zarr.json").read_text())
    meta["shape"] = [10**12, 10**12, 10**12]
    (Path(bad) / "sst" / "zarr.json").write_text(json.dumps(meta))
    root = json.loads((Path(bad) / "zarr.json").read_text())
    root["consolidated_metadata"]["metadata"]["sst"]["shape"] = meta["shape"]
    (Path(bad) / "zarr.json").write_text(json.dumps(root))
    assert any("cannot be opened by xarray" in p for p in verify_store(bad))


def test_a_missing_cube_is_an_error_not_a_problem(tmp_path: Path) -> None:
    assert verify_store(tmp_path / "none.zarr") == [
        f"{tmp_path / 'none.zarr'} is not a Zarr v3 store (no zarr.json)"]
    with pytest.raises(CubeNotFoundError, match="no cube at"):
        resolve(tmp_path / "none.zarr").require()
