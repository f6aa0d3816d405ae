"""esdc.build.build: check -> fetch -> plan -> is-current -> write, on a small real recipe.

The recipe reads the NCEP Stage IV hourly precipitation sample (Hurricane Florence, a
time series on a curvilinear grid) onto a 0.25 degree grid: 12 hours, then 23 hours to
append. Builds run on the local Dask scheduler (a few seconds each).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esdc.build import build, default_output
from esdc.errors import BuildConflictError, CubeExistsError, CubeNotFoundError
from esdc.recipe import Recipe
from esdc.storage import open_cube, partial_path, resolve
from esdc.verify import verify_cube, verify_store
from tests.conftest import need_sample

END_12H, END_23H = "2018-09-14T06:00", "2018-09-14T17:00"


def stageiv_recipe(end: str = END_12H, **output: Any) -> Recipe:
    """Stage IV precipitation, 0.25 degree over the Carolinas, hourly from 2018-09-13T19."""
    need_sample("stageiv-florence")
    return Recipe.from_dict({
        "name": "build_test",
        "title": "Stage IV precipitation, build test",
        "license": "public domain (NOAA)",
        "grid": {"body": "earth", "crs": "EPSG:4326", "bbox": [-80.5, 32.5, -75.0, 37.5],
                 "resolution": 0.25, "time": {"start": "2018-09-13T19:00", "end": end,
                                              "freq": "h"}},
        "output": {"chunks": {"time": 4, "lat": 10, "lon": 11}, **output},
        "sources": [{
            "name": "stageiv", "sample": "stageiv-florence", "format": "netcdf",
            "time": "series",
            "variables": [{"name": "precipitation", "resampling": "nearest",
                           "source": "Total_precipitation_surface_1_Hour_Accumulation",
                           "units": "kg m-2"}],
        }],
    })


class Stop(Exception):
    """Raised from the progress callback: the build stops there, as if interrupted."""


def stop_after(n: int) -> Any:
    def on_region(done: int, total: int) -> None:
        if done >= n:
            raise Stop(f"stopped after {done} of {total} regions")

    return on_region


def inodes(cube: Path) -> dict[str, tuple[int, int]]:
    """``{chunk key: (inode, mtime_ns)}`` of every chunk file of a local cube."""
    return {k: ((cube / k).stat().st_ino, (cube / k).stat().st_mtime_ns)
            for k in resolve(cube).list_chunks()}


def test_build_writes_a_verified_cube(tmp_path: Path) -> None:
    out = tmp_path / "cube.zarr"
    said: list[str] = []
    regions: list[tuple[int, int]] = []
    assert build(stageiv_recipe(), out, on_region=lambda d, t: regions.append((d, t)),
                 report=said.append) == out
    assert regions[-1] == (4, 4) and said == []  # 2 x 2 tiles of chunks
    assert regions[0] == (0, 4)  # the total is known before the first region
    ds = open_cube(out)
    assert ds.sizes == {"time": 12, "lat": 20, "lon": 22, "nv": 2}
    assert verify_cube(ds) == [] and verify_store(out, checksums=True) == []
    assert float(ds["precipitation"].max()) > 10  # Florence's rain, kg m-2 per hour
    with pytest.raises(CubeExistsError, match="overwrite=True"):
        build(stageiv_recipe(), out, fetch=False)


def test_resume_of_a_current_cube_starts_no_cluster(tmp_path: Path) -> None:
    out = build(stageiv_recipe(), tmp_path / "cube.zarr", fetch=False)
    before = inodes(Path(out))
    started: list[int] = []

    @contextlib.contextmanager
    def cluster() -> Iterator[None]:
        started.append(1)
        yield None

    said: list[str] = []
    for kwargs in ({"resume": True}, {"append": True}):
        assert build(stageiv_recipe(), out, client=cluster, fetch=False, report=said.append,
                     **kwargs) == out
    assert said == [f"{out} is up to date"] * 2 and started == []
    assert inodes(Path(out)) == before


def test_an_interrupted_build_resumes(tmp_path: Path) -> None:
    out = tmp_path / "cube.zarr"
    reference = build(stageiv_recipe(), tmp_path / "reference.zarr", fetch=False)
    with pytest.raises(Stop):
        build(stageiv_recipe(), out, fetch=False, on_region=stop_after(2))
    assert not out.exists() and (partial_path(out) / "build.json").exists()
    said: list[str] = []
    started: list[int] = []

    @contextlib.contextmanager
    def cluster() -> Iterator[None]:
        started.append(1)  # something to write: the factory is entered
        yield None

    build(stageiv_recipe(), out, resume=True, client=cluster, fetch=False, report=said.append)
    assert said == [f"resuming {out}: 2 of 4 regions already written"] and started == [1]
    assert resolve(out).manifest()["chunks"] == resolve(reference).manifest()["chunks"]
    assert not partial_path(out).exists()


def test_append_keeps_the_old_chunks(tmp_path: Path) -> None:
    out = build(stageiv_recipe(END_12H), tmp_path / "cube.zarr", fetch=False)
    before = inodes(Path(out))
    said: list[str] = []
    build(stageiv_recipe(END_23H), out, append=True, fetch=False, report=said.append)
    # 12 steps fill time chunks 0..2 (4 steps each): their 3 x 4 tiles are kept
    assert said == [f"appending time steps 12..22 to {out}; 12 chunk files of the cube are "
                    "kept as they are"]
    after = inodes(Path(out))
    kept = [k for k in before if k.startswith("precipitation/")]
    assert len(kept) == 12 and all(after[k] == before[k] for k in kept)
    assert len([k for k in after if k.startswith("precipitation/")]) == 6 * 4
    ds = open_cube(out)
    assert ds.sizes["time"] == 23 and "appended time steps 12..22" in ds.attrs["history"]
    clean = build(stageiv_recipe(END_23H), tmp_path / "clean.zarr", fetch=False)
    assert resolve(out).manifest()["chunks"] == resolve(clean).manifest()["chunks"]


def test_conflicting_options_fail_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "cube.zarr"
    with pytest.raises(BuildConflictError, match="does not go with overwrite=True"):
        build(stageiv_recipe(), out, append=True, overwrite=True)
    with pytest.raises(CubeNotFoundError, match="no cube at"):
        build(stageiv_recipe(), out, append=True, fetch=False)
    assert list(tmp_path.iterdir()) == []


def test_default_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_output(stageiv_recipe(), tmp_path) == tmp_path / "cubes" / "build_test.zarr"
    assert default_output(stageiv_recipe(path="out/c.zarr"), tmp_path) == tmp_path / "out/c.zarr"
    assert default_output(stageiv_recipe(path="s3://bucket/c.zarr")) == "s3://bucket/c.zarr"
    monkeypatch.chdir(tmp_path)
    assert build(stageiv_recipe(), fetch=False) == tmp_path / "cubes" / "build_test.zarr"
    assert os.path.isdir(tmp_path / "cubes" / "build_test.zarr")


def test_planned_layers_are_cut_to_the_regions(samples: dict[str, Any]) -> None:
    """The build puts its regions' tile (the store's chunk) on the grid: on a 0.1 degree
    Earth grid no planned chunk crosses a row of regions, and the layers too large for
    whole rows (the SST's 54 steps, the placed Linke months) come in the regions' column
    tiles, so a region needs only its own pieces (memory bounded by the tile, not the
    grid). Nothing is computed."""
    from esdc.build import plan
    from esdc.recipe import load_recipe
    from esdc.testing import raise_if_dask_computes

    d = load_recipe(Path(__file__).parents[1] / "recipes" / "earth.yaml").to_dict()
    d["grid"]["resolution"] = 0.1
    recipe = Recipe.from_dict(d)
    rows, cols = recipe.output.chunks["lat"], recipe.output.chunks["lon"]
    with raise_if_dask_computes():
        ds = plan(recipe)
    assert ds.sizes["lat"] == 1800 and ds.sizes["lon"] == 3600
    for name, var in ds.data_vars.items():
        if var.chunks is None or "lat" not in var.dims:
            continue
        edges = [0]
        for n in var.chunks[var.dims.index("lat")]:
            edges.append(edges[-1] + n)
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            assert a // rows == (b - 1) // rows or (a % rows == 0 and b % rows == 0), name
    for name in ("sst", "linke_turbidity"):
        assert set(ds[name].chunks[-1]) == {cols}, name
        assert set(ds[name].chunks[-2]) == {rows}, name


def test_sources_cut_to_the_grid_before_decoding_only_in_its_own_plane() -> None:
    """A source in the grid's CRS is cut to the grid's box (2 pixels of margin) before it
    is decoded; a polar stereographic source under a global grid (whose box is a sliver
    in that CRS) and a 0-360 longitude source are left whole (``crop``, which the
    nearest resampler uses too)."""
    import numpy as np
    import pyproj
    import xarray as xr

    from esdc.build import CROP_MARGIN
    from esdc.grid import Grid
    from esdc.regrid.extent import crop
    from esdc.sources import Geolocated, open_source
    from tests.conftest import moon_recipe

    def geographic(lon: np.ndarray) -> Geolocated:
        lat = 89.5 - np.arange(180.0)
        ds = xr.Dataset({"v": (("lat", "lon"), np.ones((180, lon.size), "float32"))},
                        coords={"lat": lat, "lon": lon}).chunk()
        return Geolocated(ds, pyproj.CRS.from_epsg(4326), "lat", "lon", Path("synthetic"))

    grid = Grid.from_bbox("earth", "EPSG:4326", (-10, 20, 30, 40), 0.5)
    geo = geographic(np.arange(-179.5, 180.0))
    raw, cut = crop(geo.data["v"], geo, grid, CROP_MARGIN)
    assert raw.sizes == {"lat": 24, "lon": 44}  # 20 x 40 degrees and 2 pixels each side
    assert cut.bbox == (-12.0, 18.0, 32.0, 42.0)
    east = geographic(np.arange(0.5, 360.0))
    assert crop(east.data["v"], east, grid, CROP_MARGIN)[0].sizes == {"lat": 180, "lon": 360}
    need_sample("lola-dem-north")
    recipe = moon_recipe(0.25)
    spec = next(s for s in recipe.sources if s.name == "lola_north")
    polar = open_source(spec)
    raw, _ = crop(polar.data["elevation"], polar, recipe.grid.to_grid(), CROP_MARGIN)
    assert raw.shape == polar.data["elevation"].shape
