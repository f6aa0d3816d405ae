"""Tables stored inside a cube: a group of 1-D arrays, one per column (``esdc_granules``).

Provenance of thousands of granules does not fit in attributes; it is a table in the
cube's own store, written with the cube (inside its staging or its commit, so a cube
and its table are never out of step) and checksummed with its chunks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from esdc.conventions import GRANULE_DIM, GRANULE_TABLE

__all__ = ["GRANULE_DIM", "GRANULE_TABLE", "granule_summary", "read_table", "table_rows",
           "write_tables"]


def write_tables(store: Any, tables: Mapping[str, xr.Dataset] | None) -> None:
    """Write (replace) each table as a group of the Zarr store ``store``.

    Parameters
    ----------
    store : pathlib.Path, str or zarr store
        The cube's store (a staging folder, an Icechunk session's store).
    tables : mapping of str to xarray.Dataset, optional
        Group name -> 1-D columns along one dim (``granule``), loaded (NumPy).
    """
    for name, table in (tables or {}).items():
        table.to_zarr(store, group=name, mode="w", zarr_format=3, consolidated=False)


def read_table(target: Any, name: str = GRANULE_TABLE) -> xr.Dataset | None:
    """A table of a cube, loaded; ``None`` when the cube has none.

    Parameters
    ----------
    target : esdc.storage.Target
        The cube.
    name : str
        The group (default ``esdc_granules``).

    Returns
    -------
    xarray.Dataset or None
        1-D columns along ``granule``.
    """
    if target.read_bytes(f"{name}/zarr.json") is None:
        return None
    return target.open_dataset(group=name, consolidated=False).load()


def table_rows(table: xr.Dataset) -> list[dict[str, Any]]:
    """The rows of a table as JSON-ready dicts (times as ISO 8601 text, NaT as None).

    Parameters
    ----------
    table : xarray.Dataset
        1-D columns along one dim.

    Returns
    -------
    list of dict
        One dict per row, column name -> value.
    """
    cols: dict[str, list[Any]] = {}
    for name, col in table.data_vars.items():
        values = col.values
        if np.issubdtype(values.dtype, np.datetime64):
            cols[str(name)] = [None if np.isnat(v) else str(np.datetime_as_string(v, "s"))
                               for v in values]
        else:
            cols[str(name)] = [v.item() if hasattr(v, "item") else v for v in values]
    n = table.sizes.get(GRANULE_DIM, 0)
    return [{k: v[i] for k, v in cols.items()} for i in range(n)]


def granule_summary(table: xr.Dataset) -> str:
    """One line on a granule table: counts by status, bytes and time span.

    Parameters
    ----------
    table : xarray.Dataset
        The ``esdc_granules`` table.

    Returns
    -------
    str
        E.g. ``"54 granules (54 fetched), 1.2 MB, 2006-04-01..2010-09-01"``.
    """
    status = [str(s) for s in table["status"].values]
    counts = ", ".join(f"{status.count(s)} {s}" for s in dict.fromkeys(status))
    size = int(np.clip(table["size"].values, 0, None).sum())
    times = table["time"].values
    times = times[~np.isnat(times)]
    span = (f", {np.datetime_as_string(times.min(), 'D')}.."
            f"{np.datetime_as_string(times.max(), 'D')}" if times.size else "")
    return f"{len(status)} granules ({counts}), {size / 1e6:.1f} MB{span}"
