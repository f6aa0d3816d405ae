"""The recipe runner: wires sources -> regrid -> harmonize -> store. No logic of its own.

:func:`plan` composes named steps, each a small function over the ones below it: open the
sources, make the grid, check bodies and overlap, harmonize every variable (decode,
time, regrid, CF attributes), combine variables filled by several sources, add validity
masks, derive layers, attach the conventions (CF/ACDD and esdc's provenance).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from esdc.conventions import (
    ATTR_BODY,
    ATTR_COVERAGE,
    ATTR_DERIVED,
    ATTR_GRID,
    ATTR_MIN_VALID_FRACTION,
    ATTR_RECIPE,
    ATTR_RECIPE_SHA256,
    ATTR_SOURCES,
    ATTR_TIME_PLACEMENT,
    ATTR_VERSIONS,
    CONVENTIONS,
    CRS_VAR,
    GRANULE_DIM,
    GRANULE_TABLE,
    TIME_BNDS,
    TIME_DIM,
    acdd_bounds,
    acdd_time_coverage,
)
from esdc.derive import FUNCTIONS
from esdc.errors import RegridError, SourceError
from esdc.grid import Grid
from esdc.harmonize import (
    align_series,
    cf_attrs,
    combine_first_valid,
    decode,
    place_climatology,
    validity_mask,
)
from esdc.hashing import file_sha256
from esdc.recipe import DerivedSpec, ObservedTimeSpec, Recipe, SourceSpec, VariableSpec
from esdc.regrid import coverage, overlaps, regrid, resampler_for
from esdc.regrid.extent import (
    crop,
    grid_extent,
    missed_message,
    partial_message,
    source_extent,
)
from esdc.samples import SAMPLES
from esdc.samples import fetch as fetch_samples
from esdc.sources import Geolocated, open_source
from esdc.sources.granules import (
    Granule,
    fetch_options,
    granule_origin,
    index_urls,
    list_granules,
    open_granules,
)
from esdc.sources.registry import IN_PLACE, SERIES_PREPARE, load_entry
from esdc.storage import Target, resolve
from esdc.storage.fetch import FetchedGranule, SkippedGranule, fetch_granules

__all__ = ["FetchedSource", "build", "default_output", "fetch_sources", "granule_table", "plan"]

#: Source pixels kept beyond the grid's box before decoding (every resampler's
#: neighbours: bilinear needs one, nearest crops with two again).
CROP_MARGIN = 2

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


@dataclass(frozen=True)
class FetchedSource:
    """The granules of one ``files:`` (or tile service) source and where each one is now.

    Attributes
    ----------
    granules : list of Granule
        From :func:`esdc.sources.granules.list_granules`, in time order; for a tile
        service (``format: wmts``) its capabilities document first, then its tiles.
    results : list of FetchedGranule, SkippedGranule or None
        Per granule: fetched (a local file), skipped (missing upstream) or ``None`` for a
        store opened in place (``format: zarr``).
    """

    granules: list[Granule]
    results: list[FetchedGranule | SkippedGranule | None]

    def paths(self) -> list[str | Path | None]:
        """What to open per granule: the local file, the URL of a store, or None (skipped)."""
        return [g.url if r is None else (r.path if isinstance(r, FetchedGranule) else None)
                for g, r in zip(self.granules, self.results, strict=True)]


def _warming(prepare: Callable[[Path], Any]) -> Callable[[FetchedGranule], None]:
    """``prepare(path)`` of each fetched granule, its failures left to the reader to report."""
    def warm(granule: FetchedGranule) -> None:
        # a granule that cannot be read fails with the reader's message when opened
        with contextlib.suppress(Exception):
            prepare(granule.path)
    return warm


def fetch_sources(recipe: Recipe, base_dir: Path | None = None, *,
                  mirrors: Mapping[str, str] | None = None,
                  progress: bool | Callable[[int, int, int], None] = False,
                  ) -> dict[str, FetchedSource]:
    """List and fetch the granules of every ``files:`` source (the build's fetch phase).

    Granules are fetched in parallel into the content cache (:mod:`esdc.storage.fetch`)
    with their SHA-256; a granule verified before is not downloaded again. Stores opened
    in place (``format: zarr``) are not fetched. A tile service (``format: wmts``) has
    its capabilities document fetched first (a granule too), then the tiles that
    intersect the grid.

    Parameters
    ----------
    recipe : Recipe
        A validated recipe.
    base_dir : pathlib.Path, optional
        Folder relative paths are taken from.
    mirrors : mapping of str to str, optional
        URL prefix -> replacement (:func:`esdc.sources.granules.list_granules`).
    progress : bool or callable
        A progress bar of granules and bytes, or a callback ``(done, total, bytes)``.

    Returns
    -------
    dict of str to FetchedSource
        By source name; empty when no source has ``files`` or ``wmts``.

    Raises
    ------
    GranuleNotFoundError
        For the first granule missing upstream (``files.missing: error``).
    FetchError, SourceError
        When a granule cannot be fetched after retries, or a URL scheme is unknown; when
        a catalog or capabilities document lacks what the recipe asks for.
    """
    observed = isinstance(recipe.grid.time, ObservedTimeSpec)
    # an observed time axis is made of the sources' times: the spatial grid only, then
    grid = (recipe.grid.model_copy(update={"time": None}) if observed else recipe.grid).to_grid()
    times = grid.time
    out = {}
    for spec in recipe.sources:
        if spec.files is None and spec.wmts is None:
            continue
        what = f"sources.{spec.name}"
        index = [Granule(u) for u in index_urls(spec, base_dir=base_dir, mirrors=mirrors)]
        first = list(fetch_granules([g.url for g in index], what=what)) if index else []
        granules = list_granules(spec, times, base_dir=base_dir, mirrors=mirrors, grid=grid,
                                 index=[r.path for r in first if isinstance(r, FetchedGranule)])
        if spec.format in IN_PLACE:
            out[spec.name] = FetchedSource(granules, [None] * len(granules))
            continue
        # each granule's metadata is read as it arrives, while others download
        prepare = load_entry(SERIES_PREPARE, spec.format)
        results = fetch_granules([g.url for g in granules], **fetch_options(spec),
                                 progress=progress, what=what,
                                 on_fetched=_warming(prepare) if prepare else None)
        out[spec.name] = FetchedSource(index + granules, first + list(results))
    return out


def granule_table(fetched: Mapping[str, FetchedSource]) -> xr.Dataset | None:
    """The ``esdc_granules`` table: one row per granule of every ``files:``/``wmts`` source.

    A WMTS source gives a row for its capabilities document, then one per tile.

    Parameters
    ----------
    fetched : mapping of str to FetchedSource
        From :func:`fetch_sources`.

    Returns
    -------
    xarray.Dataset or None
        1-D columns along ``granule``: ``source``, ``url``, ``status`` (``fetched``,
        ``skipped`` or ``in_place``), ``size`` (bytes, -1 unknown), ``sha256``, ``etag``,
        ``time`` (the pattern time, NaT without one), ``fetched_at`` (ISO 8601 UTC) and
        ``reason`` (why a granule was skipped); ``None`` without ``files:`` sources.
    """
    rows: list[tuple[Any, ...]] = []
    for name, src in fetched.items():
        for g, r in zip(src.granules, src.results, strict=True):
            t = np.datetime64(g.time, "ns") if g.time is not None else np.datetime64("NaT", "ns")
            if isinstance(r, FetchedGranule):
                rows.append((name, g.url, "fetched", r.size, r.sha256, r.etag or "", t,
                             r.fetched_at, ""))
            elif isinstance(r, SkippedGranule):
                rows.append((name, g.url, "skipped", -1, "", "", t, "", r.reason))
            else:
                rows.append((name, g.url, "in_place", -1, "", "", t, "", ""))
    if not rows:
        return None
    cols = list(zip(*rows, strict=True))
    names = ("source", "url", "status", "size", "sha256", "etag", "time", "fetched_at",
             "reason")
    data = {}
    for key, col in zip(names, cols, strict=True):
        arr = (np.array(col, dtype="int64") if key == "size" else
               np.array(col, dtype="datetime64[ns]") if key == "time" else
               np.array(col, dtype=object))
        data[key] = xr.Variable((GRANULE_DIM,), arr)
    table = xr.Dataset(data)
    table["size"].attrs["units"] = "bytes"
    table.attrs["title"] = "esdc granule table: one row per granule of the cube's sources"
    return table


def _files_provenance(spec: SourceSpec, src: FetchedSource) -> dict[str, Any]:
    """The ``esdc_sources`` record of a ``files:``/``wmts`` source: counts and one digest."""
    fetched = [r for r in src.results if isinstance(r, FetchedGranule)]
    lines = "\n".join(f"{g.url} {r.sha256}" for g, r in zip(src.granules, src.results,
                                                            strict=True)
                       if isinstance(r, FetchedGranule))
    return {"source": spec.name,
            "files": granule_origin(spec),
            "granules": len(src.granules), "fetched": len(fetched),
            "skipped": sum(isinstance(r, SkippedGranule) for r in src.results),
            "bytes": sum(r.size for r in fetched),
            "granules_sha256": hashlib.sha256(lines.encode()).hexdigest(),
            "granule_table": GRANULE_TABLE,
            "variables": [v.name for v in spec.variables],
            **(spec.provenance.record() if spec.provenance else {})}


def _source_provenance(spec: SourceSpec, geo: Geolocated) -> dict[str, Any]:
    rec: dict[str, Any] = {"source": spec.name, "file": str(geo.path),
                           # a store opened in place (format zarr) is a folder: no file hash
                           "sha256": file_sha256(geo.path) if Path(geo.path).is_file()
                           else None,
                           "variables": [v.name for v in spec.variables]}
    if spec.sample is not None:
        rec.update(SAMPLES[spec.sample].provenance())
    elif spec.provenance is not None:  # declared in the recipe for a file of one's own
        rec.update(spec.provenance.record())
    return rec


def default_output(recipe: Recipe, cwd: Path | None = None) -> Path | str:
    """Where a recipe's cube goes when no output is given.

    Parameters
    ----------
    recipe : Recipe
        A validated recipe.
    cwd : pathlib.Path, optional
        Folder a relative path is taken from (default: the current folder).

    Returns
    -------
    pathlib.Path or str
        ``recipe.output.path`` (a URL such as ``s3://bucket/c.zarr`` as it is), else
        ``cubes/{name}.zarr``; a relative path under ``cwd``.
    """
    where = recipe.output.path or f"cubes/{recipe.name}.zarr"
    return resolve(where, cwd=cwd or Path.cwd()).location


def _open_sources(recipe: Recipe, base_dir: Path | None,
                  fetched: Mapping[str, FetchedSource]) -> list[tuple[SourceSpec, Geolocated]]:
    """Step 1: every source opened lazily, in the recipe's order.

    A ``files:`` source is its fetched granules combined along time (one entry), or one
    entry per solar image (each reprojected at its own time, then merged by name).
    """
    out = []
    for spec in recipe.sources:
        if spec.name not in fetched:
            out.append((spec, open_source(spec, base_dir)))
            continue
        src = fetched[spec.name]
        out.extend((spec, geo) for geo in open_granules(spec, src.granules, src.paths()))
    return out


def _grid(recipe: Recipe, opened: list[tuple[SourceSpec, Geolocated]]) -> Grid:
    """Step 2: the grid; ``grid.time`` ``observed: true`` is made of the series' time steps.

    Its ``tile`` is the spatial shape of the build's regions: the store's shard, else
    chunk, per spatial dim (a dim without one: whole); none where one region is the
    whole grid.
    """
    grid = recipe.grid.to_grid(observed=[
        t for spec, geo in opened if spec.time == "series" for t in geo.data[TIME_DIM].values])
    out = recipe.output
    tile = tuple(min(n, int(out.shards.get(d) or out.chunks.get(d) or n))
                 for d, n in zip(grid.dims, grid.shape, strict=True))
    return grid if tile == grid.shape else dataclasses.replace(grid, tile=tile)


def _check_bodies(opened: list[tuple[SourceSpec, Geolocated]], grid: Grid,
                  say: Callable[[str], None]) -> None:
    """Step 3: every source lies on the grid's body and reaches the grid, before computing.

    A source that misses the grid's box is refused when a layer would be NaN everywhere
    (else noted); one that covers only part of the box is noted (``say``). Messages give
    the source's own extent and the grid's (:mod:`esdc.regrid.extent`).
    """
    for spec, geo in opened:
        if geo.body is not None and geo.body != grid.body:
            raise SourceError(
                f"sources.{spec.name}: {geo.path.name} lies on the {geo.body} but grid.body is "
                f"{grid.body}; a cube stacks data of one body. Use a {geo.body} grid (another "
                "recipe) or remove the source.")
    # a list, not any(): overlaps() also raises for a source that cannot go on the grid
    hits = [overlaps(geo, grid) for _, geo in opened]
    if not any(hits):
        raise RegridError(
            f"{grid_extent(grid)} lies outside every source "
            f"({'; '.join(f'{s.name}: {source_extent(g)}' for s, g in opened)}); "
            "move the bbox onto the data.")
    fillers: dict[str, set[str]] = {}  # layer -> the sources reaching the grid that fill it
    for (spec, _), hit in zip(opened, hits, strict=True):
        for v in spec.variables:
            fillers.setdefault(v.name, set()).update([spec.name] if hit else [])
    for (spec, geo), hit in zip(opened, hits, strict=True):
        if not hit:
            empty = [v.name for v in spec.variables if not fillers[v.name]]
            message = missed_message(f"sources.{spec.name}", geo, grid, empty)
            if empty:
                raise RegridError(message)
            say(message)
            continue
        # a layer merged from several sources (combine: first_valid) is not noted
        alone = [v.name for v in spec.variables if fillers[v.name] == {spec.name}]
        if alone and (covered := coverage(geo, grid)) is not None:
            note = partial_message(f"sources.{spec.name}", geo, grid, covered["bbox"], alone)
            if note:
                say(note)


def _harmonize(spec: SourceSpec, var: VariableSpec, geo: Geolocated,
               grid: Grid) -> xr.DataArray:
    """Step 4: one variable decoded, put on the time axis and the grid, with CF attributes.

    A series is binned onto the time axis before resampling, unless its resampler works
    per observation (a solar image is reprojected at its own time, then placed). Where
    the source lands on the grid is recorded (``esdc_coverage``, for ``esdc verify``).
    """
    what = f"sources.{spec.name}"
    # decoding (scale, offset, fill values, dtype) costs per pixel: the grid's part only
    raw, cut = crop(geo.data[var.source], geo, grid, margin=CROP_MARGIN)
    da = decode(raw, var)
    per_observation = resampler_for(geo).per_observation
    if spec.time == "series" and not per_observation:
        da = align_series(da, grid, what)
    da = regrid(da, cut, grid, var.resampling, flag_values=var.flag_values,
                min_valid_fraction=var.min_valid_fraction,
                allow_upsampling=var.allow_upsampling, what=f"{what} variable {var.name}")
    if spec.time == "series" and per_observation:
        da = align_series(da, grid, what)
    da = da.drop_vars([c for c in da.coords if c not in da.dims])
    da.attrs = {**cf_attrs(var, spec.name), "grid_mapping": CRS_VAR}
    if var.resampling == "conservative":
        da.attrs[ATTR_MIN_VALID_FRACTION] = var.min_valid_fraction
    covered = coverage(geo, grid)
    if covered is not None:
        da.attrs[ATTR_COVERAGE] = json.dumps(covered)
    if spec.time == "climatology_monthly":
        da = place_climatology(da, grid)
        da.attrs[ATTR_TIME_PLACEMENT] = (
            "monthly climatology: each time step holds the climatology of its month of year")
        da.attrs["cell_methods"] = (
            da.attrs.get("cell_methods", "") + " time: mean within years "
            "time: mean over years").strip()
    return da


def _combine(variables: dict[str, xr.DataArray], name: str, da: xr.DataArray,
             source_name: str) -> None:
    """Step 5: add a variable; a name given again merges (``combine: first_valid``).

    The merged layer covers the union of its sources' boxes, at the coarsest pixel.
    """
    if name in variables:  # validated in the recipe: only with combine: first_valid
        first = variables[name]
        variables[name] = combine_first_valid(first, da, source_name)
        boxes = [json.loads(v.attrs[ATTR_COVERAGE]) for v in (first, da)
                 if ATTR_COVERAGE in v.attrs]
        variables[name].attrs.pop(ATTR_COVERAGE, None)
        if len(boxes) == 2:
            (a, pa), (b, pb) = ((c["bbox"], c["pixel"]) for c in boxes)
            variables[name].attrs[ATTR_COVERAGE] = json.dumps({
                "bbox": [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])],
                "pixel": None if pa is None or pb is None else [max(pa[0], pb[0]),
                                                                 max(pa[1], pb[1])]})
    else:
        variables[name] = da


def _validity_masks(variables: dict[str, xr.DataArray]) -> dict[str, xr.DataArray]:
    """Step 6 (observed time axes): ``NAME_valid`` of every time-varying variable.

    On an axis of observations each channel is missing where it was not observed.
    """
    masks = {}
    for name in [n for n, v in variables.items() if TIME_DIM in v.dims]:
        mask = validity_mask(variables[name].rename(name))
        mask.attrs["grid_mapping"] = CRS_VAR
        masks[f"{name}_valid"] = mask
    return masks


def _derive(derived: list[DerivedSpec], variables: dict[str, xr.DataArray],
            grid: Grid) -> dict[str, xr.DataArray]:
    """Step 7: the derived layers, in order (each may use the ones before it)."""
    out = dict(variables)
    for d in derived:
        layer = FUNCTIONS[d.function]([out[n] for n in d.inputs], grid, **d.params)
        layer.attrs = {"long_name": d.long_name or d.name.replace("_", " "), "units": d.units,
                       **({"standard_name": d.standard_name} if d.standard_name else {}),
                       **({"comment": d.comment} if d.comment else {}),
                       ATTR_DERIVED: f"{d.function}({', '.join(d.inputs)})",
                       "grid_mapping": CRS_VAR,
                       # a categorical layer (classify) keeps its CF flags, a
                       # climatology its cell_methods
                       **{k: layer.attrs[k] for k in ("flag_values", "flag_meanings",
                                                      "cell_methods") if k in layer.attrs}}
        out[d.name] = layer.astype("float32")
    return out


def _attach_conventions(variables: dict[str, xr.DataArray], recipe: Recipe, grid: Grid,
                        provenance: list[dict[str, Any]]) -> xr.Dataset:
    """Step 8: the dataset with grid coordinates, CF grid mapping, ACDD and provenance."""
    coords = grid.coords()
    ds = xr.Dataset(variables, coords={k: v for k, v in coords.items() if k != TIME_BNDS})
    if TIME_BNDS in coords:
        ds[TIME_BNDS] = coords[TIME_BNDS]
        ds = ds.set_coords(TIME_BNDS)
    ds[CRS_VAR] = xr.DataArray(0, attrs=grid.crs_attrs())
    ds = ds.set_coords(CRS_VAR)
    versions = _versions()
    ds.attrs = {
        "Conventions": CONVENTIONS,
        "title": recipe.title,
        "summary": recipe.summary,
        "license": recipe.license,
        "source": "; ".join(sorted({p.get("product") or p.get("file") or p["files"]
                                    for p in provenance})),
        "history": f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} built by esdc "
                   f"{versions.get('esdc', '?')} from recipe {recipe.name}",
        "date_created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        ATTR_RECIPE: recipe.to_yaml(),
        ATTR_RECIPE_SHA256: recipe.sha256(),
        ATTR_SOURCES: json.dumps(provenance),
        ATTR_VERSIONS: json.dumps(versions),
        ATTR_GRID: json.dumps(grid.to_dict()),
        ATTR_BODY: grid.body,
    }
    if grid.is_geographic:
        ds.attrs.update(acdd_bounds(*grid.bbox))
    if TIME_BNDS in ds:
        # ACDD time coverage: from the first cell's start to the last cell's end.
        bnds = ds[TIME_BNDS].values
        ds.attrs.update(acdd_time_coverage(str(np.datetime_as_string(bnds[0, 0], "s")),
                                           str(np.datetime_as_string(bnds[-1, 1], "s"))))
    return ds


def plan(recipe: Recipe, base_dir: Path | None = None, *,
         fetched: Mapping[str, FetchedSource] | None = None,
         report: Callable[[str], None] | None = None) -> xr.Dataset:
    """Build the lazy cube of a recipe: nothing is computed.

    Parameters
    ----------
    recipe : Recipe
        A validated recipe.
    base_dir : pathlib.Path, optional
        Folder relative source paths are taken from.
    fetched : mapping of str to FetchedSource, optional
        The granules of ``files:`` sources (:func:`fetch_sources`); fetched now when
        omitted.
    report : callable, optional
        Called with one-line notes: a source that covers only part of the grid's box (or
        misses it while other sources fill its layers), with both extents.

    Returns
    -------
    xarray.Dataset
        Dims ``(time, lat, lon)`` (or ``y, x``); time-varying variables
        ``(time, lat, lon)``, static ones ``(lat, lon)``; CF and provenance attributes.

    Raises
    ------
    SourceNotFoundError, ChecksumError, SourceError
        For a missing, altered or unreadable source or variable, or a source on another
        body than the grid's.
    RegridError
        If the grid's bounding box lies outside every source, or outside every source of
        a layer (the message gives the source's extent and the grid's).
    """
    if fetched is None:
        fetched = fetch_sources(recipe, base_dir)
    opened = _open_sources(recipe, base_dir, fetched)
    grid = _grid(recipe, opened)
    _check_bodies(opened, grid, report or (lambda _msg: None))
    variables: dict[str, xr.DataArray] = {}
    for spec, geo in opened:
        for var in spec.variables:
            _combine(variables, var.name, _harmonize(spec, var, geo, grid), spec.name)
    if isinstance(recipe.grid.time, ObservedTimeSpec):
        variables.update(_validity_masks(variables))
    variables = _derive(recipe.derived, variables, grid)
    provenance = [_files_provenance(spec, fetched[spec.name]) if spec.name in fetched
                  else _source_provenance(spec, geo)
                  for spec, geo in {s.name: (s, g) for s, g in opened}.values()]
    return _attach_conventions(variables, recipe, grid, provenance)


def build(
    recipe: Recipe,
    out: str | os.PathLike[str] | Target | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    append: bool = False,
    client: Any = None,
    base_dir: Path | None = None,
    fetch: bool = True,
    on_region: Callable[[int, int], None] | None = None,
    report: Callable[[str], None] | None = None,
    storage_options: dict[str, Any] | None = None,
    store: str | None = None,
    mirrors: Mapping[str, str] | None = None,
    progress: bool | Callable[[int, int, int], None] = False,
) -> Path | str:
    """Build a recipe's cube and store it: check, fetch samples, plan, is-current, write.

    Nothing is computed before the target is checked and every input is opened (the
    plan is lazy); a cube that is complete and current is left as it is without
    starting a cluster.

    Parameters
    ----------
    recipe : Recipe
        A validated recipe.
    out : str, path-like or Target, optional
        Where to store the cube: a folder, a URL such as ``s3://bucket/cube.zarr``, or a
        storage target (:func:`esdc.storage.resolve`); :func:`default_output` when
        omitted.
    overwrite : bool
        Replace an existing cube at ``out`` (atomically, when the new one is done).
    resume : bool
        Continue an interrupted build of the same inputs (its journaled regions are
        kept); do nothing when the cube is complete and up to date.
    append : bool
        Add the recipe's new time steps to the existing cube; its old chunks are kept.
    client : distributed.Client or callable, optional
        The Dask cluster to compute on, or a function returning a context manager that
        yields one (called only when there is something to write). The current Dask
        scheduler when omitted.
    base_dir : pathlib.Path, optional
        Folder relative source paths are taken from.
    fetch : bool
        Fetch the recipe's registered samples that are not in the cache first.
    on_region : callable, optional
        Progress callback ``on_region(done, total)``: once before the first region (the
        total known from the start; ``done`` > 0 when resuming), then after each region.
    report : callable, optional
        Called with one-line messages (up to date, resumed, appending, uploading, ...).
    storage_options : dict, optional
        fsspec options of a URL ``out`` (:func:`esdc.storage.storage_options`).
    store : str, optional
        ``"zarr"`` or ``"icechunk"`` (a versioned repository: each build or append is one
        commit on its ``main`` branch); the recipe's ``output.store`` when omitted.
    mirrors : mapping of str to str, optional
        URL prefix -> replacement for the granules of ``files:`` sources (a mirror, or
        a local test server); the recipe and its SHA-256 are unchanged.
    progress : bool or callable
        A progress bar of the granules fetched, or a callback ``(done, total, bytes)``.

    Returns
    -------
    pathlib.Path or str
        The cube's path or URL.

    Raises
    ------
    CubeExistsError, OutputPathError, BuildConflictError, StorageError
        When the cube cannot be written at ``out`` with these options; nothing at ``out``
        is changed then.
    EsdcError
        Any subclass, for bad input (recipe, sources, grid).
    """
    say = report or (lambda _msg: None)
    target = resolve(out if out is not None else default_output(recipe), storage_options,
                     store=store or recipe.output.store)
    target.check(overwrite=overwrite, resume=resume, append=append)
    if fetch:
        names = [s.sample for s in recipe.sources if s.sample in SAMPLES]
        if names:
            fetch_samples(names)
    # the fetch phase: granules of files: sources into the cache (verified ones are kept)
    fetched = fetch_sources(recipe, base_dir, mirrors=mirrors, progress=progress)
    # lazy: every input error surfaces here; the sources' coverage notes are said only
    # when something is built (an up-to-date cube answers in one line)
    notes: list[str] = []
    ds = plan(recipe, base_dir, fetched=fetched, report=notes.append)
    table = granule_table(fetched)
    chunks, compressor = dict(recipe.output.chunks), recipe.output.compressor
    shards = dict(recipe.output.shards) or None
    if (resume or append) and target.is_current(ds, chunks=chunks, compressor=compressor,
                                                shards=shards):
        say(f"{target} is up to date")
        return target.location
    for note in notes:
        say(note)
    # a Client is used as it is; a factory starts a cluster only now that one is needed
    starting = (client() if callable(client) and not hasattr(client, "submit")
                else contextlib.nullcontext(client))
    with starting as computing:
        return target.write(ds, chunks=chunks, compressor=compressor, shards=shards,
                            overwrite=overwrite,
                            resume=resume, append=append, client=computing,
                            on_region=on_region, report=report,
                            tables={GRANULE_TABLE: table} if table is not None else None)
