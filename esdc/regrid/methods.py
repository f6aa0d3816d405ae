"""Resampling methods, named once: the recipe schema, every resampler and the docs use these.

``nearest``
    nearest source pixel (within 0.75 source pixel).
``bilinear``
    bilinear interpolation between the four surrounding pixel centres.
``bucket_average``
    mean of the source pixels whose centres fall in each target cell (area mean when
    downsampling); NaN is skipped.
``bucket_mode``
    most frequent class among those pixels (categorical data); ties go to the first of
    ``flag_values``.
``conservative``
    area-weighted mean of the source cells overlapping each target cell, exact in both
    directions (down- and upsampling): weights are the areas of the overlaps of cell
    bounds (the file's CF ``bounds``, else midway between centres), on the sphere for
    geographic grids; NaN-aware: a cell is NaN unless valid source data cover at least
    ``min_valid_fraction`` (default 0.5) of its area (:mod:`esdc.regrid.conservative`).

The two bucket methods need target cells at least as large as the source's pixels (a
cell between pixel centres would stay empty): finer grids are refused at plan time, and
a source more than :data:`UPSAMPLING_WARN` times coarser than the grid is warned about
(:class:`esdc.errors.UpsamplingWarning`).

How each resampler carries them out is in its module (:mod:`esdc.regrid.regular`,
:mod:`esdc.regrid.swath`, :mod:`esdc.regrid.wcs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np

from esdc.errors import RegridError

__all__ = ["BUCKETS", "DEFAULT_MIN_VALID_FRACTION", "METHODS", "UPSAMPLING_WARN", "Method",
           "check_method", "mode_fill"]

Method = Literal["nearest", "bilinear", "bucket_average", "bucket_mode", "conservative"]
"""A resampling method (the recipe's ``variables[].resampling``)."""

#: The method names, in the order above.
METHODS: tuple[str, ...] = get_args(Method)

#: The methods that average or count the source pixels whose centres fall in a cell.
BUCKETS = ("bucket_average", "bucket_mode")

#: Share of a cell's area valid source data must cover (``conservative``).
DEFAULT_MIN_VALID_FRACTION = 0.5

#: A source whose pixels are more than this many grid cells wide is warned about.
UPSAMPLING_WARN = 2.0


def check_method(method: str, flag_values: Sequence[int] | None) -> None:
    """Refuse an unknown method, or ``bucket_mode`` without its classes.

    Parameters
    ----------
    method : str
        The requested method.
    flag_values : sequence of int or None
        The classes of a categorical variable.

    Raises
    ------
    RegridError
        If ``method`` is not in :data:`METHODS`, or is ``bucket_mode`` and
        ``flag_values`` is empty.
    """
    if method not in METHODS:
        raise RegridError(f"resampling {method!r} is unknown; use one of {', '.join(METHODS)}.")
    if method == "bucket_mode" and not flag_values:
        raise RegridError("bucket_mode needs flag_values (the classes).")


def mode_fill(dtype: np.dtype) -> int:
    """The code ``bucket_mode`` writes where a cell holds no class.

    Parameters
    ----------
    dtype : numpy.dtype
        Dtype of the class codes.

    Returns
    -------
    int
        The dtype's maximum for integers, else -1.
    """
    return int(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else -1
