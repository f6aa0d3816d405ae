"""Shared fixtures: real samples from the cache, one Dask cluster, the real Earth cube."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from esdc.errors import EsdcError
from esdc.recipe import Recipe, load_recipe
from esdc.samples import SAMPLES, sample_path

ROOT = Path(__file__).resolve().parents[1]
EARTH = ROOT / "recipes" / "earth.yaml"


def need_sample(name: str) -> Path:
    """Path of a cached, verified sample; fails with what to run when it is missing."""
    try:
        return sample_path(name)
    except EsdcError as exc:
        pytest.fail(f"{exc} (the test command runs `esdc samples fetch --all` first)")


@pytest.fixture(scope="session")
def samples() -> dict[str, Path]:
    return {name: need_sample(name) for name in SAMPLES}


@pytest.fixture(scope="session")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address="127.0.0.1:0", host="127.0.0.1") as cluster, \
            Client(cluster) as c:
        yield c


@pytest.fixture(scope="session")
def earth_cube(tmp_path_factory, samples) -> Path:
    """The real Earth cube, built once per session through the CLI (LocalCluster)."""
    from typer.testing import CliRunner

    from esdc.cli import app

    out = tmp_path_factory.mktemp("cubes") / "earth.zarr"
    res = CliRunner().invoke(app, ["build", str(ROOT / "recipes" / "earth.yaml"),
                                   "--out", str(out), "--no-fetch"])
    assert res.exit_code == 0, res.output
    assert "Dask dashboard: http://127.0.0.1:" in res.output
    return out


# ------------------------------------------------ recipes shared by several test modules
def earth_source(name: str) -> dict[str, Any]:
    """A deep copy of one source entry of recipes/earth.yaml."""
    recipe = yaml.safe_load(EARTH.read_text(encoding="utf-8"))
    return copy.deepcopy(next(s for s in recipe["sources"] if s["name"] == name))


def altitude_recipe() -> dict[str, Any]:
    """A static recipe with only the pvlib-altitude HDF5 source on a 1 degree grid."""
    return {
        "name": "bad_input",
        "title": "bad input test",
        "grid": {"body": "earth", "crs": "EPSG:4326", "bbox": [0, 40, 10, 50],
                 "resolution": 1.0},
        "sources": [earth_source("altitude")],
    }


MOON_SAMPLES = ("lola-dem-global", "lola-dem-north", "lola-dem-south", "lroc-wac-global",
                "lola-shade-global", "clementine-uvvis")


def moon_recipe(resolution: float = 0.25, drop: tuple[str, ...] = ()) -> Recipe:
    """recipes/moon.yaml at another resolution (0.25 degree: the tests' reduced copy)."""
    d = load_recipe(ROOT / "recipes" / "moon.yaml").to_dict()
    d["grid"]["resolution"] = resolution
    d["output"]["chunks"] = {"lat": 360, "lon": 720}
    d["sources"] = [s for s in d["sources"] if s["name"] not in drop]
    return Recipe.from_dict(d)
