"""Per-variable statistics stored in the cube, used to normalise patches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from esdc.conventions import ATTR_STATISTICS
from esdc.storage import resolve

__all__ = ["cube_statistics", "normalisation", "read_statistics", "write_statistics"]


def cube_statistics(ds: xr.Dataset, variables: list[str]) -> dict[str, dict[str, float]]:
    """Mean, standard deviation, min, max and valid fraction of each variable.

    NaN cells are skipped. Computed with Dask in one pass per variable.

    Parameters
    ----------
    ds : xarray.Dataset
        The cube.
    variables : list of str
        Variable names.

    Returns
    -------
    dict
        ``{var: {"mean", "std", "min", "max", "valid_fraction"}}`` in the variable's units.
    """
    import dask

    out = {}
    for v in variables:
        x = ds[v].astype("float64")
        mean, std, lo, hi, valid = dask.compute(x.mean(), x.std(), x.min(), x.max(),
                                                x.notnull().mean())
        out[v] = {"mean": float(mean), "std": float(std), "min": float(lo), "max": float(hi),
                  "valid_fraction": float(valid)}
    return out


def write_statistics(path: str | Path, stats: dict[str, dict[str, float]]) -> None:
    """Store statistics as ``esdc_statistics`` attributes of each variable, reconsolidate."""
    resolve(path).update(attrs={v: {ATTR_STATISTICS: s} for v, s in stats.items()})


def read_statistics(ds: xr.Dataset, variables: list[str]) -> dict[str, dict[str, Any]] | None:
    """Statistics stored in the cube, or None if any variable lacks them."""
    out = {}
    for v in variables:
        s = ds[v].attrs.get(ATTR_STATISTICS)
        if s is None:
            return None
        out[v] = dict(s)
    return out


def normalisation(stats: dict[str, dict[str, Any]], variables: list[str]) -> tuple[np.ndarray,
                                                                                    np.ndarray]:
    """``(mean, scale)`` arrays of shape ``(C,)``; a zero std gives scale 1."""
    mean = np.array([stats[v]["mean"] for v in variables], dtype="float32")
    std = np.array([stats[v]["std"] for v in variables], dtype="float32")
    return mean, np.where(std > 0, std, 1.0).astype("float32")
