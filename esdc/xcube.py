"""esdc cubes as xcube datasets: the one convention the two disagree on.

An esdc cube stores static layers (altitude, land masks, climate classes) once, with dims
``(lat, lon)``, beside time-varying ones ``(time, lat, lon)``. xcube's cube convention
(``xcube.core.verify.verify_cube``) wants every data variable to be
``(time, ..., y, x)`` with the same dims and the same chunks. Everything else agrees
already: 1-D equidistant ``lat``/``lon`` (or ``y``/``x``) cell-centre coordinates, a
datetime64 ``time`` with ``time_bnds``, a CF grid mapping variable ``crs`` named by each
variable's ``grid_mapping``, and a Zarr v3 store that xcube's ``file`` data store opens
(tests/interop/test_xcube.py checks all of it with xcube itself).

:func:`to_xcube` gives the xcube view of a cube lazily, without writing anything and
without xcube installed: static layers are broadcast along ``time`` (a Dask view of the
stored chunks, no copies until computed) and variables off the cube's grid (the tile
embeddings of ``esdc embed``) are left out.
"""

from __future__ import annotations

from typing import Any

import xarray as xr

from esdc.conventions import ATTR_STATIC, ATTR_XCUBE_DROPPED, spatial_dims
from esdc.errors import EsdcError

__all__ = ["to_xcube"]

#: Encoding keys that describe the Zarr v3 storage the cube was read from. xcube's data
#: stores write Zarr format 2 by default, which rejects v3 codecs (``serializer``,
#: ``zarr.codecs`` compressors): the view drops them and keeps units, calendars and fills.
STORAGE_ENCODING = ("chunks", "preferred_chunks", "shards", "compressors", "compressor",
                    "serializer", "filters", "chunk_key_encoding")


def _spatial_dims(ds: xr.Dataset) -> tuple[str, str]:
    """``(y_dim, x_dim)`` of a cube: ``lat``/``lon`` when present, else ``y``/``x``."""
    found = spatial_dims(ds.dims)
    if found is not None:
        return found
    raise EsdcError(
        f"to_xcube: the dataset has no (lat, lon) or (y, x) dims (it has "
        f"{', '.join(map(str, ds.dims)) or 'none'}); open an esdc cube with esdc.open_cube."
    )


def to_xcube(ds: xr.Dataset) -> xr.Dataset:
    """The xcube view of an esdc cube: every data variable ``(time, ..., y, x)``.

    Parameters
    ----------
    ds : xarray.Dataset
        An esdc cube (:func:`esdc.open_cube`), lazy or in memory, with a ``time`` axis.
        Data variables with dims ``(y, x)`` are static layers; ``(time, ..., y, x)``
        ones are kept as they are.

    Returns
    -------
    xarray.Dataset
        Same coordinates and attributes. Static layers become ``(time, y, x)``: the same
        values at every time step (a lazy broadcast, chunked along ``time`` like the
        cube's time-varying variables), their attributes plus ``esdc_static: 1``.
        Variables whose last two dims are not the cube's ``(y, x)`` (e.g. the
        ``embedding_t{T}`` tile vectors) are dropped and named in the attribute
        ``esdc_xcube_dropped``. Encodings of the Zarr v3 storage (codecs, chunks; see
        :data:`STORAGE_ENCODING`) are dropped, so xcube's store writers can write the
        view in Zarr format 2 or 3. Nothing is computed.

    Raises
    ------
    EsdcError
        If the dataset has no spatial dims, no ``time`` axis (xcube cubes need one), or
        no data variable on its grid.

    Notes
    -----
    xcube's convention: ``xcube.core.verify.verify_cube`` (xcube-core 1.14, the xcube
    "Data Cube Conventions" of the xcube documentation). The result passes it; open a
    written cube with ``xcube.core.store.new_data_store("file", root=...)``.
    """
    ydim, xdim = _spatial_dims(ds)
    if "time" not in ds.dims or "time" not in ds.coords:
        raise EsdcError(
            "to_xcube: the cube has no time axis, and xcube cubes need one (data variables "
            "(time, ..., y, x)); build it from a recipe with grid.time."
        )
    keep: dict[str, Any] = {}
    dropped: list[str] = []
    for name, var in ds.data_vars.items():
        if var.dims[-2:] != (ydim, xdim):
            dropped.append(str(name))
        elif var.dims[0] == "time":
            keep[str(name)] = var
        elif "time" in var.dims:
            keep[str(name)] = var.transpose("time", ...)
        else:
            keep[str(name)] = var
    if not keep:
        raise EsdcError(f"to_xcube: no data variable has the cube's ({ydim}, {xdim}) grid dims.")
    timed = [v for v in keep.values() if "time" in v.dims and v.chunks is not None]
    tchunk = timed[0].chunksizes["time"] if timed else None
    out = {}
    for name, var in keep.items():
        if "time" not in var.dims:
            attrs = {**var.attrs, ATTR_STATIC: 1}
            var = var.expand_dims(time=ds.sizes["time"]).assign_coords(time=ds["time"])
            var = var.assign_attrs(attrs)
            if var.chunks is not None:
                var = var.chunk({"time": tchunk if tchunk is not None else -1})
        out[name] = var
    # a shallow copy: new Variable objects (the data is shared), so ds keeps its encodings
    res = ds.drop_vars(list(ds.data_vars)).assign(out).copy(deep=False)
    for var in res.variables.values():
        var.encoding = {k: v for k, v in var.encoding.items() if k not in STORAGE_ENCODING}
    res.attrs = dict(ds.attrs)
    if dropped:
        res.attrs[ATTR_XCUBE_DROPPED] = ", ".join(dropped)
    return res
