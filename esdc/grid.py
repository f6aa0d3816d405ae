"""The cube's grid: the one immutable target of every regrid.

Modelled on odc-geo's ``GeoBox(shape, affine, crs)``: a small value object that
carries the body, the CRS, the affine transform of cell *edges*, the shape
``(ny, nx)`` and an optional time axis. Everything that harmonizes data takes a
:class:`Grid`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyproj

from esdc.conventions import (
    ATTR_BODY,
    ATTR_OBSERVER,
    ATTR_WCS_CTYPE,
    SPATIAL_DIMS,
    TIME_BNDS,
    TIME_DIM,
)
from esdc.errors import GridError

__all__ = ["AU_M", "BODY_CRS", "HELIOPROJECTIVE", "RSUN_REF_M", "Body", "Grid", "body_of",
           "parse_bbox"]

Body = Literal["earth", "moon", "sun"]

#: Default geographic CRS of each body. Earth: WGS 84 (EPSG:4326). Moon: IAU 2015
#: "Moon (2015) - Sphere / Ocentric", radius 1737.4 km (IAU WGCCRE 2015 report,
#: Archinal et al. 2018, Celest. Mech. Dyn. Astr. 130:22). The Sun has no geographic
#: CRS in PROJ; solar grids are helioprojective and declared by WCS.
BODY_CRS: dict[str, str] = {"earth": "EPSG:4326", "moon": "IAU_2015:30100"}

#: CRS name of solar grids: the helioprojective-cartesian frame (Thompson 2006, A&A 449,
#: 791) in the gnomonic (TAN) projection centred on the Sun, solar north up, as seen by
#: an observer at 1 AU on the Sun-Earth line at each time step's observation time.
#: Coordinates are arcsec in the projection plane (helioprojective Tx, Ty to 1e-5
#: within 1 degree of the Sun). PROJ has no such CRS: :mod:`esdc.regrid.wcs` regrids onto it.
HELIOPROJECTIVE = "helioprojective"
#: The astronomical unit in metres (IAU 2012 Resolution B2): observer distance of solar grids.
AU_M = 149_597_870_700.0
#: Solar radius of SDO's pipelines (``RSUN_REF`` of AIA/HMI headers), metres: the sphere
#: on-disk pixels lie on. Seen from 1 AU it subtends ``arcsin(RSUN_REF_M / AU_M)`` =
#: 959.64 arcsec.
RSUN_REF_M = 696_000_000.0


def body_of(crs: pyproj.CRS | None) -> str | None:
    """The body a CRS lies on, from its ellipsoid's size; ``"sun"`` for no CRS (a WCS).

    Earth ellipsoids have semi-major axes near 6378 km, the IAU Moon sphere 1737.4 km;
    other sizes give ``None`` (unknown body, not checked).
    """
    if crs is None:
        return "sun"
    a = crs.ellipsoid.semi_major_metre if crs.ellipsoid is not None else None
    if a is None:
        return None
    if 6.3e6 < a < 6.4e6:
        return "earth"
    if 1.7e6 < a < 1.8e6:
        return "moon"
    return None


def _parse_crs(crs: str) -> pyproj.CRS:
    try:
        return pyproj.CRS.from_user_input(crs)
    except pyproj.exceptions.CRSError as exc:
        raise GridError(
            f"grid.crs: unknown CRS {crs!r} ({exc}). Use an authority code such as "
            "'EPSG:4326' (Earth) or 'IAU_2015:30100' (Moon), a PROJ string or WKT."
        ) from None


@dataclass(frozen=True)
class Grid:
    """A regular grid on a body, with an optional time axis.

    Parameters
    ----------
    body : {"earth", "moon", "sun"}
        The body the grid lies on.
    crs : str
        The CRS as an authority code, PROJ string or WKT (anything
        :func:`pyproj.CRS.from_user_input` takes), or ``"helioprojective"``
        (:data:`HELIOPROJECTIVE`, Sun only; transform in arcsec).
    transform : tuple of 6 float
        Affine transform ``(a, b, c, d, e, f)`` from (column, row) of cell *edges* to
        CRS coordinates: ``x = a*col + b*row + c``, ``y = d*col + e*row + f`` (the
        order of :class:`affine.Affine` and rasterio). Only north-up grids
        (``b == d == 0``, ``a > 0``, ``e < 0``) are supported.
    shape : tuple of 2 int
        ``(ny, nx)``: rows, then columns.
    time : tuple of numpy.datetime64, optional
        Labels of the time axis (the start of each time cell), strictly increasing.
    time_bounds : tuple of (numpy.datetime64, numpy.datetime64), optional
        Half-open ``[start, end)`` of each time cell; defaults to consecutive labels,
        the last cell as long as the one before it.
    tile : tuple of 2 int, optional
        ``(rows, columns)`` of the cube's regions (the store's spatial chunk, or shard,
        :mod:`esdc.storage.regions`), a hint for the resamplers: their bands of target
        rows never cross a multiple of ``rows`` (:meth:`band_rows`), so that a band is
        released once its row of regions is written instead of being held across two.
        Values do not depend on it; it is not part of the grid's identity.

    Raises
    ------
    GridError
        If the CRS is unknown, the shape is not positive, the transform is not
        north-up or the time axis is not increasing.

    Examples
    --------
    >>> g = Grid.from_bbox("earth", "EPSG:4326", (-180, -90, 180, 90), 0.25)
    >>> g.shape, g.dims
    ((720, 1440), ('lat', 'lon'))
    >>> float(g.y[0]), float(g.x[0])
    (89.875, -179.875)
    """

    body: Body
    crs: str
    transform: tuple[float, float, float, float, float, float]
    shape: tuple[int, int]
    time: tuple[np.datetime64, ...] | None = None
    time_bounds: tuple[tuple[np.datetime64, np.datetime64], ...] | None = field(
        default=None, compare=False
    )
    tile: tuple[int, int] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.body not in ("earth", "moon", "sun"):
            raise GridError(f"grid.body: {self.body!r} is not one of earth, moon, sun.")
        ny, nx = (int(n) for n in self.shape)
        if ny <= 0 or nx <= 0:
            raise GridError(
                f"grid: shape {self.shape} is empty or negative; the bounding box and "
                "resolution must give at least one cell in each direction."
            )
        object.__setattr__(self, "shape", (ny, nx))
        if self.tile is not None:
            if len(self.tile) != 2 or min(int(n) for n in self.tile) <= 0:
                raise GridError(f"grid tile {self.tile}: give (rows, columns), both positive.")
            object.__setattr__(self, "tile", (int(self.tile[0]), int(self.tile[1])))
        a, b, c, d, e, f = (float(v) for v in self.transform)
        if b != 0 or d != 0 or a <= 0 or e >= 0:
            raise GridError(
                f"grid.transform {self.transform}: only north-up grids (b = d = 0, a > 0, "
                "e < 0) are supported."
            )
        object.__setattr__(self, "transform", (a, b, c, d, e, f))
        if self.is_helioprojective:
            if self.body != "sun":
                raise GridError(f"grid.crs: {HELIOPROJECTIVE!r} is a frame of the Sun, not of "
                                f"{self.body!r}; use a CRS of that body.")
        else:
            _parse_crs(self.crs)
        if self.time is not None:
            t = tuple(np.datetime64(v, "ns") for v in self.time)
            if len(t) == 0 or any(t1 <= t0 for t0, t1 in zip(t, t[1:], strict=False)):
                raise GridError("grid.time: the time axis must be non-empty and increasing.")
            object.__setattr__(self, "time", t)
            if self.time_bounds is None:
                ends = list(t[1:])
                step = t[-1] - t[-2] if len(t) > 1 else np.timedelta64(1, "D")
                ends.append(t[-1] + step)
                object.__setattr__(self, "time_bounds", tuple(zip(t, ends, strict=True)))

    # ---------------------------------------------------------------- builders
    @classmethod
    def from_bbox(
        cls,
        body: Body,
        crs: str,
        bbox: tuple[float, float, float, float],
        resolution: float | tuple[float, float],
        time: Any = None,
        time_bounds: Any = None,
    ) -> Grid:
        """Make a grid covering ``bbox`` at ``resolution``.

        Parameters
        ----------
        body : {"earth", "moon", "sun"}
            The body.
        crs : str
            The CRS (see :class:`Grid`).
        bbox : tuple of 4 float
            ``(west, south, east, north)`` of the outer cell edges, in CRS units
            (degrees for geographic CRSs, metres for projected ones, arcsec for
            helioprojective grids).
        resolution : float or (float, float)
            Cell size ``dx`` (or ``(dx, dy)``), in CRS units. The number of cells is
            ``round((east - west) / dx)``; east/north edges are moved to fit.
        time, time_bounds : sequence, optional
            The time axis (see :class:`Grid`).

        Returns
        -------
        Grid

        Raises
        ------
        GridError
            If the box is empty or the resolution is not positive.
        """
        west, south, east, north = (float(v) for v in bbox)
        dx, dy = (resolution, resolution) if np.isscalar(resolution) else resolution
        dx, dy = float(dx), float(dy)
        if not (dx > 0 and dy > 0) or not all(map(math.isfinite, (dx, dy))):
            raise GridError(f"grid.resolution: {resolution!r} must be positive.")
        if east <= west or north <= south:
            raise GridError(
                f"grid.bbox: {tuple(bbox)} is empty: it must be (west, south, east, north) "
                "with east > west and north > south."
            )
        nx = round((east - west) / dx)
        ny = round((north - south) / dy)
        if time is not None:
            time = tuple(np.datetime64(pd.Timestamp(t).to_datetime64(), "ns") for t in time)
        return cls(body, crs, (dx, 0.0, west, 0.0, -dy, north), (ny, nx), time, time_bounds)

    # ---------------------------------------------------------------- properties
    @cached_property
    def pyproj_crs(self) -> pyproj.CRS:
        """The CRS as a :class:`pyproj.CRS`.

        Raises
        ------
        GridError
            For a helioprojective (solar) grid, which PROJ cannot describe.
        """
        if self.is_helioprojective:
            raise GridError("a helioprojective solar grid has no PROJ CRS; its frame is "
                            "described by Grid.crs_attrs() and regridded by esdc.regrid.wcs.")
        return _parse_crs(self.crs)

    @property
    def is_helioprojective(self) -> bool:
        """True for a solar grid in the helioprojective frame (:data:`HELIOPROJECTIVE`)."""
        return self.crs.strip().lower() == HELIOPROJECTIVE

    @property
    def is_geographic(self) -> bool:
        """True when the CRS is geographic (coordinates in degrees)."""
        return not self.is_helioprojective and bool(self.pyproj_crs.is_geographic)

    @property
    def dims(self) -> tuple[str, str]:
        """Spatial dims: ``("lat", "lon")`` for geographic grids, else ``("y", "x")``."""
        return SPATIAL_DIMS[0] if self.is_geographic else SPATIAL_DIMS[1]

    def band_rows(self, limit: int) -> int:
        """Height of bands of target rows of at most ``limit`` rows, aligned to :attr:`tile`.

        Parameters
        ----------
        limit : int
            The most rows a band may hold (a resampler's memory budget), at least 1.

        Returns
        -------
        int
            All the grid's rows where ``limit`` reaches them, else ``limit`` without a
            tile; else, with ``r`` the tile's rows, the largest multiple of ``r`` not
            above ``limit``, or where ``limit < r`` the largest divisor of ``r`` not above
            it: bands that start at row 0 then never cross a multiple of ``r``. Where
            that divisor is under half of ``limit`` (``r`` prime, say), ``limit``: bands
            may cross, rather than more than twice as many tasks.
        """
        limit = max(1, int(limit))
        if limit >= self.shape[0] or self.tile is None:
            return min(limit, self.shape[0])
        r = self.tile[0]
        if limit >= r:
            return limit - limit % r
        d = max(d for d in range(1, limit + 1) if r % d == 0)
        return d if 2 * d >= limit else limit

    def block_shape(self, planes: int, values: int) -> tuple[int, int]:
        """``(rows, columns)`` of a resampler's output blocks of at most ``values`` values.

        A layer with ``planes`` leading values per cell (time steps, months) comes whole
        where it fits, else in bands of whole rows (:meth:`band_rows`) where one row of
        regions fits, else in the regions' column tiles, at most one row of regions high:
        a band of whole rows is held from the first region of its row to the last, a
        column tile only by its own regions. Without a :attr:`tile`, bands of whole rows.

        Parameters
        ----------
        planes : int
            Values per cell, at least 1.
        values : int
            The most values (planes times cells) one block may hold.

        Returns
        -------
        tuple of 2 int
            Block rows (at least 1) and columns.
        """
        ny, nx = self.shape
        planes = max(1, int(planes))
        fit = values // (planes * nx)
        if fit >= ny or self.tile is None or fit >= self.tile[0]:
            return self.band_rows(fit), nx
        cols = min(nx, self.tile[1])
        return self.band_rows(min(self.tile[0], values // (planes * cols))), cols

    @property
    def resolution(self) -> tuple[float, float]:
        """``(dx, dy)`` cell size in CRS units, both positive."""
        return (self.transform[0], -self.transform[4])

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(west, south, east, north)`` of the outer cell edges, in CRS units."""
        dx, dy = self.resolution
        west, north = self.transform[2], self.transform[5]
        return (west, north - dy * self.shape[0], west + dx * self.shape[1], north)

    @property
    def x(self) -> np.ndarray:
        """Cell-centre x (longitude) coordinates, shape ``(nx,)``, increasing."""
        dx = self.resolution[0]
        return self.transform[2] + dx * (np.arange(self.shape[1]) + 0.5)

    @property
    def y(self) -> np.ndarray:
        """Cell-centre y (latitude) coordinates, shape ``(ny,)``, decreasing (north up)."""
        dy = self.resolution[1]
        return self.transform[5] - dy * (np.arange(self.shape[0]) + 0.5)

    def cell_area_weights(self) -> np.ndarray:
        """Relative cell areas, shape ``(ny, 1)``: ``cos(lat)`` on geographic grids, else 1.

        The exact area of a cell on a sphere is proportional to
        ``sin(lat_north) - sin(lat_south)``, used here.
        """
        if not self.is_geographic:
            return np.ones((self.shape[0], 1))
        dy = self.resolution[1]
        north = np.deg2rad(self.y + dy / 2)
        south = np.deg2rad(self.y - dy / 2)
        return (np.sin(north) - np.sin(south))[:, None]

    # ---------------------------------------------------------------- conversions
    def area_definition(self) -> Any:
        """The grid as a :class:`pyresample.geometry.AreaDefinition` (target of regrids).

        Raises
        ------
        GridError
            For a helioprojective (solar) grid: pyresample needs a PROJ CRS; solar
            sources are reprojected by :func:`esdc.regrid.wcs.reproject` instead.
        """
        if self.is_helioprojective:
            raise GridError("a helioprojective solar grid has no pyresample AreaDefinition "
                            "(PROJ has no helioprojective CRS); esdc.regrid.wcs.reproject regrids "
                            "onto it with sunpy/reproject.")
        from pyresample.geometry import AreaDefinition

        west, south, east, north = self.bbox
        return AreaDefinition(
            "esdc_grid", f"esdc {self.body} grid", "esdc_grid", self.pyproj_crs,
            self.shape[1], self.shape[0], (west, south, east, north),
        )

    def coords(self) -> dict[str, Any]:
        """CF coordinate variables of the grid as xarray objects.

        Returns
        -------
        dict
            ``{dim_y: DataArray (ny,), dim_x: DataArray (nx,)}`` plus ``time`` and
            ``time_bnds`` ``(time, nv=2)`` when the grid has a time axis. Geographic
            coordinates are in ``degrees_north`` / ``degrees_east``; helioprojective ones
            in ``arcsec`` (``y`` solar north positive, ``x`` solar west positive).
        """
        import xarray as xr

        ydim, xdim = self.dims
        if self.is_geographic:
            yattrs = {"standard_name": "latitude", "long_name": "latitude",
                      "units": "degrees_north", "axis": "Y"}
            xattrs = {"standard_name": "longitude", "long_name": "longitude",
                      "units": "degrees_east", "axis": "X"}
        elif self.is_helioprojective:
            yattrs = {"long_name": "helioprojective latitude (Ty, solar north positive)",
                      "units": "arcsec", "axis": "Y", ATTR_WCS_CTYPE: "HPLT-TAN"}
            xattrs = {"long_name": "helioprojective longitude (Tx, solar west positive)",
                      "units": "arcsec", "axis": "X", ATTR_WCS_CTYPE: "HPLN-TAN"}
        else:
            unit = self.pyproj_crs.axis_info[0].unit_name if self.pyproj_crs.axis_info else "m"
            unit = {"metre": "m"}.get(unit, unit)
            yattrs = {"standard_name": "projection_y_coordinate", "units": unit, "axis": "Y"}
            xattrs = {"standard_name": "projection_x_coordinate", "units": unit, "axis": "X"}
        out: dict[str, Any] = {
            ydim: xr.DataArray(self.y, dims=(ydim,), attrs=yattrs),
            xdim: xr.DataArray(self.x, dims=(xdim,), attrs=xattrs),
        }
        if self.time is not None:
            out[TIME_DIM] = xr.DataArray(
                np.array(self.time, dtype="datetime64[ns]"), dims=(TIME_DIM,),
                attrs={"standard_name": "time", "long_name": "time", "axis": "T",
                       "bounds": TIME_BNDS},
            )
            out[TIME_BNDS] = xr.DataArray(
                np.array(self.time_bounds, dtype="datetime64[ns]"), dims=(TIME_DIM, "nv")
            )
        return out

    def crs_attrs(self) -> dict[str, Any]:
        """CF grid-mapping attributes of the CRS (``pyproj.CRS.to_cf``) plus ``crs_wkt``.

        A helioprojective grid has no CF grid mapping: it gets a CF-ish description
        (``grid_mapping_name: helioprojective``, the WCS axis types and units, the
        observer convention, its distance and the solar radius used) and
        ``esdc_body: sun``.
        """
        if self.is_helioprojective:
            rsun_arcsec = math.degrees(math.asin(RSUN_REF_M / AU_M)) * 3600.0
            return {
                "grid_mapping_name": HELIOPROJECTIVE,
                "long_name": "helioprojective-cartesian frame, gnomonic (TAN) projection "
                             "centred on the Sun, solar north up",
                "wcs_ctype": "HPLN-TAN HPLT-TAN",
                "wcs_cunit": "arcsec arcsec",
                ATTR_OBSERVER: "at 1 AU on the Sun-Earth line (heliographic Stonyhurst "
                                 "longitude 0, latitude B0) at each observation's time",
                "observer_distance_m": AU_M,
                "rsun_ref_m": RSUN_REF_M,
                "rsun_obs_arcsec": rsun_arcsec,
                ATTR_BODY: self.body,
            }
        attrs: dict[str, Any] = {}
        try:
            attrs.update(self.pyproj_crs.to_cf())
        except Exception:  # noqa: BLE001 - planetary CRSs may have no CF mapping
            attrs["crs_wkt"] = self.pyproj_crs.to_wkt()
        attrs.setdefault("crs_wkt", self.pyproj_crs.to_wkt())
        attrs[ATTR_BODY] = self.body
        return {k: v for k, v in attrs.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description; :meth:`from_dict` inverts it."""
        return {
            "body": self.body,
            "crs": self.crs,
            "transform": list(self.transform),
            "shape": list(self.shape),
            "time": None if self.time is None else [str(t) for t in self.time],
            "time_bounds": None if self.time_bounds is None
            else [[str(a), str(b)] for a, b in self.time_bounds],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Grid:
        """Rebuild a grid from :meth:`to_dict`'s output."""
        time = d.get("time")
        tb = d.get("time_bounds")
        return cls(
            d["body"], d["crs"], tuple(d["transform"]), tuple(d["shape"]),
            None if time is None else tuple(np.datetime64(t, "ns") for t in time),
            None if tb is None
            else tuple((np.datetime64(a, "ns"), np.datetime64(b, "ns")) for a, b in tb),
        )


def parse_bbox(text: str | list[float] | tuple[float, ...] | None,
               field: str = "bbox") -> tuple[float, float, float, float] | None:
    """Parse and check a bounding box ``"W,S,E,N"`` (or four numbers), in grid units.

    The one parser of user-given boxes (``esdc search --bbox``, the HTTP API's ``bbox``,
    :meth:`esdc.search.query.SearchEngine.search_vector`). ``west > east`` is allowed:
    the box crosses the antimeridian.

    Parameters
    ----------
    text : str or sequence of float or None
        ``"W,S,E,N"`` (comma-separated), or the four numbers ``(west, south, east,
        north)``; ``None`` or ``""``: no box.
    field : str
        Name of the parameter the box came from; messages say ``{field}=...``.

    Returns
    -------
    tuple of float or None
        ``(west, south, east, north)`` (degrees for geographic grids, else the grid's
        units), or ``None`` when no box is given.

    Raises
    ------
    GridError
        If there are not four numbers, one is not finite, or south is north of north.
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    shown = repr(text) if isinstance(text, str) else str(list(text))
    try:
        vals = tuple(float(v) for v in (text.split(",") if isinstance(text, str) else text))
    except (TypeError, ValueError):
        raise GridError(f"{field}={shown}: give four numbers W,S,E,N.") from None
    if len(vals) != 4:
        raise GridError(f"{field}={shown}: give four numbers W,S,E,N, not {len(vals)}.")
    if not all(math.isfinite(v) for v in vals):
        raise GridError(f"{field}={shown}: the numbers must be finite.")
    w, s, e, n = vals
    if s > n:
        raise GridError(f"{field}={shown}: south ({s}) is north of north ({n}).")
    return (w, s, e, n)
