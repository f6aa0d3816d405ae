"""Bucket average and bucket mode with pyresample's ``BucketResampler`` (regular and swath).

``bucket_average``
    mean of the source pixels whose centres fall in each target cell (area mean when
    downsampling; ``BucketResampler.get_average``). NaN is skipped.
``bucket_mode``
    most frequent class among those pixels (``BucketResampler.get_fractions`` then
    arg-max). Ties go to the first of ``flag_values``.

The exact shortcuts of :mod:`esdc.regrid.blocks` are tried first by the regular resampler.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from esdc.grid import Grid
from esdc.regrid.extent import rectilinear_lonlats
from esdc.regrid.methods import mode_fill
from esdc.sources.base import Geolocated

__all__ = ["bucket"]

_BUCKETS: dict[tuple[Any, ...], Any] = {}


def _resampler(source: Geolocated, grid: Grid, shape: tuple[int, ...],
               chunks: tuple[int, ...]) -> Any:
    """The ``BucketResampler`` of a source geometry on the grid, shared between variables.

    One resampler per (source geometry, grid, chunks): variables of the same source (e.g.
    the three Blue Marble bands) then share the bin indices in the Dask graph, which are
    computed once instead of once per variable.
    """
    from pyresample.bucket import BucketResampler

    key = (str(source.path), source.ydim, source.xdim, shape, source.bbox, source.is_swath,
           grid, chunks)
    resampler = _BUCKETS.get(key)
    if resampler is None:
        if source.lons is not None and source.lats is not None:
            lons = da.from_array(source.lons, chunks=chunks)
            lats = da.from_array(source.lats, chunks=chunks)
        elif not source.evenly_spaced:
            lons, lats = _rectilinear(source, shape, chunks)
        else:
            lons, lats = source.area_definition().get_lonlats(chunks=chunks, dtype=np.float64)
        resampler = BucketResampler(grid.area_definition(), da.asarray(lons), da.asarray(lats))
        if len(_BUCKETS) >= 8:
            _BUCKETS.pop(next(iter(_BUCKETS)))
        _BUCKETS[key] = resampler
    return resampler


def _lonlat_block(*, x: np.ndarray, y: np.ndarray, crs_wkt: str, which: int,
                  block_info: dict[Any, Any] | None = None) -> np.ndarray:
    (r0, r1), (c0, c1) = block_info[None]["array-location"] if block_info else (
        (0, len(y)), (0, len(x)))
    return rectilinear_lonlats(x[c0:c1], y[r0:r1], crs_wkt)[which]


def _rectilinear(source: Geolocated, shape: tuple[int, ...],
                 chunks: tuple[int, ...]) -> tuple[da.Array, da.Array]:
    """Lazy lon/lat of every pixel of an unevenly spaced grid, chunked as the data."""
    assert source.crs is not None
    x = np.asarray(source.data[source.xdim].values, dtype="float64")
    y = np.asarray(source.data[source.ydim].values, dtype="float64")
    wkt = source.crs.to_wkt()
    blocks = da.core.normalize_chunks(chunks, shape[-2:])
    lons, lats = (da.map_blocks(_lonlat_block, x=x, y=y, crs_wkt=wkt, which=which,
                                dtype=np.float64, chunks=blocks) for which in (0, 1))
    return lons, lats


def bucket(data: xr.DataArray, source: Geolocated, grid: Grid, method: str,
           cats: np.ndarray | None) -> xr.DataArray:
    """Bucket average or mode of every leading plane of ``data``, lazily.

    Parameters
    ----------
    data : xarray.DataArray
        Dims ``(..., source.ydim, source.xdim)``; float with NaN (``bucket_average``) or
        class codes (``bucket_mode``).
    source : Geolocated
        A regular or swath source.
    grid : Grid
        The target, shape ``(ny, nx)``.
    method : {"bucket_average", "bucket_mode"}
        The reduction.
    cats : numpy.ndarray or None
        The classes of ``bucket_mode``, in order of preference for ties.

    Returns
    -------
    xarray.DataArray
        Shape ``(..., ny, nx)``, dims of ``data``: float32 averages (NaN where no pixel
        falls), or class codes of ``data``'s dtype (:func:`~esdc.regrid.methods.mode_fill`
        where none does).
    """
    chunks = data.data.chunksize[-2:]
    resampler = _resampler(source, grid, data.shape[-2:], chunks)
    lead_shape = data.shape[:-2]
    flat = data.data.reshape((-1, *data.shape[-2:])) if lead_shape else data.data[None]
    planes = []
    for k in range(flat.shape[0]):
        plane = flat[k].rechunk(chunks)
        if method == "bucket_average":
            planes.append(resampler.get_average(plane.astype("float32"), fill_value=np.nan))
        else:
            assert cats is not None
            fr = resampler.get_fractions(plane, categories=list(cats), fill_value=np.nan)
            stack = da.stack([fr[c] for c in cats])
            valid = da.isfinite(stack).any(axis=0)
            idx = da.argmax(da.where(da.isnan(stack), -1.0, stack), axis=0)
            fill = mode_fill(data.dtype)
            classes = idx.map_blocks(lambda i, c=cats: c[i], dtype=cats.dtype)
            planes.append(da.where(valid, classes, fill).astype(data.dtype))
    out = da.stack(planes).reshape((*lead_shape, *grid.shape))
    return xr.DataArray(out, dims=data.dims)
