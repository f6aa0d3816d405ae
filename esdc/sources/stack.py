"""Many NetCDF granules of one grid stacked along time, located once.

Opening a file with xarray costs about 20 ms of Python (backend, decoding, indexes) and
locating it (CF axes, north-up flip, longitude wrap) as much again: 1,000 daily granules
would spend 40 s before any pixel is read. A series of granules that share one grid
needs that only once: the first granule is opened as :func:`esdc.sources.netcdf.open_raw`
does; of every other granule only its time values, its variables' shapes and its 1-D
grid coordinates are read (netCDF4, about 2 ms), each variable becomes one lazy Dask
block per granule (read by netCDF4 when computed, not masked or scaled, as xarray
reads it), and the stacked dataset is located once
(:func:`esdc.sources.netcdf.geolocate_dataset`). The result equals concatenating the
granules opened one by one, value for value (tests/sources/test_granules.py).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import netCDF4
import numpy as np
import xarray as xr
from xarray.backends.netCDF4_ import NETCDF4_PYTHON_LOCK

from esdc.conventions import TIME_DIM
from esdc.errors import SourceError
from esdc.recipe import SourceSpec
from esdc.sources.base import Geolocated
from esdc.sources.netcdf import geolocate_dataset, open_raw

__all__ = ["describe_netcdf", "open_netcdf_series"]


def _read(path: str, name: str) -> np.ndarray:
    """One variable of one file, raw (no mask, no scale), as xarray opens it unmasked.

    The netCDF-C and HDF5 libraries are not thread-safe: reads hold xarray's lock of them,
    so they never overlap with xarray's own reads of other sources on Dask threads.
    """
    with NETCDF4_PYTHON_LOCK, netCDF4.Dataset(path) as nc:
        var = nc[name]
        var.set_auto_maskandscale(False)
        return np.asarray(var[...])


#: Granule metadata read so far, by (path, size, mtime_ns): the build reads it in the
#: fetch threads while other granules download (:func:`describe_netcdf`).
_DESCRIBED: dict[tuple[str, int, int], dict[str, Any]] = {}
_DESCRIBED_LOCK = threading.Lock()


def describe_netcdf(path: str | Path) -> dict[str, Any]:
    """A granule's metadata for stacking: raw times, variables' dims/shapes, 1-D coordinates.

    Read once per file version (path, size, mtime) and remembered, so the build can call
    it as each granule arrives (``fetch_granules(on_fetched=...)``).

    Parameters
    ----------
    path : str or pathlib.Path
        A local NetCDF file.

    Returns
    -------
    dict
        ``time`` (raw values, 1-D, empty without a ``time`` variable), ``time_units``,
        ``calendar``, ``vars`` (name -> (dims, shape, dtype)), ``coords`` (1-D dimension
        coordinates other than time -> values).

    Raises
    ------
    OSError
        If the file cannot be read as NetCDF.
    """
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _DESCRIBED_LOCK:
        if key in _DESCRIBED:
            return _DESCRIBED[key]
    with NETCDF4_PYTHON_LOCK, netCDF4.Dataset(path) as nc:
        out: dict[str, Any] = {"time": np.empty(0), "time_units": None, "calendar": "standard",
                               "vars": {}, "coords": {}}
        if TIME_DIM in nc.variables:
            time = nc[TIME_DIM]
            time.set_auto_maskandscale(False)
            out.update(time=np.asarray(time[...]).reshape(-1),
                       time_units=getattr(time, "units", None),
                       calendar=getattr(time, "calendar", "standard"))
        for name, v in nc.variables.items():
            out["vars"][name] = (tuple(v.dimensions), tuple(v.shape), np.dtype(v.dtype))
            if v.dimensions == (name,) and name != TIME_DIM:
                out["coords"][name] = np.asarray(v[...])
    with _DESCRIBED_LOCK:
        if len(_DESCRIBED) > 200_000:
            _DESCRIBED.clear()
        _DESCRIBED[key] = out
    return out


def _same_but_time(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Same dims, dtype and shape but for the length along time."""
    (dims, shape, dtype), (dims_b, shape_b, dtype_b) = a, b
    keep = [i for i, d in enumerate(dims) if d != TIME_DIM]
    return dims == dims_b and dtype == dtype_b and [shape[i] for i in keep] == [
        shape_b[i] for i in keep]


def open_netcdf_series(spec: SourceSpec, paths: Sequence[Path]) -> Geolocated | None:
    """Open NetCDF granules of one grid as one lazy series (one Dask block per granule).

    Parameters
    ----------
    spec : SourceSpec
        The source (``format: netcdf``), its variables naming the granules' variables.
    paths : sequence of pathlib.Path
        The granules, local files, in time order.

    Returns
    -------
    Geolocated or None
        Variables ``(time, ..., y, x)`` with every granule's time steps; ``None`` when
        the granules cannot be stacked this way (no ``time`` dimension in the files,
        a declared georeference, or a time axis that is not a dimension of every
        variable): open them one by one then.

    Raises
    ------
    SourceError
        If a granule cannot be read, has other variables' dims or shapes, or another
        grid than the first.
    """
    if spec.format != "netcdf" or spec.georeference is not None or not paths:
        return None
    what = f"sources.{spec.name}"
    first = open_raw(spec, paths[0])
    names = list(dict.fromkeys(v.source for v in spec.variables))
    if TIME_DIM not in first.dims or any(
            n not in first.data_vars or TIME_DIM not in first[n].dims for n in names):
        return None
    dims = {d for n in names for d in first[n].dims if d != TIME_DIM}
    grid_coords = [str(c) for c in first.coords if first[c].dims and set(first[c].dims) <= dims
                   and TIME_DIM not in first[c].dims]
    try:
        parts = [describe_netcdf(p) for p in paths]
        missing = [(p, n) for p, part in zip(paths, parts, strict=True)
                   for n in [*names, *grid_coords, TIME_DIM]
                   if n not in part["vars"] or (n in grid_coords and n not in part["coords"])]
        if missing:
            raise KeyError(f"{missing[0][0]} has no variable {missing[0][1]!r}")
    except (OSError, KeyError) as exc:
        raise SourceError(f"{what}: a granule cannot be read as NetCDF: {exc}; check the files "
                          "and `format`.") from None
    head = parts[0]
    for p, part in zip(paths[1:], parts[1:], strict=True):
        same = all(_same_but_time(part["vars"][n], head["vars"][n]) for n in names)
        same = same and all(
            np.array_equal(part["coords"][c], head["coords"][c]) for c in grid_coords)
        if not same:
            raise SourceError(f"{what}: {p} differs from {paths[0]} in its variables' dims, "
                              "grid; granules of one source share one grid.")
    attrs = dict(first[TIME_DIM].attrs)
    # each granule's times in its own units (files often count from their own day)
    times = np.concatenate([xr.coding.times.decode_cf_datetime(
        part["time"], part["time_units"], part["calendar"]).astype("datetime64[ns]")
        for part in parts])
    variables = {}
    for n in names:
        var = first[n]
        axis = var.dims.index(TIME_DIM)
        blocks = []
        for p, part in zip(paths, parts, strict=True):
            _dims, shape, dtype = part["vars"][n]
            blocks.append(da.from_delayed(dask.delayed(_read)(str(p), n), shape, dtype=dtype,
                                          name=f"esdc-granule-{n}-{Path(p).name}-"
                                               f"{dask.base.tokenize(str(p), n)}"))
        data = da.concatenate(blocks, axis=axis)
        variables[n] = xr.Variable(var.dims, data, attrs=var.attrs)
    coords = {c: first[c].variable for c in grid_coords}
    coords[TIME_DIM] = xr.Variable((TIME_DIM,), times, attrs=attrs)
    stacked = xr.Dataset(variables, coords=coords, attrs=first.attrs)
    # grid-mapping and bounds variables the locator reads (CF grid_mapping, bounds)
    extra = {k: first[k] for k in first.data_vars
             if k not in stacked and TIME_DIM not in first[k].dims}
    stacked = stacked.assign(extra)
    return geolocate_dataset(stacked, spec, Path(paths[0]))
