"""Zarr reader: a local or remote Zarr store (v2 or v3) as a source, opened lazily.

A store is opened where it is (``xarray.open_zarr``; URLs through fsspec with the
source's ``files.storage_options``, e.g. ``{anon: true}`` for SDOML v2 on S3) and located
the CF way, like a NetCDF file (:func:`esdc.sources.netcdf.geolocate_dataset`). Nothing
is read but metadata until the build computes.
"""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from esdc.errors import SourceError
from esdc.recipe import SourceSpec
from esdc.sources.base import Geolocated
from esdc.sources.netcdf import geolocate_dataset

__all__ = ["open_zarr"]


def open_zarr(spec: SourceSpec, path: Path | str) -> Geolocated:
    """Open a Zarr store lazily with its own (CF) grid or a declared georeference.

    Parameters
    ----------
    spec : SourceSpec
        The recipe's source (``format: zarr``).
    path : pathlib.Path or str
        The store: a local folder or a URL (``s3://``, ``https://``, ``gs://``...).

    Returns
    -------
    Geolocated
        As :func:`esdc.sources.netcdf.open_netcdf`: variables ``(..., y, x)``.

    Raises
    ------
    SourceError
        If the store cannot be opened (not Zarr, missing, access denied) or its
        variables or grid do not match the recipe.
    """
    options = dict(spec.files.storage_options) if spec.files is not None else {}
    try:
        ds = xr.open_zarr(str(path), chunks={}, mask_and_scale=False,
                          storage_options=options or None)
    except Exception as exc:  # noqa: BLE001 - any backend failure is a bad source store
        raise SourceError(
            f"sources.{spec.name}: {path} is not a readable Zarr store "
            f"({type(exc).__name__}: {str(exc)[:200]}); check the path or URL, "
            "`files.storage_options` and `format`."
        ) from None
    # Geolocated.path is a Path: a URL keeps its name (messages, the area definition)
    return geolocate_dataset(ds, spec, Path(str(path)))
