"""Convention checks of a cube, after xcube's ``verify_cube``: every problem at once."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from esdc.errors import EsdcError

__all__ = ["assert_cube", "store_problems", "verify_cube", "verify_store"]

_SPATIAL = (("lat", "lon"), ("y", "x"))
_PROVENANCE = ("esdc_recipe", "esdc_recipe_sha256", "esdc_sources", "esdc_versions", "esdc_grid")


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
    spatial = next((p for p in _SPATIAL if all(d in ds.dims for d in p)), None)
    if spatial is None:
        problems.append(f"no spatial dims: expected (lat, lon) or (y, x), found {tuple(ds.dims)}")
    else:
        for d in spatial:
            if d not in ds.coords:
                problems.append(f"dim {d!r} has no coordinate variable")
            else:
                _check_axis(ds, d, problems)
    if "time" in ds.dims:
        if "time" not in ds.coords:
            problems.append("dim 'time' has no coordinate variable")
        else:
            t = ds["time"].values
            if not np.issubdtype(t.dtype, np.datetime64):
                problems.append("coordinate 'time' is not decoded to datetime64")
            elif t.size > 1 and not np.all(np.diff(t) > np.timedelta64(0, "ns")):
                problems.append("coordinate 'time' is not strictly increasing")
    if not ds.data_vars:
        problems.append("the cube has no data variables")
    for name, v in ds.data_vars.items():
        if v.attrs.get("esdc_role") == "embedding":
            problems += _check_embedding(ds, str(name))
            continue
        if spatial is not None and tuple(v.dims[-2:]) != spatial:
            problems.append(f"variable {name!r} has dims {v.dims}; they must end in {spatial}")
        if "time" in v.dims and v.dims[0] != "time":
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
    if ds.attrs.get("esdc_body") == "sun":
        problems += _check_sun(ds)
    if "CF-" not in str(ds.attrs.get("Conventions", "")):
        problems.append("global attribute Conventions must name CF (e.g. 'CF-1.10')")
    for key in _PROVENANCE:
        if key not in ds.attrs:
            problems.append(f"provenance attribute {key!r} is missing")
    if "esdc_sources" in ds.attrs:
        try:
            if not isinstance(json.loads(ds.attrs["esdc_sources"]), list):
                raise ValueError
        except ValueError:
            problems.append("attribute 'esdc_sources' is not a JSON list")
    return problems


def _check_embedding(ds: xr.Dataset, name: str) -> list[str]:
    """Embedding variables: dims (tile_y*, tile_x*, [time,] feature*), centre and bound coords."""
    v, out = ds[name], []
    dims = [str(d) for d in v.dims]
    if len(dims) not in (3, 4) or not (dims[0].startswith("tile_y") and dims[1].startswith(
            "tile_x") and dims[-1].startswith("feature")) or (len(dims) == 4 and dims[2] != "time"):
        out.append(f"embedding {name!r} has dims {tuple(dims)}; expected (tile_y, tile_x, "
                   "[time,] feature)")
        return out
    for d in dims[:2]:
        if d not in ds.coords or f"{d}_bounds" not in ds.variables:
            out.append(f"embedding {name!r}: coordinate {d!r} or {d}_bounds is missing")
    for key in ("esdc_model_run", "esdc_model_sha256", "esdc_tile_size"):
        if key not in v.attrs:
            out.append(f"embedding {name!r} has no {key} attribute")
    return out


def _check_sun(ds: xr.Dataset) -> list[str]:
    """Sun cubes: helioprojective arcsec axes, the frame and observer, validity masks."""
    out = []
    for d in ("y", "x"):
        if d not in ds.coords:
            out.append(f"a Sun cube has helioprojective dims (y, x); {d!r} is missing")
        elif ds[d].attrs.get("units") != "arcsec":
            out.append(f"coordinate {d!r} of a Sun cube must be in arcsec, has "
                       f"{ds[d].attrs.get('units')!r}")
    crs = ds.variables.get("crs")
    if crs is None:
        out.append("a Sun cube needs a 'crs' variable describing its frame and observer")
    else:
        if crs.attrs.get("grid_mapping_name") != "helioprojective":
            out.append("variable 'crs' of a Sun cube must have grid_mapping_name helioprojective")
        for key in ("esdc_observer", "observer_distance_m", "rsun_ref_m"):
            if key not in crs.attrs:
                out.append(f"variable 'crs' of a Sun cube has no {key!r} attribute")
        if crs.attrs.get("esdc_body") != "sun":
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


def verify_store(path: str | Path, *, checksums: bool = False,
                 storage_options: dict | None = None) -> list[str]:
    """Problems of a cube on disk: :func:`verify_cube` plus store-level checks.

    Checks that the store is Zarr format 3 with consolidated metadata.

    Parameters
    ----------
    path : str or pathlib.Path
        The Zarr store: a folder, or a URL (``s3://bucket/cube.zarr``,
        :func:`esdc.remote.verify_remote`).
    checksums : bool
        Also recompute every chunk file's SHA-256 and compare it with the build's
        record (:func:`esdc.integrity.verify_checksums`); reads all the data.
    storage_options : dict, optional
        fsspec options of a URL.

    Returns
    -------
    list of str
        Empty when the store conforms.
    """
    from esdc.remote import is_url, verify_remote

    if is_url(path):
        return verify_remote(str(path), checksums=checksums, options=storage_options)
    if checksums:
        from esdc.integrity import verify_checksums

        return verify_store(path) + verify_checksums(path)
    from esdc.store import open_cube

    p = Path(path)
    meta = p / "zarr.json"
    root = json.loads(meta.read_text()) if meta.exists() else None
    return store_problems(str(p), root, lambda consolidated: open_cube(
        p, consolidated=consolidated))


def store_problems(where: str, root: dict[str, Any] | None,
                   open_fn: Callable[[bool], xr.Dataset]) -> list[str]:
    """Problems of a store from its root ``zarr.json``, then of the cube it opens as.

    Parameters
    ----------
    where : str
        The store's path or URL, for the messages.
    root : dict or None
        The parsed root ``zarr.json`` (None when it is missing).
    open_fn : callable
        Opens the store as a Dataset, given whether its metadata are consolidated.

    Returns
    -------
    list of str
        Empty when the store and the cube conform (:func:`verify_cube`).
    """
    if root is None:
        return [f"{where} is not a Zarr v3 store (no zarr.json)"]
    problems = []
    if root.get("zarr_format") != 3:
        problems.append(f"{where} is Zarr format {root.get('zarr_format')}, expected 3")
    consolidated = root.get("consolidated_metadata") is not None
    if not consolidated:
        problems.append(f"{where} has no consolidated metadata")
    try:
        ds = open_fn(consolidated)
    except Exception as exc:  # noqa: BLE001 - any failure to open is a problem to report
        return [*problems, f"{where} cannot be opened by xarray: {exc}"]
    return problems + verify_cube(ds)


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
