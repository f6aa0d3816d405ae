"""Common machinery of the readers: geolocation, declared georeference, dispatch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pyproj
import xarray as xr

from esdc.errors import ChecksumError, SourceError, SourceNotFoundError
from esdc.recipe import GeoreferenceSpec, SourceSpec
from esdc.samples import SAMPLES, sample_path, sha256sum

__all__ = ["Geolocated", "apply_georeference", "normalize", "open_source", "resolve_path"]

#: Most pixels one layer (one ``y`` x ``x`` slice) of a source may declare: a larger
#: file (e.g. a crafted header declaring billions of rows) is refused before any
#: coordinate is made or read.
MAX_SOURCE_PIXELS = 4_000_000_000

#: Names recognised as the latitude/y and longitude/x dims of a source.
Y_NAMES = ("lat", "latitude", "y", "rows")
X_NAMES = ("lon", "longitude", "x", "cols")


@dataclass(frozen=True)
class Geolocated:
    """A lazily opened source and where its pixels are.

    Attributes
    ----------
    data : xarray.Dataset
        Variables with dims ``(..., ydim, xdim)``, Dask-backed. For a regular grid
        ``data[ydim]`` / ``data[xdim]`` hold cell-centre coordinates in CRS units,
        y decreasing (north up) and x increasing.
    crs : pyproj.CRS
        The source CRS.
    ydim, xdim : str
        Names of the spatial dims (rows and columns of a swath).
    path : pathlib.Path
        The file read.
    lons, lats : numpy.ndarray, optional
        For a swath or curvilinear grid: longitude and latitude of every pixel centre,
        shape ``(ny, nx)``, degrees in ``crs`` (geographic). ``None`` for regular grids.
    """

    data: xr.Dataset
    crs: pyproj.CRS
    ydim: str
    xdim: str
    path: Path
    lons: np.ndarray | None = None
    lats: np.ndarray | None = None

    @property
    def is_swath(self) -> bool:
        """True for swath/curvilinear sources (per-pixel lon/lat)."""
        return self.lons is not None

    @cached_property
    def resolution(self) -> tuple[float, float]:
        """``(dx, dy)`` pixel size in CRS units, both positive (median spacing for swaths)."""
        if self.lons is not None and self.lats is not None:
            dx = float(np.nanmedian(np.abs(np.diff(self.lons, axis=1)))) if self.lons.shape[
                1] > 1 else 1.0
            dy = float(np.nanmedian(np.abs(np.diff(self.lats, axis=0)))) if self.lats.shape[
                0] > 1 else 1.0
            return max(dx, 1e-9), max(dy, 1e-9)
        x = self.data[self.xdim].values
        y = self.data[self.ydim].values
        dx = float(x[1] - x[0]) if x.size > 1 else 360.0
        dy = float(y[0] - y[1]) if y.size > 1 else 180.0
        return dx, dy

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(west, south, east, north)`` outer edges, in CRS units."""
        dx, dy = self.resolution
        if self.lons is not None and self.lats is not None:
            return (float(np.nanmin(self.lons) - dx / 2), float(np.nanmin(self.lats) - dy / 2),
                    float(np.nanmax(self.lons) + dx / 2), float(np.nanmax(self.lats) + dy / 2))
        x = self.data[self.xdim].values
        y = self.data[self.ydim].values
        return (float(x[0] - dx / 2), float(y[-1] - dy / 2), float(x[-1] + dx / 2),
                float(y[0] + dy / 2))

    def area_definition(self) -> Any:
        """The source geometry for pyresample.

        Returns
        -------
        pyresample.geometry.AreaDefinition or SwathDefinition
            A ``SwathDefinition`` of Dask lon/lat arrays for swath sources.
        """
        from pyresample.geometry import AreaDefinition, SwathDefinition

        if self.lons is not None and self.lats is not None:
            chunks = self.data[next(iter(self.data.data_vars))].data.chunksize[-2:]
            return SwathDefinition(
                xr.DataArray(da.from_array(self.lons, chunks=chunks), dims=("y", "x")),
                xr.DataArray(da.from_array(self.lats, chunks=chunks), dims=("y", "x")),
                crs=self.crs)

        ny, nx = self.data.sizes[self.ydim], self.data.sizes[self.xdim]
        return AreaDefinition("source", str(self.path.name), "source", self.crs, nx, ny,
                              self.bbox)


def resolve_path(spec: SourceSpec, base_dir: Path | None = None) -> Path:
    """The file a source refers to, checked to exist (and its SHA-256 when declared).

    Relative ``path`` values are resolved against ``base_dir`` (the recipe's folder).

    Raises
    ------
    SourceNotFoundError
        If the file does not exist or the sample was not fetched.
    ChecksumError
        If the file's SHA-256 differs from the recipe's ``sha256`` or the registry's.
    """
    if spec.sample is not None:
        if spec.sample not in SAMPLES:
            raise SourceNotFoundError(
                f"sources.{spec.name}.sample: {spec.sample!r} is not a registered sample; "
                "`esdc samples list` shows them."
            )
        return sample_path(spec.sample)
    assert spec.path is not None
    p = Path(spec.path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    if not p.is_file():
        raise SourceNotFoundError(
            f"sources.{spec.name}.path: file {p} does not exist; fix the path in the recipe "
            "(relative paths are taken from the recipe's folder)."
        )
    if spec.sha256 is not None:
        got = sha256sum(p)
        if got != spec.sha256:
            raise ChecksumError(
                f"sources.{spec.name}: {p} has SHA-256 {got}, but the recipe expects "
                f"{spec.sha256}; the file changed or is corrupt."
            )
    return p


def _centres(lo: float, hi: float, n: int) -> np.ndarray:
    step = (hi - lo) / n
    return lo + step * (np.arange(n) + 0.5)


def apply_georeference(ds: xr.Dataset, geo: GeoreferenceSpec, what: str) -> xr.Dataset:
    """Attach declared cell-centre coordinates to the spatial dims of ``ds``.

    Parameters
    ----------
    ds : xarray.Dataset
        Variables whose dims are named as in ``geo.dims`` (or ``y, x``).
    geo : GeoreferenceSpec
        Declared CRS, outer-edge bbox and row order.
    what : str
        Name of the source, for messages.

    Returns
    -------
    xarray.Dataset
        With 1-D ``ydim`` coordinates from north to south (rows flipped lazily when
        ``row_order`` is ``south_up``) and ``xdim`` from west to east.
    """
    ydim, xdim = _spatial_dims(ds, what)
    _check_size(ds, ydim, xdim, what)
    west, south, east, north = geo.bbox
    ny, nx = ds.sizes[ydim], ds.sizes[xdim]
    y = _centres(south, north, ny)[::-1]
    ds = ds.assign_coords({ydim: y, xdim: _centres(west, east, nx)})
    if geo.row_order == "south_up":
        # Row 0 is the southernmost: flip the data, keep the coordinates north-first.
        ds = ds.isel({ydim: slice(None, None, -1)}).assign_coords({ydim: y})
    return ds


def _check_size(ds: xr.Dataset, ydim: str, xdim: str, what: str, path: Path | None = None
                ) -> None:
    """Refuse a source whose layers declare more than ``MAX_SOURCE_PIXELS`` pixels."""
    ny, nx = int(ds.sizes[ydim]), int(ds.sizes[xdim])
    if ny * nx > MAX_SOURCE_PIXELS:
        where = f" {path}" if path is not None else ""
        raise SourceError(
            f"{what}:{where} declares {ny} x {nx} pixels per layer ({ny * nx:.3g}), more "
            f"than esdc reads ({MAX_SOURCE_PIXELS:.0e}); the file is corrupt or far larger "
            "than the grid needs. Crop it to the grid's region first (e.g. gdal_translate "
            "-projwin or xarray .sel)."
        )


def _spatial_dims(ds: xr.Dataset, what: str) -> tuple[str, str]:
    dims = set().union(*(v.dims for v in ds.data_vars.values())) if ds.data_vars else set()
    ydim = next((d for d in Y_NAMES if d in dims), None)
    xdim = next((d for d in X_NAMES if d in dims), None)
    if ydim is None or xdim is None:
        raise SourceError(
            f"{what}: cannot tell which dims are latitude/y and longitude/x among "
            f"{sorted(map(str, dims))}; name them lat/lon (or y/x) in georeference.dims."
        )
    return ydim, xdim


def normalize(ds: xr.Dataset, crs: pyproj.CRS, path: Path, what: str) -> Geolocated:
    """Check and normalise a regular source grid; return it geolocated.

    Coordinates must be 1-D, strictly monotonic and evenly spaced (to 1e-4 of a
    cell). Rows are put north-first and columns west-first (lazily); geographic
    longitudes in [0, 360) are rolled to [-180, 180).

    Raises
    ------
    SourceError
        Naming the file and coordinate when it is not monotonic or not regular.
    """
    ydim, xdim = _spatial_dims(ds, what)
    _check_size(ds, ydim, xdim, what, path)
    for dim in (ydim, xdim):
        if dim not in ds.coords:
            raise SourceError(f"{what}: {path} has no coordinate for dim {dim!r}; declare a "
                              "georeference in the recipe.")
        c = np.asarray(ds[dim].values, dtype="float64")
        if c.ndim != 1:
            raise SourceError(f"{what}: coordinate {dim!r} of {path} is not 1-D.")
        if c.size > 1:
            d = np.diff(c)
            if not (np.all(d > 0) or np.all(d < 0)):
                raise SourceError(
                    f"{what}: coordinate {dim!r} of {path} is not monotonic (it goes back "
                    "and forth); sort the file along it or fix the file."
                )
            if np.max(np.abs(d - d[0])) > 1e-4 * abs(d[0]) + 1e-9:
                raise SourceError(f"{what}: coordinate {dim!r} of {path} is not evenly "
                                  "spaced; esdc reads regular grids from this format.")
    if ds.sizes[ydim] > 1 and ds[ydim].values[1] > ds[ydim].values[0]:
        ds = ds.isel({ydim: slice(None, None, -1)})
    if ds.sizes[xdim] > 1 and ds[xdim].values[1] < ds[xdim].values[0]:
        ds = ds.isel({xdim: slice(None, None, -1)})
    if crs.is_geographic:
        x = ds[xdim].values
        if x.max() >= 180.0:
            wrapped = np.where(x >= 180.0, x - 360.0, x)
            order = np.argsort(wrapped, kind="stable")
            ds = ds.isel({xdim: order}).assign_coords({xdim: wrapped[order]})
    return Geolocated(ds, crs, ydim, xdim, path)


def open_source(spec: SourceSpec, base_dir: Path | None = None) -> Geolocated:
    """Open a recipe source lazily with the reader of its ``format``.

    Parameters
    ----------
    spec : SourceSpec
        The recipe's source entry.
    base_dir : pathlib.Path, optional
        Folder relative ``path`` values are taken from.

    Returns
    -------
    Geolocated

    Raises
    ------
    SourceNotFoundError, ChecksumError
        If the file is missing or differs from its recorded checksum.
    SourceError
        If the file cannot be read as declared, or a variable is missing.
    """
    from esdc.sources import fits, geotiff, image, netcdf, raw

    readers: dict[str, Callable[[SourceSpec, Path], Geolocated]] = {
        "netcdf": netcdf.open_netcdf,
        "hdf5": netcdf.open_netcdf,
        "geotiff": geotiff.open_geotiff,
        "image": image.open_image,
        "raw": raw.open_raw,
        "fits": fits.open_fits,
        "jp2": fits.open_jp2,
    }
    path = resolve_path(spec, base_dir)
    try:
        geo = readers[spec.format](spec, path)
    except (SourceError, OSError) as exc:
        if isinstance(exc, SourceError):
            raise
        raise SourceError(
            f"sources.{spec.name}: cannot read {path} as {spec.format}: {exc}. Check the file "
            "and the recipe's `format`."
        ) from None
    missing = [v.source for v in spec.variables if v.source not in geo.data.data_vars]
    if missing:
        raise SourceError(
            f"sources.{spec.name}: variable(s) {missing} not in {path}; it has "
            f"{sorted(map(str, geo.data.data_vars))}."
        )
    return geo
