"""Cube commands: build, info, verify, plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from esdc.cli._common import StorageOptions, app, err, out, png_target, user_errors
from esdc.cluster import dask_client
from esdc.errors import EsdcError


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
) -> None:
    """Build the cube a RECIPE describes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from esdc.build import default_output, plan
    from esdc.recipe import load_recipe
    from esdc.remote import is_url, storage_options
    from esdc.samples import SAMPLES
    from esdc.samples import fetch as fetch_samples
    from esdc.store import check_target, cube_is_current, write_cube

    r = load_recipe(recipe)
    target = (out_path if is_url(out_path) else Path(out_path)) if out_path else default_output(r)
    so = storage_options(storage_option) if is_url(target) else None
    if append and overwrite:
        raise EsdcError("--append grows the existing cube; it does not go with --overwrite.")
    check_target(target, overwrite or resume or append, storage_options=so)
    if fetch:
        names = [s.sample for s in r.sources if s.sample in SAMPLES]
        if names:
            fetch_samples(names)
    ds = plan(r, base_dir=recipe.resolve().parent)  # lazy: all input errors surface here
    if (resume or append) and cube_is_current(ds, target, chunks=dict(r.output.chunks),
                                              compressor=r.output.compressor,
                                              storage_options=so):
        out.print(f"{target} is up to date", highlight=False, soft_wrap=True)
        return
    with dask_client(scheduler) as client:
        out.print(f"Dask dashboard: {client.dashboard_link}", highlight=False)
        with Progress("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                      disable=not err.is_terminal) as bar:
            task = bar.add_task(f"building {str(target).rstrip('/').rsplit('/', 1)[-1]}",
                                total=None)

            def on_region(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            path = write_cube(ds, target, chunks=dict(r.output.chunks),
                              compressor=r.output.compressor, overwrite=overwrite,
                              client=client, on_region=on_region, resume=resume,
                              append=append, storage_options=so,
                              report=lambda msg: out.print(msg, highlight=False,
                                                           soft_wrap=True))
    out.print(f"{'appended to' if append else 'built'} {path}", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def info(cube: Annotated[str, typer.Argument(help="Cube (Zarr store: path or URL).")],
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
         storage_option: StorageOptions = None) -> None:
    """Describe a cube: grid, variables, provenance."""
    from esdc.remote import is_url, storage_options
    from esdc.store import open_cube

    ds = open_cube(cube, storage_options=storage_options(storage_option) if is_url(cube)
                   else None)
    sources = json.loads(ds.attrs.get("esdc_sources", "[]"))
    desc = {
        "path": str(cube),
        "title": ds.attrs.get("title"),
        "dims": {str(k): int(v) for k, v in ds.sizes.items()},
        "variables": {str(k): {"dims": list(map(str, v.dims)), "dtype": str(v.dtype),
                               "units": v.attrs.get("units"),
                               "long_name": v.attrs.get("long_name")}
                      for k, v in ds.data_vars.items()},
        "grid": json.loads(ds.attrs.get("esdc_grid", "null")),
        "recipe_sha256": ds.attrs.get("esdc_recipe_sha256"),
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
) -> None:
    """List every convention problem of a cube; exit 1 if there is any."""
    from esdc.integrity import check_checksums
    from esdc.remote import is_url, require_cube, storage_options
    from esdc.verify import verify_store

    so = storage_options(storage_option) if is_url(cube) else None
    if so is not None:
        require_cube(cube, so)
    elif not Path(cube).exists():
        raise EsdcError(f"no cube at {cube}.")
    problems = verify_store(cube, storage_options=so)
    checked = None
    if checksums:
        report = check_checksums(cube, storage_options=so)
        problems += report.problems
        checked = report.checked
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
) -> None:
    """Draw a map of a cube variable (categorical classes get a legend)."""
    from esdc.plot import quicklook
    from esdc.remote import is_url, storage_options
    from esdc.store import open_cube

    so = storage_options(storage_option) if is_url(cube) else None
    path = quicklook(open_cube(cube, storage_options=so), variable,
                     png_target(out_path or Path(f"{variable}.png"), "--out"), time)
    out.print(f"wrote {path}", highlight=False)
