"""NetCDF and HDF5 reader (xarray with netCDF4/h5netcdf, lazy via Dask)."""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pyproj
import xarray as xr

from esdc.errors import SourceError
from esdc.recipe import SourceSpec
from esdc.sources.base import Geolocated, _check_size, apply_georeference, normalize

__all__ = ["SOURCE_CHUNK_BYTES", "open_netcdf"]

#: Largest Dask chunk of a NetCDF/HDF5 source variable (the on-disk chunks are kept whole).
SOURCE_CHUNK_BYTES = "16MiB"


def open_netcdf(spec: SourceSpec, path: Path) -> Geolocated:
    """Open a NetCDF (classic or 4) or plain HDF5 file lazily.

    HDF5 datasets without dimension scales get ``phony_dim_*`` dims from h5netcdf;
    they are renamed positionally to ``georeference.dims`` and given coordinates
    from the declared bbox. CF ``time`` coordinates are decoded. The on-disk chunks
    become the Dask chunks.

    A curvilinear or swath file (no declared georeference; the variables' last two
    dims carry 2-D latitude and longitude variables, recognised by CF
    ``standard_name``, ``units`` such as ``degrees_north``/``degrees_east`` or
    ``_CoordinateAxisType``) is returned as a swath: its row/column dims become
    ``ydim``/``xdim`` and the per-pixel coordinates ``lons``/``lats`` (read
    through the file backend, not Dask, so opening computes nothing).

    Parameters
    ----------
    spec : SourceSpec
        The recipe's source (``format`` netcdf or hdf5).
    path : pathlib.Path
        The file.

    Returns
    -------
    Geolocated
        Variables transposed to ``(..., y, x)`` (``(..., rows, cols)`` of a swath,
        with ``lons``/``lats`` of shape ``(rows, cols)`` in degrees, longitudes in
        [-180, 180), non-finite or fill coordinates as NaN).

    Raises
    ------
    SourceError
        If the file is not NetCDF/HDF5, lacks a variable the recipe names, its
        dims do not match the declaration, or its 2-D latitudes leave [-90, 90].
    """
    names = list(dict.fromkeys(v.source for v in spec.variables))
    try:
        # Dask chunks of at most SOURCE_CHUNK_BYTES, multiples of the file's own chunks:
        # a grid that covers part of the file then reads and decodes only the chunks it
        # needs (one whole-file chunk made a 120 x 120 degree build decode the globe).
        with dask.config.set({"array.chunk-size": SOURCE_CHUNK_BYTES}):
            if spec.format == "hdf5":
                ds = xr.open_dataset(path, engine="h5netcdf", phony_dims="sort",
                                     chunks="auto", mask_and_scale=False, decode_cf=False)
            else:
                ds = xr.open_dataset(path, chunks="auto", mask_and_scale=False)
    except Exception as exc:  # noqa: BLE001 - any backend failure is a bad source file
        raise SourceError(
            f"sources.{spec.name}: {path} is not a readable {spec.format.upper()} file "
            f"({type(exc).__name__}: {str(exc)[:200]}); check the file and `format`."
        ) from None
    missing = [n for n in names if n not in ds.data_vars]
    if missing:
        have = sorted(map(str, ds.data_vars))
        ds.close()
        raise SourceError(
            f"sources.{spec.name}: variable(s) {missing} not in {path}; it has {have}. "
            "Fix `source:` of the variable in the recipe."
        )
    if spec.georeference is None:
        pair = _curvilinear_coords(ds, names)
        if pair is not None:
            return _open_curvilinear(ds, names, pair, spec, path)
    ds = ds[names]
    geo = spec.georeference
    if geo is not None and geo.dims is not None:
        renamed = {}
        for n in names:
            da = ds[n]
            if da.ndim != len(geo.dims):
                raise SourceError(
                    f"sources.{spec.name}: {n} in {path} has {da.ndim} dims {da.dims} but "
                    f"georeference.dims declares {len(geo.dims)}: {geo.dims}."
                )
            renamed[n] = da.rename(dict(zip(da.dims, geo.dims, strict=True)))
        ds = xr.Dataset(renamed)
    if geo is not None:
        ds = apply_georeference(ds, geo, f"sources.{spec.name}")
        crs = pyproj.CRS.from_user_input(geo.crs)
    else:
        crs = pyproj.CRS.from_epsg(4326)
    out = normalize(ds, crs, path, f"sources.{spec.name}")
    data = out.data
    data = data.transpose(..., out.ydim, out.xdim)
    return Geolocated(data, crs, out.ydim, out.xdim, path)


#: CF units of latitude and longitude (CF conventions 1.10, sections 4.1 and 4.2).
_LAT_UNITS = ("degrees_north", "degree_north", "degree_n", "degrees_n", "degreen", "degreesn")
_LON_UNITS = ("degrees_east", "degree_east", "degree_e", "degrees_e", "degreee", "degreese")


def _is_coordinate(var: xr.DataArray, kind: str) -> bool:
    """Whether ``var`` is a CF latitude (``kind="latitude"``) or longitude variable."""
    units = str(var.attrs.get("units", "")).strip().lower()
    return (var.attrs.get("standard_name") == kind
            or units in (_LAT_UNITS if kind == "latitude" else _LON_UNITS)
            or str(var.attrs.get("_CoordinateAxisType", "")).lower() == kind[:3])


def _curvilinear_coords(ds: xr.Dataset, names: list[str]) -> tuple[str, str] | None:
    """Names ``(lat, lon)`` of 2-D coordinates spanning every variable's last two dims."""
    two_d = [k for k, v in ds.variables.items() if v.ndim == 2 and k not in names]
    for lat in (k for k in two_d if _is_coordinate(ds[k], "latitude")):
        dims = ds[lat].dims
        lon = next((k for k in two_d if ds[k].dims == dims
                    and _is_coordinate(ds[k], "longitude")), None)
        if lon is not None and all(set(dims) <= set(ds[n].dims) for n in names):
            return str(lat), str(lon)
    return None


def _open_curvilinear(ds: xr.Dataset, names: list[str], pair: tuple[str, str],
                      spec: SourceSpec, path: Path) -> Geolocated:
    """A swath :class:`Geolocated` of ``names`` on the 2-D coordinates ``pair``."""
    lat_name, lon_name = pair
    ydim, xdim = (str(d) for d in ds[lat_name].dims)
    _check_size(ds, ydim, xdim, f"sources.{spec.name}", path)
    # Read the coordinates through the backend, not Dask: opening computes nothing.
    extra = {"engine": "h5netcdf", "phony_dims": "sort"} if spec.format == "hdf5" else {}
    with xr.open_dataset(path, decode_times=False, **extra) as plain:
        lats = np.asarray(plain[lat_name].values, dtype="float64")
        lons = np.asarray(plain[lon_name].values, dtype="float64")
    valid = np.isfinite(lats) & np.isfinite(lons)
    if not valid.any():
        raise SourceError(f"sources.{spec.name}: {path} has no finite value in its 2-D "
                          f"coordinates {lat_name!r}/{lon_name!r}.")
    if not valid.all():
        raise SourceError(
            f"sources.{spec.name}: the 2-D coordinates {lat_name!r}/{lon_name!r} of {path} "
            f"hold {int((~valid).sum())} NaN or infinite values; a curvilinear source needs a "
            "position for every pixel. Fill or crop them (e.g. with xarray) and point "
            "`path:` at the fixed file.")
    if np.abs(lats[valid]).max() > 90.0:
        raise SourceError(
            f"sources.{spec.name}: 2-D latitude {lat_name!r} of {path} has values outside "
            "[-90, 90]; the file's coordinates are not geographic degrees.")
    lats = np.where(valid, lats, np.nan)
    lons = np.where(valid, (lons + 180.0) % 360.0 - 180.0, np.nan)
    data = ds[names]
    data = data.drop_vars([c for c in data.coords if set(data[c].dims) & {ydim, xdim}])
    data = data.transpose(..., ydim, xdim)
    return Geolocated(data, pyproj.CRS.from_epsg(4326), ydim, xdim, path, lons=lons, lats=lats)
