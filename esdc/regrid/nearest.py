"""Nearest neighbour on the body's sphere, for regular sources and swaths alike.

Nearest neighbour within 0.75 source pixel, by great-circle (chord) distance on the body's
sphere: a KD-tree (``scipy.spatial.cKDTree``) is built and queried inside one Dask task
that returns plain source indices, so the graph runs on a multi-process ``distributed``
cluster (pyresample's lazy KD-tree object cannot be sent between workers). Regular
sources are first cut to the grid's box; swaths use their per-pixel lon/lat.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

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


def _nearest_index(src: Any, dst_area: Any, radius_m: float, body_radius: float) -> np.ndarray:
    """Flat index of the nearest source pixel of each grid cell; -1 beyond ``radius_m``.

    ``src`` is ``(lons, lats)`` (degrees, shape ``(ny_s, nx_s)``: a swath's, or those of
    an unevenly spaced grid) or a pyresample area; runs inside a Dask task. Returns int64
    of the grid's shape ``(ny, nx)``.
    """
    from scipy.spatial import cKDTree

    lons, lats = src if isinstance(src, tuple) else src.get_lonlats()
    lons, lats = np.asarray(lons, "float64").ravel(), np.asarray(lats, "float64").ravel()
    ny, nx = dst_area.shape
    out = np.full((ny, nx), -1, dtype=np.int64)
    valid = np.flatnonzero(np.isfinite(lons) & np.isfinite(lats) & (np.abs(lats) <= 90))
    if not valid.size:
        return out
    tree = cKDTree(_xyz(lons[valid], lats[valid], body_radius))
    del lons, lats
    chord = 2 * body_radius * np.sin(min(radius_m / (2 * body_radius), np.pi / 2))
    step = max(1, QUERY_CELLS // max(1, nx))  # the grid's cells are queried in row bands
    for r0 in range(0, ny, step):
        tlon, tlat = (np.asarray(a, "float64").ravel()
                      for a in dst_area.get_lonlats(data_slice=(slice(r0, r0 + step),
                                                                slice(None))))
        cells = np.flatnonzero(np.isfinite(tlon) & np.isfinite(tlat) & (np.abs(tlat) <= 90))
        if not cells.size:
            continue
        dist, j = tree.query(_xyz(tlon[cells], tlat[cells], body_radius),
                             distance_upper_bound=chord)
        hit = np.isfinite(dist)
        band = out[r0:r0 + step].reshape(-1)
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
    index = da.from_delayed(
        dask.delayed(_nearest_index, pure=True)(src, grid.area_definition(), 0.75 * step,
                                                body_radius),
        shape=grid.shape, dtype=np.int64)
    arr = data.data.astype("float32")
    arr = arr.rechunk({arr.ndim - 2: -1, arr.ndim - 1: -1})
    lead = "abcdefghijklmnopqrstuvw"[:arr.ndim - 2]
    out = da.blockwise(_take, lead + "yx", arr, lead + "ij", index, "yx", dtype="float32",
                       concatenate=True)
    return xr.DataArray(out, dims=data.dims)
