"""Version commands of a versioned (Icechunk) cube: log, tag."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from esdc.cli._common import StorageOptions, Version, app, cube_target, out, user_errors


@app.command()
@user_errors
def log(cube: Annotated[str, typer.Argument(help="Cube (Icechunk repository or Zarr store).")],
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON: a list of "
                                              "{id, time, message, tags}.")] = False,
        storage_option: StorageOptions = None) -> None:
    """List a cube's versions, newest first (a plain Zarr cube has one)."""
    versions = cube_target(cube, storage_option).log()
    if as_json:
        print(json.dumps([{k: v[k] for k in ("id", "time", "message", "tags")}
                          for v in versions], indent=2))
        return
    for v in versions:
        tags = f" [{', '.join(v['tags'])}]" if v["tags"] else ""
        out.print(f"{v['id']}  {v['time']}{tags}  {v['message']}", highlight=False,
                  markup=False, soft_wrap=True)


@app.command()
@user_errors
def tag(cube: Annotated[str, typer.Argument(help="Cube (Icechunk repository).")],
        name: Annotated[str, typer.Argument(help="Name of the tag (tags never move).")],
        version: Version = None, storage_option: StorageOptions = None) -> None:
    """Tag a version of a versioned cube (default: the newest)."""
    snap = cube_target(cube, storage_option).tag(name, version)
    out.print(f"tagged {snap} as {name}", highlight=False)
