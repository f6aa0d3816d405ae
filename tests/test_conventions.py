"""The leaves: esdc.conventions (names, licence spellings) and esdc.hashing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from esdc.conventions import (
    ATTR_GRID,
    PROVENANCE_ATTRS,
    SPATIAL_DIMS,
    fold_license,
    json_attr,
    license_of,
    spatial_dims,
)
from esdc.errors import RecipeError
from esdc.hashing import file_sha256
from esdc.recipe import parse_recipe
from esdc.samples import SAMPLES
from esdc.testing import new_cube

ROOT = Path(__file__).resolve().parents[1]


def test_spatial_dims_prefers_lat_lon() -> None:
    assert spatial_dims(("time", "lat", "lon")) == ("lat", "lon")
    assert spatial_dims(("y", "x", "lat", "lon")) == ("lat", "lon")
    assert spatial_dims(("time", "y", "x")) == ("y", "x")
    assert spatial_dims(("time", "lat")) is None
    assert SPATIAL_DIMS[0] == ("lat", "lon")


def test_a_new_cube_carries_every_provenance_attribute() -> None:
    ds = new_cube()
    assert all(k in ds.attrs for k in PROVENANCE_ATTRS)
    assert json_attr(ds.attrs, ATTR_GRID)["shape"] == list(ds.esdc.grid.shape)
    assert json_attr({}, ATTR_GRID, "none") == "none"


def test_licence_spellings() -> None:
    assert license_of({"licence": "CC-BY-4.0"}) == "CC-BY-4.0"
    assert license_of({"license": "PD"}) == "PD"
    assert license_of({"product": "x"}) is None
    assert fold_license({"licence": "PD", "a": 1}) == {"a": 1, "license": "PD"}
    assert fold_license({"license": "PD"}, "licence") == {"licence": "PD"}
    assert fold_license({"license": "PD", "licence": "PD"}) == {"license": "PD"}
    with pytest.raises(ValueError, match="both 'license' and 'licence'"):
        fold_license({"license": "PD", "licence": "CC0"})
    assert fold_license([1]) == [1]


def test_a_recipe_takes_either_spelling_and_refuses_two_licences() -> None:
    data = yaml.safe_load((ROOT / "recipes" / "earth.yaml").read_text())
    text = data.pop("license")
    assert parse_recipe(yaml.safe_dump({**data, "licence": text})).license == text
    assert parse_recipe(yaml.safe_dump({**data, "license": text})).license == text
    with pytest.raises(RecipeError, match="give one"):
        parse_recipe(yaml.safe_dump({**data, "license": "a", "licence": "b"}))


def test_every_sample_has_a_licence() -> None:
    assert all(license_of(s.provenance()) for s in SAMPLES.values())


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # more than one 1 MiB block with blocksize below
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert file_sha256(path, blocksize=1000, fsync=True) == hashlib.sha256(data).hexdigest()
    with pytest.raises(FileNotFoundError):
        file_sha256(tmp_path / "missing")


def test_coordinate_decimals_follow_the_grid() -> None:
    from esdc.conventions import coordinate_decimals

    assert [coordinate_decimals(s) for s in (0.25, 0.05, 1.0, 1000.0, 0.0)] == [3, 4, 2, 2, 6]
    assert round(-3.8750000000000036, coordinate_decimals(0.25)) == -3.875
