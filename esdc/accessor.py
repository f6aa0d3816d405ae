"""The thin ``ds.esdc`` accessor: hands off to module functions; caches the grid."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import xarray as xr

from esdc.conventions import ATTR_GRID, ATTR_SOURCES, json_attr
from esdc.export import export, point
from esdc.grid import Grid
from esdc.plot import quicklook
from esdc.verify import verify_cube

__all__ = ["EsdcAccessor"]


@xr.register_dataset_accessor("esdc")
class EsdcAccessor:
    """``ds.esdc``: grid, provenance, convention check, maps, point series and export."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    @cached_property
    def grid(self) -> Grid:
        """The :class:`~esdc.grid.Grid` the cube was built on (from ``esdc_grid``)."""
        return Grid.from_dict(json_attr(self._ds.attrs, ATTR_GRID))

    @property
    def sources(self) -> list[dict[str, Any]]:
        """Provenance of every source (``esdc_sources``): product, licence, citation, ...

        As registered for a sample or declared in a recipe's ``provenance:`` block: product,
        mission, instrument, licence, citation, DOI and URL; plus the file and its SHA-256.
        """
        return list(json_attr(self._ds.attrs, ATTR_SOURCES, []))

    def verify(self) -> list[str]:
        """Convention problems (:func:`esdc.verify.verify_cube`)."""
        return verify_cube(self._ds)

    def quicklook(self, variable: str, path: Any = None, time: Any = None) -> Any:
        """Map of a variable (:func:`esdc.plot.quicklook`)."""
        return quicklook(self._ds, variable, path, time)

    def point(self, lat: float, lon: float, variables: Any = None) -> xr.Dataset:
        """Every variable at the cell nearest to ``lat``, ``lon`` (:func:`esdc.export.point`).

        ``lat``, ``lon`` in degrees; ``X``, ``Y`` in arcsec on a helioprojective cube.
        """
        return point(self._ds, lat, lon, variables)

    def export(self, out: Any, variables: Any = None, bbox: Any = None, time: Any = None,
               overwrite: bool = False) -> list[Any]:
        """Write the cube, or a subset, to NetCDF or GeoTIFF (:func:`esdc.export.export`)."""
        return export(self._ds, out, variables, bbox, time, overwrite)
