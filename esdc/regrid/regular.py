"""Resampling of sources on a regular grid of a PROJ CRS (1-D cell-centre coordinates).

``nearest``
    :mod:`esdc.regrid.nearest` (KD-tree on the body's sphere), on the rows and columns
    of the source near the grid's box.
``bilinear``
    bilinear interpolation (pyresample gradient search, lazy); target cells beyond the
    outermost source pixel centres are NaN. A geographic source that spans 360 degrees
    of longitude is first padded with the pixels it wraps to (across the antimeridian,
    and across a pole when it reaches one), so a global grid has no NaN seam there.
``bucket_average``, ``bucket_mode``
    the exact block reductions of :mod:`esdc.regrid.blocks` when they apply, else
    pyresample's ``BucketResampler`` (:mod:`esdc.regrid.bucket`).
``conservative``
    area-weighted, from the cell bounds (:mod:`esdc.regrid.conservative`); the source
    must be in the grid's CRS (or both geographic).

Unevenly spaced (rectilinear) coordinates, e.g. latitudes spaced as in Mercator, are
read as they are: ``conservative`` weighs their bounds, ``bilinear`` interpolates
linearly between their centres along each axis (in the grid's CRS), ``nearest`` and the
bucket methods place every pixel by its own longitude and latitude.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from esdc.errors import RegridError
from esdc.grid import Grid
from esdc.regrid.blocks import (
    aligned,
    aligned_blocks,
    regular_bucket_average,
    regular_bucket_mode,
)
from esdc.regrid.bucket import bucket
from esdc.regrid.conservative import conservative, rectilinear_bilinear
from esdc.regrid.extent import ProjResampler, same_plane, shared_transformers
from esdc.regrid.nearest import nearest
from esdc.sources.base import Geolocated

__all__ = ["RegularResampler", "bilinear", "reached_blocks", "unreached_as_views", "wrap_globe"]

_TOL = 1e-6


def wrap_globe(data: xr.DataArray, source: Geolocated) -> tuple[xr.DataArray, Geolocated]:
    """Pad a global geographic source with the pixels it wraps to, for interpolation.

    Parameters
    ----------
    data : xarray.DataArray
        Dims ``(..., source.ydim, source.xdim)``, lazy.
    source : Geolocated
        Where its pixels are.

    A source whose columns span 360 degrees gets one column from the opposite edge
    on each side (the antimeridian). If its rows also reach a pole and it has an
    even number of columns, it gets one row beyond that pole holding the edge row
    shifted by 180 degrees of longitude: the pixel across the pole on the same
    great circle, one row spacing away. Other sources are returned unchanged.

    Returns
    -------
    tuple of (xarray.DataArray, Geolocated)
        Dims ``(..., ydim, xdim)``, up to ``(ny + 2, nx + 2)`` pixels, lazy; and the
        matching geolocation (its bbox extends past +-180 and +-90 by one pixel).
    """
    if (source.is_swath or source.crs is None or not source.crs.is_geographic
            or not source.evenly_spaced):
        return data, source
    dx, dy = source.resolution
    ydim, xdim = source.ydim, source.xdim
    nx = data.sizes[xdim]
    if nx < 2 or abs(nx * dx - 360.0) > _TOL * 360.0:
        return data, source
    _, south, _, north = source.bbox
    y, x = data[ydim].values, data[xdim].values
    rows, ys = [data], [y]
    if nx % 2 == 0 and abs(north - 90.0) < _TOL * 90.0:
        rows.insert(0, data.isel({ydim: [0]}).roll({xdim: nx // 2}, roll_coords=False))
        ys.insert(0, [y[0] + dy])
    if nx % 2 == 0 and abs(south + 90.0) < _TOL * 90.0:
        rows.append(data.isel({ydim: [-1]}).roll({xdim: nx // 2}, roll_coords=False))
        ys.append([y[-1] - dy])
    kw: dict[str, Any] = {"coords": "minimal", "compat": "override", "join": "override"}
    out = xr.concat(rows, dim=ydim, **kw).assign_coords({ydim: np.concatenate(ys)})
    out = xr.concat([out.isel({xdim: [-1]}), out, out.isel({xdim: [0]})], dim=xdim, **kw)
    out = out.assign_coords({xdim: np.concatenate([[x[0] - dx], x, [x[-1] + dx]])})
    out = out.chunk({xdim: -1})
    return out, Geolocated(out.to_dataset(name="data"), source.crs, ydim, xdim, source.path)


#: Output values (leading planes times cells) one bilinear task computes at most.
BILINEAR_BLOCK = 8_000_000


def bilinear(data: xr.DataArray, source: Geolocated, grid: Grid) -> xr.DataArray:
    """Bilinear interpolation of a regular source (module docstring), lazily.

    pyresample's gradient search, run on blocks of at most :data:`BILINEAR_BLOCK` values
    (all leading planes of a block together): pyresample's default block of 4096 x 4096
    cells holds a 0.1 degree global grid, 54 time steps of it 1.4 GB, in one task that
    every region waits for. Where one row of the cube's regions is more than that, the
    blocks are the regions' column tiles (:meth:`~esdc.grid.Grid.block_shape`), so that
    each region computes its own: bands of whole rows were held from the first region of
    their row to the last (140 MB for 180 rows of a 0.1 degree grid over 54 steps).
    Blocks the source does not reach are NaN chunks that hold no memory
    (:func:`unreached_as_views`).

    Parameters
    ----------
    data : xarray.DataArray
        Dims ``(..., source.ydim, source.xdim)``, float with NaN for missing values.
    source : Geolocated
        A regular source.
    grid : Grid
        The target, shape ``(ny, nx)``.

    Returns
    -------
    xarray.DataArray
        float32, shape ``(..., ny, nx)``, dims of ``data``.
    """
    from pyresample.gradient import block_bilinear_interpolator, gradient_resampler_indices_block
    from pyresample.resampler import resample_blocks

    dst_area = grid.area_definition()
    data, source = wrap_globe(data, source)
    src_area = source.area_definition()
    arr = data.transpose(..., source.ydim, source.xdim).astype("float32").data
    lead = arr.shape[:-2]
    ny, nx = grid.shape
    rows, cols = grid.block_shape(int(np.prod(lead)), BILINEAR_BLOCK)
    with shared_transformers():  # each block's crop makes two transformers otherwise
        indices = resample_blocks(gradient_resampler_indices_block, src_area, [], dst_area,
                                  chunk_size=(2, rows, cols), dtype=float)
        out = resample_blocks(block_bilinear_interpolator, src_area, [arr], dst_area,
                              dst_arrays=[indices], chunk_size=(*lead, rows, cols),
                              dtype=np.float32, fill_value=np.nan)
        hits = reached_blocks(src_area, dst_area, rows, cols)
    return xr.DataArray(unreached_as_views(out, hits), dims=data.dims)


def reached_blocks(src_area: Any, dst_area: Any, rows: int, cols: int) -> np.ndarray:
    """Which blocks of ``rows x cols`` grid cells pyresample finds source data for.

    The test :func:`pyresample.resampler.resample_blocks` makes per destination chunk
    (:func:`pyresample.resampler.crop_source_area`, cached): a block it finds no source
    pixel for is a task ``numpy.full(shape, fill_value)`` there.

    Parameters
    ----------
    src_area : pyresample.geometry.AreaDefinition
        The source.
    dst_area : pyresample.geometry.AreaDefinition
        The grid, shape ``(ny, nx)``.
    rows, cols : int
        Grid rows and columns per block (the last ones may be smaller).

    Returns
    -------
    numpy.ndarray
        bool, shape ``(ceil(ny / rows), ceil(nx / cols))``: row of blocks (north first),
        then column (west first).
    """
    from pyresample.geometry import IncompatibleAreas
    from pyresample.resampler import crop_source_area

    ny, nx = dst_area.shape
    hits = np.zeros((-(-ny // rows), -(-nx // cols)), dtype=bool)
    for i, y0 in enumerate(range(0, ny, rows)):
        for j, x0 in enumerate(range(0, nx, cols)):
            try:
                crop_source_area(src_area, dst_area[slice(y0, min(ny, y0 + rows)),
                                                    slice(x0, min(nx, x0 + cols))])
            except IncompatibleAreas:
                continue
            hits[i, j] = True
    return hits


def unreached_as_views(out: Any, hits: np.ndarray) -> Any:
    """``out`` with the blocks no source pixel reaches as NaN chunks that hold no memory.

    pyresample computes such a block as a dense ``numpy.full`` array: 31 MB for 20 rows of
    a 0.05 degree grid over 54 time steps, with no input, so a worker may compute the
    blocks of every region far ahead of the regions that store them and hold them all
    (the OSTIA sample covers 10 of 180 bands). :func:`dask.array.full` gives each chunk
    as a broadcast view of one value instead (8 bytes, and as small through
    ``distributed``'s serialisation); the blocks pyresample does interpolate keep their
    tasks, so values are unchanged.

    Parameters
    ----------
    out : dask.array.Array
        Shape ``(..., ny, nx)``, float, one chunk along the leading axes.
    hits : numpy.ndarray
        bool, one per spatial block of ``out`` (rows of blocks, then columns): whether
        it holds source data (:func:`reached_blocks`).

    Returns
    -------
    dask.array.Array
        Same shape, chunks, dtype and values; its graph holds only the tasks of the
        reached blocks (and what they need).
    """
    import dask
    import dask.array as da

    if hits.all():
        return out
    bands, widths = out.chunks[-2], out.chunks[-1]
    ys = np.concatenate([[0], np.cumsum(bands)]).astype(int)
    xs = np.concatenate([[0], np.cumsum(widths)]).astype(int)

    def nan(i: int, j: int, cols: tuple[int, ...]) -> Any:
        return da.full((*out.shape[:-2], int(ys[j] - ys[i]), sum(cols)), np.nan,
                       dtype=out.dtype, chunks=(*out.chunks[:-2], bands[i:j], cols))

    state = ["all" if h.all() else "none" if not h.any() else "mixed" for h in hits]
    pieces, i = [], 0
    while i < len(bands):  # runs of rows of blocks alike; a mixed row block by block
        j = i + 1
        while state[i] != "mixed" and j < len(bands) and state[j] == state[i]:
            j += 1
        if state[i] == "all":
            pieces.append(out[..., ys[i]:ys[j], :])
        elif state[i] == "none":
            pieces.append(nan(i, j, widths))
        else:
            pieces.append(da.concatenate(
                [out[..., ys[i]:ys[j], xs[k]:xs[k + 1]] if hits[i, k] else nan(i, j, (w,))
                 for k, w in enumerate(widths)], axis=-1))
        i = j
    res = da.concatenate(pieces, axis=-2) if len(pieces) > 1 else pieces[0]
    # without the unreached blocks' numpy.full tasks (regions are computed unoptimised)
    from dask.highlevelgraph import HighLevelGraph
    from dask.optimization import cull

    dsk, _ = cull(dict(res.__dask_graph__()), list(dask.core.flatten(res.__dask_keys__())))
    return da.Array(HighLevelGraph.from_collections(res.name, dsk), res.name, res.chunks,
                    res.dtype)


class RegularResampler(ProjResampler):
    """Sources on a regular grid of a PROJ CRS (module docstring)."""

    location = "regular"

    def check(self, source: Geolocated, grid: Grid, method: str) -> None:
        """Refuse what needs the grid's plane when the source is in another CRS.

        Raises
        ------
        RegridError
            For a helioprojective grid; for ``conservative`` (and ``bilinear`` of an
            unevenly spaced source) when the source is not in the grid's CRS.
        """
        super().check(source, grid, method)
        if same_plane(source, grid):
            return
        if method == "conservative":
            raise RegridError(
                f"{source.path.name}: conservative resampling weighs the overlaps of cell "
                f"bounds in one CRS, and this source is in {source.crs.name!r}, the grid in "
                f"{grid.pyproj_crs.name!r}. Use bucket_average (a grid coarser than the "
                "source), bilinear or nearest, or reproject the file to the grid's CRS.")
        if method == "bilinear" and not source.evenly_spaced:
            raise RegridError(
                f"{source.path.name}: bilinear interpolation of unevenly spaced coordinates "
                f"works in the grid's CRS, and this source is in {source.crs.name!r}, the grid "
                f"in {grid.pyproj_crs.name!r}. Use nearest (or bucket_average onto a coarser "
                "grid).")

    def resample(self, data: xr.DataArray, source: Geolocated, grid: Grid, method: str, *,
                 flag_values: Sequence[int] | None, fast_path: bool,
                 min_valid_fraction: float) -> Any:
        """Resample one variable; exact block reductions first when ``fast_path``.

        See :meth:`esdc.regrid.base.Resampler.resample`.
        """
        if method == "conservative":
            return conservative(data.astype("float32"), source, grid, min_valid_fraction)
        if method == "bilinear" and not source.evenly_spaced:
            return rectilinear_bilinear(data.astype("float32"), source, grid)
        cats = np.asarray(flag_values, dtype=data.dtype) if method == "bucket_mode" else None
        blocks = aligned_blocks(source, grid) if fast_path else None
        out = None
        if blocks is not None and (method.startswith("bucket") or blocks[:2] == (1, 1)):
            out = aligned(data, source, grid, method, blocks, cats)
        elif fast_path and method == "bucket_average":
            out = regular_bucket_average(data, source, grid)
        elif fast_path and method == "bucket_mode":
            assert cats is not None
            out = regular_bucket_mode(data, source, grid, cats)
        if out is None:
            if method == "nearest":
                out = nearest(data, source, grid)
            elif method == "bilinear":
                out = bilinear(data, source, grid)
            else:
                out = bucket(data, source, grid, method, cats)
        return out if method == "bucket_mode" else out.astype("float32")
