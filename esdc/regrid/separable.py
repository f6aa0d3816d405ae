"""Separable resampling of rectilinear sources: one sparse weight matrix per axis.

Between two rectilinear grids of one CRS (1-D coordinates, even or uneven spacing) a
resampling whose weights factor into a row part and a column part,
``w[k, l, i, j] = wy[k, i] * wx[l, j]``, is two sparse matrix products per plane:

    out = (Wy @ (v * m) @ Wx.T) / (Wy @ m @ Wx.T)

with ``m`` the mask of finite values. :mod:`esdc.regrid.conservative` gives area
weights (overlaps of cell bounds), :func:`linear_weights` those of bilinear
interpolation. :func:`apply_separable` applies them lazily, in bands of target rows that
each read only the source rows they need.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import scipy.sparse as sp
import xarray as xr

__all__ = ["apply_separable", "interval_overlaps", "linear_weights"]

#: Source pixels (times leading planes) one task of :func:`apply_separable` reads at most.
BAND_PIXELS = 8_000_000


def interval_overlaps(target: np.ndarray, source: np.ndarray,
                      period: float | None = None) -> sp.csr_matrix:
    """Length of the overlap of every target interval with every source interval.

    Parameters
    ----------
    target : numpy.ndarray
        Shape ``(nt, 2)``: (low, high) of each target cell.
    source : numpy.ndarray
        Shape ``(ns, 2)``: (low, high) of each source cell; the cells do not overlap
        each other (any order).
    period : float, optional
        The axis wraps with this period (360 for longitudes): source cells are also
        compared shifted by one period either way.

    Returns
    -------
    scipy.sparse.csr_matrix
        Shape ``(nt, ns)``, float64: overlap lengths (zero entries not stored).
    """
    target = np.asarray(target, dtype="float64")
    source = np.asarray(source, dtype="float64")
    order = np.argsort(source[:, 0], kind="stable")
    lo, hi = source[order, 0], source[order, 1]
    hi_run = np.maximum.accumulate(hi)  # non-decreasing even if cells touch unevenly
    shifts = (0.0,) if period is None else (-period, 0.0, period)
    rows_all, cols_all, vals_all = [], [], []
    for shift in shifts:
        a, b = target[:, 0] - shift, target[:, 1] - shift
        first = np.searchsorted(hi_run, a, side="right")
        last = np.searchsorted(lo, b, side="left")
        counts = np.maximum(last - first, 0)
        total = int(counts.sum())
        if total == 0:
            continue
        rows = np.repeat(np.arange(len(target)), counts)
        offset = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        cols = np.repeat(first, counts) + offset
        val = np.minimum(b[rows], hi[cols]) - np.maximum(a[rows], lo[cols])
        keep = val > 0
        rows_all.append(rows[keep])
        cols_all.append(order[cols[keep]])
        vals_all.append(val[keep])
    if not rows_all:
        return sp.csr_matrix((len(target), len(source)))
    out = sp.coo_matrix((np.concatenate(vals_all), (np.concatenate(rows_all),
                                                    np.concatenate(cols_all))),
                        shape=(len(target), len(source)))
    return out.tocsr()


def linear_weights(target: np.ndarray, source: np.ndarray) -> sp.csr_matrix:
    """Weights of linear interpolation from source centres to target centres (1-D).

    Parameters
    ----------
    target : numpy.ndarray
        Shape ``(nt,)``: target cell centres.
    source : numpy.ndarray
        Shape ``(ns,)``: source centres, strictly monotonic (either direction).

    Returns
    -------
    scipy.sparse.csr_matrix
        Shape ``(nt, ns)``: two weights summing to 1 per target centre between the first
        and the last source centre (one on a source centre), none beyond them.
    """
    s = np.asarray(source, dtype="float64")
    t = np.asarray(target, dtype="float64")
    order = np.argsort(s)
    ss = s[order]
    inside = np.flatnonzero((t >= ss[0]) & (t <= ss[-1]))
    if ss.size == 1:
        return sp.csr_matrix((np.ones(inside.size), (inside, np.zeros(inside.size, int))),
                             shape=(t.size, s.size))
    j = np.clip(np.searchsorted(ss, t[inside], side="right") - 1, 0, ss.size - 2)
    f = (t[inside] - ss[j]) / (ss[j + 1] - ss[j])
    rows = np.concatenate([inside, inside])
    cols = np.concatenate([order[j], order[j + 1]])
    vals = np.concatenate([1.0 - f, f])
    keep = vals > 0
    return sp.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(t.size, s.size))


def _apply_block(block: np.ndarray, wy: sp.csr_matrix, wx: sp.csr_matrix,
                 area: tuple[np.ndarray, np.ndarray] | None, min_fraction: float,
                 complete: bool) -> np.ndarray:
    """``(Wy @ v @ Wx.T) / (Wy @ m @ Wx.T)`` of every leading plane of one block.

    ``block`` has shape ``(..., r, c)``; returns float32 ``(..., k, nx)``. With ``area``
    (row and column extents, shapes ``(k,)`` and ``(nx,)``), cells whose valid overlap is
    below ``min_fraction`` of their area are NaN; with ``complete``, cells any
    contributing pixel of which is NaN are.
    """
    *lead, r, c = block.shape
    k, nx = wy.shape[0], wx.shape[0]
    out = np.empty((*lead, k, nx), dtype=np.float32)
    least = None if area is None else (min_fraction - 1e-9) * np.outer(*area)
    if complete:
        full = np.outer(np.asarray(wy.sum(axis=1)).ravel(), np.asarray(wx.sum(axis=1)).ravel())
    # one leading plane at a time: the float64 products of all planes at once held
    # several times the block (12 months of a band: hundreds of MB)
    for plane, dst in zip(block.reshape(-1, r, c), out.reshape(-1, k, nx), strict=True):
        v = plane.astype("float64")
        m = np.isfinite(v)
        v = np.where(m, v, 0.0)
        num = np.asarray(wy @ (wx @ v.T).T)  # (k, nx)
        den = np.asarray(wy @ (wx @ m.astype("float64").T).T)
        with np.errstate(invalid="ignore", divide="ignore"):
            res = np.where(den > 0, num / den, np.nan)
        if least is not None:
            res[den < least] = np.nan
        if complete:
            res[den < full * (1 - 1e-9)] = np.nan
        dst[...] = res
    return out


def _bands(wy: sp.csr_matrix, width: int, planes: int,
           nx: int = 1, tile_rows: int | None = None) -> list[tuple[int, int, int, int]]:
    """``(k0, k1, r0, r1)``: target rows ``k0:k1`` read source rows ``r0:r1`` (-1: none).

    Consecutive target rows join a band while its source rows times ``width`` times
    ``planes``, and its target rows times ``nx`` times ``planes`` (an upsampled band
    holds more cells than it reads pixels), stay within :data:`BAND_PIXELS`, and (with
    ``tile_rows``) while no multiple of ``tile_rows`` falls inside it.
    """
    budget = max(1, BAND_PIXELS // max(1, width * planes))
    rows_out = max(1, BAND_PIXELS // max(1, nx * planes))
    out: list[tuple[int, int, int, int]] = []
    k0, r0, r1 = 0, -1, -1
    for k in range(wy.shape[0]):
        cols = wy.indices[wy.indptr[k]:wy.indptr[k + 1]]
        if cols.size == 0:
            continue
        lo, hi = int(cols.min()), int(cols.max()) + 1
        if r0 < 0:
            r0, r1 = lo, hi
        elif (max(r1, hi) - min(r0, lo) > budget or k - k0 >= rows_out
              or (tile_rows and k % tile_rows == 0)) and k > k0:
            out.append((k0, k, r0, r1))
            k0, r0, r1 = k, lo, hi
        else:
            r0, r1 = min(r0, lo), max(r1, hi)
    out.append((k0, wy.shape[0], r0, r1))
    return out


def apply_separable(data: xr.DataArray, ydim: str, xdim: str, wy: sp.csr_matrix,
                    wx: sp.csr_matrix, *, area: tuple[np.ndarray, np.ndarray] | None = None,
                    min_fraction: float = 0.0, complete: bool = False,
                    tile: tuple[int, int] | None = None) -> xr.DataArray:
    """Resample with separable weights, lazily, one task per band of target rows.

    Parameters
    ----------
    data : xarray.DataArray
        Dims ``(..., ydim, xdim)``, Dask-backed; float with NaN for missing values.
    ydim, xdim : str
        Its row and column dims.
    wy : scipy.sparse.csr_matrix
        Shape ``(ny_target, ny_source)``: row weights.
    wx : scipy.sparse.csr_matrix
        Shape ``(nx_target, nx_source)``: column weights.
    area : tuple of numpy.ndarray, optional
        ``(area_y, area_x)``, shapes ``(ny_target,)`` and ``(nx_target,)``: each target
        cell's extent in the units of the weights (its area is their product).
    min_fraction : float
        With ``area``: cells whose valid source overlap covers less than this share of
        their area are NaN.
    complete : bool
        Cells any contributing source pixel of which is NaN are NaN (interpolation).
    tile : tuple of 2 int, optional
        The grid's :attr:`~esdc.grid.Grid.tile`: where the grid takes more than one band,
        no band crosses a multiple of its rows.

    Returns
    -------
    xarray.DataArray
        float32, shape ``(..., ny_target, nx_target)``, dims of ``data``; NaN where no
        weight reaches a valid pixel. Nothing is computed.
    """
    used = np.flatnonzero(np.asarray(abs(wx).sum(axis=0)).ravel() > 0)
    ny, nx = wy.shape[0], wx.shape[0]
    lead_shape = data.shape[:-2]
    arr = data.data
    if used.size == 0:
        return xr.DataArray(da.full((*lead_shape, ny, nx), np.nan, dtype="float32"),
                            dims=data.dims)
    c0, c1 = int(used[0]), int(used[-1]) + 1
    arr = arr[..., c0:c1]
    wx = wx[:, c0:c1].tocsr()
    lead_chunks = arr.chunks[:-2]
    planes = max((max(c) for c in lead_chunks), default=1)
    pieces = []
    bands = _bands(wy, c1 - c0, planes, nx)
    if len(bands) > 1 and tile is not None:  # split anyway: along the rows of regions
        bands = _bands(wy, c1 - c0, planes, nx, tile[0])
    for k0, k1, r0, r1 in bands:
        if r0 < 0:
            pieces.append(da.full((*lead_shape, k1 - k0, nx), np.nan, dtype="float32",
                                  chunks=(*lead_chunks, (k1 - k0,), (nx,))))
            continue
        piece = arr[..., r0:r1, :].rechunk({arr.ndim - 2: -1, arr.ndim - 1: -1})
        band_area = None if area is None else (area[0][k0:k1], area[1])
        pieces.append(piece.map_blocks(
            _apply_block, wy[k0:k1, r0:r1].tocsr(), wx, band_area, min_fraction, complete,
            dtype="float32", chunks=(*lead_chunks, (k1 - k0,), (nx,))))
    out: Any = pieces[0] if len(pieces) == 1 else da.concatenate(pieces, axis=-2)
    return xr.DataArray(out, dims=data.dims)
