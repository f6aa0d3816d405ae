"""ML commands: train, embed, serve-model."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Annotated

import typer

from esdc.cli._common import Version, app, cube_target, out, user_errors
from esdc.cluster import dask_client
from esdc.embed import embed_cube, load_encoder
from esdc.errors import EsdcError
from esdc.ml.config import load_train_config
from esdc.ml.serving import serve_command, serve_env
from esdc.ml.tracking import default_tracking_uri
from esdc.ml.train import check_fits, submit


@app.command()
@user_errors
def train(
    cube: Annotated[Path, typer.Argument(help="Cube (Zarr store) to learn from.")],
    config: Annotated[Path, typer.Option("--config", help="Training config YAML.")],
    scheduler: Annotated[str | None, typer.Option(help="Address of a running Dask "
                                                  "scheduler; default: a LocalCluster.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: "
                                                     "sqlite:///mlruns.db here).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    version: Version = None,
) -> None:
    """Train a model on a cube on a Dask worker; track it in MLflow."""
    cfg = load_train_config(config)
    cube_target(cube, None, version).require()
    check_fits(str(cube.resolve()), cfg, version)  # here, not on a worker (before a cluster)
    with dask_client(scheduler) as client:
        if not as_json:
            out.print(f"Dask dashboard: {client.dashboard_link}", highlight=False)
        result = submit(client, str(cube.resolve()), cfg, tracking_uri,
                        version=version).result()
    if as_json:
        print(json.dumps(result))
        return
    out.print(f"run {result['run_id']} on {result['device']}: test {result['metric']} "
              f"{result['test']:.4f} (baseline {result['baseline']:.4f}); model "
              f"{result['model_path']}", highlight=False)
    if result.get("best_params") is not None:
        out.print(f"search: best {result['best_params']} with spatial-CV "
                  f"{result['cv_scoring']} {result['cv_score']:.4f}", highlight=False)


@app.command()
@user_errors
def embed(
    cube: Annotated[Path, typer.Argument(help="Cube (Zarr store); embeddings are written "
                                         "back into it.")],
    model: Annotated[str, typer.Option("--model", help="MLflow run id of a trained encoder "
                                       "(esdc train with task: embedding).")],
    tile: Annotated[list[int] | None, typer.Option("--tile", help="Tile size in cells; "
                                                   "repeat for several (default 8 and 16).")]
    = None,
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address; default: "
                                                  "a LocalCluster.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
) -> None:
    """Embed every tile of a cube with a trained encoder; write the vectors into the cube."""
    cube_target(cube).require()
    tiles = sorted(set(tile or [8, 16]))
    if any(t < 1 for t in tiles):
        raise EsdcError(f"--tile {tiles}: tile sizes must be positive.")
    bundle = load_encoder(model, tracking_uri)
    with dask_client(scheduler) as client:
        out.print(f"Dask dashboard: {client.dashboard_link}", highlight=False)
        names = embed_cube(str(cube.resolve()), bundle, tiles, client)
    out.print(f"wrote {', '.join(names)} into {cube}", highlight=False)


@app.command("serve-model")
@user_errors
def serve_model(
    name: Annotated[str, typer.Argument(help="Registered model name (MLflow registry).")],
    version: Annotated[str, typer.Option(help="Model version or 'latest'.")] = "latest",
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5001,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: "
                                                     "sqlite:///mlruns.db here).")] = None,
) -> None:
    """Serve a registered model over HTTP (POST /invocations) with MLflow's model server."""
    env = serve_env(tracking_uri or default_tracking_uri())
    cmd = serve_command(f"models:/{name}/{version}", port, host)
    out.print(f"serving models:/{name}/{version} on http://{host}:{port}/invocations",
              highlight=False)
    raise typer.Exit(subprocess.call(cmd, env=env))
