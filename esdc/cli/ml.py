"""ML commands: train, embed, serve-model, evaluate-fill (the swath gap filler)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Annotated

import typer

from esdc.cli._common import StorageOptions, Version, app, cube_target, err, out, user_errors
from esdc.cluster import dask_client
from esdc.embed import embed_cube, embedded_model_run, load_encoder
from esdc.errors import EsdcError
from esdc.gapfill import METHODS
from esdc.gapfill.evaluate import evaluate_variable
from esdc.ml.config import load_train_config
from esdc.ml.datareport import report_lines
from esdc.ml.serving import serve_command, serve_env
from esdc.ml.tensorboard import tensorboard_dir
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
    tensorboard: Annotated[Path | None, typer.Option(
        help="Also write the run's TensorBoard files (scalars, model graph) to DIR/<run id>; "
             "they are always in the MLflow run's tensorboard/ artifacts.")] = None,
) -> None:
    """Train a model on a cube on a Dask worker; track it in MLflow."""
    cfg = load_train_config(config)
    cube_target(cube, None, version).require()
    board = str(tensorboard.absolute()) if tensorboard is not None else None
    check_fits(str(cube.resolve()), cfg, version, board)  # here, not on a worker
    with dask_client(scheduler) as client:
        if not as_json:
            out.print(f"Dask dashboard: {client.dashboard_link}", highlight=False)
        result = submit(client, str(cube.resolve()), cfg, tracking_uri,
                        version=version, tensorboard=board).result()
    if as_json:
        print(json.dumps(result))
        return
    out.print(f"run {result['run_id']} on {result['device']}: test {result['metric']} "
              f"{result['test']:.4f} (baseline {result['baseline']:.4f}); model "
              f"{result['model_path']}", highlight=False)
    if result.get("best_params") is not None:
        out.print(f"search: best {result['best_params']} with spatial-CV "
                  f"{result['cv_scoring']} {result['cv_score']:.4f}", highlight=False)
    data = result.get("data") or {}
    for line in report_lines(data):
        out.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
    for text in data.get("warnings", []):
        err.print(f"warning: {text}", highlight=False, markup=False, soft_wrap=True)


@app.command()
@user_errors
def embed(
    cube: Annotated[Path, typer.Argument(help="Cube (Zarr store); embeddings are written "
                                         "back into it.")],
    model: Annotated[str | None, typer.Option("--model", help="MLflow run id of a trained "
                                              "encoder (esdc train with task: embedding); "
                                              "with --append: default the run that made "
                                              "the cube's embeddings.")] = None,
    tile: Annotated[list[int] | None, typer.Option("--tile", help="Tile size in cells; "
                                                   "repeat for several (default 8, 16 and "
                                                   "32; with --append: those embedded).")]
    = None,
    scales: Annotated[str | None, typer.Option(
        "--scales", metavar="8,16,32", help="Tile sizes (scales of multi-scale search) as "
        "a comma list, like --tile; each tile is area-averaged to the encoder's input "
        "size (the finest scale) so that one encoder embeds every scale.")] = None,
    append: Annotated[bool, typer.Option("--append", help="Embed only the time steps the "
                                         "cube gained since it was embedded (after esdc "
                                         "update / build --append); stored vectors are "
                                         "kept.")] = False,
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address; default: "
                                                  "a LocalCluster.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    tensorboard: Annotated[Path | None, typer.Option(
        help="Also write the TensorBoard embedding projector to DIR/embed-<run id>; it is "
             "always added to the encoder run's tensorboard/embed artifacts (not with "
             "--append).")] = None,
) -> None:
    """Embed every tile of a cube with a trained encoder; write the vectors into the cube."""
    cube_target(cube).require()
    try:
        given = [*(tile or []), *(int(s) for s in (scales or "").split(",") if s.strip())]
    except ValueError:
        raise EsdcError(f"--scales {scales}: give tile sizes in cells, e.g. 8,16,32.") \
            from None
    tiles = sorted(set(given)) if given else None
    if tiles and any(t < 1 for t in tiles):
        raise EsdcError(f"--tile {tiles}: tile sizes must be positive.")
    if model is None and not append:
        raise EsdcError("give the encoder: --model RUN (an MLflow run of esdc train with "
                        "task: embedding).")
    board = tensorboard_dir(tensorboard) if tensorboard is not None else None
    path = str(cube.resolve())
    bundle = load_encoder(model or embedded_model_run(path, tiles), tracking_uri)
    with dask_client(scheduler) as client:
        out.print(f"Dask dashboard: {client.dashboard_link}", highlight=False)
        names = embed_cube(path, bundle, tiles, client, append=append, projector=True,
                           tensorboard=board, tracking_uri=tracking_uri,
                           report=lambda msg: out.print(msg, highlight=False))
    if names or not append:
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


@app.command("evaluate-fill")
@user_errors
def evaluate_fill(
    cube: Annotated[str, typer.Argument(help="Cube (Zarr store: path or URL).")],
    variable: Annotated[str, typer.Argument(help="Layer whose observed cells are hidden and "
                                            "filled again.")],
    method: Annotated[list[str] | None, typer.Option(
        "--method", help=f"Method to score; repeatable (default all: {', '.join(METHODS)}).")]
    = None,
    domain: Annotated[str | None, typer.Option(help="Layer marking the domain (e.g. "
                                               "land_sea_mask); default: the cells observed "
                                               "at least once.")] = None,
    domain_value: Annotated[list[float] | None, typer.Option(
        "--domain-value", help="Value of the --domain layer inside the domain (e.g. 0 for "
        "the ocean); repeatable; default: where it holds a value.")] = None,
    fraction: Annotated[float, typer.Option(help="Share of the domain under stripes in "
                                            "each striped step.")] = 0.3,
    period: Annotated[float, typer.Option(help="Stripe period in cells.")] = 64.0,
    seed: Annotated[int, typer.Option(help="Seed of the stripes' offsets.")] = 0,
    static: Annotated[bool, typer.Option("--static", help="Evaluate a layer without time "
                                         "(one striped field; spatial methods).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    storage_option: StorageOptions = None,
    version: Version = None,
) -> None:
    """Hide observed cells under moving swath stripes, fill them, score RMSE vs nearest."""
    ev = evaluate_variable(cube_target(cube, storage_option, version).open(), variable,
                           method, domain, domain_value, fraction=fraction, period=period,
                           seed=seed, static=static)
    if as_json:
        print(json.dumps(ev.to_dict(), indent=2))
        return
    out.print(f"{cube} {ev.variable}: {ev.hidden} observed cells hidden ({ev.hidden_share:.0%} "
              f"of the domain) in {len(ev.steps)} step(s)", highlight=False, soft_wrap=True)
    out.print(f"{'method':<20} {'RMSE':>10} {'bias':>10} {'filled':>7} {'vs nearest':>11}  "
              f"[{ev.units}]", highlight=False, markup=False)
    for s in ev.scores:
        gain = "baseline" if s.method == "nearest" else (
            "" if s.note or s.gain != s.gain else f"{-s.gain:+.1%}")
        out.print(f"{s.method:<20} {s.rmse:>10.4g} {s.bias:>+10.3g} {s.filled:>7.1%} "
                  f"{gain or s.note:>11}", highlight=False, markup=False)
    out.print(f"best: {ev.best().method}", highlight=False)
