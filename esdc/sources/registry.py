"""The reader registry: recipe ``format`` name -> the module and function that read it.

Modelled on xarray's ``BACKEND_ENTRYPOINTS`` (``xarray/backends/plugins.py``): the table
holds module *paths*, and a reader's module is imported only when a recipe uses its
format, so building an Earth recipe never imports the solar readers' astropy/sunpy
stack. The recipe schema takes the allowed values of ``SourceSpec.format`` from
:data:`FORMATS`: a format is named here once.

Every reader has the signature ``open_KIND(spec: SourceSpec, path: Path) -> Geolocated``
(:class:`esdc.sources.base.Geolocated`, lazy) and imports :mod:`esdc.sources.base` at
module level; this module imports no reader.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from esdc.errors import SourceError

__all__ = ["FORMATS", "IN_PLACE", "READERS", "SERIES_PREPARE", "SERIES_READERS", "SERVICES",
           "load_entry", "reader"]

#: Format name -> ``(module, function)`` of its reader.
READERS: dict[str, tuple[str, str]] = {
    "netcdf": ("esdc.sources.netcdf", "open_netcdf"),
    "hdf5": ("esdc.sources.netcdf", "open_netcdf"),
    "geotiff": ("esdc.sources.geotiff", "open_geotiff"),
    "image": ("esdc.sources.image", "open_image"),
    "raw": ("esdc.sources.raw", "open_raw"),
    "fits": ("esdc.sources.fits", "open_fits"),
    "jp2": ("esdc.sources.fits", "open_jp2"),
    "zarr": ("esdc.sources.zarr", "open_zarr"),
    # a tile service: read through SERVICES below (its reader refuses a single file)
    "wmts": ("esdc.sources.wmts", "open_wmts"),
}

#: Format -> ``(module, function)`` opening many granules of one grid as one series at
#: once, ``open_KIND_series(spec, paths) -> Geolocated | None`` (None: open them one by
#: one with the reader); formats without an entry are always opened one by one.
SERIES_READERS: dict[str, tuple[str, str]] = {
    "netcdf": ("esdc.sources.stack", "open_netcdf_series"),
}

#: Format -> ``(module, function)`` reading one fetched granule's metadata for its series
#: reader, ``prepare(path)``; the build calls it in the fetch threads as granules arrive.
SERIES_PREPARE: dict[str, tuple[str, str]] = {
    "netcdf": ("esdc.sources.stack", "describe_netcdf"),
}

#: Formats whose sources are opened where they are (a store read lazily, chunk by chunk),
#: never fetched into the granule cache.
IN_PLACE: frozenset[str] = frozenset({"zarr"})

#: Formats read from a tile service instead of files -> ``(module, object)`` of the service
#: (:class:`esdc.sources.granules.TileService`): it names the index document fetched first
#: (the capabilities), lists the tiles over the grid as granules, and mosaics them.
SERVICES: dict[str, tuple[str, str]] = {
    "wmts": ("esdc.sources.wmts", "WMTS"),
}

#: The formats a recipe may name (``SourceSpec.format``), in the table's order.
FORMATS: tuple[str, ...] = tuple(READERS)


def load_entry(table: Mapping[str, tuple[str, str]], key: str) -> Any:
    """The object a registry names for ``key``, its module imported now (once).

    The lookup every esdc registry of names -> module paths shares (readers here,
    resamplers in :mod:`esdc.regrid.registry`).

    Parameters
    ----------
    table : mapping of str to (str, str)
        Name -> ``(module path, attribute)``.
    key : str
        The name looked up.

    Returns
    -------
    object or None
        ``getattr(importlib.import_module(module), attribute)``; ``None`` when ``key``
        is not in ``table``.
    """
    entry = table.get(key)
    if entry is None:
        return None
    module, attribute = entry
    return getattr(importlib.import_module(module), attribute)


def reader(fmt: str) -> Callable[..., Any]:
    """The reader function of a format, its module imported now (once).

    Parameters
    ----------
    fmt : str
        A name of :data:`FORMATS`.

    Returns
    -------
    callable
        ``open_KIND(spec, path) -> Geolocated``.

    Raises
    ------
    SourceError
        If no reader is registered for ``fmt``.
    """
    fn = load_entry(READERS, fmt)
    if fn is None:
        raise SourceError(f"format {fmt!r} has no reader; use one of {', '.join(FORMATS)}.")
    return fn  # type: ignore[no-any-return]
