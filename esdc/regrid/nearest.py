"""Nearest neighbour on the body's sphere, for regular sources and swaths alike.

Nearest neighbour within 0.75 source pixel, by great-circle (chord) distance on the body's
sphere: a KD-tree (``scipy.spatial.cKDTree``) is built and queried inside a Dask task
that returns plain source indices, so the graph runs on a multi-process ``distributed``
cluster (pyresample's lazy KD-tree object cannot be sent between workers). Regular
sources are first cut to the grid's box; swaths use their per-pixel lon/lat. For a
geographic regular source the grid is searched in bands of about :data:`QUERY_CELLS`
cells, one task each, among the source rows within the radius of the band (the same
answer as one whole-grid search, in chunks that do not grow with the grid); other
sources are searched in one task.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.delayed import Delayed

from esdc.grid import Grid
from esdc.regrid.extent import crop, rectilinear_lonlats
from esdc.sources.base import Geolocated

__all__ = ["nearest"]


#: Grid cells whose nearest pixel is looked up at once (their coordinates, a few bytes
#: times this, are the temporary memory of the search).
QUERY_CELLS = 1_000_000


def _xyz(lons: np.ndarray, lats: np.ndarray, radius: float) -> np.ndarray:
    """Cartesian ``(n, 3)`` points of degrees ``lons``/``lats`` on a sphere of ``radius``."""
    lon, lat = np.deg2rad(lons), np.deg2rad(lats)
    return radius * np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon),
                              np.sin(lat)], axis=-1)


def _source_rows(area: Any, rows: tuple[int, int], dst_area: Any, radius_m: float,
                 body_radius: float) -> slice:
    """The rows of a geographic source ``area`` within ``radius_m`` of grid ``rows``.

    A great-circle distance is at least the difference in latitude, so no pixel of the
    other rows can be the nearest within the radius.
    """
    lat = np.asarray(dst_area.get_lonlats(data_slice=(slice(*rows), slice(None)))[1])
    lat = lat[np.isfinite(lat)]
    if not lat.size:
        return slice(0, 0)
    margin = np.rad2deg(radius_m / body_radius) * 1.01 + 1e-9
    ys = np.asarray(area.projection_y_coords, "float64")  # row centres, degrees
    keep = np.flatnonzero((ys >= lat.min() - margin) & (ys <= lat.max() + margin))
    return slice(int(keep[0]), int(keep[-1]) + 1) if keep.size else slice(0, 0)


def _nearest_index(src: Any, dst_area: Any, radius_m: float, body_radius: float,
                   rows: tuple[int, int] | None = None) -> np.ndarray:
    """Flat index of the nearest source pixel of each grid cell; -1 beyond ``radius_m``.

    ``src`` is ``(lons, lats)`` (degrees, shape ``(ny_s, nx_s)``: a swath's, or those of
    an unevenly spaced grid) or a pyresample area; runs inside a Dask task. Returns int64
    of shape ``(ny, nx)``: the grid's, or with ``rows`` (a geographic source area) the
    band of grid rows ``rows[0]:rows[1]``, searched among the source rows near it only.
    """
    from scipy.spatial import cKDTree

    ny, nx = dst_area.shape
    r_lo, r_hi = rows or (0, ny)
    first = 0  # flat index of the first source pixel searched
    if isinstance(src, tuple):
        lons, lats = src
    elif rows is None:
        lons, lats = src.get_lonlats()
    else:
        near = _source_rows(src, rows, dst_area, radius_m, body_radius)
        lons, lats = src.get_lonlats(data_slice=(near, slice(None)))
        first = near.start * src.shape[1]
    lons, lats = np.asarray(lons, "float64").ravel(), np.asarray(lats, "float64").ravel()
    out = np.full((r_hi - r_lo, nx), -1, dtype=np.int64)
    valid = np.flatnonzero(np.isfinite(lons) & np.isfinite(lats) & (np.abs(lats) <= 90))
    if not valid.size:
        return out
    tree = cKDTree(_xyz(lons[valid], lats[valid], body_radius))
    valid += first
    del lons, lats
    chord = 2 * body_radius * np.sin(min(radius_m / (2 * body_radius), np.pi / 2))
    step = max(1, QUERY_CELLS // max(1, nx))  # the grid's cells are queried in row bands
    for r0 in range(r_lo, r_hi, step):
        tlon, tlat = (np.asarray(a, "float64").ravel()
                      for a in dst_area.get_lonlats(data_slice=(slice(r0, min(r0 + step, r_hi)),
                                                                slice(None))))
        cells = np.flatnonzero(np.isfinite(tlon) & np.isfinite(tlat) & (np.abs(tlat) <= 90))
        if not cells.size:
            continue
        dist, j = tree.query(_xyz(tlon[cells], tlat[cells], body_radius),
                             distance_upper_bound=chord)
        hit = np.isfinite(dist)
        band = out[r0 - r_lo:r0 - r_lo + step].reshape(-1)
        band[cells[hit]] = valid[j[hit]]
    return out


def _take(block: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``block`` ``(..., ny_s, nx_s)`` at flat ``index`` ``(ny, nx)``; NaN where it is -1."""
    flat = block.reshape(*block.shape[:-2], -1)
    out = flat[..., np.maximum(index, 0)].astype("float32")
    out[..., index < 0] = np.nan
    return out


def nearest(data: xr.DataArray, source: Geolocated, grid: Grid) -> xr.DataArray:
    """Nearest source pixel within 0.75 pixel of each cell (module docstring), lazily.

    The search radius is 0.75 of the larger source pixel size (just over the
    half-diagonal), in metres on the body's sphere (semi-major axis) for
    geographic sources, in CRS units (metres) for projected ones.

    Parameters
    ----------
    data : xarray.DataArray
        Dims ``(..., source.ydim, source.xdim)``, lazy.
    source : Geolocated
        A regular or swath source.
    grid : Grid
        The target, shape ``(ny, nx)``.

    Returns
    -------
    xarray.DataArray
        float32, shape ``(..., ny, nx)``, dims of ``data``; NaN beyond the radius.
    """
    data, source = crop(data, source, grid, margin=2)
    assert source.crs is not None
    ell = source.crs.ellipsoid or grid.pyproj_crs.ellipsoid
    body_radius = ell.semi_major_metre if ell is not None else 6_371_008.8
    step = max(source.resolution)
    if source.crs.is_geographic:
        step = np.deg2rad(step) * body_radius
    src: Any
    if source.lons is not None:
        src = (source.lons, source.lats)
    elif not source.evenly_spaced:  # rectilinear: each pixel's lon/lat, made on the worker
        src = dask.delayed(rectilinear_lonlats, pure=True)(
            source.data[source.xdim].values, source.data[source.ydim].values,
            source.crs.to_wkt())
    else:
        src = source.area_definition()
    dst = grid.area_definition()
    search = dask.delayed(_nearest_index, pure=True)
    if isinstance(src, tuple | Delayed) or not source.crs.is_geographic:
        index = da.from_delayed(search(src, dst, 0.75 * step, body_radius),
                                shape=grid.shape, dtype=np.int64)
    else:  # bands of grid rows, each searched among the source rows near it
        ny, nx = grid.shape
        rows = max(1, QUERY_CELLS // max(1, nx))
        index = da.concatenate([
            da.from_delayed(search(src, dst, 0.75 * step, body_radius,
                                   rows=(r0, min(r0 + rows, ny))),
                            shape=(min(r0 + rows, ny) - r0, nx), dtype=np.int64)
            for r0 in range(0, ny, rows)], axis=0)
    arr = data.data.astype("float32")
    arr = arr.rechunk({arr.ndim - 2: -1, arr.ndim - 1: -1})
    lead = "abcdefghijklmnopqrstuvw"[:arr.ndim - 2]
    out = da.blockwise(_take, lead + "yx", arr, lead + "ij", index, "yx", dtype="float32",
                       concatenate=True)
    return xr.DataArray(out, dims=data.dims)
