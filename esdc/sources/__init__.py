"""Readers: one per source kind, each opening a file lazily (Dask) with its geolocation.

:func:`open_source` dispatches on the recipe's ``format``. Every reader returns a
:class:`~esdc.sources.base.Geolocated`: an ``xarray.Dataset`` whose variables end
in the spatial dims ``(..., y, x)`` with cell-centre coordinates (north up, x
increasing, longitudes in [-180, 180)) and the source's CRS.
"""

from esdc.sources.base import Geolocated, open_source, resolve_path

__all__ = ["Geolocated", "open_source", "resolve_path"]
