"""Readers: one per source kind, each opening a file lazily (Dask) with its geolocation.

:func:`open_source` looks the recipe's ``format`` up in :mod:`esdc.sources.registry` and
imports that reader's module only then. Every reader returns a
:class:`~esdc.sources.base.Geolocated`: an ``xarray.Dataset`` whose variables end in the
spatial dims ``(..., y, x)`` and how its pixels are located (``regular``: cell-centre
coordinates, north up, x increasing, longitudes in [-180, 180), and a PROJ CRS;
``swath``: per-pixel lon/lat; ``wcs``: a FITS header, :class:`esdc.solar.SolarImage`).

A file's own grid is read the CF way by :mod:`esdc.sources.cf` (axes by ``standard_name``,
``units``, ``axis``, ``_CoordinateAxisType``; cell ``bounds``; ``grid_mapping``), which also
checks a declared georeference against the file's coordinates.

Order inside the package: ``registry`` (names only), ``cf`` <- ``base`` <- the readers
(``netcdf``, ``geotiff``, ``image``, ``raw``, ``fits``), which import ``base`` and the
recipe schema; nothing here imports a reader.
"""

from esdc.sources.base import LOCATIONS, Geolocated, open_source, resolve_path
from esdc.sources.registry import FORMATS

__all__ = ["FORMATS", "LOCATIONS", "Geolocated", "open_source", "resolve_path"]
