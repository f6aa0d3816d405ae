"""What a file says about its own grid, read the CF way, whatever its dims are called.

CF conventions 1.10 (https://cfconventions.org/cf-conventions/cf-conventions.html):

- a horizontal coordinate is recognised by ``standard_name`` (``latitude``,
  ``longitude``, ``projection_y_coordinate``, ...), ``units`` (``degrees_north``,
  ``degrees_east`` and their variants, §4.1-4.2), ``axis`` (``Y``/``X``) or the Unidata
  ``_CoordinateAxisType`` (``Lat``/``Lon``, ``GeoY``/``GeoX``), so that ETOPO5's
  ``ETOPO05_Y``/``ETOPO05_X`` are latitude and longitude (:func:`axis_of`);
- a projected grid names its CRS with a ``grid_mapping`` variable (§5.6), read with
  :meth:`pyproj.CRS.from_cf` (:func:`grid_mapping_crs`);
- cell edges come from a coordinate's ``bounds`` variable (§7.1) when the file gives one
  (:func:`cell_bounds`), else from the centres (:func:`bounds_from_centres`).

:func:`check_declared_bbox` compares a recipe's ``georeference`` with the coordinates a file
carries, so that a declared bbox can never shift a file silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import xarray as xr

from esdc.errors import SourceError

__all__ = ["LAT_UNITS", "LON_UNITS", "TOLERANCE_PIXELS", "axis_of", "bounds_from_centres",
           "cell_bounds", "check_declared_bbox", "grid_mapping_crs", "is_latitude",
           "is_longitude", "is_vertical", "length_factor"]

#: CF units of latitude and longitude (CF conventions 1.10, sections 4.1 and 4.2).
LAT_UNITS = ("degrees_north", "degree_north", "degree_n", "degrees_n", "degreen", "degreesn")
LON_UNITS = ("degrees_east", "degree_east", "degree_e", "degrees_e", "degreee", "degreese")

_Y_NAMES = ("latitude", "grid_latitude", "projection_y_coordinate")
_X_NAMES = ("longitude", "grid_longitude", "projection_x_coordinate")
#: Length units of projected coordinates -> metres.
_LENGTH = {"m": 1.0, "metre": 1.0, "meter": 1.0, "metres": 1.0, "meters": 1.0,
           "km": 1000.0, "kilometre": 1000.0, "kilometer": 1000.0, "kilometres": 1000.0,
           "kilometers": 1000.0}

TOLERANCE_PIXELS = 0.1
"""A declared bbox may differ from the file's own edges by this share of a pixel."""


def _attr(var: xr.DataArray | xr.Variable, key: str) -> str:
    return str(var.attrs.get(key, "")).strip()


def is_latitude(var: xr.DataArray | xr.Variable) -> bool:
    """Whether ``var`` is a CF latitude (``standard_name``, ``units`` or axis type)."""
    return (_attr(var, "standard_name") == "latitude"
            or _attr(var, "units").lower() in LAT_UNITS
            or _attr(var, "_CoordinateAxisType").lower() == "lat")


def is_longitude(var: xr.DataArray | xr.Variable) -> bool:
    """Whether ``var`` is a CF longitude (``standard_name``, ``units`` or axis type)."""
    return (_attr(var, "standard_name") == "longitude"
            or _attr(var, "units").lower() in LON_UNITS
            or _attr(var, "_CoordinateAxisType").lower() == "lon")


def axis_of(var: xr.DataArray | xr.Variable) -> str | None:
    """Which horizontal axis a coordinate variable is, from its CF attributes.

    Parameters
    ----------
    var : xarray.DataArray or xarray.Variable
        A coordinate variable.

    Returns
    -------
    {"y", "x"} or None
        ``"y"`` for latitude / projection y (``standard_name``, ``units`` such as
        ``degrees_north``, ``axis: Y``, ``_CoordinateAxisType: Lat|GeoY``), ``"x"`` for
        longitude / projection x, ``None`` when its attributes say neither.
    """
    name = _attr(var, "standard_name")
    axis = _attr(var, "axis").upper()
    kind = _attr(var, "_CoordinateAxisType").lower()
    if name in _Y_NAMES or is_latitude(var) or axis == "Y" or kind == "geoy":
        return "y"
    if name in _X_NAMES or is_longitude(var) or axis == "X" or kind == "geox":
        return "x"
    return None


def is_vertical(var: xr.DataArray | xr.Variable) -> bool:
    """Whether a coordinate variable is a vertical axis, from its CF attributes.

    ``axis: Z``, ``positive``, or ``_CoordinateAxisType: Height|Pressure|GeoZ`` (e.g.
    OISST's one-level ``zlev``).
    """
    kind = _attr(var, "_CoordinateAxisType").lower()
    return (_attr(var, "axis").upper() == "Z" or bool(_attr(var, "positive"))
            or kind in ("height", "pressure", "geoz"))


def length_factor(var: xr.DataArray | xr.Variable) -> float | None:
    """Metres per unit of a projected coordinate (``m`` -> 1, ``km`` -> 1000), else ``None``."""
    return _LENGTH.get(_attr(var, "units").lower())


def grid_mapping_crs(ds: xr.Dataset, names: list[str], path: Path,
                     what: str) -> pyproj.CRS | None:
    """The CRS a CF ``grid_mapping`` attribute of the variables ``names`` points to.

    Parameters
    ----------
    ds : xarray.Dataset
        The opened file (with its grid-mapping variable).
    names : list of str
        The variables read.
    path : pathlib.Path
        The file, for messages.
    what : str
        Name of the source, for messages.

    Returns
    -------
    pyproj.CRS or None
        ``None`` when no variable names a grid mapping.

    Raises
    ------
    SourceError
        If the grid-mapping variable is missing or PROJ cannot read it.
    """
    gm = next((str(ds[n].attrs["grid_mapping"]) for n in names
               if ds[n].attrs.get("grid_mapping")), None)
    if gm is None:
        return None
    gm = gm.split(":")[0].split()[0]  # the extended form "crs: x y" names the variable first
    if gm not in ds.variables:
        raise SourceError(
            f"{what}: {path} names grid_mapping {gm!r}, which is not a variable of the file; "
            "fix the file, or declare `georeference` (crs, bbox) in the recipe.")
    try:
        return pyproj.CRS.from_cf(dict(ds.variables[gm].attrs))
    except pyproj.exceptions.CRSError as exc:
        raise SourceError(
            f"{what}: the grid mapping {gm!r} of {path} is not a CRS PROJ can read ({exc}); "
            "give it a `crs_wkt` attribute, or declare `georeference.crs` in the recipe."
        ) from None


def bounds_from_centres(c: np.ndarray) -> np.ndarray:
    """Cell bounds ``(n, 2)`` (low, high) of 1-D monotonic centres: midway between centres.

    The outer cells reach as far beyond their centres as the neighbouring spacing; evenly
    spaced centres give ``c -+ d / 2`` exactly.

    Parameters
    ----------
    c : numpy.ndarray
        Shape ``(n,)``, strictly monotonic.

    Returns
    -------
    numpy.ndarray
        Shape ``(n, 2)``, float64, ``[:, 0] < [:, 1]``.
    """
    c = np.asarray(c, dtype="float64")
    if c.size == 1:
        return np.array([[c[0] - 0.5, c[0] + 0.5]])
    d = np.diff(c)
    if np.max(np.abs(d - d[0])) <= 1e-4 * abs(d[0]):
        half = abs(d[0]) / 2
        return np.stack([c - half, c + half], axis=1)
    mid = (c[:-1] + c[1:]) / 2
    edges = np.concatenate([[c[0] - d[0] / 2], mid, [c[-1] + d[-1] / 2]])
    lo, hi = edges[:-1], edges[1:]
    return np.stack([np.minimum(lo, hi), np.maximum(lo, hi)], axis=1)


def cell_bounds(ds: xr.Dataset, dim: str, path: Path, what: str) -> np.ndarray | None:
    """The file's own cell bounds of a coordinate (its CF ``bounds`` variable), or ``None``.

    Parameters
    ----------
    ds : xarray.Dataset
        The opened file.
    dim : str
        A 1-D coordinate of it.
    path : pathlib.Path
        The file, for messages.
    what : str
        Name of the source, for messages.

    Returns
    -------
    numpy.ndarray or None
        Shape ``(n, 2)`` float64, (low, high) per cell in the coordinate's order.

    Raises
    ------
    SourceError
        If the bounds variable is missing, of the wrong shape, or does not hold its centre.
    """
    name = ds[dim].attrs.get("bounds") or ds[dim].encoding.get("bounds")
    if not name:
        return None
    if name not in ds.variables:
        raise SourceError(f"{what}: coordinate {dim!r} of {path} names bounds {name!r}, which "
                          "is not in the file; fix the file or remove its `bounds` attribute.")
    b = np.asarray(ds.variables[name].values, dtype="float64")
    c = np.asarray(ds[dim].values, dtype="float64")
    if b.shape != (c.size, 2):
        raise SourceError(f"{what}: bounds {name!r} of {dim!r} in {path} have shape {b.shape}; "
                          f"CF bounds of {c.size} cells have shape ({c.size}, 2).")
    b = np.sort(b, axis=1)
    if not np.all((b[:, 0] <= c) & (c <= b[:, 1])) or np.any(b[:, 1] <= b[:, 0]):
        raise SourceError(f"{what}: bounds {name!r} of {dim!r} in {path} do not enclose their "
                          "cell centres; fix the file or remove its `bounds` attribute.")
    return b


def _comparable(var: xr.DataArray, crs: pyproj.CRS) -> float | None:
    """Factor to the CRS's units when ``var`` can be compared with a bbox in ``crs``."""
    if crs.is_geographic:
        named = str(var.name).lower() in ("lat", "latitude", "lon", "longitude")
        no_cf = axis_of(var) is None and not _attr(var, "units")
        return 1.0 if is_latitude(var) or is_longitude(var) or (named and no_cf) else None
    metres = length_factor(var)
    if metres is None or axis_of(var) is None:
        return None
    unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return metres / unit


def _edges(c: np.ndarray) -> tuple[float, float]:
    step = abs(c[-1] - c[0]) / (c.size - 1)
    return float(min(c[0], c[-1]) - step / 2), float(max(c[0], c[-1]) + step / 2)


def check_declared_bbox(ds: xr.Dataset, ydim: str, xdim: str, geo: Any, path: Path | None,
                        what: str) -> None:
    """Refuse a declared ``georeference`` that disagrees with the file's own coordinates.

    Only coordinates that can be compared are: degrees (CF latitude/longitude, or ``lat``/
    ``lon`` without attributes) against a geographic ``geo.crs``, lengths (``m``, ``km``)
    of CF projection coordinates against a projected one. A file without coordinates
    (HDF5 arrays, images, raw) passes.

    Parameters
    ----------
    ds : xarray.Dataset
        The file's variables, spatial dims ``ydim``/``xdim`` (renamed as declared).
    ydim, xdim : str
        Row and column dims.
    geo : esdc.recipe.GeoreferenceSpec
        The declaration: ``crs``, ``bbox`` (outer edges west, south, east, north) and
        ``row_order``.
    path : pathlib.Path or None
        The file, for messages.
    what : str
        Name of the source, for messages.

    Raises
    ------
    SourceError
        With both bboxes, when an outer edge differs by more than a tenth of a pixel
        (:data:`TOLERANCE_PIXELS`; longitudes compared modulo 360), or when the file's rows
        or columns run the other way than declared (``row_order``; columns west first).
    """
    crs = pyproj.CRS.from_user_input(geo.crs)
    declared = tuple(float(v) for v in geo.bbox)
    found: dict[str, tuple[float, float]] = {}
    problems = []
    for dim, axis in ((xdim, "x"), (ydim, "y")):
        if dim not in ds.coords:  # (ds[dim] of a dim without coordinate is a range)
            continue
        var = ds.coords[dim]
        if var.ndim != 1 or var.size < 2 or not np.issubdtype(var.dtype, np.number):
            continue
        factor = _comparable(var, crs)
        if factor is None:
            continue
        c = np.asarray(var.values, dtype="float64") * factor
        d = np.diff(c)
        if not (np.all(d > 0) or np.all(d < 0)):
            continue
        found[axis] = _edges(c)
        if axis == "y" and (d[0] > 0) != (geo.row_order == "south_up"):
            order = "south to north" if d[0] > 0 else "north to south"
            problems.append(f"its rows run from {order} ({dim} {c[0]:.6g} .. {c[-1]:.6g}) "
                            f"but georeference.row_order is {geo.row_order}")
        if axis == "x" and d[0] < 0:
            problems.append(f"its columns run from east to west ({dim} {c[0]:.6g} .. "
                            f"{c[-1]:.6g}); esdc places declared pixels west first")
    worst = 0.0
    for axis, (i, j) in (("x", (0, 2)), ("y", (1, 3))):
        if axis not in found:
            continue
        n = ds.sizes[xdim if axis == "x" else ydim]
        pixel = (declared[j] - declared[i]) / n
        diffs = np.subtract(found[axis], (declared[i], declared[j]))
        if axis == "x" and crs.is_geographic:
            diffs = (diffs + 180.0) % 360.0 - 180.0
        off = float(np.max(np.abs(diffs)))
        if off > TOLERANCE_PIXELS * pixel:
            worst = max(worst, off)
    if worst:
        x = found.get("x", (declared[0], declared[2]))
        y = found.get("y", (declared[1], declared[3]))
        edges = [round(v, 6) for v in (x[0], y[0], x[1], y[1])]
        where = f" of {path}" if path is not None else ""
        problems.insert(0, f"georeference.bbox {list(declared)} differs from the bounds "
                           f"{edges}{where} (the outer edges of its own coordinates, "
                           f"{ds.sizes[ydim]} x {ds.sizes[xdim]} pixels) by {worst:.6g} "
                           f"{_unit(crs)}, more than a tenth of a pixel")
    if problems:
        raise SourceError(
            f"{what}: " + "; ".join(problems) + ". The declaration would shift or flip the "
            "file: declare the file's own bounds and row order, or leave `georeference` out "
            "to use the file's coordinates.")


def _unit(crs: pyproj.CRS) -> str:
    return "degrees" if crs.is_geographic else (crs.axis_info[0].unit_name if crs.axis_info
                                                else "CRS units")
