"""Derived layers: pure functions computing new cube variables on the common grid.

Each function takes the input variables (``xarray.DataArray`` on the grid, dims
``([time,] y, x)``), the :class:`~esdc.grid.Grid` and keyword parameters from the
recipe, and returns a lazy ``DataArray`` with the same spatial dims. Register new
ones with :func:`register`; recipes name them in ``derived[].function``.
"""

from __future__ import annotations

from collections.abc import Callable

import xarray as xr

from esdc.grid import Grid

__all__ = ["FUNCTIONS", "accumulate", "register"]

DeriveFunction = Callable[..., xr.DataArray]

#: Registered derived-layer functions, by recipe name.
FUNCTIONS: dict[str, DeriveFunction] = {}


def register(name: str) -> Callable[[DeriveFunction], DeriveFunction]:
    """Register ``fn`` under ``name`` for recipes' ``derived[].function``."""

    def deco(fn: DeriveFunction) -> DeriveFunction:
        FUNCTIONS[name] = fn
        return fn

    return deco


@register("accumulate")
def accumulate(inputs: list[xr.DataArray], grid: Grid) -> xr.DataArray:
    """Running sum over time (e.g. accumulated precipitation from hourly amounts).

    Parameters
    ----------
    inputs : list of one xarray.DataArray
        Dims ``(time, y, x)``; an amount per time step (e.g. kg m-2).
    grid : Grid
        The cube's grid (unused; part of the common signature).

    Returns
    -------
    xarray.DataArray
        Dims ``(time, y, x)``: at each step the sum of all steps up to and including
        it; NaN steps count as 0 but a cell that was NaN at every step so far stays NaN.
    """
    (x,) = inputs
    total = x.fillna(0).cumsum("time")
    seen = x.notnull().cumsum("time") > 0
    return total.where(seen).transpose("time", ...)
