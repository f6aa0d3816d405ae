"""Static climatologies of a time-varying layer: monthly means over the years, and summaries.

A layer that varies by month (a sea surface temperature, a Linke turbidity) gives a
self-supervised encoder one input per time step, and so one embedding per month whose
nearest neighbours are the same place in other months. The climate of a place (what the
Köppen-Geiger classes are defined by: the seasonal cycle of temperature and
precipitation) is its *mean seasonal cycle*: the 12 monthly means over the years
(:func:`monthly_climatology`, ``xarray``'s ``groupby("time.month").mean()``) and static
summaries of it (:func:`climatology_statistic`): one month, the annual mean, the
amplitude, the first annual harmonic. Each is a ``(y, x)`` layer that training configs
can list among their ``inputs`` next to the other static layers. Recipes declare them as
derived layers (``function: climatology``, :func:`esdc.derive.climatology`).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from esdc.conventions import ATTR_TIME_PLACEMENT, TIME_DIM
from esdc.errors import RecipeError

__all__ = ["CELL_METHODS", "MONTH_DIM", "STATISTICS", "climatology_statistic",
           "monthly_climatology"]

#: The dim of the 12 months of year of :func:`monthly_climatology`.
MONTH_DIM = "month"

#: CF ``cell_methods`` of a monthly climatology (CF 1.10 section 7.4, climatological
#: statistics): the mean within each month of each year, then over the years.
CELL_METHODS = "time: mean within years time: mean over years"

#: Static summaries :func:`climatology_statistic` computes.
STATISTICS = ("month", "mean", "amplitude", "harmonic_cos", "harmonic_sin")


def monthly_climatology(x: xr.DataArray) -> xr.DataArray:
    """The mean of each month of year over the years: ``x.groupby("time.month").mean()``.

    Parameters
    ----------
    x : xarray.DataArray
        Dims ``(time, ...)`` (a cube layer: ``(time, y, x)``), any units; NaN cells are
        skipped (a month of year with no value in a cell is NaN there).

    Returns
    -------
    xarray.DataArray
        Dims ``(month, ...)`` with ``month`` 1 .. 12 (those present in ``time``), in
        ``x``'s units; lazy if ``x`` is. A layer with ``esdc_time_placement`` (a monthly
        climatology placed on the time axis by the build) gives the first step of each
        month (every step of a month holds the same values). Attrs: ``x``'s, with ``cell_methods``
        :data:`CELL_METHODS` appended (unless they end with it already: a layer that is a
        monthly climatology placed on the time axis, like the cube's Linke turbidity).

    Raises
    ------
    RecipeError
        If ``x`` has no ``time`` dim.
    """
    if TIME_DIM not in x.dims:
        raise RecipeError(f"a climatology needs a layer with a `{TIME_DIM}` dim; "
                          f"{x.name or 'the layer'} has dims {tuple(x.dims)}.")
    if ATTR_TIME_PLACEMENT in x.attrs:
        # a monthly climatology the build placed on the time axis: every step of a month
        # holds that month's values, so the first step is their mean (no shuffle of all
        # the steps: 0.9 GB of month pieces per row band at 0.1 degree)
        months, first = np.unique(x[TIME_DIM].dt.month.values, return_index=True)
        out = x.isel({TIME_DIM: first})
        out = out.drop_vars([c for c in out.coords if TIME_DIM in out[c].dims]).rename(
            {TIME_DIM: MONTH_DIM}).assign_coords({MONTH_DIM: months})
    else:
        out = x.groupby(f"{TIME_DIM}.month").mean(TIME_DIM, skipna=True)
    before = x.attrs.get("cell_methods", "")
    # a layer that is already a climatology placed on the time axis stays one
    methods = before if before.endswith(CELL_METHODS) else " ".join(
        m for m in (before, CELL_METHODS) if m)
    out.attrs = {**x.attrs, "cell_methods": methods}
    return out


def climatology_statistic(x: xr.DataArray, statistic: str = "mean",
                          month: int | None = None) -> xr.DataArray:
    """One static summary of the mean seasonal cycle of a layer.

    Parameters
    ----------
    x : xarray.DataArray
        Dims ``(time, y, x)`` (time first), any units; monthly or finer steps.
    statistic : str
        One of :data:`STATISTICS`, computed from the monthly means ``c_m``
        (:func:`monthly_climatology`, ``m`` = 1 .. 12):

        - ``month``: ``c_month``, one month of year (``month`` required);
        - ``mean``: the annual mean, the mean of the 12 ``c_m`` (each month weighs the
          same);
        - ``amplitude``: ``max(c_m) - min(c_m)``, the range of the seasonal cycle;
        - ``harmonic_cos``, ``harmonic_sin``: the first annual harmonic,
          ``(2/12) sum c_m cos(2 pi (m - 0.5) / 12)`` and the same with ``sin``: its
          phase says *when* the peak comes (it differs between the hemispheres), its
          length how large the cycle is.
    month : int, optional
        Month of year 1 .. 12, for ``statistic="month"`` only.

    Returns
    -------
    xarray.DataArray
        Dims ``(y, x)``, in ``x``'s units; lazy if ``x`` is. NaN where a needed month has
        no value. Attrs ``cell_methods`` (:data:`CELL_METHODS`, with ``time: range`` after
        it for ``amplitude``) and ``comment`` (which statistic).

    Raises
    ------
    RecipeError
        For an unknown statistic, a ``month`` outside 1 .. 12 or given with another
        statistic, a layer without time, or (all but ``month``) a layer whose time axis
        misses a month of year.
    """
    if statistic not in STATISTICS:
        raise RecipeError(f"climatology statistic {statistic!r} is unknown; use one of "
                          f"{list(STATISTICS)}.")
    if (month is not None) != (statistic == "month"):
        raise RecipeError("climatology: give month=1..12 with statistic='month', and only "
                          f"then (got statistic={statistic!r}, month={month!r}).")
    if month is not None and not 1 <= month <= 12:
        raise RecipeError(f"climatology: month={month} is not a month of year (1 .. 12).")
    clim = monthly_climatology(x)
    present = [int(m) for m in clim[MONTH_DIM].values]
    wanted = [month] if month is not None else list(range(1, 13))
    missing = sorted(set(wanted) - set(present))
    if missing:
        raise RecipeError(f"climatology {statistic}: the time axis of {x.name or 'the layer'} "
                          f"has no step in month(s) {missing}.")
    if statistic == "month":
        out = clim.sel({MONTH_DIM: month}, drop=True)
        comment = f"mean of month {month} over the years"
    elif statistic == "mean":
        out = clim.mean(MONTH_DIM, skipna=False)
        comment = "annual mean of the 12 monthly means"
    elif statistic == "amplitude":
        out = clim.max(MONTH_DIM, skipna=False) - clim.min(MONTH_DIM, skipna=False)
        comment = "range (maximum - minimum) of the 12 monthly means"
    else:
        angle = 2 * np.pi * (clim[MONTH_DIM] - 0.5) / 12
        wave = np.cos(angle) if statistic == "harmonic_cos" else np.sin(angle)
        out = (clim * wave).sum(MONTH_DIM, skipna=False) * (2 / 12)
        comment = (f"first annual harmonic of the 12 monthly means, "
                   f"{statistic.split('_')[1]} coefficient (month m at angle 2 pi (m - 0.5) / 12)")
    methods = clim.attrs["cell_methods"] + (" time: range" if statistic == "amplitude" else "")
    out.attrs = {**({"units": x.attrs["units"]} if "units" in x.attrs else {}),
                 "cell_methods": methods, "comment": comment}
    return out.drop_vars([c for c in out.coords if c not in out.dims])
