"""Cube commands: build, info, verify, plot, export, point."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from esdc.build import build as build_cube
from esdc.build import default_output
from esdc.cli._common import (
    StorageOptions,
    Version,
    app,
    cube_target,
    err,
    out,
    png_target,
    user_errors,
)
from esdc.cluster import dask_client
from esdc.conventions import (
    ATTR_GRID,
    ATTR_RECIPE_SHA256,
    ATTR_SOURCES,
    GRANULE_TABLE,
    SOURCE_PROVENANCE_KEYS,
    json_attr,
)
from esdc.errors import EsdcError
from esdc.export import export as export_cube
from esdc.export import point_csv, point_record
from esdc.plot import quicklook
from esdc.recipe import load_recipe
from esdc.sources.granules import parse_mirrors
from esdc.storage import resolve
from esdc.storage.tables import granule_summary, read_table, table_rows
from esdc.verify import store_report


@app.command()
@user_errors
def build(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    out_path: Annotated[str | None, typer.Option("--out", help="Cube path or URL "
                                                 "(s3://bucket/cube.zarr); default from the "
                                                 "recipe, else cubes/NAME.zarr.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing cube.")] = False,
    scheduler: Annotated[str | None, typer.Option(help="Address of a running Dask "
                                                  "scheduler; default: a LocalCluster.")] = None,
    fetch: Annotated[bool, typer.Option(help="Fetch missing registered samples first.")] = True,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted build of "
                                         "the same recipe (its journaled regions are kept); "
                                         "do nothing if the cube is complete and up to "
                                         "date.")] = False,
    append: Annotated[bool, typer.Option("--append", help="Add the recipe's new time steps "
                                         "to the existing cube; its old chunks are kept as "
                                         "they are.")] = False,
    storage_option: StorageOptions = None,
    store: Annotated[str | None, typer.Option(help="zarr (a Zarr v3 store) or icechunk (a "
                                              "versioned repository: each build or append "
                                              "is one commit, `esdc log` lists them); "
                                              "default: the recipe's output.store.")] = None,
    mirror: Annotated[list[str] | None, typer.Option(
        help="PREFIX=REPLACEMENT: fetch granule URLs starting with PREFIX from REPLACEMENT "
             "instead (a mirror or a local server; repeatable). The recipe is unchanged; "
             "the cube's granule table records the URLs fetched.")] = None,
) -> None:
    """Build the cube a RECIPE describes."""
    r = load_recipe(recipe)
    target = resolve(out_path or default_output(r), pairs=list(storage_option or []),
                     store=store or r.output.store)
    progress: list[Callable[[int, int], None]] = []  # set once the cluster is up

    @contextlib.contextmanager
    def cluster() -> Iterator[Any]:
        """The Dask client and the progress bar: started only when there is work."""
        with dask_client(scheduler) as client:
            out.print(f"Dask dashboard: {client.dashboard_link}", highlight=False,
                      markup=False)
            with Progress("[progress.description]{task.description}", BarColumn(),
                          MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                          disable=not err.is_terminal) as bar:
                name = str(target).rstrip("/").rsplit("/", 1)[-1]
                task = bar.add_task(f"building {name}", total=None)
                progress.append(lambda done, total: bar.update(task, completed=done,
                                                               total=total))
                yield client

    path = build_cube(r, target, overwrite=overwrite, resume=resume, append=append,
                      client=cluster, base_dir=recipe.resolve().parent, fetch=fetch,
                      on_region=lambda done, total: progress[-1](done, total),
                      report=lambda msg: out.print(msg, highlight=False, soft_wrap=True,
                                                   markup=False),
                      mirrors=parse_mirrors(mirror), progress=err.is_terminal)
    if progress:  # else the cube was up to date: nothing was built
        out.print(f"{'appended to' if append else 'built'} {path}", highlight=False,
                  soft_wrap=True, markup=False)


@app.command()
@user_errors
def update(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    out_path: Annotated[str | None, typer.Option("--out", help="The cube to grow (path or "
                                                 "URL); default from the recipe.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Address of a running Dask "
                                                  "scheduler; default: a LocalCluster.")] = None,
    storage_option: StorageOptions = None,
    mirror: Annotated[list[str] | None, typer.Option(
        help="PREFIX=REPLACEMENT, as for `esdc build`.")] = None,
) -> None:
    """Grow a cube with its archive: `esdc build RECIPE --append` (new granules only)."""
    build(recipe, out_path=out_path, scheduler=scheduler, append=True,
          storage_option=storage_option, mirror=mirror)


def _ints(shape: Any) -> list[int] | None:
    """A stored chunk or shard shape as a JSON list (None: not stored so)."""
    return [int(n) for n in shape] if shape else None


def _source_lines(s: dict[str, Any]) -> list[str]:
    """``esdc info``'s lines of one source: what it is, where it comes from, how to cite it."""
    where = (f"{s['files']} ({s['granules']} granules)" if "files" in s
             else s.get("file") or "")
    if not any(s.get(k) for k in SOURCE_PROVENANCE_KEYS):
        return [f"  {s['source']}: {where}", "      no provenance declared (give the source a "
                "`provenance:` block in the recipe: product, mission, instrument, licence, "
                "citation, doi, url)"]
    made = ", ".join(str(s[k]) for k in ("mission", "instrument") if s.get(k))
    what = " ".join(x for x in (s.get("product") or where, f"({made})" if made else "") if x)
    lines = [f"  {s['source']}: {what}; licence {s.get('licence') or 'not recorded'}"]
    if "files" in s:
        lines.append(f"      {where}")
    lines += [f"      {label} {s[k]}" for k, label in (("doi", "doi:"), ("url", "url:"),
                                                       ("citation", "cite:")) if s.get(k)]
    return lines


@app.command()
@user_errors
def info(cube: Annotated[str, typer.Argument(help="Cube (Zarr store: path or URL).")],
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
         storage_option: StorageOptions = None, version: Version = None) -> None:
    """Describe a cube: grid, variables, provenance."""
    target = cube_target(cube, storage_option, version)
    ds = target.open()
    sources = json_attr(ds.attrs, ATTR_SOURCES, [])
    table = read_table(target)
    desc = {
        "path": str(cube),
        "title": ds.attrs.get("title"),
        "dims": {str(k): int(v) for k, v in ds.sizes.items()},
        "variables": {str(k): {"dims": list(map(str, v.dims)), "dtype": str(v.dtype),
                               "units": v.attrs.get("units"),
                               "long_name": v.attrs.get("long_name"),
                               "chunks": _ints(v.encoding.get("chunks")),
                               "shards": _ints(v.encoding.get("shards"))}
                      for k, v in ds.data_vars.items()},
        "grid": json_attr(ds.attrs, ATTR_GRID),
        "recipe_sha256": ds.attrs.get(ATTR_RECIPE_SHA256),
        "sources": [{k: s.get(k) for k in ("source", *SOURCE_PROVENANCE_KEYS, "file", "sha256",
                                           "files", "granules")
                     if k in s or k not in ("file", "files", "granules")} for s in sources],
        "created": ds.attrs.get("date_created"),
    }
    if table is not None:
        desc["granules"] = table_rows(table)
    if as_json:
        print(json.dumps(desc, indent=2, default=str))
        return
    out.print(f"[bold]{escape(desc['path'])}[/]: {escape(str(desc['title']))}",
              highlight=False)
    out.print("dims: " + ", ".join(f"{k}={v}" for k, v in desc["dims"].items()),
              markup=False)
    for k, v in desc["variables"].items():
        out.print(f"  {k:<18} {tuple(v['dims'])!s:<22} {v['dtype']:<8} [{v['units']}] "
                  f"{v['long_name'] or ''}", highlight=False, markup=False)
        if v["chunks"]:
            shards = f" in shards {tuple(v['shards'])}" if v["shards"] else ""
            out.print(f"  {'':<18} chunks {tuple(v['chunks'])}{shards}", highlight=False,
                      markup=False)
    out.print("sources:")
    for s in desc["sources"]:
        for line in _source_lines(s):
            out.print(line, highlight=False, markup=False, soft_wrap=True)
    if table is not None:
        out.print(f"granules ({GRANULE_TABLE}): {granule_summary(table)}", highlight=False,
                  markup=False)


@app.command()
@user_errors
def verify(
    cube: Annotated[str, typer.Argument(help="Cube (Zarr store: path or URL).")],
    checksums: Annotated[bool, typer.Option("--checksums", help="Also recompute every chunk "
                                            "file's SHA-256 and compare it with the one "
                                            "recorded at build time.")] = False,
    storage_option: StorageOptions = None,
    version: Version = None,
) -> None:
    """List every convention problem of a cube; exit 1 if there is any."""
    target = cube_target(cube, storage_option, version)
    target.require()
    report = store_report(target, checksums=checksums)
    problems, checked = report.problems, report.checked
    if report.uncovered:
        out.print(f"not covered by the checksum record (written after the build): "
                  f"{', '.join(report.uncovered)}", highlight=False, soft_wrap=True,
                  markup=False)
    for p in problems:
        out.print(f"- {p}", highlight=False, markup=False, soft_wrap=True)
    if problems:
        out.print(f"{cube}: {len(problems)} problem(s)", highlight=False, soft_wrap=True,
                  markup=False)
        raise typer.Exit(1)
    note = f" ({checked} chunk checksums match)" if checked is not None else ""
    out.print(f"{cube}: OK{note}", highlight=False, soft_wrap=True, markup=False)


@app.command()
@user_errors
def plot(
    cube: Annotated[str, typer.Argument(help="Cube (Zarr store: path or URL).")],
    variable: Annotated[str | None, typer.Argument(
        help="Variable to map, or 'rgb' (the Blue Marble channels; see --rgb).")] = None,
    time: Annotated[str | None, typer.Option(help="Time step (nearest), default first.")]
    = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="PNG path (default "
                                                  "VARIABLE.png, or rgb.png).")] = None,
    rgb: Annotated[str | None, typer.Option(
        "--rgb", metavar="R,G,B", help="A true-colour map of these three variables (red, "
        "green, blue), e.g. --rgb bmng_red,bmng_green,bmng_blue.")] = None,
    storage_option: StorageOptions = None,
    version: Version = None,
) -> None:
    """Draw a map of a cube variable (categorical classes get a legend), or an RGB map."""
    channels = [c.strip() for c in rgb.split(",")] if rgb else None
    if variable is None and channels is None:
        raise EsdcError("give a VARIABLE to map, or three variables with --rgb R,G,B.")
    name = "rgb" if channels or variable is None else variable
    path = quicklook(cube_target(cube, storage_option, version).open(), variable,
                     png_target(out_path or Path(f"{name}.png"), "--out"), time, rgb=channels)
    out.print(f"wrote {path}", highlight=False, markup=False)


Variables = Annotated[list[str] | None, typer.Option(
    "--variables", help="Variables to take (comma-separated or repeated); default: every "
    "variable on the grid.")]


def _names(variables: list[str] | None) -> list[str] | None:
    """``--variables a,b --variables c`` as ``[a, b, c]`` (None: all)."""
    names = [n.strip() for v in variables or [] for n in v.split(",") if n.strip()]
    return names or None


@app.command()
@user_errors
def export(
    cube: Annotated[str, typer.Argument(help="Cube (Zarr store: path or URL).")],
    out_path: Annotated[Path, typer.Argument(
        metavar="OUT", help="OUT.nc: one CF NetCDF-4 file; OUT.tif: one Cloud-Optimized "
        "GeoTIFF per variable (bands = time steps; OUT_VARIABLE.tif when there are several).")],
    variables: Variables = None,
    bbox: Annotated[str | None, typer.Option(help="W,S,E,N in the grid's units (degrees on "
                                             "a lat/lon cube): cells whose centres lie "
                                             "inside.")] = None,
    time: Annotated[str | None, typer.Option(help="START/END (ISO, either end may be "
                                             "empty) or one date (its time step).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing files.")] = False,
    storage_option: StorageOptions = None,
    version: Version = None,
) -> None:
    """Write a cube, or a subset of it, to NetCDF (.nc) or GeoTIFF (.tif)."""
    paths = export_cube(cube_target(cube, storage_option, version).open(), out_path,
                        variables=_names(variables), bbox=bbox, time=time, overwrite=overwrite)
    for path in paths:
        out.print(f"wrote {path}", highlight=False, markup=False, soft_wrap=True)


@app.command(context_settings={"ignore_unknown_options": True})
@user_errors
def point(
    cube: Annotated[str, typer.Argument(help="Cube (Zarr store: path or URL).")],
    lat: Annotated[float, typer.Argument(help="Latitude (degrees north); X in arcsec on a "
                                         "helioprojective (solar) cube.")],
    lon: Annotated[float, typer.Argument(help="Longitude (degrees east); Y in arcsec on a "
                                         "helioprojective (solar) cube.")],
    variables: Variables = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV (variable, units, cell, "
                                         "time, value).")] = False,
    storage_option: StorageOptions = None,
    version: Version = None,
) -> None:
    """Every variable at the cell nearest to LAT LON (a time series or one value)."""
    if as_json and as_csv:
        raise EsdcError("give --json or --csv, not both.")
    rec = point_record(cube_target(cube, storage_option, version).open(), lat, lon,
                       _names(variables))
    if as_json:
        print(json.dumps(rec, indent=2))
        return
    if as_csv:
        print(point_csv(rec), end="")
        return
    show = lambda d: " ".join(f"{k} {v}" for k, v in d.items())  # noqa: E731
    out.print(f"{show(rec['query'])} -> nearest cell {show(rec['cell'])}", highlight=False,
              markup=False, soft_wrap=True)
    for name, v in rec["variables"].items():
        meanings = v.get("meanings") or [None] * len(v["values"])
        cells = [f"{x}" + (f" ({m})" if m else "") for x, m in zip(v["values"], meanings,
                                                                    strict=True)]
        if "time" not in v:
            out.print(f"  {name} [{v['units']}]: {cells[0]}", highlight=False, markup=False,
                      soft_wrap=True)
            continue
        out.print(f"  {name} [{v['units']}]: {len(cells)} time steps", highlight=False,
                  markup=False, soft_wrap=True)
        for when, cell in zip(v["time"], cells, strict=True):
            out.print(f"    {when}  {cell}", highlight=False, markup=False, soft_wrap=True)
