"""Resampling in chunks bounded by a budget, not by the grid, with unchanged values.

The separable bucket mode (non-integer factors, e.g. the 5' land mask onto 0.1 degree)
must equal pyresample's ``BucketResampler`` (``fast_path=False``) cell for cell; the
bilinear interpolation, now run in bands of whole rows, must equal pyresample's
gradient search run its own way (one 4096 x 4096 block); and both must give chunks
whose size does not grow with the grid. A build whose regions share a source regrid
computes that regrid once (the region writes keep the upstream keys).
"""

from __future__ import annotations

import math

import dask
import numpy as np
import pytest
import yaml

from esdc.grid import Grid
from esdc.harmonize import decode
from esdc.recipe import Recipe, SourceSpec
from esdc.regrid import regrid
from esdc.regrid.regular import BILINEAR_BLOCK
from esdc.sources import open_source
from tests.conftest import EARTH, earth_source


def _grid_spec(res: float, bbox: tuple[float, float, float, float]) -> Grid:
    from esdc.recipe import GridSpec

    return GridSpec(body="earth", crs="EPSG:4326", bbox=bbox, resolution=res).to_grid()


def _source(name: str):
    spec = SourceSpec.model_validate(earth_source(name))
    return spec, open_source(spec)


@pytest.mark.parametrize(("res", "bbox"), [
    (0.1, (-180, -90, 180, 90)),        # 1.2 source pixels per cell
    (0.7, (-20.3, -35.1, 60.2, 41.9)),  # a box not on the source's pixel edges
    (0.1, (170, -89.5, 185, -60)),      # cells beyond the source: the fill code
])
def test_separable_bucket_mode_equals_pyresample(res, bbox):
    spec, geo = _source("land_mask")
    var = next(v for v in spec.variables if v.resampling == "bucket_mode")
    grid = _grid_spec(res, bbox)
    data = decode(geo.data[var.source], var)
    fast = regrid(data, geo, grid, "bucket_mode", flag_values=var.flag_values)
    slow = regrid(data, geo, grid, "bucket_mode", flag_values=var.flag_values,
                  fast_path=False)
    with dask.config.set(scheduler="threads"):
        f, s = fast.values, slow.values
    assert f.dtype == s.dtype == np.uint8
    np.testing.assert_array_equal(f, s)
    assert set(np.unique(f)) <= {0, 1, 2, 255}
    # pyresample's arrays are one whole-grid chunk per class; these are bands of rows
    assert "get_fractions" not in str(dict(fast.data.dask))


@pytest.mark.parametrize("res", [0.25, 0.1])
def test_bilinear_in_bands_equals_pyresample(res):
    from pyresample.gradient import create_gradient_search_resampler

    from esdc.regrid.regular import wrap_globe  # the same padding

    spec, geo = _source("ostia")
    var = spec.variables[0]
    grid = _grid_spec(res, (-180, -90, 180, 90))
    data = decode(geo.data[var.source], var).isel(time=slice(0, 3))
    ours = regrid(data, geo, grid, "bilinear", allow_upsampling=True)
    padded, src = wrap_globe(data, geo)
    theirs = create_gradient_search_resampler(src.area_definition(), grid.area_definition())
    arr = padded.rename({src.ydim: "y", src.xdim: "x"}).astype("float32")
    theirs = theirs.resample(arr.drop_vars(["y", "x"], errors="ignore"), method="bilinear",
                             fill_value=np.nan)
    with dask.config.set(scheduler="threads"):
        a, b = ours.values, theirs.values
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).sum() > 10_000  # the OSTIA sample covers a band of the globe
    biggest = math.prod(max(cs) for cs in ours.data.chunks)  # values in the largest chunk
    assert biggest <= max(BILINEAR_BLOCK, 3 * 8 * grid.shape[1])
    assert ours.data.chunks[-1] == (grid.shape[1],)  # bands of whole rows


@pytest.mark.parametrize(("out", "store"), [("c.zarr", None), ("c.icechunk", "icechunk")])
def test_region_writes_share_the_upstream(tmp_path, out, store, monkeypatch):
    """The Linke climatology's bucket average runs once for all regions of the cube.

    On both targets: Zarr regions stored into the arrays, Icechunk regions into forked
    sessions, each committed as it ends (16 commits on the build branch). The block means
    are counted as they run (a chain of tasks is fused under its last key, so a block
    mean may run inside a task named otherwise).
    """
    import functools

    from dask.utils import key_split
    from distributed import Client, LocalCluster

    import esdc.regrid.blocks as blocks
    from esdc.build import plan
    from esdc.storage import resolve

    calls: list[tuple[int, ...]] = []
    real = blocks.block_mean

    @functools.wraps(real)
    def counted(block, fy, fx):
        calls.append(block.shape)
        return real(block, fy, fx)

    monkeypatch.setattr(blocks, "block_mean", counted)

    d = yaml.safe_load(EARTH.read_text(encoding="utf-8"))
    d.update(name="linke_regions", sources=[earth_source("linke_turbidity")], derived=[])
    d["grid"].update(bbox=[-60, -60, 60, 60], resolution=0.5,
                     time={"start": "2006-01-01", "end": "2006-12-01", "freq": "MS"})
    d["output"]["chunks"] = {"time": 6, "lat": 60, "lon": 60}
    recipe = Recipe.from_dict(d)
    ds = plan(recipe)
    assert ds["linke_turbidity"].sizes == {"time": 12, "lat": 240, "lon": 240}
    calls.clear()  # (none while planning: Dask is given the blocks' meta)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        resolve(tmp_path / out, store=store).write(ds, chunks=dict(recipe.output.chunks),
                                                   compressor=recipe.output.compressor,
                                                   client=client)
    planned = sum(key_split(k) == "block_mean" for k in dict(ds["linke_turbidity"].data.dask))
    # 16 regions (4 x 4 tiles of 60 x 60 cells) share the block mean: it ran once per
    # planned task, not once per region
    assert planned >= 1
    assert len(calls) == planned
    from esdc.storage import open_cube

    cube = open_cube(tmp_path / out)
    with dask.config.set(scheduler="threads"):
        np.testing.assert_array_equal(cube["linke_turbidity"].values,
                                      ds["linke_turbidity"].values)


def test_nearest_searches_in_bands_with_the_same_answer(monkeypatch):
    """The KD-tree is queried a band of grid rows at a time: the same pixels as at once."""
    import esdc.regrid.nearest as nearest_module

    spec, geo = _source("land_mask")
    var = next(v for v in spec.variables if v.resampling == "bucket_mode")
    grid = _grid_spec(0.05, (-30, -60, 40, 70))  # finer than the 5' mask
    data = decode(geo.data[var.source], var)
    assert grid.shape[0] * grid.shape[1] > 3 * nearest_module.QUERY_CELLS  # several bands
    with dask.config.set(scheduler="threads"):
        banded = regrid(data, geo, grid, "nearest", allow_upsampling=True).values
        monkeypatch.setattr(nearest_module, "QUERY_CELLS", 10**12)  # one band
        whole = regrid(data, geo, grid, "nearest", allow_upsampling=True).values
    np.testing.assert_array_equal(banded, whole)
    assert set(np.unique(banded[np.isfinite(banded)])) == {0.0, 1.0, 2.0}
