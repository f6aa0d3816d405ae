"""Helpers for tests, usable by users too: a laziness guard and a synthetic cube factory."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from esdc.conventions import (
    ATTR_GRID,
    ATTR_RECIPE,
    ATTR_RECIPE_SHA256,
    ATTR_SOURCES,
    ATTR_VERSIONS,
    CONVENTIONS,
)
from esdc.grid import Grid

__all__ = ["CountingScheduler", "new_cube", "raise_if_dask_computes", "stop_process"]


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    """Stop a server started by a test or benchmark: SIGTERM, then SIGKILL after ``timeout``.

    Parameters
    ----------
    proc : subprocess.Popen
        The running process (a uvicorn server, JupyterLab, an MLflow server...).
    timeout : float
        Seconds to wait for a clean exit before killing it.
    """
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class CountingScheduler:
    """A Dask scheduler that counts computes and fails past ``max_computes``.

    After xarray's test helper of the same name.
    """

    def __init__(self, max_computes: int = 0) -> None:
        self.total_computes = 0
        self.max_computes = max_computes

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        """Count this compute, fail past the limit, else run it synchronously."""
        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(
                f"too many dask computes: {self.total_computes} > {self.max_computes}"
            )
        return dask.get(dsk, keys, **kwargs)


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[CountingScheduler]:
    """Within the block, computing any Dask collection more than ``max_computes`` times raises.

    Raises
    ------
    RuntimeError
        On the first compute past the limit.
    """
    sched = CountingScheduler(max_computes)
    with dask.config.set(scheduler=sched):
        yield sched


def new_cube(
    shape: tuple[int, int] = (18, 36),
    times: int = 3,
    variables: tuple[str, ...] = ("a", "b"),
    bbox: tuple[float, float, float, float] = (-180.0, -90.0, 180.0, 90.0),
    seed: int = 0,
    chunks: dict[str, int] | None = None,
) -> xr.Dataset:
    """A small, valid synthetic cube (passes :func:`esdc.verify.verify_cube`).

    Parameters
    ----------
    shape : (int, int)
        ``(ny, nx)`` of a geographic grid over ``bbox``.
    times : int
        Monthly time steps from 2020-01 (0: static variables only).
    variables : tuple of str
        Names of float32 variables, dims ``(time, lat, lon)`` (``(lat, lon)`` if
        ``times == 0``), values ``N(0, 1)``.
    bbox : tuple of 4 float
        ``(west, south, east, north)`` in degrees.
    seed : int
        Random seed.
    chunks : dict, optional
        Dask chunks; NumPy-backed when omitted.

    Returns
    -------
    xarray.Dataset
    """
    dx = (bbox[2] - bbox[0]) / shape[1]
    dy = (bbox[3] - bbox[1]) / shape[0]
    time = list(pd.date_range("2020-01-01", periods=times, freq="MS")) if times else None
    grid = Grid.from_bbox("earth", "EPSG:4326", bbox, (dx, dy), time)
    rng = np.random.default_rng(seed)
    coords = grid.coords()
    dims = (("time",) if times else ()) + grid.dims
    size = ((times,) if times else ()) + grid.shape
    ds = xr.Dataset(
        {v: (dims, rng.standard_normal(size).astype("float32"),
             {"units": "1", "long_name": f"synthetic {v}", "grid_mapping": "crs"})
         for v in variables},
        coords={k: v for k, v in coords.items() if k != "time_bnds"},
    )
    if times:
        ds = ds.assign_coords(time_bnds=coords["time_bnds"])
    ds = ds.assign_coords(crs=xr.DataArray(0, attrs=grid.crs_attrs()))
    ds.attrs = {
        "Conventions": CONVENTIONS, "title": "synthetic esdc cube",
        ATTR_RECIPE: "", ATTR_RECIPE_SHA256: "", ATTR_SOURCES: "[]",
        ATTR_VERSIONS: "{}", ATTR_GRID: json.dumps(grid.to_dict()),
    }
    return ds.chunk(chunks) if chunks else ds
