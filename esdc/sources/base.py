"""What every reader shares: where a source's pixels are, declared georeference, dispatch.

A reader returns a :class:`Geolocated`: the lazily opened data and how its pixels are
*located* (:data:`LOCATIONS`, after xcube's ``GridMapping``): on a ``regular`` grid of a
PROJ CRS (1-D cell-centre coordinates), as a ``swath`` (per-pixel longitude/latitude), or
by a FITS ``wcs`` (solar images, :class:`esdc.solar.SolarImage`). The resampler is chosen
from the location (:mod:`esdc.regrid`).

:func:`open_source` finds the reader of a format in :mod:`esdc.sources.registry` and
imports it then; this module imports no reader. It knows the recipe's source and
georeference entries only by the attributes it reads (:class:`SourceLike`,
:class:`Georeference`), so that the recipe schema can import the registry's format names
without an import cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import dask.array as da
import numpy as np
import pyproj
import xarray as xr

from esdc.errors import ChecksumError, SourceError, SourceNotFoundError
from esdc.grid import body_of
from esdc.hashing import file_sha256
from esdc.samples import SAMPLES, sample_path
from esdc.sources.cf import axis_of, bounds_from_centres, check_declared_bbox
from esdc.sources.registry import IN_PLACE, reader

__all__ = ["LOCATIONS", "MAX_SOURCE_PIXELS", "Geolocated", "Georeference", "SourceLike",
           "apply_georeference", "check_size", "georeferenced", "normalize", "open_source",
           "resolve_path"]

#: How a source's pixels are located: a regular grid of a PROJ CRS, a swath or
#: curvilinear grid (per-pixel lon/lat), or a FITS world coordinate system (WCS).
LOCATIONS = ("regular", "swath", "wcs")

#: Most pixels one layer (one ``y`` x ``x`` slice) of a source may declare: a larger
#: file (e.g. a crafted header declaring billions of rows) is refused before any
#: coordinate is made or read.
MAX_SOURCE_PIXELS = 4_000_000_000

#: Names recognised as the latitude/y and longitude/x dims of a source.
Y_NAMES = ("lat", "latitude", "y", "rows")
X_NAMES = ("lon", "longitude", "x", "cols")


class Georeference(Protocol):
    """A declared georeference as the readers use it (:class:`esdc.recipe.GeoreferenceSpec`)."""

    @property
    def crs(self) -> str:
        """CRS of the file's pixels (authority code, PROJ string or WKT)."""

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """Outer edges ``(west, south, east, north)`` in ``crs`` units."""

    @property
    def row_order(self) -> str:
        """``north_up`` or ``south_up``: which row comes first in the file."""


class SourceLike(Protocol):
    """A recipe source as :func:`open_source` uses it (:class:`esdc.recipe.SourceSpec`)."""

    @property
    def name(self) -> str:
        """Name of the source, for messages."""

    @property
    def sample(self) -> str | None:
        """Registered sample, or ``None`` for a ``path``."""

    @property
    def path(self) -> str | None:
        """Local file, or ``None`` for a ``sample``."""

    @property
    def sha256(self) -> str | None:
        """Expected SHA-256 of ``path``, if declared."""

    @property
    def format(self) -> str:
        """A name of :data:`esdc.sources.registry.FORMATS`."""

    @property
    def variables(self) -> Sequence[Any]:
        """The variables taken (each with a ``source`` name in the file)."""


@dataclass(frozen=True)
class Geolocated:
    """A lazily opened source and where its pixels are.

    Attributes
    ----------
    data : xarray.Dataset
        Variables with dims ``(..., ydim, xdim)``, Dask-backed. For a regular grid
        ``data[ydim]`` / ``data[xdim]`` hold cell-centre coordinates in CRS units,
        y decreasing (north up) and x increasing.
    crs : pyproj.CRS or None
        The source's PROJ CRS (geographic for a swath). ``None`` only for a source
        located by a FITS WCS (:attr:`location` ``"wcs"``: :class:`esdc.solar.SolarImage`),
        whose frame PROJ cannot represent.
    ydim, xdim : str
        Names of the spatial dims (rows and columns of a swath).
    path : pathlib.Path
        The file read.
    lons, lats : numpy.ndarray, optional
        For a swath or curvilinear grid: longitude and latitude of every pixel centre,
        shape ``(ny, nx)``, degrees in ``crs`` (geographic). ``None`` for regular grids.
    ybounds, xbounds : numpy.ndarray, optional
        For a regular grid: the file's own cell bounds (CF ``bounds``), shape ``(n, 2)``
        (low, high) in the order of ``data[ydim]`` / ``data[xdim]``, CRS units. ``None``:
        cells reach midway to the neighbouring centres (:meth:`cell_bounds`).

    A regular source's coordinates may be unevenly spaced (a *rectilinear* grid, e.g.
    latitudes spaced as in Mercator): :attr:`evenly_spaced` tells, and the resamplers
    use :meth:`cell_bounds` instead of one pixel size then.

    Raises
    ------
    SourceError
        If a regular or swath source has no CRS.
    """

    data: xr.Dataset
    crs: pyproj.CRS | None
    ydim: str
    xdim: str
    path: Path
    lons: np.ndarray | None = None
    lats: np.ndarray | None = None
    ybounds: np.ndarray | None = None
    xbounds: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.crs is None and self.location != "wcs":
            raise SourceError(f"{self.path.name}: a {self.location} source needs a PROJ CRS.")

    @property
    def location(self) -> str:
        """How the pixels are located: ``regular`` or ``swath`` (:data:`LOCATIONS`)."""
        return "swath" if self.lons is not None else "regular"

    @property
    def is_swath(self) -> bool:
        """True for swath/curvilinear sources (per-pixel lon/lat)."""
        return self.location == "swath"

    @property
    def body(self) -> str | None:
        """The body the source lies on (``earth``, ``moon``), from its CRS; ``None`` if unknown."""
        return body_of(self.crs) if self.crs is not None else None

    @cached_property
    def evenly_spaced(self) -> bool:
        """Whether a regular source's coordinates are evenly spaced (to 1e-4 of a cell).

        ``False`` for a rectilinear grid of uneven spacing (or file bounds of unequal
        cells) and for swaths.
        """
        if self.lons is not None:
            return False
        for dim, b in ((self.xdim, self.xbounds), (self.ydim, self.ybounds)):
            c = np.asarray(self.data[dim].values, dtype="float64")
            widths = np.diff(c) if b is None else b[:, 1] - b[:, 0]
            if widths.size > 1 and np.max(np.abs(widths - widths[0])) > 1e-4 * abs(widths[0]):
                return False
        return True

    def cell_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Bounds of a regular source's cells: the file's, else midway between centres.

        Returns
        -------
        tuple of numpy.ndarray
            ``(ybounds, xbounds)``, shapes ``(ny, 2)`` and ``(nx, 2)``: (low, high) per row
            (north first, as the data) and per column (west first), CRS units.

        Raises
        ------
        SourceError
            For a swath (its pixels have centres only).
        """
        if self.lons is not None:
            raise SourceError(f"{self.path.name}: a swath has no rectilinear cell bounds.")
        yb = self.ybounds if self.ybounds is not None else bounds_from_centres(
            self.data[self.ydim].values)
        xb = self.xbounds if self.xbounds is not None else bounds_from_centres(
            self.data[self.xdim].values)
        return yb, xb

    @cached_property
    def resolution(self) -> tuple[float, float]:
        """``(dx, dy)`` pixel size in CRS units, both positive.

        The median spacing for swaths; the largest cell of an unevenly spaced grid.
        """
        if self.lons is not None and self.lats is not None:
            dx = float(np.nanmedian(np.abs(np.diff(self.lons, axis=1)))) if self.lons.shape[
                1] > 1 else 1.0
            dy = float(np.nanmedian(np.abs(np.diff(self.lats, axis=0)))) if self.lats.shape[
                0] > 1 else 1.0
            return max(dx, 1e-9), max(dy, 1e-9)
        if not self.evenly_spaced:
            yb, xb = self.cell_bounds()
            return float(np.max(xb[:, 1] - xb[:, 0])), float(np.max(yb[:, 1] - yb[:, 0]))
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
        if not self.evenly_spaced or self.xbounds is not None or self.ybounds is not None:
            yb, xb = self.cell_bounds()
            return (float(xb.min()), float(yb.min()), float(xb.max()), float(yb.max()))
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

        Raises
        ------
        SourceError
            For a regular source of uneven spacing (pyresample's areas are evenly
            spaced): the resamplers handle those from :meth:`cell_bounds`.
        """
        if self.lons is None and not self.evenly_spaced:
            raise SourceError(f"{self.path.name}: an unevenly spaced grid has no pyresample "
                              "area definition.")
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


def resolve_path(spec: SourceLike, base_dir: Path | None = None) -> Path:
    """The file a source refers to, checked to exist (and its SHA-256 when declared).

    Relative ``path`` values are resolved against ``base_dir`` (the recipe's folder).

    Parameters
    ----------
    spec : esdc.recipe.SourceSpec
        The recipe's source entry (``sample`` or ``path``, optional ``sha256``).
    base_dir : pathlib.Path, optional
        Folder relative ``path`` values are taken from.

    Returns
    -------
    pathlib.Path
        The existing file.

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
    if not (p.is_file() or (spec.format in IN_PLACE and p.is_dir())):
        raise SourceNotFoundError(
            f"sources.{spec.name}.path: file {p} does not exist; fix the path in the recipe "
            "(relative paths are taken from the recipe's folder)."
        )
    if spec.sha256 is not None:
        got = file_sha256(p)
        if got != spec.sha256:
            raise ChecksumError(
                f"sources.{spec.name}: {p} has SHA-256 {got}, but the recipe expects "
                f"{spec.sha256}; the file changed or is corrupt."
            )
    return p


def _centres(lo: float, hi: float, n: int) -> np.ndarray:
    step = (hi - lo) / n
    return lo + step * (np.arange(n) + 0.5)


def apply_georeference(ds: xr.Dataset, geo: Georeference, what: str,
                       path: Path | None = None) -> xr.Dataset:
    """Attach declared cell-centre coordinates to the spatial dims of ``ds``.

    Parameters
    ----------
    ds : xarray.Dataset
        Variables whose dims are named as in ``geo.dims`` (or ``y, x``).
    geo : esdc.recipe.GeoreferenceSpec
        Declared CRS, outer-edge bbox and row order (:class:`Georeference`).
    what : str
        Name of the source, for messages.

    path : pathlib.Path, optional
        The file, for messages.

    Returns
    -------
    xarray.Dataset
        With 1-D ``ydim`` coordinates from north to south (rows flipped lazily when
        ``row_order`` is ``south_up``) and ``xdim`` from west to east.

    Raises
    ------
    SourceError
        If the spatial dims cannot be told, the file is larger than esdc reads, or the
        file's own coordinates disagree with the declaration (bbox by more than a tenth
        of a pixel, row order, :func:`esdc.sources.cf.check_declared_bbox`).
    """
    ydim, xdim = _spatial_dims(ds, what)
    check_size(ds, ydim, xdim, what)
    check_declared_bbox(ds, ydim, xdim, geo, path, what)
    west, south, east, north = geo.bbox
    ny, nx = ds.sizes[ydim], ds.sizes[xdim]
    y = _centres(south, north, ny)[::-1]
    ds = ds.assign_coords({ydim: y, xdim: _centres(west, east, nx)})
    if geo.row_order == "south_up":
        # Row 0 is the southernmost: flip the data, keep the coordinates north-first.
        ds = ds.isel({ydim: slice(None, None, -1)}).assign_coords({ydim: y})
    return ds


def check_size(ds: xr.Dataset, ydim: str, xdim: str, what: str, path: Path | None = None
               ) -> None:
    """Refuse a source whose layers declare more than :data:`MAX_SOURCE_PIXELS` pixels.

    Parameters
    ----------
    ds : xarray.Dataset
        The opened source (only its sizes are read).
    ydim, xdim : str
        Its row and column dims.
    what : str
        Name of the source, for messages.
    path : pathlib.Path, optional
        The file, for messages.

    Raises
    ------
    SourceError
        If ``ny * nx`` exceeds :data:`MAX_SOURCE_PIXELS`.
    """
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
    """Row and column dims: by CF attributes of their coordinates, else by name."""
    dims = set().union(*(v.dims for v in ds.data_vars.values())) if ds.data_vars else set()
    by_cf: dict[str, str] = {}
    for d in sorted(map(str, dims)):
        if d in ds.coords and ds[d].ndim == 1:
            axis = axis_of(ds[d])
            if axis is not None:
                by_cf.setdefault(axis, d)
    ydim = by_cf.get("y") or next((d for d in Y_NAMES if d in dims), None)
    xdim = by_cf.get("x") or next((d for d in X_NAMES if d in dims), None)
    if ydim is None or xdim is None or ydim == xdim:
        raise SourceError(
            f"{what}: cannot tell which dims are latitude/y and longitude/x among "
            f"{sorted(map(str, dims))}: no coordinate says so by CF standard_name, units "
            "(degrees_north/degrees_east), axis (Y/X) or _CoordinateAxisType, and none is "
            "named lat/lon or y/x. Add those attributes to the file's coordinates, or name "
            "the dims in georeference.dims (with crs and bbox)."
        )
    return ydim, xdim


def _flip(ds: xr.Dataset, dim: str, bounds: dict[str, np.ndarray]) -> xr.Dataset:
    """``ds`` reversed along ``dim`` (lazily), with its bounds."""
    if dim in bounds:
        bounds[dim] = bounds[dim][::-1]
    return ds.isel({dim: slice(None, None, -1)})


def _wrap_longitudes(ds: xr.Dataset, xdim: str, bounds: dict[str, np.ndarray], path: Path,
                     what: str) -> xr.Dataset:
    """Longitudes of 0..360 rolled to -180..180 (columns reordered lazily).

    A regional file that crosses 180 degrees cannot be one west-first run of columns in
    -180..180: it is refused with what to do.
    """
    x = np.asarray(ds[xdim].values, dtype="float64")
    if x.max() < 180.0:
        return ds
    wrapped = np.where(x >= 180.0, x - 360.0, x)
    order = np.argsort(wrapped, kind="stable")
    w = wrapped[order]
    if w.size > 2:
        gaps = np.diff(w)
        step = float(np.median(gaps))
        if gaps.max() > 1.5 * step and w.size * step < 360.0 * (1 - 1e-6):
            raise SourceError(
                f"{what}: the longitudes of {path} ({xdim} {x[0]:.6g} .. {x[-1]:.6g}) cross "
                "180 degrees; esdc reads geographic sources as one run of columns in "
                "[-180, 180). Split the file at 180 degrees into two sources (both filling "
                "the variable with `combine: first_valid`).")
    if xdim in bounds:
        b = bounds[xdim]
        bounds[xdim] = np.where(x[:, None] >= 180.0, b - 360.0, b)[order]
    return ds.isel({xdim: order}).assign_coords({xdim: w})


#: Without CF bounds, neighbouring steps of unevenly spaced coordinates may differ by this
#: factor at most: a larger jump looks like a missing row or column, not a rectilinear grid.
MAX_STEP_RATIO = 1.5


def _check_gradual(steps: np.ndarray, c: np.ndarray, dim: str, path: Path, what: str) -> None:
    """Refuse coordinates whose spacing jumps (cells midway between centres would be wrong)."""
    if steps.size < 2 or np.max(np.abs(steps - steps[0])) <= 1e-4 * steps[0]:
        return
    ratio = steps[1:] / steps[:-1]
    bad = np.flatnonzero((ratio > MAX_STEP_RATIO) | (ratio < 1 / MAX_STEP_RATIO))
    if bad.size:
        i = int(bad[0])
        raise SourceError(
            f"{what}: coordinate {dim!r} of {path} is not evenly spaced, and its step jumps "
            f"from {steps[i]:.6g} to {steps[i + 1]:.6g} at {c[i + 1]:.6g} (a missing row or "
            "column?). esdc reads unevenly spaced coordinates whose step changes gradually "
            "(e.g. latitudes spaced as in Mercator) or that come with CF cell bounds (a "
            "`bounds` attribute); fill the gap (e.g. xarray .reindex) or add the bounds.")


def normalize(ds: xr.Dataset, crs: pyproj.CRS, path: Path, what: str,
              bounds: dict[str, np.ndarray] | None = None) -> Geolocated:
    """Check and normalise a regular source grid; return it geolocated.

    Coordinates must be 1-D and strictly monotonic; they may be unevenly spaced (a
    rectilinear grid, e.g. latitudes spaced as in Mercator) when their step changes
    gradually (:data:`MAX_STEP_RATIO`) or the file gives CF bounds. Rows are put north-first
    and columns west-first (lazily); geographic longitudes in [0, 360) are rolled to
    [-180, 180).

    Parameters
    ----------
    ds : xarray.Dataset
        Variables ending in the spatial dims, with 1-D coordinates on them.
    crs : pyproj.CRS
        The CRS of those coordinates.
    path : pathlib.Path
        The file, for messages.
    what : str
        Name of the source, for messages.
    bounds : dict of str to numpy.ndarray, optional
        The file's CF cell bounds per spatial dim, shape ``(n, 2)``, in the file's order.

    Returns
    -------
    Geolocated
        A regular source; its ``ybounds``/``xbounds`` carry the file's bounds.

    Raises
    ------
    SourceError
        Naming the file and coordinate when it is missing, not 1-D, not monotonic, or its
        step jumps without bounds, or a regional geographic file crosses 180 degrees of
        longitude.
    """
    ydim, xdim = _spatial_dims(ds, what)
    check_size(ds, ydim, xdim, what, path)
    found = dict(bounds or {})
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
            if dim not in found:
                _check_gradual(np.abs(d), c, dim, path, what)
    if ds.sizes[ydim] > 1 and ds[ydim].values[1] > ds[ydim].values[0]:
        ds = _flip(ds, ydim, found)
    if ds.sizes[xdim] > 1 and ds[xdim].values[1] < ds[xdim].values[0]:
        ds = _flip(ds, xdim, found)
    if crs.is_geographic:
        ds = _wrap_longitudes(ds, xdim, found, path, what)
    return Geolocated(ds, crs, ydim, xdim, path, ybounds=found.get(ydim),
                      xbounds=found.get(xdim))


def georeferenced(ds: xr.Dataset, geo: Georeference, path: Path, what: str) -> Geolocated:
    """A file without georeference of its own, placed by the recipe's declaration.

    :func:`apply_georeference`, then :func:`normalize` in the declared CRS.

    Parameters
    ----------
    ds : xarray.Dataset
        Variables whose spatial dims are named as in ``geo.dims`` (or ``lat, lon`` /
        ``y, x``), lazy.
    geo : esdc.recipe.GeoreferenceSpec
        Declared CRS, outer-edge bbox and row order.
    path : pathlib.Path
        The file, for messages.
    what : str
        Name of the source, for messages.

    Returns
    -------
    Geolocated
        A regular source in ``geo.crs``, north up, west first.

    Raises
    ------
    SourceError
        If the spatial dims cannot be told or the file is larger than esdc reads.
    """
    ds = apply_georeference(ds, geo, what, path)
    return normalize(ds, pyproj.CRS.from_user_input(geo.crs), path, what)


def open_source(spec: SourceLike, base_dir: Path | None = None) -> Geolocated:
    """Open a recipe source lazily with the reader of its ``format``.

    The reader's module (:data:`esdc.sources.registry.READERS`) is imported now.

    Parameters
    ----------
    spec : esdc.recipe.SourceSpec
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
    path = resolve_path(spec, base_dir)
    open_kind = reader(spec.format)
    try:
        geo: Geolocated = open_kind(spec, path)
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
