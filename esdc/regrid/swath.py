"""Resampling of swaths and curvilinear grids: per-pixel longitude and latitude.

``nearest`` searches a KD-tree of the pixel centres (:mod:`esdc.regrid.nearest`);
``bucket_average`` and ``bucket_mode`` bin the pixel centres with pyresample's
``BucketResampler`` (:mod:`esdc.regrid.bucket`). ``bilinear`` is refused (the pixels form
no grid to interpolate in), and so is ``conservative`` (no cell bounds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from esdc.errors import RegridError
from esdc.grid import Grid
from esdc.regrid.bucket import bucket
from esdc.regrid.extent import ProjResampler
from esdc.regrid.nearest import nearest
from esdc.sources.base import Geolocated

__all__ = ["SwathResampler"]


class SwathResampler(ProjResampler):
    """Sources located by per-pixel lon/lat (module docstring)."""

    location = "swath"

    def check(self, source: Geolocated, grid: Grid, method: str) -> None:
        """Refuse a helioprojective grid, ``bilinear`` and ``conservative``.

        Raises
        ------
        RegridError
            Naming the methods a swath can use.
        """
        super().check(source, grid, method)
        if method in ("bilinear", "conservative"):
            why = ("the pixels form no grid to interpolate in" if method == "bilinear" else
                   "its pixels have centres but no cell bounds to weigh")
            raise RegridError(
                f"{source.path.name}: {method} resampling of a swath/curvilinear source is "
                f"not supported ({why}); use nearest or bucket_average.")

    def resample(self, data: xr.DataArray, source: Geolocated, grid: Grid, method: str, *,
                 flag_values: Sequence[int] | None, fast_path: bool,
                 min_valid_fraction: float) -> Any:
        """Resample one variable. See :meth:`esdc.regrid.base.Resampler.resample`."""
        if method == "nearest":
            return nearest(data, source, grid)
        cats = np.asarray(flag_values, dtype=data.dtype) if method == "bucket_mode" else None
        out = bucket(data, source, grid, method, cats)
        return out if method == "bucket_mode" else out.astype("float32")
