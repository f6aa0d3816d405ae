"""The thin ``ds.esdc`` accessor: hands off to module functions; caches the grid."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import xarray as xr

from esdc.conventions import ATTR_GRID, ATTR_SOURCES, json_attr
from esdc.grid import Grid
from esdc.plot import quicklook
from esdc.verify import verify_cube

__all__ = ["EsdcAccessor"]


@xr.register_dataset_accessor("esdc")
class EsdcAccessor:
    """``ds.esdc``: the cube's grid and provenance, and its convention check."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    @cached_property
    def grid(self) -> Grid:
        """The :class:`~esdc.grid.Grid` the cube was built on (from ``esdc_grid``)."""
        return Grid.from_dict(json_attr(self._ds.attrs, ATTR_GRID))

    @property
    def sources(self) -> list[dict[str, Any]]:
        """Provenance of every source: product, mission, instrument, file, SHA-256."""
        return list(json_attr(self._ds.attrs, ATTR_SOURCES, []))

    def verify(self) -> list[str]:
        """Convention problems (:func:`esdc.verify.verify_cube`)."""
        return verify_cube(self._ds)

    def quicklook(self, variable: str, path: Any = None, time: Any = None) -> Any:
        """Map of a variable (:func:`esdc.plot.quicklook`)."""
        return quicklook(self._ds, variable, path, time)
