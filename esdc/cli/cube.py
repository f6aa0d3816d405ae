"""Cube commands: build, info, verify, plot."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
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
from esdc.conventions import ATTR_GRID, ATTR_RECIPE_SHA256, ATTR_SOURCES, json_attr
from esdc.plot import quicklook
from esdc.recipe import load_recipe
from esdc.storage import resolve
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
            out.print(f"Dask dashboard: {client.dashboard_link}", highlight=False)
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
                      report=lambda msg: out.print(msg, highlight=False, soft_wrap=True))
    if progress:  # else the cube was up to date: nothing was built
        out.print(f"{'appended to' if append else 'built'} {path}", highlight=False,
                  soft_wrap=True)


@app.command()
@user_errors
def info(cube: Annotated[str, typer.Argument(help="Cube (Zarr store: path or URL).")],
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
         storage_option: StorageOptions = None, version: Version = None) -> None:
    """Describe a cube: grid, variables, provenance."""
    ds = cube_target(cube, storage_option, version).open()
    sources = json_attr(ds.attrs, ATTR_SOURCES, [])
    desc = {
        "path": str(cube),
        "title": ds.attrs.get("title"),
        "dims": {str(k): int(v) for k, v in ds.sizes.items()},
        "variables": {str(k): {"dims": list(map(str, v.dims)), "dtype": str(v.dtype),
                               "units": v.attrs.get("units"),
                               "long_name": v.attrs.get("long_name")}
                      for k, v in ds.data_vars.items()},
        "grid": json_attr(ds.attrs, ATTR_GRID),
        "recipe_sha256": ds.attrs.get(ATTR_RECIPE_SHA256),
        "sources": [{k: s.get(k) for k in ("source", "product", "mission", "instrument",
                                           "licence", "sha256")} for s in sources],
        "created": ds.attrs.get("date_created"),
    }
    if as_json:
        print(json.dumps(desc, indent=2, default=str))
        return
    out.print(f"[bold]{desc['path']}[/]: {desc['title']}", highlight=False)
    out.print("dims: " + ", ".join(f"{k}={v}" for k, v in desc["dims"].items()))
    for k, v in desc["variables"].items():
        out.print(f"  {k:<18} {tuple(v['dims'])!s:<22} {v['dtype']:<8} [{v['units']}] "
                  f"{v['long_name'] or ''}", highlight=False, markup=False)
    out.print("sources:")
    for s in desc["sources"]:
        out.print(f"  {s['source']}: {s['product']} ({s['mission']}, {s['instrument']}); "
                  f"licence {s['licence']}", highlight=False, markup=False)


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
                  f"{', '.join(report.uncovered)}", highlight=False, soft_wrap=True)
    for p in problems:
        out.print(f"- {p}", highlight=False, markup=False, soft_wrap=True)
    if problems:
        out.print(f"{cube}: {len(problems)} problem(s)", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    note = f" ({checked} chunk checksums match)" if checked is not None else ""
    out.print(f"{cube}: OK{note}", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def plot(
    cube: Annotated[str, typer.Argument(help="Cube (Zarr store: path or URL).")],
    variable: Annotated[str, typer.Argument(help="Variable to map, or 'rgb'.")],
    time: Annotated[str | None, typer.Option(help="Time step (nearest), default first.")]
    = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="PNG path (default "
                                                  "VARIABLE.png).")] = None,
    storage_option: StorageOptions = None,
    version: Version = None,
) -> None:
    """Draw a map of a cube variable (categorical classes get a legend)."""
    path = quicklook(cube_target(cube, storage_option, version).open(), variable,
                     png_target(out_path or Path(f"{variable}.png"), "--out"), time)
    out.print(f"wrote {path}", highlight=False)
