"""The entry points: :func:`regrid` one variable onto a grid, :func:`overlaps`, :func:`coverage`.

They choose the resampler from how the source is located
(:func:`esdc.regrid.registry.resampler_for`); none knows any kind of source. :func:`regrid`
also guards against holes: the bucket methods onto cells smaller than the source's pixels
are refused, and a source more than twice as coarse as the grid is warned about
(:class:`esdc.errors.UpsamplingWarning`), both before anything is computed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import xarray as xr

from esdc.errors import RegridError, UpsamplingWarning
from esdc.grid import Grid
from esdc.regrid.base import Resampler, on_grid
from esdc.regrid.methods import (
    BUCKETS,
    DEFAULT_MIN_VALID_FRACTION,
    UPSAMPLING_WARN,
    check_method,
)
from esdc.regrid.registry import resampler_for
from esdc.sources.base import Geolocated

__all__ = ["coverage", "overlaps", "regrid"]


def _sizes(source: Geolocated, grid: Grid, scale: tuple[float, float]) -> tuple[str, str]:
    """The source pixel and the grid cell, in words with units."""
    gdx, gdy = grid.resolution
    unit = "degrees" if grid.is_geographic else (
        grid.pyproj_crs.axis_info[0].unit_name if grid.pyproj_crs.axis_info else "units")
    cell = f"{gdx:.6g}" if gdx == gdy else f"{gdx:.6g} x {gdy:.6g}"
    pixel = f"{scale[0] * gdx:.6g} x {scale[1] * gdy:.6g}"
    return f"{pixel} {unit}", f"{cell} {unit}"


def _guard(resampler: Resampler, source: Geolocated, grid: Grid, method: str,
           allow_upsampling: bool, what: str) -> None:
    """Refuse bucket methods onto finer cells; warn when upsampling by more than 2x."""
    scale = resampler.scale(source, grid)
    if scale is None:
        return
    sx, sy = scale
    if method in BUCKETS and max(sx, sy) > 1.0 + 1e-6:
        pixel, cell = _sizes(source, grid, scale)
        raise RegridError(
            f"{what}: {method} onto grid cells of {cell}, smaller than the source's pixels "
            f"({pixel}, {sx:.3g} x {sy:.3g} cells): cells between two pixel centres would "
            "stay empty, in stripes of NaN. Use resampling: conservative (area-weighted, "
            "exact when upsampling too), bilinear or nearest, or a grid at least as coarse "
            "as the source.")
    if max(sx, sy) > UPSAMPLING_WARN and not allow_upsampling:
        pixel, cell = _sizes(source, grid, scale)
        warnings.warn(UpsamplingWarning(
            f"{what}: the source's pixels ({pixel}) are {sx:.3g} x {sy:.3g} times the grid's "
            f"cells ({cell}): the layer is upsampled by more than {UPSAMPLING_WARN:g}x, "
            f"its cells {'interpolate' if method == 'bilinear' else 'repeat'} the source's "
            "pixels and add no detail. Use a coarser grid, or set `allow_upsampling: true` "
            "on the variable when this is intended."), stacklevel=3)


def regrid(data: xr.DataArray, source: Geolocated, grid: Grid, method: str, *,
           flag_values: Sequence[int] | None = None, fast_path: bool = True,
           min_valid_fraction: float = DEFAULT_MIN_VALID_FRACTION,
           allow_upsampling: bool = False, what: str | None = None) -> xr.DataArray:
    """Resample one source variable onto the grid, lazily.

    Parameters
    ----------
    data : xarray.DataArray
        Dims ``(..., source.ydim, source.xdim)``; float with NaN for missing values
        (integer class codes for ``bucket_mode``). Dask-backed.
    source : Geolocated
        Where the pixels of ``data`` are; its :attr:`~Geolocated.location` chooses the
        resampler (:mod:`esdc.regrid.regular`, :mod:`~esdc.regrid.swath`,
        :mod:`~esdc.regrid.wcs`).
    grid : Grid
        The target.
    method : {"nearest", "bilinear", "bucket_average", "bucket_mode", "conservative"}
        Resampling method (:mod:`esdc.regrid.methods`).
    flag_values : sequence of int, optional
        The classes, required for ``bucket_mode``.
    fast_path : bool
        Use exact block reductions when the grids are aligned, and a separable bucket
        average for regular sources in the grid's geographic CRS with non-integer
        factors (binned exactly as pyresample's ``BucketResampler``) (default);
        ``False`` forces pyresample (used by tests and benchmarks to compare).
    min_valid_fraction : float
        ``conservative``: share (0-1] of a cell's area that valid source data must cover,
        else the cell is NaN (default 0.5).
    allow_upsampling : bool
        Do not warn when the source is more than twice as coarse as the grid.
    what : str, optional
        The layer, for messages (e.g. ``sources.ostia variable sst``); default the file.

    Returns
    -------
    xarray.DataArray
        Dims ``(..., *grid.dims)``, shape ``(..., ny, nx)``, with the grid's
        coordinates; nothing is computed. Cells no source pixel reaches are NaN (the
        dtype's maximum for ``bucket_mode`` on integers; solar images give float32
        class codes with NaN).

    Raises
    ------
    RegridError
        For an unknown method, ``bucket_mode`` without ``flag_values``, data whose last
        dims are not the source's, a source the grid cannot take (e.g. a PROJ-located
        source onto a helioprojective grid, bilinear or conservative on a swath,
        conservative across CRSs), or a bucket method onto cells smaller than the
        source's pixels (naming both sizes).

    Warns
    -----
    UpsamplingWarning
        When the source's pixels are more than 2 grid cells wide along an axis and
        ``allow_upsampling`` is not set.
    """
    check_method(method, flag_values)
    if not 0.0 < min_valid_fraction <= 1.0:
        raise RegridError(f"min_valid_fraction={min_valid_fraction} must be in (0, 1].")
    if tuple(data.dims[-2:]) != (source.ydim, source.xdim):
        raise RegridError(f"data dims {data.dims} must end in ({source.ydim}, {source.xdim}).")
    resampler = resampler_for(source)
    resampler.check(source, grid, method)
    _guard(resampler, source, grid, method, allow_upsampling, what or source.path.name)
    out = resampler.resample(data, source, grid, method, flag_values=flag_values,
                             fast_path=fast_path, min_valid_fraction=min_valid_fraction)
    return on_grid(out, data, source, grid)


def overlaps(source: Geolocated, grid: Grid) -> bool:
    """True when some of the source falls on the grid; computes no pixel.

    Parameters
    ----------
    source : Geolocated
        An opened source.
    grid : Grid
        The target.

    Returns
    -------
    bool
        For sources in a PROJ CRS, whether the bounding boxes meet (compared in both
        CRSs, :func:`esdc.regrid.extent.footprint_overlaps`); for solar images, whether
        some of a lattice of their pixels lands on the grid (:mod:`esdc.regrid.wcs`).

    Raises
    ------
    RegridError
        If the source cannot go onto the grid at all.
    """
    resampler = resampler_for(source)
    resampler.check(source, grid, "nearest")
    return resampler.overlaps(source, grid)


def coverage(source: Geolocated, grid: Grid) -> dict[str, Any] | None:
    """Where a source lands on the grid, as recorded per layer (``esdc_coverage``).

    Parameters
    ----------
    source : Geolocated
        An opened source.
    grid : Grid
        The target.

    Returns
    -------
    dict or None
        ``{"bbox": [west, south, east, north], "pixel": [px, py]}``: the part of the
        grid's box the source covers (grid CRS units) and the size of a source pixel in
        grid cells (``None`` when not known); ``None`` when the resampler cannot tell
        where the source lands (solar images).
    """
    resampler = resampler_for(source)
    box = resampler.coverage(source, grid)
    if box is None:
        return None
    scale = resampler.scale(source, grid)
    return {"bbox": [round(v, 9) for v in box],
            "pixel": None if scale is None else [round(v, 6) for v in scale]}
