"""NetCDF and HDF5 reader (xarray with netCDF4/h5netcdf, lazy via Dask)."""

from __future__ import annotations

from pathlib import Path

import pyproj
import xarray as xr

from esdc.errors import SourceError
from esdc.recipe import SourceSpec
from esdc.sources.base import Geolocated, apply_georeference, normalize

__all__ = ["open_netcdf"]


def open_netcdf(spec: SourceSpec, path: Path) -> Geolocated:
    """Open a NetCDF (classic or 4) or plain HDF5 file lazily.

    HDF5 datasets without dimension scales get ``phony_dim_*`` dims from h5netcdf;
    they are renamed positionally to ``georeference.dims`` and given coordinates
    from the declared bbox. CF ``time`` coordinates are decoded. The on-disk chunks
    become the Dask chunks.

    Parameters
    ----------
    spec : SourceSpec
        The recipe's source (``format`` netcdf or hdf5).
    path : pathlib.Path
        The file.

    Returns
    -------
    Geolocated
        Variables transposed to ``(..., y, x)``.

    Raises
    ------
    SourceError
        If the file is not NetCDF/HDF5, lacks a variable the recipe names, or its
        dims do not match the declaration.
    """
    names = list(dict.fromkeys(v.source for v in spec.variables))
    try:
        if spec.format == "hdf5":
            ds = xr.open_dataset(path, engine="h5netcdf", phony_dims="sort", chunks={},
                                 mask_and_scale=False, decode_cf=False)
        else:
            ds = xr.open_dataset(path, chunks={}, mask_and_scale=False)
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
