"""Search commands: index, search, serve, evaluate-search, balance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from esdc.cli._common import app, cube_target, out, png_target, user_errors
from esdc.errors import EsdcError
from esdc.grid import parse_bbox
from esdc.search.balance import balanced_sample, write_sample
from esdc.search.evaluate import evaluate_search as run_evaluation
from esdc.search.http import create_app, run_app
from esdc.search.index import build_index, index_dir
from esdc.search.query import SearchEngine

# Arguments and options shared by the commands.
EmbeddedCube = Annotated[Path, typer.Argument(help="Cube with embeddings.")]
IndexedCube = Annotated[Path, typer.Argument(help="Cube with embeddings and an index.")]
Variable = Annotated[str | None, typer.Option(help="Embedding variable (default: the "
                                              "smallest tile).")]


@app.command()
@user_errors
def index(
    cube: EmbeddedCube,
    kind: Annotated[str, typer.Option(help="flat (exact), hnsw, ivfpq or auto (exact below "
                                      "200,000 vectors).")] = "auto",
    variable: Variable = None,
    device: Annotated[str, typer.Option(help="auto (a GPU when FAISS sees one and the kind "
                                        "runs there: flat, ivfpq), cpu or gpu (needs "
                                        "esdc[gpu]).")] = "auto",
) -> None:
    """Build a FAISS index of a cube's embeddings, stored beside the cube."""
    cube_target(cube).require()
    m = build_index(cube, variable, kind, device)
    out.print(f"indexed {m.count} tiles of {m.variable} ({m.kind}, {m.dim} dims, built on "
              f"{m.params.get('built_on', 'cpu')}) in "
              f"{index_dir(cube)}: generation {m.generation} (a running `esdc serve` "
              "swaps it in)", highlight=False)


@app.command()
@user_errors
def search(
    cube: IndexedCube,
    lat: Annotated[float, typer.Option("--lat", "--y", help="Latitude (or y) of the query "
                                       "tile.")],
    lon: Annotated[float, typer.Option("--lon", "--x", help="Longitude (or x).")],
    time: Annotated[str | None, typer.Option(help="Time of the query tile.")] = None,
    k: Annotated[int, typer.Option("-k", help="Number of neighbours.")] = 10,
    bbox: Annotated[str | None, typer.Option(help="Keep neighbours in W,S,E,N.")] = None,
    start: Annotated[str | None, typer.Option(help="Keep neighbours from this time.")] = None,
    end: Annotated[str | None, typer.Option(help="Keep neighbours up to this time.")] = None,
    variable: Variable = None,
    quicklook: Annotated[Path | None, typer.Option(help="PNG of the query beside its "
                                                   "neighbours.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Find the tiles most like the one at LAT, LON (reverse image search)."""
    cube_target(cube).require()
    if quicklook is not None:
        png_target(quicklook, "--quicklook")
    box = parse_bbox(bbox)
    engine = SearchEngine(cube, variable)
    result = engine.search_tile(lat, lon, time, k, box, (start, end))
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
    cube: IndexedCube,
    variable: Variable = None,
    host: Annotated[str, typer.Option(help="Interface to bind (127.0.0.1: this machine "
                                      "only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
    watch: Annotated[float, typer.Option(help="Seconds between checks for a rebuilt index "
                                         "(`esdc index`), swapped in without stopping; "
                                         "0: never.")] = 1.0,
) -> None:
    """Serve the reverse image search over HTTP (FastAPI; OpenAPI at /openapi.json)."""
    if not 0 <= port <= 65535:  # the options first: no I/O for a mistyped command
        raise EsdcError(f"--port {port}: give a TCP port, 0 .. 65535.")
    if watch < 0:
        raise EsdcError(f"--watch {watch}: give seconds >= 0 (0: never).")
    cube_target(cube).require()
    api = create_app(cube, variable, watch)
    out.print(f"serving {api.state.engine.variable} of {cube} on http://{host}:{port} "
              f"(search page: http://{host}:{port}/, docs: http://{host}:{port}/docs)",
              highlight=False)
    run_app(api, host, port, access_log=access_log)


@app.command("evaluate-search")
@user_errors
def evaluate_search(
    cube: EmbeddedCube,
    label: Annotated[str, typer.Option("--label", help="Class variable (e.g. koppen_class, "
                                       "land_sea_mask); a tile's label is its mode.")],
    variable: Variable = None,
    k: Annotated[int, typer.Option("-k", help="Neighbours per query.")] = 10,
    queries: Annotated[int, typer.Option(help="Query tiles (random sample).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the sample and baselines.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Precision@k of the search by a class label, against random and raw-pixel PCA."""
    r = run_evaluation(cube, label, variable, k, queries, seed)
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
    cube: EmbeddedCube,
    variable: Variable = None,
    clusters: Annotated[int, typer.Option(help="k-means clusters of the embeddings.")] = 20,
    per_cluster: Annotated[int, typer.Option(help="Tiles drawn from each cluster.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the clustering and the draw.")] = 0,
    out_path: Annotated[Path | None, typer.Option("--out", help="Write the sample as JSON "
                                                  "here (default: print it).")] = None,
) -> None:
    """Draw a class-balanced sample of tiles: the same number from each embedding cluster."""
    r = balanced_sample(cube, variable, clusters, per_cluster, seed)
    if out_path is None:
        print(json.dumps(r))
        return
    write_sample(r, out_path)
    out.print(f"{r['count']} tiles of {r['variable']} from {r['clusters']} clusters (sizes "
              f"{min(r['cluster_sizes'])} .. {max(r['cluster_sizes'])}) -> {out_path}",
              highlight=False, soft_wrap=True)
