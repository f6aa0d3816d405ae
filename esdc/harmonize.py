"""Harmonization: decode values to physical units, align time, attach CF attributes.

Pure functions on ``xarray.DataArray`` that stay lazy; the recipe runner
(:func:`esdc.build.plan`) wires them together with :func:`esdc.regrid.regrid`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from esdc.conventions import ATTR_RESAMPLING, ATTR_SOURCE, TIME_DIM
from esdc.errors import SourceError
from esdc.grid import Grid
from esdc.recipe import VariableSpec

__all__ = ["PLACED_BLOCK", "align_series", "cf_attrs", "combine_first_valid", "decode",
           "place_climatology", "validity_mask"]


def decode(raw: xr.DataArray, var: VariableSpec) -> xr.DataArray:
    """Turn stored values into physical ones.

    Order (CF conventions §8.1): values equal to ``fill_value`` become NaN, then
    ``value * scale_factor + add_offset``, then values outside
    ``[valid_min, valid_max]`` (physical units) become NaN. With ``select_values``
    the result is instead an indicator: 1.0 where the stored value is one of them,
    0.0 elsewhere (NaN at ``fill_value``), e.g. a land fraction from a class mask.
    For ``bucket_mode`` (categorical) the integer codes are kept unchanged. When the
    recipe leaves ``fill_value``/``scale_factor``/``add_offset`` unset, the file's CF
    attributes (``_FillValue``, ``missing_value``, ``scale_factor``, ``add_offset``) are
    used.

    Parameters
    ----------
    raw : xarray.DataArray
        Stored values, any dims.
    var : VariableSpec
        The variable's recipe entry.

    Returns
    -------
    xarray.DataArray
        float32 (integer codes for ``bucket_mode``), same dims; lazy.
    """
    if var.resampling == "bucket_mode":
        return raw
    # The recipe's values win; otherwise the file's own CF attributes apply.
    fills = [var.fill_value] if var.fill_value is not None else [
        raw.attrs[k] for k in ("_FillValue", "missing_value") if k in raw.attrs]
    scale = var.scale_factor if var.scale_factor != 1.0 else float(raw.attrs.get(
        "scale_factor", 1.0))
    offset = var.add_offset if var.add_offset != 0.0 else float(raw.attrs.get("add_offset", 0.0))
    kwargs = {"fills": [v for f in fills for v in np.atleast_1d(f).tolist()],
              "scale": scale, "offset": offset, "valid_min": var.valid_min,
              "valid_max": var.valid_max,
              "select": None if var.select_values is None else list(var.select_values)}
    # One task per chunk (the build's graph is not fused: one per step otherwise).
    return xr.apply_ufunc(_decode_block, raw, kwargs=kwargs, dask="parallelized",
                          output_dtypes=[np.float32])


def _decode_block(raw: np.ndarray, fills: list[float], scale: float, offset: float,
                  valid_min: float | None, valid_max: float | None,
                  select: list[int] | None) -> np.ndarray:
    """:func:`decode` of one block of stored values: float32, same shape."""
    if select is not None:
        out = np.isin(raw, select).astype(np.float32)
    else:
        out = raw.astype(np.float32)  # a copy: changed in place below
        if scale != 1.0 or offset != 0.0:
            out *= np.float32(scale)
            out += np.float32(offset)
        if valid_min is not None:
            out[out < valid_min] = np.nan
        if valid_max is not None:
            out[out > valid_max] = np.nan
    for value in fills:
        out[raw == value] = np.nan
    return out


#: Values (time steps times cells) of one block of a placed climatology at most.
PLACED_BLOCK = 8_000_000


def place_climatology(data: xr.DataArray, grid: Grid) -> xr.DataArray:
    """Place a monthly climatology (dim ``month``, 12) on the grid's time axis.

    Each time step takes the climatology month of its month of year. With a
    :attr:`~esdc.grid.Grid.tile` the placed layer comes in blocks of at most
    :data:`PLACED_BLOCK` values (:meth:`~esdc.grid.Grid.block_shape`: the regions'
    column tiles on a large grid), so that a region computes the time steps of its own
    tile when it is written: placed on bands of whole rows, each band of all time steps
    (4.5x the 12 months for the Earth cube's 54 steps) was held from the first region of
    its row to the last.

    Parameters
    ----------
    data : xarray.DataArray
        Dims ``(month, y, x)`` (or ``(month, ...)`` without a tile) with ``month`` of
        length 12 (January first); lazy.
    grid : Grid
        Target with a time axis.

    Returns
    -------
    xarray.DataArray
        Dims ``(time, ...)`` with the grid's time labels; lazy (an index take).

    Raises
    ------
    SourceError
        If the ``month`` dim is not of length 12.
    """
    if data.sizes.get("month") != 12:
        raise SourceError(
            f"a monthly climatology needs a `month` dim of 12, got {dict(data.sizes)}")
    assert grid.time is not None
    if grid.tile is not None and data.chunks is not None and data.dims[-2:] == grid.dims:
        rows, cols = grid.block_shape(len(grid.time), PLACED_BLOCK)
        if (rows, cols) != grid.shape:
            data = data.chunk(dict(zip(grid.dims, (rows, cols), strict=True)))
    months = pd.DatetimeIndex(np.array(grid.time)).month.to_numpy() - 1
    out = data.isel(month=xr.DataArray(months, dims=TIME_DIM)).drop_vars("month",
                                                                        errors="ignore")
    out = out.assign_coords({TIME_DIM: np.array(grid.time, dtype="datetime64[ns]")})
    return out.transpose(TIME_DIM, ...)


def align_series(data: xr.DataArray, grid: Grid, what: str) -> xr.DataArray:
    """Bin a time series into the grid's time cells.

    A source step at ``t`` goes to the cell ``[start, end)`` that contains it.
    Cells with one step take it; cells with several take their mean (NaN skipped);
    cells with none are NaN. Steps outside the time axis are dropped.

    Parameters
    ----------
    data : xarray.DataArray
        With a datetime ``time`` dim.
    grid : Grid
        Target with a time axis.
    what : str
        Name of the source, for messages.

    Returns
    -------
    xarray.DataArray
        Dims ``(time, ...)`` with ``len(grid.time)`` steps; lazy.

    Raises
    ------
    SourceError
        If there is no datetime ``time`` dim or no step falls in the time axis.
    """
    if "time" not in data.dims or not np.issubdtype(data["time"].dtype, np.datetime64):
        raise SourceError(f"{what}: a time series needs a decoded datetime `time` dim.")
    assert grid.time is not None and grid.time_bounds is not None
    starts = np.array([b[0] for b in grid.time_bounds], dtype="datetime64[ns]")
    ends = np.array([b[1] for b in grid.time_bounds], dtype="datetime64[ns]")
    t = data["time"].values.astype("datetime64[ns]")
    cell = np.searchsorted(starts, t, side="right") - 1
    inside = (cell >= 0) & (t < ends[np.clip(cell, 0, None)])
    if not inside.any():
        raise SourceError(
            f"{what}: no time step ({str(t.min())[:10]}..{str(t.max())[:10]}) falls in the "
            f"grid's time axis ({str(starts[0])[:10]}..{str(ends[-1])[:10]})."
        )
    sel = data.isel(time=np.flatnonzero(inside))
    cells = cell[inside]
    if len(np.unique(cells)) != len(cells):
        sel = sel.assign_coords(time=cells).groupby("time").mean(skipna=True)
        cells = sel["time"].values
    index = np.full(len(starts), -1)
    index[cells] = np.arange(len(cells))
    out = sel.isel(time=np.clip(index, 0, None))
    out = out.where(xr.DataArray(index >= 0, dims="time"))
    return out.assign_coords(time=starts).transpose("time", ...)


def cf_attrs(var: VariableSpec, source_name: str) -> dict[str, object]:
    """CF attributes of a cube variable from its recipe entry.

    Returns
    -------
    dict
        ``units``, ``long_name``, ``standard_name`` (when CF has one),
        ``flag_values``/``flag_meanings`` (categorical), ``cell_methods``, and
        ``esdc_source``/``esdc_resampling`` for provenance.
    """
    attrs: dict[str, object] = {"long_name": var.long_name or var.name.replace("_", " "),
                                "units": var.units}
    if var.standard_name:
        attrs["standard_name"] = var.standard_name
    if var.flag_values is not None and var.flag_meanings is not None:
        attrs["flag_values"] = list(var.flag_values)
        attrs["flag_meanings"] = " ".join(var.flag_meanings)
    if var.resampling in ("bucket_average", "conservative"):
        attrs["cell_methods"] = "area: mean"
    elif var.resampling == "bucket_mode":
        attrs["cell_methods"] = "area: mode"
    if var.comment:
        attrs["comment"] = var.comment
    attrs[ATTR_SOURCE] = source_name
    attrs[ATTR_RESAMPLING] = var.resampling
    return attrs


def combine_first_valid(first: xr.DataArray, later: xr.DataArray,
                        source_name: str) -> xr.DataArray:
    """Merge a variable filled by several sources (the recipe's ``combine: first_valid``).

    Parameters
    ----------
    first : xarray.DataArray
        The variable so far (from earlier sources), on the grid.
    later : xarray.DataArray
        The same variable from the next source, same dims.
    source_name : str
        Name of that source, recorded in ``esdc_source``.

    Returns
    -------
    xarray.DataArray
        ``first`` where it holds a value, else ``later``; the attributes of ``first``
        with ``esdc_source`` extended by ``"then SOURCE (first valid value)"``; lazy.
    """
    merged = first.fillna(later)
    merged.attrs = {**first.attrs, ATTR_SOURCE: f"{first.attrs[ATTR_SOURCE]} then "
                    f"{source_name} (first valid value)"}
    return merged


def validity_mask(data: xr.DataArray) -> xr.DataArray:
    """Where a variable holds a value: 1, else 0 (CF flags, uint8; lazy).

    On a time axis of observations (``grid.time.observed``) a channel is missing at
    the time steps it was not observed, and outside its field of view: its NaN
    cells. The mask makes that explicit (e.g. to weight a loss).

    Parameters
    ----------
    data : xarray.DataArray
        Any dims, float with NaN for missing values.

    Returns
    -------
    xarray.DataArray
        uint8, same dims and coordinates; attributes ``flag_values [0, 1]``,
        ``flag_meanings "missing valid"``, ``units "1"``.
    """
    out = data.notnull().astype("uint8")
    out.attrs = {"long_name": f"{data.name or 'variable'} holds a value",
                 "units": "1", "flag_values": [0, 1], "flag_meanings": "missing valid"}
    return out
