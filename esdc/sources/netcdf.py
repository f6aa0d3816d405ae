"""NetCDF and HDF5 reader (xarray with netCDF4/h5netcdf, lazy via Dask)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dask
import numpy as np
import pyproj
import xarray as xr

from esdc.errors import SourceError
from esdc.recipe import SourceSpec
from esdc.sources.base import (
    X_NAMES,
    Y_NAMES,
    Geolocated,
    check_size,
    georeferenced,
    normalize,
)
from esdc.sources.cf import (
    axis_of,
    cell_bounds,
    grid_mapping_crs,
    is_latitude,
    is_longitude,
    is_vertical,
    length_factor,
)

__all__ = ["SOURCE_CHUNK_BYTES", "geolocate_dataset", "open_netcdf", "open_raw"]

#: Largest Dask chunk of a NetCDF/HDF5 source variable (the on-disk chunks are kept whole).
SOURCE_CHUNK_BYTES = "16MiB"


def open_netcdf(spec: SourceSpec, path: Path) -> Geolocated:
    """Open a NetCDF (classic or 4) or plain HDF5 file lazily.

    HDF5 datasets without dimension scales get ``phony_dim_*`` dims from h5netcdf;
    they are renamed positionally to ``georeference.dims`` and given coordinates
    from the declared bbox. CF ``time`` coordinates are decoded. The on-disk chunks
    become the Dask chunks.

    Without a declared georeference the file's own grid is read the CF way
    (:mod:`esdc.sources.cf`): 1-D coordinates are recognised by ``standard_name``,
    ``units`` (``degrees_north``/``degrees_east``), ``axis`` or ``_CoordinateAxisType``
    whatever the dims are called; they may be unevenly spaced (a rectilinear grid, e.g.
    Mercator-spaced latitudes) and their CF ``bounds`` are kept as the cells' edges; a
    ``grid_mapping`` variable gives the CRS of projected coordinates (``m`` or ``km``),
    else the grid is geographic (EPSG:4326). A declared georeference is checked against
    the file's coordinates (:func:`esdc.sources.cf.check_declared_bbox`).

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
        dims do not match the declaration, its coordinates contradict the declared
        georeference, its grid mapping cannot be read, or its 2-D latitudes leave
        [-90, 90].
    """
    return geolocate_dataset(open_raw(spec, path), spec, path)


def open_raw(spec: SourceSpec, path: Path) -> xr.Dataset:
    """The file as xarray opens it for :func:`open_netcdf`: lazy, not masked or scaled.

    Raises
    ------
    SourceError
        If the file is not NetCDF/HDF5.
    """
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
    return ds


def geolocate_dataset(ds: xr.Dataset, spec: SourceSpec, path: Path | str) -> Geolocated:
    """Locate an opened NetCDF-like dataset (NetCDF, HDF5 or Zarr) as :func:`open_netcdf` does.

    Parameters
    ----------
    ds : xarray.Dataset
        Opened lazily (Dask), not decoded by mask and scale.
    spec : SourceSpec
        The recipe's source.
    path : pathlib.Path or str
        Where it was opened from (a path or URL), for messages.

    Returns
    -------
    Geolocated

    Raises
    ------
    SourceError
        As for :func:`open_netcdf`.
    """
    names = list(dict.fromkeys(v.source for v in spec.variables))
    # a single vertical level (OISST's zlev = 0 m) is a label, not a dim of the cube
    levels = [d for d in ds.dims if ds.sizes[d] == 1 and d in ds.coords
              and is_vertical(ds[d])]
    if levels:
        ds = ds.squeeze(levels)
    missing = [n for n in names if n not in ds.data_vars]
    if missing:
        have = sorted(map(str, ds.data_vars))
        ds.close()
        raise SourceError(
            f"sources.{spec.name}: variable(s) {missing} not in {path}; it has {have}. "
            "Fix `source:` of the variable in the recipe."
        )
    geo = spec.georeference
    if geo is None:
        pair = _curvilinear_coords(ds, names)
        if pair is not None:
            return _open_curvilinear(ds, names, pair, spec, path)
        return _open_own_grid(ds, names, spec, path)
    ds = ds[names]
    if geo.dims is not None:
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
    out = georeferenced(ds, geo, path, f"sources.{spec.name}")
    return dataclasses.replace(out, data=out.data.transpose(..., out.ydim, out.xdim))


def _open_own_grid(ds: xr.Dataset, names: list[str], spec: SourceSpec,
                   path: Path) -> Geolocated:
    """A file located by its own 1-D coordinates (CF axes, bounds, grid mapping)."""
    what = f"sources.{spec.name}"
    crs = grid_mapping_crs(ds, names, path, what)
    sub = ds[names]
    # the horizontal axes: by CF attributes or by name (not time, not a depth in metres)
    dims = [str(d) for d in dict.fromkeys(d for n in names for d in sub[n].dims)
            if d in ds.coords and ds[d].ndim == 1
            and (axis_of(ds[d]) is not None or d in Y_NAMES + X_NAMES)]
    metres = {d: length_factor(ds[d]) for d in dims
              if length_factor(ds[d]) is not None and not is_latitude(ds[d])
              and not is_longitude(ds[d])}
    if crs is None and metres:
        raise SourceError(
            f"{what}: {path} has projected coordinates {sorted(metres)} (in "
            f"{ds[next(iter(metres))].attrs.get('units')}) but no CF grid_mapping naming "
            "their CRS; add a grid_mapping variable to the file, or declare `georeference` "
            "(crs, bbox) in the recipe.")
    if crs is not None and not crs.is_geographic:
        degrees = [d for d in dims if is_latitude(ds[d]) or is_longitude(ds[d])]
        if degrees:
            raise SourceError(
                f"{what}: {path} names a projected grid mapping ({crs.name}) but its "
                f"coordinates {degrees} are in degrees; fix the file's grid_mapping or "
                "declare `georeference` (crs, bbox).")
    crs = crs or pyproj.CRS.from_epsg(4326)
    bounds = {d: b for d in dims for b in [cell_bounds(ds, d, path, what)] if b is not None}
    unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    for dim, factor in metres.items():  # e.g. km -> the CRS's metres
        if factor != unit:
            c = sub[dim]
            sub = sub.assign_coords({dim: (dim, c.values * (factor / unit), c.attrs)})
            if dim in bounds:
                bounds[dim] = bounds[dim] * (factor / unit)
    out = normalize(sub, crs, path, what, bounds=bounds)
    return dataclasses.replace(out, data=out.data.transpose(..., out.ydim, out.xdim))


def _curvilinear_coords(ds: xr.Dataset, names: list[str]) -> tuple[str, str] | None:
    """Names ``(lat, lon)`` of 2-D coordinates spanning every variable's last two dims."""
    two_d = [k for k, v in ds.variables.items() if v.ndim == 2 and k not in names]
    for lat in (k for k in two_d if is_latitude(ds[k])):
        dims = ds[lat].dims
        lon = next((k for k in two_d if ds[k].dims == dims and is_longitude(ds[k])), None)
        if lon is not None and all(set(dims) <= set(ds[n].dims) for n in names):
            return str(lat), str(lon)
    return None


def _open_curvilinear(ds: xr.Dataset, names: list[str], pair: tuple[str, str],
                      spec: SourceSpec, path: Path) -> Geolocated:
    """A swath :class:`Geolocated` of ``names`` on the 2-D coordinates ``pair``."""
    lat_name, lon_name = pair
    ydim, xdim = (str(d) for d in ds[lat_name].dims)
    check_size(ds, ydim, xdim, f"sources.{spec.name}", path)
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
