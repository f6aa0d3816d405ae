"""Bad input to ``esdc build``: a clear message, exit code 2, no traceback, old cube intact.

Every case runs the real CLI in-process (``typer.testing.CliRunner``) against a
small existing cube at the target, with ``--no-fetch`` (and ``--overwrite`` where
the case is not about overwriting). The cube's files (bytes and mtimes) must be
unchanged afterwards and no ``.partial-*`` store may be left beside it. Nothing
here builds a cube: every input fails before any data is computed.

Needs the real samples in ``$ESDC_CACHE`` (the OSTIA and pvlib-altitude files).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

from esdc.cli import app
from esdc.samples import SAMPLES, cache_dir
from tests.conftest import EARTH, altitude_recipe

ROOT = Path(__file__).resolve().parents[1]

runner = CliRunner()


def _require_sample(name: str) -> Path:
    path = cache_dir() / name / SAMPLES[name].filename
    if not path.is_file():
        pytest.fail(f"sample {name} is not in the cache ({path}); set ESDC_CACHE to the cache "
                    "or run `esdc samples fetch --all` first")
    return path


# --------------------------------------------------------------------------- helpers
def ostia_recipe() -> dict[str, Any]:
    """recipes/earth.yaml reduced to the OSTIA source on a 1 degree tropical grid."""
    recipe = yaml.safe_load(EARTH.read_text(encoding="utf-8"))
    recipe["name"] = "bad_input"
    recipe["sources"] = [s for s in recipe["sources"] if s["name"] == "ostia"]
    recipe["derived"] = []
    recipe["grid"].update(bbox=[-10, -4, 10, 4], resolution=1.0,
                          time={"start": "2006-04-01", "end": "2006-06-01", "freq": "MS"})
    recipe["output"]["chunks"] = {"time": 3, "lat": 8, "lon": 20}
    return recipe


def netcdf_recipe(path: Path, variable: str = "t2m", **source: Any) -> dict[str, Any]:
    """A static recipe reading ``variable`` from the NetCDF file at ``path``."""
    return {
        "name": "bad_input",
        "title": "bad input test",
        "grid": {"body": "earth", "crs": "EPSG:4326", "bbox": [0, 0, 4, 4], "resolution": 1.0},
        "sources": [{
            "name": "local", "path": str(path), "format": "netcdf", **source,
            "variables": [{"name": "t2m", "source": variable, "resampling": "bilinear",
                           "units": "K"}],
        }],
    }


def write_netcdf(path: Path, lat: list[float], lon: list[float]) -> Path:
    """A small static NetCDF file with a ``t2m(lat, lon)`` variable."""
    data = np.arange(len(lat) * len(lon), dtype="float32").reshape(len(lat), len(lon))
    ds = xr.Dataset({"t2m": (("lat", "lon"), data, {"units": "K"})},
                    coords={"lat": ("lat", np.asarray(lat, "float64"), {"units": "degrees_north"}),
                            "lon": ("lon", np.asarray(lon, "float64"), {"units": "degrees_east"})})
    ds.to_netcdf(path)
    return path


def write_recipe(tmp_path: Path, recipe: dict[str, Any] | str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    text = recipe if isinstance(recipe, str) else yaml.safe_dump(recipe, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def set_key(recipe: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """Set ``recipe[a][b][0][c] = value`` for ``dotted = "a.b.0.c"``; return ``recipe``."""
    *parents, last = dotted.split(".")
    node: Any = recipe
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return recipe


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """``{relative path: (sha256, mtime_ns)}`` of every file and folder under ``root``."""
    snap = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        snap[str(p.relative_to(root))] = (digest, st.st_mtime_ns)
    return snap


def leftovers(parent: Path) -> list[str]:
    """Names in ``parent`` that a build may leave behind by mistake."""
    return sorted(p.name for p in parent.iterdir()
                  if ".partial-" in p.name or ".old-" in p.name or p.name.startswith(
                      ".esdc-probe"))


def assert_user_error(result: Any, *needles: str) -> str:
    """Exit code 2, one message on stderr, no traceback, and every needle in the message."""
    text = result.output  # stdout and stderr, interleaved
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in text
    assert "error:" in result.stderr
    assert text.count("error:") == 1, text
    flat = " ".join(text.split())  # the console may wrap long paths
    for needle in needles:
        assert needle in text or needle in flat, f"{needle!r} not in:\n{text}"
    return text


@pytest.fixture
def cube(tmp_path: Path) -> Path:
    """A small real Zarr v3 cube at the target, to be left as it is."""
    target = tmp_path / "cubes" / "cube.zarr"
    target.parent.mkdir()
    ds = xr.Dataset(
        {"sst": (("time", "lat", "lon"), np.arange(24, dtype="float32").reshape(2, 3, 4))},
        coords={"time": np.array(["2006-04-01", "2006-05-01"], dtype="datetime64[ns]"),
                "lat": [1.0, 0.0, -1.0], "lon": [0.5, 1.5, 2.5, 3.5]},
        attrs={"title": "existing cube"},
    )
    ds.to_zarr(target, zarr_format=3, consolidated=False)
    return target


@pytest.fixture
def build(cube: Path) -> Callable[..., Any]:
    """Run ``esdc build RECIPE --out CUBE --no-fetch [--overwrite]`` and check the cube after."""
    before = snapshot(cube)
    assert before

    def run(recipe: Path, *, overwrite: bool = True) -> Any:
        args = ["build", str(recipe), "--out", str(cube), "--no-fetch"]
        if overwrite:
            args.append("--overwrite")
        result = runner.invoke(app, args)
        assert snapshot(cube) == before, "the existing cube was changed"
        assert leftovers(cube.parent) == []
        return result

    return run


# --------------------------------------------------------------------------- 1. YAML
def test_malformed_yaml(tmp_path: Path, build: Callable[..., Any]) -> None:
    recipe = write_recipe(tmp_path, "name: bad_input\ngrid:\n  bbox: [0, 0, 10\n  body: earth\n")
    text = assert_user_error(build(recipe), str(recipe), "malformed YAML", "line")
    assert "column" in text


def test_recipe_not_a_mapping(tmp_path: Path, build: Callable[..., Any]) -> None:
    recipe = write_recipe(tmp_path, "- just\n- a list\n")
    assert_user_error(build(recipe), str(recipe), "YAML mapping")


def test_missing_recipe_file(tmp_path: Path, build: Callable[..., Any]) -> None:
    assert_user_error(build(tmp_path / "nope.yaml"), str(tmp_path / "nope.yaml"),
                      "does not exist")


# --------------------------------------------------------------------------- 2. unknown key
@pytest.mark.parametrize(("old", "new", "field"), [
    ("grid.resolution", "resolutoin", "grid.resolutoin"),
    ("sources.0.variables.0.resampling", "resampleing", "sources[0].variables[0].resampleing"),
    ("output.chunks", "chunk", "output.chunk"),
])
def test_unknown_key(tmp_path: Path, build: Callable[..., Any], old: str, new: str,
                     field: str) -> None:
    recipe = ostia_recipe()
    *parents, last = old.split(".")
    node: Any = recipe
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[new] = node.pop(last)
    path = write_recipe(tmp_path, recipe)
    assert_user_error(build(path), str(path), field, "unknown key")


# --------------------------------------------------------------------------- 3. wrong type
@pytest.mark.parametrize(("key", "value", "field"), [
    ("grid.resolution", "fine", "grid.resolution"),
    ("grid.bbox", "world", "grid.bbox"),
    ("sources.0.variables.0.scale_factor", "large", "sources[0].variables[0].scale_factor"),
    ("sources.0.variables", {"name": "sst"}, "sources[0].variables"),
    ("output.chunks.lat", -5, "output.chunks.lat"),
])
def test_wrong_type(tmp_path: Path, build: Callable[..., Any], key: str, value: Any,
                    field: str) -> None:
    path = write_recipe(tmp_path, set_key(ostia_recipe(), key, value))
    assert_user_error(build(path), str(path), field)


# --------------------------------------------------------------------------- 4. missing file
def test_missing_source_file(tmp_path: Path, build: Callable[..., Any]) -> None:
    missing = tmp_path / "data" / "absent.nc"
    path = write_recipe(tmp_path, netcdf_recipe(missing))
    assert_user_error(build(path), "sources.local.path", str(missing), "does not exist")


def test_missing_relative_source_file(tmp_path: Path, build: Callable[..., Any]) -> None:
    path = write_recipe(tmp_path, netcdf_recipe(Path("absent.nc")))
    assert_user_error(build(path), "sources.local.path", str(tmp_path / "absent.nc"))


def test_unregistered_sample(tmp_path: Path, build: Callable[..., Any]) -> None:
    recipe = ostia_recipe()
    recipe["sources"][0]["sample"] = "ostia-daily"
    path = write_recipe(tmp_path, recipe)
    assert_user_error(build(path), "ostia-daily", "esdc samples list")


def test_sample_not_fetched(tmp_path: Path, build: Callable[..., Any],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESDC_CACHE", str(tmp_path / "empty-cache"))
    path = write_recipe(tmp_path, ostia_recipe())
    assert_user_error(build(path), "ostia-monthly", "esdc samples fetch ostia-monthly")


# --------------------------------------------------------------------------- 5. checksum
def test_path_checksum_mismatch(tmp_path: Path, build: Callable[..., Any]) -> None:
    nc = write_netcdf(tmp_path / "small.nc", [0.5, 1.5, 2.5, 3.5], [0.5, 1.5, 2.5, 3.5])
    wrong = "0" * 64
    path = write_recipe(tmp_path, netcdf_recipe(nc, sha256=wrong))
    assert_user_error(build(path), "sources.local", str(nc), wrong, "SHA-256")


def test_cached_sample_altered(tmp_path: Path, build: Callable[..., Any],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    original = _require_sample("ostia-monthly")
    cache = tmp_path / "cache"
    shutil.copytree(original.parent, cache / "ostia-monthly")
    altered = cache / "ostia-monthly" / original.name
    data = bytearray(altered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    altered.write_bytes(bytes(data))
    monkeypatch.setenv("ESDC_CACHE", str(cache))
    path = write_recipe(tmp_path, ostia_recipe())
    assert_user_error(build(path), "ostia-monthly", str(altered), SAMPLES["ostia-monthly"].sha256,
                      "fetch it again")


# --------------------------------------------------------------------------- 6. CRS
def test_unknown_grid_crs(tmp_path: Path, build: Callable[..., Any]) -> None:
    path = write_recipe(tmp_path, set_key(ostia_recipe(), "grid.crs", "EPSG:999999"))
    assert_user_error(build(path), str(path), "grid.crs", "unknown CRS", "EPSG:999999")


def test_unknown_georeference_crs(tmp_path: Path, build: Callable[..., Any]) -> None:
    path = write_recipe(tmp_path, set_key(altitude_recipe(), "sources.0.georeference.crs",
                                          "WGS 2084"))
    assert_user_error(build(path), str(path), "sources[0].georeference.crs", "unknown CRS")


# --------------------------------------------------------------------------- 7. grid size
@pytest.mark.parametrize(("key", "value", "field"), [
    ("grid.bbox", [10, -4, -10, 4], "grid.bbox"),          # east < west
    ("grid.bbox", [-10, 4, 10, -4], "grid.bbox"),          # north < south
    ("grid.bbox", [-10, 4, 10, 4], "grid.bbox"),           # zero height
    ("grid.resolution", 50.0, "grid.resolution"),          # larger than the bbox
    ("grid.resolution", -1.0, "grid.resolution"),          # negative
    ("grid.resolution", 0, "grid.resolution"),             # zero
    ("grid.resolution", [1.0, -1.0], "grid.resolution"),   # negative dy
])
def test_empty_or_negative_grid(tmp_path: Path, build: Callable[..., Any], key: str,
                                value: Any, field: str) -> None:
    path = write_recipe(tmp_path, set_key(ostia_recipe(), key, value))
    assert_user_error(build(path), str(path), field)


# --------------------------------------------------------------------------- 8. no overlap
@pytest.mark.parametrize(("crs", "bbox", "resolution"), [
    ("EPSG:4326", [0, 40, 10, 50], 1.0),
    # Arctic polar stereographic, 2000 km around the pole: far north of OSTIA's band.
    ("EPSG:3413", [-1_000_000, -1_000_000, 1_000_000, 1_000_000], 100_000.0),
])
def test_bbox_outside_every_source(tmp_path: Path, build: Callable[..., Any], crs: str,
                                   bbox: list[float], resolution: float) -> None:
    _require_sample("ostia-monthly")
    recipe = ostia_recipe()
    recipe["grid"].update(crs=crs, bbox=bbox, resolution=resolution)
    recipe["output"]["chunks"] = {}
    path = write_recipe(tmp_path, recipe)
    assert_user_error(build(path), "grid.bbox", "outside every source", "ostia")


# --------------------------------------------------------------------------- 9. resampling
def test_unknown_resampling(tmp_path: Path, build: Callable[..., Any]) -> None:
    path = write_recipe(tmp_path, set_key(ostia_recipe(), "sources.0.variables.0.resampling",
                                          "cubic"))
    text = assert_user_error(build(path), str(path), "sources[0].variables[0].resampling")
    assert "bilinear" in text and "nearest" in text  # says what is allowed


# --------------------------------------------------------------------------- 10. variable
def test_variable_not_in_source(tmp_path: Path, build: Callable[..., Any]) -> None:
    _require_sample("ostia-monthly")
    path = write_recipe(tmp_path, set_key(ostia_recipe(), "sources.0.variables.0.source",
                                          "sea_temperature"))
    assert_user_error(build(path), "sources.ostia", "sea_temperature", "ostia_monthly.nc",
                      "surface_temperature")


def test_variable_not_in_local_netcdf(tmp_path: Path, build: Callable[..., Any]) -> None:
    nc = write_netcdf(tmp_path / "small.nc", [0.5, 1.5, 2.5, 3.5], [0.5, 1.5, 2.5, 3.5])
    path = write_recipe(tmp_path, netcdf_recipe(nc, variable="tas"))
    assert_user_error(build(path), "sources.local", "'tas'", str(nc), "t2m")


def test_variable_not_in_hdf5_sample(tmp_path: Path, build: Callable[..., Any]) -> None:
    _require_sample("pvlib-altitude")
    path = write_recipe(tmp_path, set_key(altitude_recipe(), "sources.0.variables.0.source",
                                          "Elevation"))
    assert_user_error(build(path), "sources.altitude", "Elevation", "Altitude.h5")


# --------------------------------------------------------------------------- 11. coordinates
@pytest.mark.parametrize("dim", ["lat", "lon"])
def test_non_monotonic_coordinates(tmp_path: Path, build: Callable[..., Any], dim: str) -> None:
    regular = [0.5, 1.5, 2.5, 3.5, 4.5]
    shuffled = [0.0, 1.0, 3.0, 2.0, 4.0]
    lat, lon = (shuffled, regular) if dim == "lat" else (regular, shuffled)
    nc = write_netcdf(tmp_path / "shuffled.nc", lat, lon)
    path = write_recipe(tmp_path, netcdf_recipe(nc))
    assert_user_error(build(path), "sources.local", f"'{dim}'", str(nc), "not monotonic")


def test_unevenly_spaced_coordinates(tmp_path: Path, build: Callable[..., Any]) -> None:
    nc = write_netcdf(tmp_path / "uneven.nc", [0.5, 1.5, 2.5, 4.5], [0.5, 1.5, 2.5, 3.5])
    path = write_recipe(tmp_path, netcdf_recipe(nc))
    assert_user_error(build(path), "sources.local", "'lat'", str(nc), "evenly spaced")


def test_all_nan_source_is_refused_before_commit(tmp_path: Path,
                                                build: Callable[..., Any]) -> None:
    """A source that is NaN everywhere would make an empty layer: exit 2, nothing kept."""
    nc = tmp_path / "nan.nc"
    xr.Dataset({"t2m": (("lat", "lon"), np.full((6, 6), np.nan, "float32"), {"units": "K"})},
               coords={"lat": np.linspace(5.5, 0.5, 6), "lon": np.linspace(0.5, 5.5, 6)}
               ).to_netcdf(nc)
    result = build(write_recipe(tmp_path, netcdf_recipe(nc)))
    assert_user_error(result, "no valid value anywhere in the grid for t2m (source local)",
                      "fill_value", "unchanged")


def test_not_a_netcdf_file(tmp_path: Path, build: Callable[..., Any]) -> None:
    bogus = tmp_path / "bogus.nc"
    bogus.write_text("this is not NetCDF\n")
    path = write_recipe(tmp_path, netcdf_recipe(bogus))
    assert_user_error(build(path), "sources.local", str(bogus), "NETCDF")


# --------------------------------------------------------------------------- 12. target exists
def test_target_exists_without_overwrite(tmp_path: Path, build: Callable[..., Any],
                                         cube: Path) -> None:
    path = write_recipe(tmp_path, ostia_recipe())
    assert_user_error(build(path, overwrite=False), str(cube), "exists", "--overwrite")


def test_bad_recipe_without_overwrite_reports_recipe_first(
        tmp_path: Path, build: Callable[..., Any]) -> None:
    path = write_recipe(tmp_path, set_key(ostia_recipe(), "grid.crs", "EPSG:999999"))
    assert_user_error(build(path, overwrite=False), "grid.crs")


# --------------------------------------------------------------------------- 13. unwritable
@pytest.mark.parametrize("below", ["cube.zarr", "sub/cube.zarr"])
def test_unwritable_output_path(tmp_path: Path, below: str) -> None:
    afile = tmp_path / "afile"
    afile.write_bytes(b"a regular file, not a folder\n")
    before = (hashlib.sha256(afile.read_bytes()).hexdigest(), afile.stat().st_mtime_ns)
    out = afile / below
    path = write_recipe(tmp_path, ostia_recipe())
    result = runner.invoke(app, ["build", str(path), "--out", str(out), "--no-fetch",
                                 "--overwrite"])
    assert_user_error(result, str(afile), "is a file, not a folder", "--out")
    assert (hashlib.sha256(afile.read_bytes()).hexdigest(), afile.stat().st_mtime_ns) == before
    assert leftovers(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["afile", "recipe.yaml"]
