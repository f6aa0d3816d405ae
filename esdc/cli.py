"""The ``esdc`` command: build, info, verify, samples.

Exit codes: 0 success; 1 ``verify`` found problems; 2 a user error (bad recipe,
missing file, existing target, ...), reported in one paragraph without a traceback.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from esdc.cluster import dask_client
from esdc.errors import EsdcError

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Earth System Data Cubes: build, inspect and verify cubes.")
samples_app = typer.Typer(no_args_is_help=True, help="Real sample data: list and fetch.")
app.add_typer(samples_app, name="samples")

out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
# fsspec options of s3:// (any URL) cubes; see esdc.remote.storage_options.
StorageOptions = Annotated[list[str] | None, typer.Option(
    "--storage-option", metavar="KEY=VALUE",
    help="fsspec option of an s3:// (or other URL) cube, e.g. endpoint_url=http://HOST:9000 "
         "or anon=true (VALUE may be JSON); repeatable. Also: ESDC_STORAGE_OPTIONS (a JSON "
         "object) and the AWS_* variables.")]


def user_errors(fn: F) -> F:
    """Report :class:`EsdcError` as one paragraph on stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EsdcError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except Exception as exc:
            if not _from_codec(exc):
                raise
            err.print(f"[bold red]error:[/] a chunk of the cube could not be decoded "
                      f"({type(exc).__name__}: {exc}): its files are damaged. `esdc verify "
                      "CUBE --checksums` names the corrupted or missing chunks; rebuild the "
                      "cube or restore it from a copy.", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _from_codec(exc: BaseException) -> bool:
    """True if ``exc`` was raised while decoding a Zarr chunk (a damaged chunk file)."""
    import traceback

    marks = ("numcodecs", f"zarr{os.sep}codecs")
    return any(m in frame.filename for frame in traceback.extract_tb(exc.__traceback__)
               for m in marks)


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
def train(
    cube: Annotated[Path, typer.Argument(help="Cube (Zarr store) to learn from.")],
    config: Annotated[Path, typer.Option("--config", help="Training config YAML.")],
    scheduler: Annotated[str | None, typer.Option(help="Address of a running Dask "
                                                  "scheduler; default: a LocalCluster.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: "
                                                     "sqlite:///mlruns.db here).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train a model on a cube on a Dask worker; track it in MLflow."""
    from esdc.ml.config import load_train_config
    from esdc.ml.patches import PatchStream
    from esdc.ml.train import submit

    cfg = load_train_config(config)
    if not cube.exists():
        raise EsdcError(f"no cube at {cube}.")
    # Fail here, not on the worker, for missing variables or a patch larger than the grid.
    stream = PatchStream(str(cube.resolve()), cfg.inputs, patch=cfg.patch,
                         targets=[cfg.target] if cfg.target else [], normalize=False)
    if cfg.search is not None:  # more spatial folds than train blocks
        from esdc.ml.tuning import check_search_blocks

        check_search_blocks(cfg, (stream.ny, stream.nx))
    with dask_client(scheduler) as client:
        if not as_json:
            out.print(f"Dask dashboard: {client.dashboard_link}", highlight=False)
        result = submit(client, str(cube.resolve()), cfg, tracking_uri).result()
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
    from esdc.embed import embed_cube, load_encoder

    if not cube.exists():
        raise EsdcError(f"no cube at {cube}.")
    tiles = sorted(set(tile or [8, 16]))
    if any(t < 1 for t in tiles):
        raise EsdcError(f"--tile {tiles}: tile sizes must be positive.")
    bundle = load_encoder(model, tracking_uri)
    with dask_client(scheduler) as client:
        out.print(f"Dask dashboard: {client.dashboard_link}", highlight=False)
        names = embed_cube(str(cube.resolve()), bundle, tiles, client)
    out.print(f"wrote {', '.join(names)} into {cube}", highlight=False)


@app.command()
@user_errors
def index(
    cube: Annotated[Path, typer.Argument(help="Cube with embeddings.")],
    kind: Annotated[str, typer.Option(help="flat (exact), hnsw, ivfpq or auto (exact below "
                                      "200,000 vectors).")] = "auto",
    variable: Annotated[str | None, typer.Option(help="Embedding variable (default: the "
                                                 "smallest tile).")] = None,
    device: Annotated[str, typer.Option(help="auto (a GPU when FAISS sees one and the kind "
                                        "runs there: flat, ivfpq), cpu or gpu (needs "
                                        "esdc[gpu]).")] = "auto",
) -> None:
    """Build a FAISS index of a cube's embeddings, stored beside the cube."""
    from esdc.search.index import build_index, index_dir

    if not cube.exists():
        raise EsdcError(f"no cube at {cube}.")
    m = build_index(cube, variable, kind, device)
    out.print(f"indexed {m.count} tiles of {m.variable} ({m.kind}, {m.dim} dims, built on "
              f"{m.params.get('built_on', 'cpu')}) in "
              f"{index_dir(cube)}: generation {m.generation} (a running `esdc serve` "
              "swaps it in)", highlight=False)


def _bbox(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None:
        return None
    try:
        w, s, e, n = (float(v) for v in text.split(","))
    except ValueError:
        raise EsdcError(f"--bbox {text!r}: give four numbers W,S,E,N.") from None
    if not all(math.isfinite(v) for v in (w, s, e, n)):
        raise EsdcError(f"--bbox {text!r}: the numbers must be finite.")
    if s > n:
        raise EsdcError(f"--bbox {text!r}: south ({s}) is north of north ({n}).")
    return (w, s, e, n)


def _png_target(path: Path, option: str) -> Path:
    """Check before any work that ``path`` can be written: its folder exists."""
    folder = path.parent
    if not folder.is_dir():
        raise EsdcError(f"{option} {path}: the folder {folder} does not exist (or is not a "
                        "folder); create it or choose another path.")
    if path.is_dir():
        raise EsdcError(f"{option} {path} is a folder; give a file name such as map.png.")
    return path


@app.command()
@user_errors
def search(
    cube: Annotated[Path, typer.Argument(help="Cube with embeddings and an index.")],
    lat: Annotated[float, typer.Option("--lat", "--y", help="Latitude (or y) of the query "
                                       "tile.")],
    lon: Annotated[float, typer.Option("--lon", "--x", help="Longitude (or x).")],
    time: Annotated[str | None, typer.Option(help="Time of the query tile.")] = None,
    k: Annotated[int, typer.Option("-k", help="Number of neighbours.")] = 10,
    bbox: Annotated[str | None, typer.Option(help="Keep neighbours in W,S,E,N.")] = None,
    start: Annotated[str | None, typer.Option(help="Keep neighbours from this time.")] = None,
    end: Annotated[str | None, typer.Option(help="Keep neighbours up to this time.")] = None,
    variable: Annotated[str | None, typer.Option(help="Embedding variable.")] = None,
    quicklook: Annotated[Path | None, typer.Option(help="PNG of the query beside its "
                                                   "neighbours.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Find the tiles most like the one at LAT, LON (reverse image search)."""
    from esdc.search.query import SearchEngine

    if not cube.exists():
        raise EsdcError(f"no cube at {cube}.")
    if quicklook is not None:
        _png_target(quicklook, "--quicklook")
    engine = SearchEngine(cube, variable)
    trange = None if start is None and end is None else (start, end)
    result = engine.search_tile(lat, lon, time, k, _bbox(bbox), trange)
    if quicklook is not None:
        engine.quicklook(result, quicklook)
    if as_json:
        print(json.dumps(result.to_json()))
        return
    ny, nx = engine.names
    out.print(f"query {ny}={result.query[ny]:.3f} {nx}={result.query[nx]:.3f} "
              f"time={result.query['time']} ({engine.variable})", highlight=False)
    for i, n in enumerate(result.neighbours, 1):
        out.print(f"{i:>3}  {ny}={n.y:9.3f} {nx}={n.x:9.3f} time={n.time} "
                  f"distance={n.distance:.6f}", highlight=False)
    if quicklook is not None:
        out.print(f"quicklook: {quicklook}", highlight=False)


@app.command()
@user_errors
def serve(
    cube: Annotated[Path, typer.Argument(help="Cube with embeddings and an index.")],
    host: Annotated[str, typer.Option(help="Interface to bind (127.0.0.1: this machine "
                                      "only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    variable: Annotated[str | None, typer.Option(help="Embedding variable (default: the "
                                                 "smallest tile).")] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
    watch: Annotated[float, typer.Option(help="Seconds between checks for a rebuilt index "
                                         "(`esdc index`), swapped in without stopping; "
                                         "0: never.")] = 1.0,
) -> None:
    """Serve the reverse image search over HTTP (FastAPI; OpenAPI at /openapi.json)."""
    from esdc.search.http import create_app, run_app

    if not cube.exists():
        raise EsdcError(f"no cube at {cube}.")
    if not 0 <= port <= 65535:
        raise EsdcError(f"--port {port}: give a TCP port, 0 .. 65535.")
    if watch < 0:
        raise EsdcError(f"--watch {watch}: give seconds >= 0 (0: never).")
    api = create_app(cube, variable, watch)
    out.print(f"serving {api.state.engine.variable} of {cube} on http://{host}:{port} "
              f"(search page: http://{host}:{port}/, docs: http://{host}:{port}/docs)",
              highlight=False)
    run_app(api, host, port, access_log=access_log)


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
                     _png_target(out_path or Path(f"{variable}.png"), "--out"), time)
    out.print(f"wrote {path}", highlight=False)


@app.command()
@user_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("out/demo"),
    full: Annotated[bool, typer.Option(help="Full 0.25 degree grid (default 0.5).")] = False,
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Encoder epochs.")] = None,
) -> None:
    """Build the Earth cube, train an encoder, embed, index, search: the whole pipeline."""
    from esdc.demo import run_demo

    s = run_demo(out_dir, full, scheduler, lambda m: out.print(m, highlight=False), epochs)
    out.print(f"\n[bold]done in {s['total_s']} s[/] -> {out_dir / 'summary.json'}")
    out.print(f"cube {s['cube']} ({len(s['variables'])} variables), verify problems: "
              f"{len(s['verify_problems'])}", highlight=False)
    enc = s["encoder"]
    out.print(f"encoder run {enc['run_id']}: SimSiam loss {enc['test']:.4f} (untrained "
              f"{enc['baseline']:.4f})", highlight=False)
    out.print(f"index: {s['index']['count']} tiles ({s['index']['kind']})", highlight=False)
    for label, ev in s["search_evaluation"].items():
        p = ev.get("precision_at_k", {})
        out.print(f"precision@10 by {label}: embedding {p.get('embedding', float('nan')):.3f}, "
                  f"raw-pixel PCA {p.get('pca_pixels', float('nan')):.3f}, random "
                  f"{p.get('random', float('nan')):.3f}", highlight=False)
    out.print(f"pictures: {Path(s['pictures'][0]).parent}", highlight=False)


@app.command("evaluate-search")
@user_errors
def evaluate_search(
    cube: Annotated[Path, typer.Argument(help="Cube with embeddings.")],
    label: Annotated[str, typer.Option("--label", help="Class variable (e.g. koppen_class, "
                                       "land_sea_mask); a tile's label is its mode.")],
    variable: Annotated[str | None, typer.Option(help="Embedding variable (default: the "
                                                 "smallest tile).")] = None,
    k: Annotated[int, typer.Option("-k", help="Neighbours per query.")] = 10,
    queries: Annotated[int, typer.Option(help="Query tiles (random sample).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the sample and baselines.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Precision@k of the search by a class label, against random and raw-pixel PCA."""
    from esdc.search.evaluate import evaluate_search as run

    r = run(cube, label, variable, k, queries, seed)
    if as_json:
        print(json.dumps(r))
        return
    p = r["precision_at_k"]
    out.print(f"{r['variable']}: precision@{r['k']} by {r['label']} over {r['queries']} "
              f"queries ({r['tiles']} tiles)", highlight=False)
    out.print(f"  embedding {p['embedding']:.3f}  raw-pixel PCA {p['pca_pixels']:.3f}  "
              f"random {p['random']:.3f} (expected {p['random_expected']:.3f})",
              highlight=False)
    for c, v in r["per_class"].items():
        if v["queries"]:
            out.print(f"  class {c:>3} {v['name'] or '':<14} share {v['share']:.3f}  queries "
                      f"{v['queries']:>4}  embedding {v['embedding']:.3f}  PCA "
                      f"{v['pca_pixels']:.3f}  random {v['random']:.3f}", highlight=False,
                      soft_wrap=True)


@app.command()
@user_errors
def balance(
    cube: Annotated[Path, typer.Argument(help="Cube with embeddings.")],
    variable: Annotated[str | None, typer.Option(help="Embedding variable (default: the "
                                                 "smallest tile).")] = None,
    clusters: Annotated[int, typer.Option(help="k-means clusters of the embeddings.")] = 20,
    per_cluster: Annotated[int, typer.Option(help="Tiles drawn from each cluster.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the clustering and the draw.")] = 0,
    out_path: Annotated[Path | None, typer.Option("--out", help="Write the sample as JSON "
                                                  "here (default: print it).")] = None,
) -> None:
    """Draw a class-balanced sample of tiles: the same number from each embedding cluster."""
    from esdc.search.balance import balanced_sample, write_sample

    r = balanced_sample(cube, variable, clusters, per_cluster, seed)
    if out_path is None:
        print(json.dumps(r))
        return
    write_sample(r, out_path)
    out.print(f"{r['count']} tiles of {r['variable']} from {r['clusters']} clusters (sizes "
              f"{min(r['cluster_sizes'])} .. {max(r['cluster_sizes'])}) -> {out_path}",
              highlight=False, soft_wrap=True)


@app.command()
@user_errors
def card(
    cube_or_run: Annotated[str, typer.Argument(help="A cube (an existing path: data card) or "
                                               "an MLflow run id (model card).")],
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI of the run "
                                                     "(default: sqlite:///mlruns.db here).")]
    = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="Write the Markdown here "
                                                  "(default: print it).")] = None,
) -> None:
    """Write the data card of a cube or the model card of a training run (Markdown)."""
    from esdc.cards import data_card, model_card, write_card

    path = Path(cube_or_run)
    if path.exists():
        text = data_card(path)
    else:
        try:
            text = model_card(cube_or_run, tracking_uri)
        except EsdcError as exc:
            raise EsdcError(f"{cube_or_run}: no cube at that path, and {exc}") from None
    if out_path is None:
        print(text)
        return
    write_card(text, out_path)
    kind = "data" if path.exists() else "model"
    out.print(f"wrote the {kind} card of {cube_or_run} to {out_path}", highlight=False)


@app.command()
@user_errors
def catalog(
    cubes: Annotated[list[Path] | None, typer.Argument(help="Cubes to add or replace "
                                                       "(default: every *.zarr beside the "
                                                       "catalog).")] = None,
    out_path: Annotated[Path, typer.Option("--out", help="Catalog file; updated when it "
                                           "exists.")] = Path("cubes/catalog.json"),
    cards: Annotated[bool, typer.Option(help="Write each cube's data card beside its "
                                        "Item.")] = True,
) -> None:
    """Write or update a self-contained STAC catalog of built cubes (one Item per cube)."""
    from esdc.catalog import update_catalog, validate_catalog

    names = list(cubes or sorted(p for p in out_path.parent.glob("*.zarr") if p.is_dir()))
    if not names:
        raise EsdcError(f"no cubes given and no *.zarr in {out_path.parent}; name the cubes "
                        "to catalog.")
    cat = update_catalog(names, out_path, cards=cards)
    report = validate_catalog(cat)
    items = sorted(i.id for i in cat.get_items(recursive=True))
    out.print(f"{out_path}: {len(items)} item(s) ({', '.join(items)}); STAC core schemas "
              "valid", highlight=False, soft_wrap=True)
    for uri in report["skipped"]:
        out.print(f"  not checked (schema not reachable): {uri}", highlight=False,
                  soft_wrap=True)


@app.command()
@user_errors
def reference(
    out_path: Annotated[Path | None, typer.Option("--out", help="Write the Markdown here "
                                                  "(default: print it).")] = None,
) -> None:
    """Print the recipe and training-config reference generated from their schemas."""
    from esdc.reference import render

    text = render()
    if out_path is None:
        typer.echo(text, nl=False)
    else:
        out_path.write_text(text)
        out.print(f"wrote {out_path}", highlight=False)


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
    import subprocess

    from esdc.ml.serving import serve_command, serve_env
    from esdc.ml.train import default_tracking_uri

    env = serve_env(tracking_uri or default_tracking_uri())
    cmd = serve_command(f"models:/{name}/{version}", port, host)
    out.print(f"serving models:/{name}/{version} on http://{host}:{port}/invocations",
              highlight=False)
    raise typer.Exit(subprocess.call(cmd, env=env))


@samples_app.command("list")
def samples_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the registered real samples and whether they are cached."""
    from esdc.samples import SAMPLES, cache_dir

    rows = []
    for s in SAMPLES.values():
        cached = (cache_dir() / s.name / s.filename).exists()
        rows.append({**s.provenance(), "cached": cached})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        mark = "cached" if r["cached"] else "-"
        out.print(f"{r['name']:<24} {mark:<7} {r['product']} [{r['obtained_from']}]",
                  highlight=False)


@samples_app.command("fetch")
@user_errors
def samples_fetch(
    names: Annotated[list[str] | None, typer.Argument(help="Sample names (default: all).")]
    = None,
    all_: Annotated[bool, typer.Option("--all", help="Fetch every sample.")] = False,
    force: Annotated[bool, typer.Option(help="Download again.")] = False,
) -> None:
    """Download samples into the cache (without installing packages) and verify them."""
    from esdc.samples import fetch

    if not names and not all_:
        raise EsdcError("name the samples to fetch (see `esdc samples list`) or pass --all.")
    for name, path in fetch(None if all_ else names, force=force).items():
        out.print(f"{name}: {path}", highlight=False)


def main() -> None:
    """Entry point of the ``esdc`` console script."""
    sys.exit(app())  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    main()
