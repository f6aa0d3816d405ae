"""Conservative (area-weighted) resampling of rectilinear sources, exact both ways.

A target cell's value is the mean of the source cells overlapping it, each weighted by
the area of the overlap. Cells of two rectilinear grids of one CRS are rectangles in
that CRS, so the overlap of target cell ``(k, l)`` with source cell ``(i, j)`` is a
rectangle too, and its area factors into a row part and a column part
(:mod:`esdc.regrid.separable`):

- on a geographic grid the area of a cell between longitudes ``l1, l2`` and latitudes
  ``p1, p2`` on a sphere of radius ``R`` is ``R**2 * (l2 - l1) * (sin p2 - sin p1)``
  (longitudes in radians), exactly: the row weights are overlaps in ``sin(latitude)``,
  the column weights overlaps in longitude (wrapping at 360 degrees);
- on a projected grid, overlaps of lengths in the CRS's plane (an equal-area projection
  gives true areas).

Cell bounds come from the file's CF ``bounds`` when it gives them, else midway between
neighbouring centres (:meth:`esdc.sources.base.Geolocated.cell_bounds`), so unevenly
spaced coordinates (e.g. latitudes spaced as in Mercator) weigh correctly; a bound
beyond a pole is cut at it. The same weights serve up- and downsampling: a target cell
inside one source cell takes its value, a large one the area mean of the many it holds.

Missing values: a target cell is the mean over its valid overlaps, and NaN when those
cover less than ``min_valid_fraction`` of its area (default 0.5; the part of a cell
beyond the source counts as not covered). xarray-regrid's conservative method (flox)
infers edges from centres and corrects latitude by the median spacing, which fits
evenly spaced geographic grids only; these weights take the bounds as they are.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import xarray as xr

from esdc.grid import Grid
from esdc.regrid.separable import apply_separable, interval_overlaps, linear_weights
from esdc.sources.base import Geolocated

__all__ = ["conservative", "conservative_weights", "grid_bounds", "rectilinear_bilinear"]


def grid_bounds(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The grid's cell bounds: each centre plus and minus half a cell.

    Parameters
    ----------
    grid : Grid
        A grid of a PROJ CRS, shape ``(ny, nx)``.

    Returns
    -------
    ybounds, xbounds : numpy.ndarray
        Shapes ``(ny, 2)`` and ``(nx, 2)``: (low, high) per row (north first) and per
        column (west first), CRS units.
    """
    dx, dy = grid.resolution
    return (np.stack([grid.y - dy / 2, grid.y + dy / 2], axis=1),
            np.stack([grid.x - dx / 2, grid.x + dx / 2], axis=1))


def _sin_lat(b: np.ndarray) -> np.ndarray:
    return np.sin(np.deg2rad(np.clip(b, -90.0, 90.0)))


def conservative_weights(source: Geolocated, grid: Grid) -> tuple[
        sp.csr_matrix, sp.csr_matrix, np.ndarray, np.ndarray]:
    """Area weights of a rectilinear source on a grid of the same plane.

    Parameters
    ----------
    source : Geolocated
        A regular source (even or uneven spacing) in the grid's CRS (or both
        geographic).
    grid : Grid
        The target.

    Returns
    -------
    wy : scipy.sparse.csr_matrix
        ``(ny, ny_source)``: overlaps of rows, in ``sin(latitude)`` on geographic grids
        (unitless), else in CRS units.
    wx : scipy.sparse.csr_matrix
        ``(nx, nx_source)``: overlaps of columns, degrees (wrapping at 360) or CRS units.
    area_y, area_x : numpy.ndarray
        ``(ny,)`` and ``(nx,)``: each target row's and column's extent in those units;
        the overlap area of target ``(k, l)`` and source ``(i, j)`` is
        ``wy[k, i] * wx[l, j]``, the area of target ``(k, l)`` ``area_y[k] * area_x[l]``
        (on a sphere of radius R, times ``R**2 * pi / 180``).
    """
    syb, sxb = source.cell_bounds()
    gyb, gxb = grid_bounds(grid)
    if grid.pyproj_crs.is_geographic:
        syb, gyb = _sin_lat(syb), _sin_lat(gyb)
        period: float | None = 360.0
    else:
        period = None
    wy = interval_overlaps(gyb, syb)
    wx = interval_overlaps(gxb, sxb, period=period)
    return wy, wx, gyb[:, 1] - gyb[:, 0], gxb[:, 1] - gxb[:, 0]


def conservative(data: xr.DataArray, source: Geolocated, grid: Grid,
                 min_valid_fraction: float) -> xr.DataArray:
    """Area-weighted mean of the source cells in each grid cell (module docstring), lazily.

    Parameters
    ----------
    data : xarray.DataArray
        Dims ``(..., source.ydim, source.xdim)``, float with NaN for missing values.
    source : Geolocated
        A regular source in the grid's plane (:func:`esdc.regrid.extent.same_plane`).
    grid : Grid
        The target, shape ``(ny, nx)``.
    min_valid_fraction : float
        Share (0-1] of a cell's area that valid source data must cover.

    Returns
    -------
    xarray.DataArray
        float32, shape ``(..., ny, nx)``, dims of ``data``; NaN where valid data cover
        less than ``min_valid_fraction`` of the cell.
    """
    wy, wx, area_y, area_x = conservative_weights(source, grid)
    return apply_separable(data, source.ydim, source.xdim, wy, wx, area=(area_y, area_x),
                           min_fraction=min_valid_fraction, tile=grid.tile)


def rectilinear_bilinear(data: xr.DataArray, source: Geolocated, grid: Grid) -> xr.DataArray:
    """Bilinear interpolation of a rectilinear (unevenly spaced) source, lazily.

    Linear in each axis between the neighbouring source centres (a longitude axis that
    spans 360 degrees also between its last and first column); cells beyond the
    outermost centres, or with a NaN among their neighbours, are NaN.

    Parameters
    ----------
    data : xarray.DataArray
        Dims ``(..., source.ydim, source.xdim)``, float with NaN for missing values.
    source : Geolocated
        A regular source in the grid's plane.
    grid : Grid
        The target.

    Returns
    -------
    xarray.DataArray
        float32, shape ``(..., ny, nx)``, dims of ``data``.
    """
    x = np.asarray(source.data[source.xdim].values, dtype="float64")
    y = np.asarray(source.data[source.ydim].values, dtype="float64")
    wy = linear_weights(grid.y, y)
    gx = grid.x
    if grid.pyproj_crs.is_geographic:
        _, xb = source.cell_bounds()
        if xb[-1, 1] - xb[0, 0] >= 360.0 - 1e-6:  # global: interpolate across the seam
            x = np.concatenate([[x[-1] - 360.0], x, [x[0] + 360.0]])
            wx = linear_weights((gx - x[0]) % 360.0 + x[0], x)
            wx = _fold_seam(wx)
            return apply_separable(data, source.ydim, source.xdim, wy, wx, complete=True,
                                   tile=grid.tile)
    wx = linear_weights(gx, x)
    return apply_separable(data, source.ydim, source.xdim, wy, wx, complete=True,
                                   tile=grid.tile)


def _fold_seam(w: sp.csr_matrix) -> sp.csr_matrix:
    """Weights on ``[last - 360, x..., first + 360]`` folded back onto ``x``."""
    n = w.shape[1] - 2
    coo = w.tocoo()
    cols = coo.col - 1
    cols = np.where(cols < 0, n - 1, np.where(cols >= n, 0, cols))
    return sp.csr_matrix((coo.data, (coo.row, cols)), shape=(w.shape[0], n))
