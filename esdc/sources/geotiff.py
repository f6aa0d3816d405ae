"""GeoTIFF reader (rioxarray, lazy via Dask)."""

from __future__ import annotations

from pathlib import Path

import pyproj
import xarray as xr

from esdc.errors import SourceError
from esdc.recipe import SourceSpec
from esdc.sources.base import Geolocated, apply_georeference, normalize
from esdc.sources.cf import TOLERANCE_PIXELS

__all__ = ["open_geotiff"]


def open_geotiff(spec: SourceSpec, path: Path) -> Geolocated:
    """Open a GeoTIFF lazily; each band becomes a variable.

    Bands are named by ``spec.bands`` (in band order) or ``band_1``, ``band_2``, …
    The file's nodata value is *not* applied (``masked=False``): categorical rasters
    use it for a real class (e.g. 0 = ocean); declare ``fill_value`` per variable.
    A declared ``georeference`` gives the CRS (it replaces the file's, e.g. an
    authority code for a planetary CRS the file only describes); its ``bbox`` places
    the pixels of a file without a geotransform and must agree with the file's
    bounds otherwise.

    Parameters
    ----------
    spec : SourceSpec
        The recipe's source (``format: geotiff``).
    path : pathlib.Path
        The file.

    Returns
    -------
    Geolocated
        Variables of dims ``(y, x)`` with the file's CRS (or the declared one).

    Raises
    ------
    SourceError
        If the file is not a GeoTIFF, has no CRS and none is declared, or its bounds
        differ from the declared ``georeference.bbox`` by more than a tenth of a pixel.
    """
    import rioxarray

    try:
        da = rioxarray.open_rasterio(path, chunks={"band": 1, "y": "auto", "x": -1},
                                     masked=False, lock=False)
    except Exception as exc:  # noqa: BLE001 - any rasterio failure is a bad source file
        raise SourceError(
            f"sources.{spec.name}: {path} is not a readable GeoTIFF ({str(exc)[:200]})."
        ) from None
    assert isinstance(da, xr.DataArray)
    if spec.georeference is not None:
        crs = pyproj.CRS.from_user_input(spec.georeference.crs)
    elif da.rio.crs is not None:
        crs = pyproj.CRS.from_user_input(da.rio.crs.to_wkt())
    else:
        raise SourceError(f"sources.{spec.name}: {path} has no CRS; declare georeference.crs.")
    nb = da.sizes["band"]
    names = spec.bands or [f"band_{i + 1}" for i in range(nb)]
    if len(names) != nb:
        raise SourceError(f"sources.{spec.name}: {path} has {nb} bands but `bands` names "
                          f"{len(names)}.")
    ds = xr.Dataset({
        n: da.isel(band=i, drop=True).drop_vars("spatial_ref", errors="ignore")
        for i, n in enumerate(names)
    })
    ds.attrs = {}
    if spec.georeference is not None:
        ds = _declared_bbox(ds, spec, path)
    return normalize(ds, crs, path, f"sources.{spec.name}")


def _declared_bbox(ds: xr.Dataset, spec: SourceSpec, path: Path) -> xr.Dataset:
    """Place a file without geotransform by the declared bbox; else check they agree."""
    import warnings

    import rasterio

    geo = spec.georeference
    assert geo is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as f:
            transform, bounds, (ny, nx) = f.transform, tuple(f.bounds), f.shape
    if transform.is_identity:
        return apply_georeference(ds, geo, f"sources.{spec.name}", path)
    tol = TOLERANCE_PIXELS * max(abs(transform.a), abs(transform.e))
    west, south, east, north = geo.bbox
    if (max(abs(a - b) for a, b in zip(bounds, (west, south, east, north), strict=True)) > tol
            or transform.b != 0 or transform.d != 0):
        raise SourceError(
            f"sources.{spec.name}: georeference.bbox {list(geo.bbox)} differs from the bounds "
            f"{[round(v, 6) for v in bounds]} of {path} ({ny} x {nx} pixels) by more than a "
            "tenth of a pixel; declare the file's own bounds, or leave georeference out to "
            "use the file's."
        )
    return ds
