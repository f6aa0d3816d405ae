"""Bilinear bands no source pixel reaches hold no memory; the others are pyresample's own.

The OSTIA sample covers 5S-4.4N: onto a global 0.05 degree grid, pyresample's
``resample_blocks`` makes 170 of the 180 bands of 20 rows x 54 steps a task
``numpy.full(shape, nan)`` (31 MB each) with no input, which workers computed far ahead of
the regions storing them. (pyresample's crop keeps a margin: a band it does
interpolate may still be all NaN.) Those bands are now ``dask.array.full`` chunks (broadcast views
of one NaN); the interpolated bands keep pyresample's tasks, cell for cell.
"""

from __future__ import annotations

import dask
import numpy as np
import pytest

from esdc.grid import Grid
from esdc.harmonize import decode
from esdc.recipe import GridSpec, SourceSpec
from esdc.regrid import regrid
from esdc.regrid.regular import reached_blocks, wrap_globe
from esdc.sources import open_source
from tests.conftest import earth_source


def _grid(res: float) -> Grid:
    return GridSpec(body="earth", crs="EPSG:4326", bbox=(-180, -90, 180, 90),
                    resolution=res).to_grid()


def _ostia():
    spec = SourceSpec.model_validate(earth_source("ostia"))
    geo = open_source(spec)
    return geo, decode(geo.data[spec.variables[0].source], spec.variables[0])


def _func(task):
    """The callable of a graph value (a legacy tuple or a ``dask`` ``Task``)."""
    if isinstance(task, tuple) and task and callable(task[0]):
        return task[0]
    return getattr(task, "func", None)


def _raw_pyresample(data, geo, grid, rows):
    """pyresample's ``resample_blocks`` as ``bilinear`` calls it, before the views."""
    from pyresample.gradient import block_bilinear_interpolator, gradient_resampler_indices_block
    from pyresample.resampler import resample_blocks

    padded, src = wrap_globe(data, geo)
    arr = padded.transpose(..., src.ydim, src.xdim).astype("float32").data
    ny, nx = grid.shape
    src_area, dst_area = src.area_definition(), grid.area_definition()
    indices = resample_blocks(gradient_resampler_indices_block, src_area, [], dst_area,
                              chunk_size=(2, rows, nx), dtype=float)
    return resample_blocks(block_bilinear_interpolator, src_area, [arr], dst_area,
                           dst_arrays=[indices], chunk_size=(*arr.shape[:-2], rows, nx),
                           dtype=np.float32, fill_value=np.nan)


@pytest.mark.parametrize("res", [0.1, 0.05])
def test_unreached_bands_are_views_and_reached_bands_unchanged(res):
    geo, data = _ostia()
    data = data.isel(time=slice(0, 6))  # one store chunk of time: bands of 185 rows at 0.05
    grid = _grid(res)
    ours = regrid(data, geo, grid, "bilinear", allow_upsampling=True).data
    rows = ours.chunks[-2][0]
    raw = _raw_pyresample(data, geo, grid, rows)
    assert ours.chunks == raw.chunks
    padded, src = wrap_globe(data, geo)
    hits = reached_blocks(src.area_definition(), grid.area_definition(), rows,
                          grid.shape[1])[:, 0].tolist()
    assert 0 < sum(hits) < len(hits)  # the sample is a band of latitudes
    graph = dict(ours.__dask_graph__())
    # pyresample's dense NaN bands are gone from the graph ...
    assert not any(_func(t) is np.full for t in graph.values())
    raw_graph = dict(raw.__dask_graph__())
    assert sum(_func(t) is np.full for t in raw_graph.values()) == 2 * hits.count(False)
    lead = (0,) * (ours.ndim - 2)
    for band, hit in enumerate(hits):
        block = dask.get(graph, (ours.name, *lead, band, 0))
        assert block.shape == (*data.shape[:-2], ours.chunks[-2][band], grid.shape[1])
        if not hit:
            # ... replaced by a broadcast view of one NaN: no memory, however large
            assert block.strides == (0,) * block.ndim
            assert np.isnan(block).all()
    # the interpolated bands: pyresample's own tasks, cell for cell
    finite = 0
    with dask.config.set(scheduler="threads"):
        for band in [i for i, h in enumerate(hits) if h]:
            a = ours.blocks[(*lead, band, 0)].compute()
            np.testing.assert_array_equal(a, raw.blocks[(*lead, band, 0)].compute())
            finite += int(np.isfinite(a).sum())
    assert finite > 0


def test_bilinear_in_region_tiles_equals_whole_rows(monkeypatch):
    """With the cube's region tile on the grid, where a row of regions is more than one
    block each region's column tile is a block of its own (no band of whole rows held
    across a row of regions); values unchanged, blocks beyond the source still views."""
    import dataclasses

    import esdc.regrid.regular

    monkeypatch.setattr(esdc.regrid.regular, "BILINEAR_BLOCK", 500_000)  # 57 rows x 6 steps

    geo, data = _ostia()
    data = data.isel(time=slice(0, 6))
    rows_grid = _grid(0.25)
    tiled = dataclasses.replace(rows_grid, tile=(180, 360))
    ours = regrid(data, geo, tiled, "bilinear", allow_upsampling=True).data
    assert ours.chunks[-2:] == ((180,) * 4, (360,) * 4)
    whole = regrid(data, geo, rows_grid, "bilinear", allow_upsampling=True).data
    assert whole.chunks[-1] == (1440,) and whole.chunks[-2][0] == 57
    with dask.config.set(scheduler="threads"):
        a, b = ours.compute(), whole.compute()
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, rtol=1e-6, equal_nan=True)
    assert np.isfinite(a).sum() > 0
    graph = dict(ours.__dask_graph__())
    assert not any(_func(t) is np.full for t in graph.values())


def test_bucket_average_of_many_planes_equals_pyresample_plane_by_plane():
    """The separable bucket average reduces one leading plane at a time (12 months of the
    Linke turbidity): the same cells as pyresample's ``BucketResampler`` of each month."""
    from esdc.regrid.blocks import regular_bucket_average

    spec = SourceSpec.model_validate(earth_source("linke_turbidity"))
    geo = open_source(spec)
    data = decode(geo.data[spec.variables[0].source], spec.variables[0])
    assert data.shape[0] == 12
    grid = GridSpec(body="earth", crs="EPSG:4326", bbox=(-30, -40, 50, 40),
                    resolution=0.7).to_grid()  # 8.4 source pixels per cell, not aligned
    with dask.config.set(scheduler="threads"):
        ours = regular_bucket_average(data, geo, grid).values
        for month in (0, 6, 11):
            theirs = regrid(data[month], geo, grid, "bucket_average", fast_path=False).values
            np.testing.assert_allclose(ours[month], theirs, rtol=1e-6)
    assert ours.shape == (12, *grid.shape) and np.isfinite(ours).mean() > 0.99


def test_slicers_share_transformers_and_crop_the_same():
    """Within ``shared_transformers`` pyresample's slicers reuse one transformer per CRS
    pair (re-entrant, restored after) and crop the source exactly as with their own."""
    import pyproj
    import pyresample.slicer
    from pyresample.slicer import create_slicer

    from esdc.regrid.extent import shared_transformers

    geo, _ = _ostia()
    src, dst = geo.area_definition(), _grid(1.0).area_definition()
    block = dst[slice(80, 100), slice(0, 360)]
    own = create_slicer(src, block).get_slices()
    with shared_transformers():
        with shared_transformers():
            a = create_slicer(src, block)
        assert pyresample.slicer.Transformer is not pyproj.Transformer
        b = create_slicer(src, block)
        assert a._source_transformer is b._source_transformer  # made once, shared
        assert a._target_transformer is b._target_transformer
        assert b.get_slices() == own
    assert pyresample.slicer.Transformer is pyproj.Transformer  # restored
