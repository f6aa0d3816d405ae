"""The recipe runner: wires sources -> regrid -> harmonize -> store. No logic of its own."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from esdc.derive import FUNCTIONS
from esdc.errors import RegridError, SourceError
from esdc.grid import Grid, body_of
from esdc.harmonize import align_series, cf_attrs, decode, place_climatology, validity_mask
from esdc.recipe import ObservedTimeSpec, Recipe, SourceSpec
from esdc.regrid import overlaps, regrid
from esdc.samples import SAMPLES, sha256sum
from esdc.sources import Geolocated, open_source
from esdc.store import check_target, write_cube

__all__ = ["build", "default_output", "plan"]

_LIBS = ("esdc", "numpy", "xarray", "dask", "distributed", "zarr", "pyresample", "pyproj",
         "rioxarray", "h5netcdf", "netCDF4", "pillow", "astropy", "sunpy", "reproject")


def _versions() -> dict[str, str]:
    out = {}
    for lib in _LIBS:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return out


def _source_provenance(spec: SourceSpec, geo: Geolocated) -> dict[str, Any]:
    rec: dict[str, Any] = {"source": spec.name, "file": str(geo.path),
                           "sha256": sha256sum(geo.path),
                           "variables": [v.name for v in spec.variables]}
    if spec.sample is not None:
        rec.update(SAMPLES[spec.sample].provenance())
    return rec


def default_output(recipe: Recipe, cwd: Path | None = None) -> Path | str:
    """``recipe.output.path`` (a URL such as ``s3://bucket/c.zarr`` as it is), or ``cubes/{name}.zarr`` under ``cwd``."""  # noqa: E501
    from esdc.remote import is_url

    if is_url(recipe.output.path):
        return str(recipe.output.path)
    path = Path(recipe.output.path or f"cubes/{recipe.name}.zarr")
    return path if path.is_absolute() else (cwd or Path.cwd()) / path


def plan(recipe: Recipe, base_dir: Path | None = None) -> xr.Dataset:
    """Build the lazy cube of a recipe: nothing is computed.

    Parameters
    ----------
    recipe : Recipe
        A validated recipe.
    base_dir : pathlib.Path, optional
        Folder relative source paths are taken from.

    Returns
    -------
    xarray.Dataset
        Dims ``(time, lat, lon)`` (or ``y, x``); time-varying variables
        ``(time, lat, lon)``, static ones ``(lat, lon)``; CF and provenance attributes.

    Raises
    ------
    SourceNotFoundError, ChecksumError, SourceError
        For a missing, altered or unreadable source or variable.
    RegridError
        If the grid's bounding box lies outside every source.
    """
    variables: dict[str, xr.DataArray] = {}
    provenance = []
    opened = [(spec, open_source(spec, base_dir)) for spec in recipe.sources]
    # grid.time `observed: true` is made of the series sources' own time steps.
    grid: Grid = recipe.grid.to_grid(observed=[
        t for spec, geo in opened if spec.time == "series" for t in geo.data["time"].values])
    for spec, geo in opened:
        body = body_of(getattr(geo, "crs", None))
        if body is not None and body != grid.body:
            raise SourceError(
                f"sources.{spec.name}: {geo.path.name} lies on the {body} but grid.body is "
                f"{grid.body}; a cube stacks data of one body. Use a {body} grid (another "
                "recipe) or remove the source.")
    inside = [spec.name for spec, geo in opened if overlaps(geo, grid)]
    if not inside:
        raise RegridError(
            f"grid.bbox {list(grid.bbox)} lies outside every source "
            f"({', '.join(f'{s.name}: {[round(v, 3) for v in g.bbox]}' for s, g in opened)}); "
            "move the bbox onto the data."
        )
    for spec, geo in opened:
        provenance.append(_source_provenance(spec, geo))
        for var in spec.variables:
            da = decode(geo.data[var.source], var)
            if spec.time == "series" and grid.body != "sun":
                da = align_series(da, grid, f"sources.{spec.name}")
            da = regrid(da, geo, grid, var.resampling, flag_values=var.flag_values)
            if spec.time == "series" and grid.body == "sun":
                # A solar image is one observation: reproject it once, then place it.
                da = align_series(da, grid, f"sources.{spec.name}")
            da = da.drop_vars([c for c in da.coords if c not in da.dims])
            da.attrs = {**cf_attrs(var, spec.name), "grid_mapping": "crs"}
            if spec.time == "climatology_monthly":
                da = place_climatology(da, grid)
                da.attrs["esdc_time_placement"] = (
                    "monthly climatology: each time step holds the climatology of its month "
                    "of year")
                da.attrs["cell_methods"] = (
                    da.attrs.get("cell_methods", "") + " time: mean within years "
                    "time: mean over years").strip()
            if var.name in variables:  # combine: first_valid (validated in the recipe)
                first = variables[var.name]
                merged = first.fillna(da)
                merged.attrs = {**first.attrs, "esdc_source": f"{first.attrs['esdc_source']} "
                                f"then {spec.name} (first valid value)"}
                variables[var.name] = merged
            else:
                variables[var.name] = da
    if isinstance(recipe.grid.time, ObservedTimeSpec):
        # On an axis of observations each channel is missing where it was not observed.
        for name in [n for n, v in variables.items() if "time" in v.dims]:
            mask = validity_mask(variables[name].rename(name))
            mask.attrs["grid_mapping"] = "crs"
            variables[f"{name}_valid"] = mask
    for d in recipe.derived:
        out = FUNCTIONS[d.function]([variables[n] for n in d.inputs], grid, **d.params)
        out.attrs = {"long_name": d.long_name or d.name.replace("_", " "), "units": d.units,
                     **({"standard_name": d.standard_name} if d.standard_name else {}),
                     **({"comment": d.comment} if d.comment else {}),
                     "esdc_derived": f"{d.function}({', '.join(d.inputs)})",
                     "grid_mapping": "crs",
                     # a categorical layer (classify) keeps its CF flags
                     **{k: out.attrs[k] for k in ("flag_values", "flag_meanings")
                        if k in out.attrs}}
        variables[d.name] = out.astype("float32")
    coords = grid.coords()
    ds = xr.Dataset(variables, coords={k: v for k, v in coords.items() if k != "time_bnds"})
    if "time_bnds" in coords:
        ds["time_bnds"] = coords["time_bnds"]
        ds = ds.set_coords("time_bnds")
    ds["crs"] = xr.DataArray(0, attrs=grid.crs_attrs())
    ds = ds.set_coords("crs")
    west, south, east, north = grid.bbox
    ds.attrs = {
        "Conventions": "CF-1.10, ACDD-1.3",
        "title": recipe.title,
        "summary": recipe.summary,
        "license": recipe.license,
        "source": "; ".join(sorted({p.get("product", p["file"]) for p in provenance})),
        "history": f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} built by esdc "
                   f"{_versions().get('esdc', '?')} from recipe {recipe.name}",
        "date_created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "esdc_recipe": recipe.to_yaml(),
        "esdc_recipe_sha256": recipe.sha256(),
        "esdc_sources": json.dumps(provenance),
        "esdc_versions": json.dumps(_versions()),
        "esdc_grid": json.dumps(grid.to_dict()),
        "esdc_body": grid.body,
    }
    if grid.is_geographic:
        ds.attrs.update(geospatial_lat_min=south, geospatial_lat_max=north,
                        geospatial_lon_min=west, geospatial_lon_max=east)
    if "time_bnds" in ds:
        # ACDD time coverage: from the first cell's start to the last cell's end.
        bnds = ds["time_bnds"].values
        ds.attrs.update(time_coverage_start=str(np.datetime_as_string(bnds[0, 0], "s")),
                        time_coverage_end=str(np.datetime_as_string(bnds[-1, 1], "s")))
    return ds


def build(
    recipe: Recipe,
    out: Path | None = None,
    *,
    overwrite: bool = False,
    client: Any = None,
    base_dir: Path | None = None,
    on_region: Callable[[int, int], None] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Path | str:
    """Build a recipe's cube and store it.

    Parameters
    ----------
    recipe : Recipe
        A validated recipe.
    out : pathlib.Path or str, optional
        Where to store the cube (a folder, or a URL such as ``s3://bucket/cube.zarr``);
        :func:`default_output` when omitted.
    overwrite : bool
        Replace an existing cube at ``out`` (atomically, when the new one is done).
    client : distributed.Client, optional
        The Dask cluster to compute on.
    base_dir : pathlib.Path, optional
        Folder relative source paths are taken from.
    on_region : callable, optional
        Progress callback ``on_region(done, total)``.
    storage_options : dict, optional
        fsspec options of a URL ``out`` (:func:`esdc.remote.storage_options`).

    Returns
    -------
    pathlib.Path or str
        The cube's path or URL.

    Raises
    ------
    EsdcError
        Any subclass, for bad input; nothing at ``out`` is changed then.
    """
    from esdc.remote import is_url

    target = ((out if is_url(out) else Path(out)) if out is not None
              else default_output(recipe))
    check_target(target, overwrite, storage_options=storage_options)
    ds = plan(recipe, base_dir)
    return write_cube(ds, target, chunks=dict(recipe.output.chunks),
                      compressor=recipe.output.compressor, overwrite=overwrite, client=client,
                      on_region=on_region, storage_options=storage_options)
