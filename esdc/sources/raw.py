"""Raw binary reader: a flat array of declared dtype and shape, optionally gzipped."""

from __future__ import annotations

import gzip
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

from esdc.conventions import SPATIAL_DIMS
from esdc.errors import SourceError
from esdc.recipe import SourceSpec
from esdc.sources.base import Geolocated, georeferenced

__all__ = ["open_raw"]


def _decode(path: str, dtype: str, shape: tuple[int, ...], compression: str) -> np.ndarray:
    opener = gzip.open if compression == "gzip" else open
    with opener(path, "rb") as f:
        buf = f.read()
    arr = np.frombuffer(buf, dtype=dtype)
    if arr.size != int(np.prod(shape)):
        raise SourceError(f"{path} holds {arr.size} values of {dtype}, but the recipe declares "
                          f"shape {list(shape)} ({int(np.prod(shape))} values).")
    return arr.reshape(shape)


def open_raw(spec: SourceSpec, path: Path) -> Geolocated:
    """Open a raw (optionally gzip-compressed) binary array lazily.

    The file's size is checked now for uncompressed files and when the data are
    computed for gzip ones.

    Parameters
    ----------
    spec : SourceSpec
        The recipe's source: ``dtype``, ``shape`` (storage order, matching
        ``georeference.dims``), ``compression`` and ``georeference``.
    path : pathlib.Path
        The file.

    Returns
    -------
    Geolocated
        One variable named by the single entry of ``spec.variables``.

    Raises
    ------
    SourceError
        If the size of an uncompressed file does not match ``shape`` × ``dtype``.
    """
    assert spec.dtype is not None and spec.shape is not None and spec.georeference is not None
    shape = tuple(spec.shape)
    dtype = np.dtype(spec.dtype)
    if spec.compression == "none" and path.stat().st_size != int(np.prod(shape)) * dtype.itemsize:
        raise SourceError(
            f"sources.{spec.name}: {path} is {path.stat().st_size} bytes, but shape "
            f"{list(shape)} of {dtype} needs {int(np.prod(shape)) * dtype.itemsize}."
        )
    geo = spec.georeference
    dims = tuple(geo.dims) if geo.dims else SPATIAL_DIMS[0]
    if len(dims) != len(shape):
        raise SourceError(f"sources.{spec.name}: shape {list(shape)} and georeference.dims "
                          f"{list(dims)} differ in length.")
    arr = da.from_delayed(
        dask.delayed(_decode, pure=True)(str(path), dtype.str, shape, spec.compression),
        shape=shape, dtype=dtype)
    ds = xr.Dataset({spec.variables[0].source: (dims, arr)})
    return georeferenced(ds, geo, path, f"sources.{spec.name}")
