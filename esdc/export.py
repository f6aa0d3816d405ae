"""A cube, or a subset of it, as NetCDF or GeoTIFF; every variable's series at one point.

:func:`export` writes what a scientist hands to other tools:

- ``.nc``: one CF NetCDF-4 file (checked with the CF checker against CF-1.8): the grid's
  coordinates and ``crs`` grid mapping, times encoded as numbers with units (``time_bnds``
  in the same units, no ``_FillValue`` on coordinates or bounds), ``flag_values`` in each
  categorical variable's own type, esdc's provenance attributes kept (``esdc_grid``
  describing the subset), compressed with zlib;
- ``.tif``: one Cloud-Optimized GeoTIFF per variable (rioxarray, GDAL's COG driver), its
  bands the time steps, each band described by its ISO time (a static variable: one band
  named after the variable); NaN is the nodata value of floating-point variables.

:func:`point` (``ds.esdc.point``) takes every variable at the cell nearest to a place and
:func:`point_record` makes of it the JSON document of ``esdc point``.

Nothing is computed until a file is written (NetCDF streams chunk by chunk with Dask).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import xarray as xr

from esdc.conventions import (
    ATTR_GRID,
    CRS_VAR,
    TIME_BNDS,
    TIME_DIM,
    acdd_bounds,
    acdd_time_coverage,
    coordinate_decimals,
    json_attr,
)
from esdc.errors import OutputPathError, SelectionError, did_you_mean
from esdc.grid import Grid, parse_bbox

__all__ = ["EXPORT_FORMATS", "NETCDF_CONVENTIONS", "Writer", "export", "point", "point_csv",
           "point_record", "subset"]


# ---------------------------------------------------------------------------- selection
def _grid(ds: xr.Dataset) -> Grid:
    if ATTR_GRID not in ds.attrs:
        raise SelectionError(f"the dataset has no {ATTR_GRID} attribute: open a cube built by "
                             "esdc (esdc.open_cube).")
    return Grid.from_dict(json_attr(ds.attrs, ATTR_GRID))


def _on_grid(ds: xr.Dataset, grid: Grid) -> list[str]:
    """Names of the data variables on the grid (dims within ``(time, y, x)``), sorted."""
    dims = {TIME_DIM, *grid.dims}
    return sorted(str(k) for k, v in ds.data_vars.items()
                  if set(v.dims) <= dims and set(grid.dims) <= set(v.dims))


def _variables(ds: xr.Dataset, grid: Grid, variables: Sequence[str] | None) -> list[str]:
    """The variables asked for (default: every variable on the grid), checked."""
    on_grid = _on_grid(ds, grid)
    if not variables:
        if not on_grid:
            raise SelectionError("the cube has no variable on its grid to export.")
        return on_grid
    for name in variables:
        if name not in ds.data_vars:
            raise SelectionError(f"variable {name!r} is not in the cube"
                                 f"{did_you_mean(name, on_grid)}; it has {', '.join(on_grid)}.")
        if name not in on_grid:
            raise SelectionError(f"variable {name!r} is not a map on the cube's grid (dims "
                                 f"{tuple(map(str, ds[name].dims))}); variables on the grid: "
                                 f"{', '.join(on_grid)}.")
    return list(dict.fromkeys(variables))


def _num(value: float) -> str:
    """A coordinate in a message: up to 10 digits, never in exponent form below 1e10."""
    return f"{value:.10g}"


def _extent(grid: Grid) -> str:
    """``west W, south S, east E, north N`` of the grid's outer cell edges."""
    return ", ".join(f"{k} {_num(v)}" for k, v in zip(("west", "south", "east", "north"),
                                                      grid.bbox, strict=True))


def _box_slices(grid: Grid, bbox: tuple[float, float, float, float]) -> tuple[slice, slice]:
    """Rows and columns of the cells whose centres lie in ``bbox`` (grid units)."""
    west, south, east, north = bbox
    gw, _, ge, _ = grid.bbox
    unit = "degrees" if grid.is_geographic else "the grid's units"
    shown = ",".join(_num(v) for v in bbox)
    if west > east:
        raise SelectionError(f"bbox={shown} crosses the antimeridian (west > east): export "
                             "the two sides separately ("
                             f"{','.join(map(_num, (west, south, ge, north)))} and "
                             f"{','.join(map(_num, (gw, south, east, north)))}).")
    cols = np.flatnonzero((grid.x >= west) & (grid.x <= east))
    rows = np.flatnonzero((grid.y >= south) & (grid.y <= north))
    if not len(cols) or not len(rows):
        raise SelectionError(f"bbox={shown} holds no cell centre of the cube, whose "
                             f"cells span {_extent(grid)} ({unit}); give W,S,E,N inside it.")
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _time_slice(ds: xr.Dataset, grid: Grid, time: str) -> slice:
    """Time steps of ``time``: ``START/END`` (labels inside, inclusive) or one date (its cell)."""
    if grid.time is None or TIME_DIM not in ds.dims:
        raise SelectionError(f"time={time!r}: the cube is static (it has no time axis).")
    labels = pd.DatetimeIndex(np.asarray(grid.time, dtype="datetime64[ns]"))
    span = f"{labels[0].isoformat()} to {labels[-1].isoformat()}"
    try:
        ends = [pd.Timestamp(t.strip()) if t.strip() else None for t in time.split("/")]
    except ValueError:
        raise SelectionError(f"time={time!r}: give an ISO date (2018-09-14T03:00) or a range "
                             "START/END.") from None
    if len(ends) > 2 or all(t is None for t in ends):
        raise SelectionError(f"time={time!r}: give an ISO date (2018-09-14T03:00) or a range "
                             "START/END.")
    if len(ends) == 2:
        start, end = ends
        inside = np.flatnonzero((labels >= (start or labels[0])) & (labels <= (end or labels[-1])))
    else:
        when = ends[0]
        bounds = np.asarray(grid.time_bounds or [(t, t) for t in grid.time], "datetime64[ns]")
        inside = np.flatnonzero((bounds[:, 0] <= np.datetime64(when)) &
                                (np.datetime64(when) < bounds[:, 1]))[:1]
    if not len(inside):
        raise SelectionError(f"time={time!r} selects no time step; the cube's steps run from "
                             f"{span}.")
    return slice(int(inside[0]), int(inside[-1]) + 1)


def subset(ds: xr.Dataset, variables: Sequence[str] | None = None,
           bbox: str | Sequence[float] | None = None, time: str | None = None) -> xr.Dataset:
    """Some variables of a cube, in a box and a time range, still a cube (lazy).

    Parameters
    ----------
    ds : xarray.Dataset
        A cube (:func:`esdc.open_cube`): variables with dims ``([time,] y, x)``.
    variables : sequence of str, optional
        Variables to keep; default every variable on the grid (embeddings, on their own
        tile dims, are left out).
    bbox : str or sequence of 4 float, optional
        ``"W,S,E,N"`` in the grid's units (degrees on a geographic grid, arcsec on a
        helioprojective one, else the projection's units): the cells whose centres lie
        inside are kept.
    time : str, optional
        ``START/END`` (ISO; the steps whose labels lie in it, either end may be empty) or
        one date (the step whose time cell holds it).

    Returns
    -------
    xarray.Dataset
        The selection with dims ``([time,] y, x)``, ``time_bnds`` and ``crs`` kept, and
        ``esdc_grid`` plus the ACDD ``geospatial_*`` / ``time_coverage_*`` attributes
        describing the subset. Nothing is computed.

    Raises
    ------
    SelectionError
        If a variable is unknown or not on the grid, the box holds no cell or crosses the
        antimeridian, or the time selects no step (or the cube is static).
    GridError
        If ``bbox`` is not four finite numbers with south <= north.
    """
    grid = _grid(ds)
    names = _variables(ds, grid, variables)
    box = parse_bbox(bbox if bbox is None or isinstance(bbox, str) else tuple(bbox))
    ydim, xdim = grid.dims
    rows, cols = _box_slices(grid, box) if box else (slice(0, grid.shape[0]),
                                                      slice(0, grid.shape[1]))
    steps = _time_slice(ds, grid, time) if time else None
    keep = [*names, *[v for v in (TIME_BNDS, CRS_VAR) if v in ds.variables]]
    out = ds[keep].isel({ydim: rows, xdim: cols})
    if steps is not None:
        out = out.isel({TIME_DIM: steps})
    dx, dy = grid.resolution
    a, b, c, d, e, f = grid.transform
    times = grid.time[steps] if grid.time is not None and steps is not None else grid.time
    tbounds = (grid.time_bounds[steps] if grid.time_bounds is not None and steps is not None
               else grid.time_bounds)
    sub = Grid(grid.body, grid.crs, (a, b, c + dx * cols.start, d, e, f - dy * rows.start),
               (rows.stop - rows.start, cols.stop - cols.start), times, tbounds)
    out.attrs = {**ds.attrs, ATTR_GRID: json.dumps(sub.to_dict())}
    if grid.is_geographic and grid.body == "earth":
        out.attrs.update(acdd_bounds(*sub.bbox))
    if sub.time is not None and len(sub.time):
        end = sub.time_bounds[-1][1] if sub.time_bounds else sub.time[-1]
        out.attrs.update(acdd_time_coverage(str(sub.time[0])[:19], str(end)[:19]))
    return out


# ------------------------------------------------------------------------------ NetCDF
#: ``Conventions`` of an exported NetCDF file: what it is checked against (cfchecker 4.1
#: knows CF up to 1.8; the cube's own attributes need nothing newer).
NETCDF_CONVENTIONS = "CF-1.8, ACDD-1.3"
_TIME_UNITS = "seconds since 1970-01-01 00:00:00"
_CALENDAR = "proleptic_gregorian"


def _netcdf_attr(value: Any) -> Any:
    """An attribute as NetCDF stores it: text, a number or a numeric array (else JSON)."""
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, str | int | float | np.number | np.ndarray):
        return value
    if (isinstance(value, list | tuple) and value
            and all(isinstance(v, int | float | np.number) for v in value)):
        return np.asarray(value)
    return json.dumps(value, default=str)


def _for_netcdf(ds: xr.Dataset) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    """``ds`` with CF-1.8 attributes and encodings for NetCDF-4 (data stay lazy).

    ``crs`` and ``time_bnds`` become plain variables (referenced by ``grid_mapping`` and
    ``bounds``, not listed in a ``coordinates`` attribute); times become float64 seconds
    since 1970 (CF's checker counts 64-bit integers as non-numeric), their bounds in the
    same units without attributes of their own; coordinates and bounds get no fill value.
    """
    from xarray.coding.times import encode_cf_datetime

    ds = ds.reset_coords([v for v in (CRS_VAR, TIME_BNDS) if v in ds.coords])
    if TIME_DIM in ds.variables:
        time_attrs = {**ds[TIME_DIM].attrs, "units": _TIME_UNITS, "calendar": _CALENDAR}
        numbers = {name: encode_cf_datetime(ds[name].values, _TIME_UNITS, _CALENDAR,
                                            np.dtype("float64"))[0]
                   for name in (TIME_DIM, TIME_BNDS) if name in ds.variables}
        ds = ds.assign_coords({TIME_DIM: (TIME_DIM, numbers[TIME_DIM], time_attrs)})
        if TIME_BNDS in numbers:
            ds[TIME_BNDS] = (ds[TIME_BNDS].dims, numbers[TIME_BNDS])
    encoding: dict[str, dict[str, Any]] = {}
    for name, var in ds.variables.items():
        var.encoding = {}
        attrs = {k: _netcdf_attr(v) for k, v in var.attrs.items()
                 if v is not None and k != "coordinates"}
        if "flag_values" in attrs:  # CF: flag_values of the variable's own type
            flags = var.attrs["flag_values"]
            attrs["flag_values"] = np.asarray(json.loads(flags) if isinstance(flags, str)
                                              else flags, dtype=var.dtype)
        var.attrs = attrs
        if name in (CRS_VAR, TIME_BNDS) or name in ds.coords:
            encoding[str(name)] = {"_FillValue": None}  # never a fill value (CF 7.1)
        else:
            encoding[str(name)] = {"zlib": True, "complevel": 4,
                                   "_FillValue": var.dtype.type(np.nan)
                                   if var.dtype.kind == "f" else None}
    ds.attrs = {k: _netcdf_attr(v) for k, v in ds.attrs.items() if v is not None}
    ds.attrs["Conventions"] = NETCDF_CONVENTIONS
    return ds, encoding


def _netcdf_paths(ds: xr.Dataset, path: Path) -> list[Path]:
    """The one NetCDF file of an export."""
    return [path]


def _write_netcdf(ds: xr.Dataset, paths: list[Path]) -> None:
    """One CF NetCDF-4 file (written beside its place, then renamed into it)."""
    data, encoding = _for_netcdf(ds)
    with _in_place(paths[0]) as tmp:
        data.to_netcdf(tmp, format="NETCDF4", engine="netcdf4", encoding=encoding)


@contextlib.contextmanager
def _in_place(path: Path) -> Iterator[Path]:
    """A hidden file beside ``path``, renamed to it when the block ends without error."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- GeoTIFF
def _geotiff_paths(ds: xr.Dataset, path: Path) -> list[Path]:
    """``path`` for one variable, else ``STEM_VARIABLE.tif`` per variable beside it."""
    grid = _grid(ds)
    if grid.is_helioprojective:
        raise SelectionError("a helioprojective (solar) cube has no CRS that GeoTIFF can "
                             "carry; export it to NetCDF (.nc) instead.")
    names = _on_grid(ds, grid)
    return ([path] if len(names) == 1
            else [path.with_name(f"{path.stem}_{n}{path.suffix}") for n in names])


def _write_geotiffs(ds: xr.Dataset, paths: list[Path]) -> None:
    """One Cloud-Optimized GeoTIFF per variable: bands = time steps, described by time."""
    import rioxarray  # noqa: F401 - registers the .rio accessor

    grid = _grid(ds)
    ydim, xdim = grid.dims
    for name, out in zip(_on_grid(ds, grid), paths, strict=True):
        da = ds[name]
        if TIME_DIM in da.dims:
            described = [pd.Timestamp(t).isoformat() for t in da[TIME_DIM].values]
            da = da.transpose(TIME_DIM, ydim, xdim).rename({TIME_DIM: "band"})
        else:
            described = [name]
            da = da.expand_dims("band")
        da = da.drop_vars([c for c in da.coords if c not in (ydim, xdim)])
        da = da.assign_coords(band=np.arange(1, da.sizes["band"] + 1))
        da.attrs = {"long_name": described, "units": str(ds[name].attrs.get("units", ""))}
        da.encoding = {}  # the cube's Zarr encoding (its fill value) is not the GeoTIFF's
        da = (da.rio.set_spatial_dims(x_dim=xdim, y_dim=ydim)
              .rio.write_crs(grid.pyproj_crs.to_wkt()))
        if da.dtype.kind == "f":
            da = da.rio.write_nodata(np.nan, encoded=False)
        with _in_place(out) as tmp:
            da.rio.to_raster(tmp, driver="COG", compress="DEFLATE",
                             tags={"esdc_variable": name})


class Writer(NamedTuple):
    """How one file format is exported: the files it makes, and the writing."""

    paths: Callable[[xr.Dataset, Path], list[Path]]
    write: Callable[[xr.Dataset, list[Path]], None]


#: Writer of each file extension (the one place an export format is chosen).
EXPORT_FORMATS: dict[str, Writer] = {
    ".nc": Writer(_netcdf_paths, _write_netcdf),
    ".tif": Writer(_geotiff_paths, _write_geotiffs),
    ".tiff": Writer(_geotiff_paths, _write_geotiffs),
}


def export(ds: xr.Dataset, out: str | os.PathLike[str], variables: Sequence[str] | None = None,
           bbox: str | Sequence[float] | None = None, time: str | None = None,
           overwrite: bool = False) -> list[Path]:
    """Write a cube, or a subset of it, to NetCDF (``.nc``) or GeoTIFF (``.tif``).

    Parameters
    ----------
    ds : xarray.Dataset
        A cube (:func:`esdc.open_cube`).
    out : str or path-like
        ``NAME.nc``: one CF NetCDF-4 file. ``NAME.tif``: one Cloud-Optimized GeoTIFF per
        variable, ``NAME.tif`` itself when one variable is exported, else
        ``NAME_VARIABLE.tif`` beside it; bands are the time steps (described by their ISO
        time), a static variable has one band.
    variables, bbox, time
        The selection, as for :func:`subset`.
    overwrite : bool
        Replace existing files.

    Returns
    -------
    list of pathlib.Path
        The files written.

    Raises
    ------
    SelectionError
        If the selection is empty or names something the cube does not have, or a
        helioprojective cube is asked for as GeoTIFF.
    OutputPathError
        If the extension is not one of :data:`EXPORT_FORMATS`, the folder does not exist
        or a file exists and ``overwrite`` is false.
    """
    path = Path(out)
    writer = EXPORT_FORMATS.get(path.suffix.lower())
    if writer is None:
        raise OutputPathError(f"{path}: the file's extension says the format; give a name "
                              f"ending in {' or '.join(EXPORT_FORMATS)}.")
    if not path.parent.is_dir():
        raise OutputPathError(f"{path}: the folder {path.parent} does not exist; create it "
                              "or choose another path.")
    part = subset(ds, variables, bbox, time)
    asked = ", ".join(f"{k}={v!r}" for k, v in (("variables", variables), ("bbox", bbox),
                                                   ("time", time)) if v)
    part.attrs["history"] = "\n".join(filter(None, [
        str(part.attrs.get("history", "")),
        f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} exported by esdc "
        f"{_version()} to {path.name}{f' ({asked})' if asked else ''}"]))
    targets = writer.paths(part, path)
    there = [str(p) for p in targets if p.exists()]
    if there and not overwrite:
        raise OutputPathError(f"{', '.join(there)} exists; choose another name or give "
                              "overwrite=True to replace it.")
    writer.write(part, targets)
    return targets


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("esdc")
    except metadata.PackageNotFoundError:  # a source checkout that is not installed
        return "(not installed)"


# ------------------------------------------------------------------------------ points
def point(ds: xr.Dataset, lat: float, lon: float,
          variables: Sequence[str] | None = None) -> xr.Dataset:
    """Every variable at the cell nearest to a place (``ds.esdc.point``).

    Parameters
    ----------
    ds : xarray.Dataset
        A cube (:func:`esdc.open_cube`).
    lat, lon : float
        The place, in degrees (north, east; a longitude in 0-360 is folded onto the grid).
        On a projected Earth grid the place is still given in degrees (WGS 84) and
        projected. On a helioprojective (solar) cube the two numbers are ``X`` then ``Y``
        in arcsec (helioprojective longitude Tx, latitude Ty), in that order.
    variables : sequence of str, optional
        Default: every variable on the grid.

    Returns
    -------
    xarray.Dataset
        The nearest cell's values (computed): variables with dims ``(time,)`` or none
        (static), scalar coordinates of the cell; ``attrs["query"]`` holds the place asked
        for (``{"lat", "lon"}``, or ``{"x", "y"}`` on a solar cube).

    Raises
    ------
    SelectionError
        If the place is outside the grid (the message gives the grid's extent) or a
        variable is unknown.
    """
    grid = _grid(ds)
    names = _variables(ds, grid, variables)
    ydim, xdim = grid.dims
    gw, gs, ge, gn = grid.bbox
    if grid.is_helioprojective:
        query, (x, y) = {"x": float(lat), "y": float(lon)}, (float(lat), float(lon))
        where = f"X={x} Y={y} arcsec"
    elif grid.is_geographic:
        query, (x, y) = {"lat": float(lat), "lon": float(lon)}, (float(lon), float(lat))
        x = (x - gw) % 360.0 + gw if not gw <= x <= ge else x  # fold 0-360 longitudes
        where = f"lat={lat} lon={lon}"
    else:
        from pyproj import Transformer

        query = {"lat": float(lat), "lon": float(lon)}
        x, y = Transformer.from_crs("EPSG:4326", grid.pyproj_crs, always_xy=True).transform(
            float(lon), float(lat))
        where = f"lat={lat} lon={lon} (x={x:.6g}, y={y:.6g} in the grid's CRS)"
    if not (gw <= x <= ge and gs <= y <= gn) or not (math.isfinite(x) and math.isfinite(y)):
        raise SelectionError(f"{where} is outside the cube, whose cells span "
                             f"{_extent(grid)} ({xdim}/{ydim}).")
    dx, dy = grid.resolution
    col = min(int((x - gw) // dx), grid.shape[1] - 1)
    row = min(int((gn - y) // dy), grid.shape[0] - 1)
    cell = ds[names].isel({ydim: row, xdim: col}).compute()
    cell.attrs = {"query": query}
    return cell


def point_record(ds: xr.Dataset, lat: float, lon: float,
                 variables: Sequence[str] | None = None) -> dict[str, Any]:
    """The JSON document of ``esdc point``: every variable at the nearest cell.

    Parameters
    ----------
    ds, lat, lon, variables
        As for :func:`point`.

    Returns
    -------
    dict
        ``{"query": {"lat", "lon"}, "cell": {"lat", "lon"}, "variables": {NAME: {"units",
        "time": [ISO, ...], "values": [...]}}}``: a static variable has one value and no
        ``time``; a missing value is ``None``; a categorical variable also has
        ``"meanings"`` (one per value). Coordinates are rounded to the grid's precision.
        On a solar cube ``query`` and ``cell`` hold ``x`` and ``y`` (arcsec); on a
        projected Earth grid ``cell`` also holds the cell centre's ``x``, ``y``.

    Raises
    ------
    SelectionError
        As :func:`point`.
    """
    grid = _grid(ds)
    cell_ds = point(ds, lat, lon, variables)
    ydim, xdim = grid.dims
    dx, dy = grid.resolution
    cy, cx = float(cell_ds[ydim]), float(cell_ds[xdim])
    ry, rx = round(cy, coordinate_decimals(dy)), round(cx, coordinate_decimals(dx))
    if grid.is_helioprojective:
        cell = {"x": rx, "y": ry}
    elif grid.is_geographic:
        cell = {"lat": ry, "lon": rx}
    else:
        from pyproj import Transformer

        clon, clat = Transformer.from_crs(grid.pyproj_crs, "EPSG:4326",
                                          always_xy=True).transform(cx, cy)
        cell = {"lat": round(clat, 6), "lon": round(clon, 6),
                "x": rx, "y": ry}
    out: dict[str, Any] = {}
    for name, da in cell_ds.data_vars.items():
        values = [_json_number(v) for v in np.atleast_1d(da.values)]
        rec: dict[str, Any] = {"units": da.attrs.get("units")}
        if TIME_DIM in da.dims:
            rec["time"] = [pd.Timestamp(t).isoformat() for t in da[TIME_DIM].values]
        rec["values"] = values
        flags = json_attr(da.attrs, "flag_values") if "flag_values" in da.attrs else None
        if flags is not None:
            meanings = dict(zip([int(f) for f in np.atleast_1d(flags)],
                                str(da.attrs.get("flag_meanings", "")).split(), strict=False))
            rec["meanings"] = [None if v is None else meanings.get(int(v)) for v in values]
        out[str(name)] = rec
    return {"query": cell_ds.attrs["query"], "cell": cell, "variables": out}


def _json_number(value: Any) -> Any:
    """A value as JSON shows it: shortest float text of its type, ``None`` for NaN."""
    if isinstance(value, np.floating):
        return None if not np.isfinite(value) else float(str(value))
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value.item() if hasattr(value, "item") else value


def point_csv(record: dict[str, Any]) -> str:
    """A :func:`point_record` as CSV: one row per variable and time step (long format).

    Parameters
    ----------
    record : dict
        The document of :func:`point_record`.

    Returns
    -------
    str
        ``variable,units,lat,lon,time,value`` rows under that header (``x,y`` for the
        cell on a solar cube; ``lat,lon,x,y`` on a projected one); a static variable has
        an empty ``time``, a missing value an empty ``value``.
    """
    import csv
    import io

    cell = record["cell"]
    keys = [k for k in ("lat", "lon", "x", "y") if k in cell]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["variable", "units", *keys, "time", "value"])
    for name, rec in record["variables"].items():
        times = rec.get("time") or [""] * len(rec["values"])
        for t, v in zip(times, rec["values"], strict=True):
            w.writerow([name, rec["units"] or "", *[cell[k] for k in keys], t,
                        "" if v is None else v])
    return buf.getvalue()
