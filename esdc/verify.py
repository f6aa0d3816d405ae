"""Convention checks of a cube, after xcube's ``verify_cube``: every problem at once."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from esdc.conventions import (
    ATTR_BODY,
    ATTR_COVERAGE,
    ATTR_MODEL_RUN,
    ATTR_MODEL_SHA256,
    ATTR_OBSERVER,
    ATTR_ROLE,
    ATTR_SOURCES,
    ATTR_TILE_SIZE,
    CRS_VAR,
    PROVENANCE_ATTRS,
    SPATIAL_DIMS,
    TIME_DIM,
    json_attr,
    spatial_dims,
)
from esdc.errors import EsdcError
from esdc.storage import Target, resolve

__all__ = ["StoreReport", "assert_cube", "hole_problems", "store_problems", "store_report",
           "verify_cube", "verify_store"]


def _check_axis(ds: xr.Dataset, name: str, problems: list[str]) -> None:
    c = ds[name]
    if c.ndim != 1:
        problems.append(f"coordinate {name!r} must be 1-D, has dims {c.dims}")
        return
    v = np.asarray(c.values, dtype="float64")
    if v.size > 1:
        d = np.diff(v)
        if not (np.all(d > 0) or np.all(d < 0)):
            problems.append(f"coordinate {name!r} is not strictly monotonic")
        elif np.max(np.abs(d - d[0])) > 1e-6 * abs(d[0]) + 1e-9:
            problems.append(f"coordinate {name!r} is not evenly spaced")
    if "units" not in c.attrs:
        problems.append(f"coordinate {name!r} has no units attribute")
    if name == "lat":
        if c.attrs.get("standard_name") != "latitude" or c.attrs.get("units") != "degrees_north":
            problems.append("coordinate 'lat' needs standard_name latitude, units degrees_north")
        if v.size and (v.min() < -90 or v.max() > 90):
            problems.append("coordinate 'lat' has values outside [-90, 90]")
    if name == "lon":
        if c.attrs.get("standard_name") != "longitude" or c.attrs.get("units") != "degrees_east":
            problems.append("coordinate 'lon' needs standard_name longitude, units degrees_east")
        if v.size and (v.min() < -180 or v.max() > 360):
            problems.append("coordinate 'lon' has values outside [-180, 360]")


def verify_cube(ds: xr.Dataset) -> list[str]:
    """List every way ``ds`` departs from the esdc cube conventions.

    The conventions are xcube's (CF; dims ``time, lat|y, lon|x``, spatial dims
    last) plus esdc's provenance attributes:

    - spatial dims ``(lat, lon)`` or ``(y, x)``, 1-D, monotonic, evenly spaced
      coordinates with CF ``units``/``standard_name``;
    - ``time`` (when present) is datetime64 and strictly increasing;
    - every data variable ends in the spatial dims, has ``time`` first when it has
      one, a ``units`` attribute and a ``grid_mapping`` naming an existing variable;
      ``flag_values`` and ``flag_meanings`` agree in length;
    - global ``Conventions`` names CF; provenance attributes ``esdc_*`` are present
      and ``esdc_sources`` is a JSON list;
    - a Sun cube (``esdc_body: sun``) is helioprojective: ``y``/``x`` in arcsec, a
      ``crs`` variable naming the frame and its observer, and every ``{v}_valid``
      mask uint8 0/1 with the dims of ``v``.

    Holes in the data are looked for by :func:`verify_store` (:func:`hole_problems`),
    which reads the layers.

    Parameters
    ----------
    ds : xarray.Dataset
        The cube (opened lazily; only coordinates are read).

    Returns
    -------
    list of str
        One message per problem; empty when the cube conforms.
    """
    problems: list[str] = []
    spatial = spatial_dims(ds.dims)
    if spatial is None:
        problems.append(f"no spatial dims: expected (lat, lon) or (y, x), found {tuple(ds.dims)}")
    else:
        for d in spatial:
            if d not in ds.coords:
                problems.append(f"dim {d!r} has no coordinate variable")
            else:
                _check_axis(ds, d, problems)
    if TIME_DIM in ds.dims:
        if TIME_DIM not in ds.coords:
            problems.append("dim 'time' has no coordinate variable")
        else:
            t = ds[TIME_DIM].values
            if not np.issubdtype(t.dtype, np.datetime64):
                problems.append("coordinate 'time' is not decoded to datetime64")
            elif t.size > 1 and not np.all(np.diff(t) > np.timedelta64(0, "ns")):
                problems.append("coordinate 'time' is not strictly increasing")
    if not ds.data_vars:
        problems.append("the cube has no data variables")
    for name, v in ds.data_vars.items():
        if v.attrs.get(ATTR_ROLE) == "embedding":
            problems += _check_embedding(ds, str(name))
            continue
        if spatial is not None and tuple(v.dims[-2:]) != spatial:
            problems.append(f"variable {name!r} has dims {v.dims}; they must end in {spatial}")
        if TIME_DIM in v.dims and v.dims[0] != TIME_DIM:
            problems.append(f"variable {name!r} must have 'time' as its first dim, has {v.dims}")
        if "units" not in v.attrs:
            problems.append(f"variable {name!r} has no units attribute")
        gm = v.attrs.get("grid_mapping")
        if gm is None:
            problems.append(f"variable {name!r} has no grid_mapping attribute")
        elif gm not in ds.variables:
            problems.append(f"variable {name!r} names grid_mapping {gm!r}, which is missing")
        fv, fm = v.attrs.get("flag_values"), v.attrs.get("flag_meanings")
        if (fv is None) != (fm is None):
            problems.append(f"variable {name!r} has only one of flag_values/flag_meanings")
        elif fv is not None and len(np.atleast_1d(fv)) != len(str(fm).split()):
            problems.append(f"variable {name!r}: flag_values and flag_meanings differ in length")
        if not (np.issubdtype(v.dtype, np.number) or np.issubdtype(v.dtype, np.bool_)):
            problems.append(f"variable {name!r} has non-numeric dtype {v.dtype}")
    if ds.attrs.get(ATTR_BODY) == "sun":
        problems += _check_sun(ds)
    if "CF-" not in str(ds.attrs.get("Conventions", "")):
        problems.append("global attribute Conventions must name CF (e.g. 'CF-1.10')")
    for key in PROVENANCE_ATTRS:
        if key not in ds.attrs:
            problems.append(f"provenance attribute {key!r} is missing")
    if ATTR_SOURCES in ds.attrs:
        try:
            if not isinstance(json.loads(ds.attrs[ATTR_SOURCES]), list):
                raise ValueError
        except ValueError:
            problems.append("attribute 'esdc_sources' is not a JSON list")
    return problems


def _check_embedding(ds: xr.Dataset, name: str) -> list[str]:
    """Embedding variables: dims (tile_y*, tile_x*, [time,] feature*), centre and bound coords."""
    v, out = ds[name], []
    dims = [str(d) for d in v.dims]
    tiled = (dims[0].startswith("tile_y") and dims[1].startswith("tile_x")
             and dims[-1].startswith("feature")) if len(dims) >= 3 else False
    if len(dims) not in (3, 4) or not tiled or (len(dims) == 4 and dims[2] != TIME_DIM):
        out.append(f"embedding {name!r} has dims {tuple(dims)}; expected (tile_y, tile_x, "
                   "[time,] feature)")
        return out
    for d in dims[:2]:
        if d not in ds.coords or f"{d}_bounds" not in ds.variables:
            out.append(f"embedding {name!r}: coordinate {d!r} or {d}_bounds is missing")
    for key in (ATTR_MODEL_RUN, ATTR_MODEL_SHA256, ATTR_TILE_SIZE):
        if key not in v.attrs:
            out.append(f"embedding {name!r} has no {key} attribute")
    return out


def _check_sun(ds: xr.Dataset) -> list[str]:
    """Sun cubes: helioprojective arcsec axes, the frame and observer, validity masks."""
    out = []
    for d in SPATIAL_DIMS[1]:  # (y, x)
        if d not in ds.coords:
            out.append(f"a Sun cube has helioprojective dims (y, x); {d!r} is missing")
        elif ds[d].attrs.get("units") != "arcsec":
            out.append(f"coordinate {d!r} of a Sun cube must be in arcsec, has "
                       f"{ds[d].attrs.get('units')!r}")
    crs = ds.variables.get(CRS_VAR)
    if crs is None:
        out.append("a Sun cube needs a 'crs' variable describing its frame and observer")
    else:
        if crs.attrs.get("grid_mapping_name") != "helioprojective":
            out.append("variable 'crs' of a Sun cube must have grid_mapping_name helioprojective")
        for key in (ATTR_OBSERVER, "observer_distance_m", "rsun_ref_m"):
            if key not in crs.attrs:
                out.append(f"variable 'crs' of a Sun cube has no {key!r} attribute")
        if crs.attrs.get(ATTR_BODY) != "sun":
            out.append("variable 'crs' of a Sun cube must have esdc_body 'sun'")
    for name in map(str, ds.data_vars):
        if name.endswith("_valid") and name[:-6] in ds.data_vars:
            mask, var = ds[name], ds[name[:-6]]
            if mask.dtype != np.uint8:
                out.append(f"mask {name!r} must be uint8, is {mask.dtype}")
            if mask.dims != var.dims:
                out.append(f"mask {name!r} has dims {mask.dims}, its variable {var.dims}")
            if list(np.atleast_1d(mask.attrs.get("flag_values", []))) != [0, 1]:
                out.append(f"mask {name!r} must have flag_values [0, 1]")
    return out


@dataclass
class StoreReport:
    """What :func:`store_report` found.

    Attributes
    ----------
    problems : list of str
        Store, convention and (when checked) chunk problems, one message each.
    checked : int or None
        Chunk checksums that were compared (None when checksums were not checked).
    uncovered : list of str
        Arrays the checksum record does not cover (written after the build).
    """

    problems: list[str] = field(default_factory=list)
    checked: int | None = None
    uncovered: list[str] = field(default_factory=list)


def store_report(cube: str | os.PathLike[str] | Target, *, checksums: bool = False,
                 storage_options: dict[str, Any] | None = None) -> StoreReport:
    """Problems of a stored cube: format, consolidated metadata, conventions, chunk checksums.

    Parameters
    ----------
    cube : str, path-like or Target
        The cube: a folder, a URL (``s3://bucket/cube.zarr``) or a storage target
        (:func:`esdc.storage.resolve`).
    checksums : bool
        Also recompute every chunk's SHA-256 and compare it with the build's record
        (:meth:`esdc.storage.Target.checksums`); reads all the data.
    storage_options : dict, optional
        fsspec options of a URL.

    Returns
    -------
    StoreReport
        ``problems`` is empty when the store conforms.

    Raises
    ------
    StorageError
        If the store cannot be reached.
    """
    target = resolve(cube, storage_options)
    root = target.root_metadata()
    report = StoreReport(problems=store_problems(
        str(target), root, lambda consolidated: target.open(consolidated=consolidated),
        consolidates=target.consolidates))
    if checksums and root is not None:
        sums = target.checksums()
        report.problems += sums.problems
        report.checked, report.uncovered = sums.checked, sums.uncovered
    return report


def verify_store(cube: str | os.PathLike[str] | Target, *, checksums: bool = False,
                 storage_options: dict[str, Any] | None = None) -> list[str]:
    """Problems of a stored cube: :func:`verify_cube` plus store-level checks.

    Checks that the store is Zarr format 3 with consolidated metadata, that no layer has
    holes where its source covers the grid (:func:`hole_problems`, reads the layers) and,
    with ``checksums``, that every chunk matches the build's checksum record.

    Parameters
    ----------
    cube : str, path-like or Target
        The cube: a folder, a URL (``s3://bucket/cube.zarr``) or a storage target.
    checksums : bool
        Also recompute every chunk's SHA-256 (reads all the data).
    storage_options : dict, optional
        fsspec options of a URL.

    Returns
    -------
    list of str
        Empty when the store conforms.

    Raises
    ------
    StorageError
        If the store cannot be reached.
    """
    return store_report(cube, checksums=checksums, storage_options=storage_options).problems


def store_problems(where: str, root: dict[str, Any] | None,
                   open_fn: Callable[[bool], xr.Dataset], *,
                   consolidates: bool = True) -> list[str]:
    """Problems of a store from its root ``zarr.json``, then of the cube it opens as.

    Parameters
    ----------
    where : str
        The store's path or URL, for the messages.
    root : dict or None
        The parsed root ``zarr.json`` (None when it is missing).
    open_fn : callable
        Opens the store as a Dataset, given whether its metadata are consolidated.
    consolidates : bool
        The store keeps consolidated metadata (an Icechunk repository does not).

    Returns
    -------
    list of str
        Empty when the store and the cube conform (:func:`verify_cube`) and no layer has
        holes where its source covers the grid (:func:`hole_problems`, reads the data).
    """
    if root is None:
        return [f"{where} is not a Zarr v3 store (no zarr.json)"]
    problems = []
    if root.get("zarr_format") != 3:
        problems.append(f"{where} is Zarr format {root.get('zarr_format')}, expected 3")
    consolidated = root.get("consolidated_metadata") is not None
    if not consolidated and consolidates:
        problems.append(f"{where} has no consolidated metadata")
    try:
        ds = open_fn(consolidated)
    except Exception as exc:  # noqa: BLE001 - any failure to open is a problem to report
        return [*problems, f"{where} cannot be opened by xarray: {exc}"]
    return problems + verify_cube(ds) + hole_problems(ds)


def assert_cube(ds: xr.Dataset) -> xr.Dataset:
    """Return ``ds`` if it conforms, else raise with every problem listed.

    Raises
    ------
    EsdcError
        Listing each problem found by :func:`verify_cube`.
    """
    problems = verify_cube(ds)
    if problems:
        raise EsdcError("the dataset is not a valid esdc cube:\n  " + "\n  ".join(problems))
    return ds


#: A layer valid in less than this share of what its source's pixels reach has holes.
HOLE_RATIO = 0.8
#: Share of rows (columns) in stripes that is reported even where the source is finer.
STRIPE_SHARE = 0.05


def _narrow_gaps(present: np.ndarray, width: int) -> int:
    """Runs of ``False`` at most ``width`` long with ``True`` on both sides; their cells."""
    idx = np.flatnonzero(present)
    if idx.size < 2:
        return 0
    gaps = np.diff(idx) - 1
    return int(gaps[(gaps > 0) & (gaps <= width)].sum())


def hole_problems(ds: xr.Dataset) -> list[str]:
    """Holes in the layers, inside the part of the grid each one's source covers.

    For every floating-point layer that records where its source lands on the grid
    (``esdc_coverage``: a box and the size of a source pixel in cells, written at build
    time), the cells whose centres lie in the box are read (a cell counts as valid when
    it holds a finite value at some time step) and two things are looked for:

    - stripes: rows or columns that are all NaN between valid ones, no wider than a
      source pixel (what a bucket method leaves between pixel centres on a finer grid);
      where the source's pixels are no larger than the cells, only when they are more
      than :data:`STRIPE_SHARE` of the rows or columns;
    - a valid share far below the source's coverage: less than :data:`HOLE_RATIO` of
      the cells within one source pixel of a valid cell (a maximum filter of a source
      pixel's size), i.e. NaN where the source's pixels reach.

    Parameters
    ----------
    ds : xarray.Dataset
        The cube; its recorded layers are read once each (lazily chunked).

    Returns
    -------
    list of str
        One message per layer with holes, with its valid share and the source's.
    """
    from scipy.ndimage import maximum_filter

    spatial = spatial_dims(ds.dims)
    if spatial is None:
        return []
    ydim, xdim = spatial
    y, x = ds[ydim].values, ds[xdim].values
    out = []
    for name, v in ds.data_vars.items():
        cov = json_attr(v.attrs, ATTR_COVERAGE)
        if (not isinstance(cov, dict) or tuple(v.dims[-2:]) != spatial
                or not np.issubdtype(v.dtype, np.floating)):
            continue
        w, s, e, n = cov["bbox"]
        rows = np.flatnonzero((y >= s) & (y <= n))
        cols = np.flatnonzero((x >= w) & (x <= e))
        if rows.size == 0 or cols.size == 0:
            continue
        sub = np.isfinite(v.isel({ydim: slice(rows[0], rows[-1] + 1),
                                  xdim: slice(cols[0], cols[-1] + 1)}))
        lead = [d for d in sub.dims if d not in spatial]
        # read here, in threads: a cube opened with this process's storage options
        valid = np.asarray((sub.any(dim=lead) if lead else sub).compute(scheduler="threads")
                           .values, dtype=bool)
        px, py = cov.get("pixel") or (1.0, 1.0)
        by, bx = max(1, int(np.ceil(py - 1e-6))), max(1, int(np.ceil(px - 1e-6)))
        stripes = (_narrow_gaps(valid.any(axis=1), by), _narrow_gaps(valid.any(axis=0), bx))
        # Between pixel centres only a source coarser than the cells leaves empty lines;
        # with finer pixels a few narrow all-NaN lines are data (a strait of open sea).
        if max(px, py) <= 1.0 and (stripes[0] <= STRIPE_SHARE * valid.shape[0]
                                   and stripes[1] <= STRIPE_SHARE * valid.shape[1]):
            stripes = (0, 0)
        share = float(valid.mean())
        reach = float(maximum_filter(valid, size=(by, bx), mode="nearest").mean())
        where = (f"inside the part of the grid its source covers ({valid.shape[0]} x "
                 f"{valid.shape[1]} cells, bbox {[round(c, 6) for c in cov['bbox']]})")
        found = []
        if any(stripes):
            found.append(f"{stripes[0]} rows and {stripes[1]} columns are all NaN between "
                         "valid ones (stripes)")
        if share < HOLE_RATIO * reach:
            found.append(f"it is valid in {share:.1%} of the cells where the source's pixels "
                         f"reach {reach:.1%}")
        if found:
            out.append(f"variable {name!r} has holes {where}: " + "; ".join(found) + ". The "
                       f"source's pixels are {px:.3g} x {py:.3g} cells: rebuild with resampling "
                       "conservative, bilinear or nearest (bucket methods leave cells between "
                       "pixel centres empty).")
    return out
