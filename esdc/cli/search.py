"""Search commands: index, search, serve, evaluate-search, balance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from esdc.cli._common import Version, app, cube_target, out, png_target, user_errors
from esdc.errors import EsdcError
from esdc.grid import parse_bbox
from esdc.ml.config import load_train_config
from esdc.search.balance import balanced_sample, write_sample
from esdc.search.evaluate import evaluate_refinement
from esdc.search.evaluate import evaluate_search as run_evaluation
from esdc.search.feedback import NEGATIVE_WEIGHT, FeedbackTile
from esdc.search.http import create_app, run_app
from esdc.search.index import build_index, build_indexes, index_dir
from esdc.search.live import update_index, update_indexes
from esdc.search.query import SearchEngine, parse_scales

# Arguments and options shared by the commands.
EmbeddedCube = Annotated[Path, typer.Argument(help="Cube with embeddings.")]
IndexedCube = Annotated[Path, typer.Argument(help="Cube with embeddings and an index.")]
Variable = Annotated[str | None, typer.Option(help="Embedding variable (default: the "
                                              "smallest tile).")]
Scales = Annotated[str | None, typer.Option(
    "--scales", metavar="all|8,16", help="Scales (tile sizes in cells) whose tiles are "
    "returned, merged by distance: all, or a comma list (default: the query tile's).")]
NegativeWeight = Annotated[float, typer.Option(help="Relevance feedback: Rocchio weight of "
                                               "the negative tiles' mean (>= 0).")]


@app.command()
@user_errors
def index(
    cube: EmbeddedCube,
    kind: Annotated[str, typer.Option(help="flat (exact), hnsw, ivfpq or auto (exact below "
                                      "200,000 vectors).")] = "auto",
    variable: Annotated[str | None, typer.Option(help="Embedding variable to index (default: "
                                                 "every scale the cube holds).")] = None,
    scales: Annotated[str | None, typer.Option(
        "--scales", metavar="8,16", help="Tile sizes to index (default: all).")] = None,
    device: Annotated[str, typer.Option(help="auto (a GPU when FAISS sees one and the kind "
                                        "runs there: flat, ivfpq), cpu or gpu (needs "
                                        "esdc[gpu]).")] = "auto",
    update: Annotated[bool, typer.Option("--update", help="Add only the vectors of time "
                                         "steps embedded since the index was built (esdc "
                                         "embed --append) as a new generation: no rebuild, "
                                         "no retraining (--kind and --device are kept).")]
    = False,
) -> None:
    """Build FAISS indexes of a cube's embeddings (every scale), stored beside the cube."""
    cube_target(cube).require()
    sizes = parse_scales(scales)
    if sizes == "all":
        sizes = None
    if update:
        done = [update_index(cube, variable)] if variable else update_indexes(cube)
        for m in done:
            out.print(f"index of {m.variable} in {index_dir(cube)}: generation {m.generation} "
                      f"holds {m.count} tiles of {m.time_steps or 'static'} time steps "
                      f"({' .. '.join(m.time_range) or 'no time'}; a running `esdc serve` "
                      "swaps a new generation in)", highlight=False, soft_wrap=True)
        return
    built = [build_index(cube, variable, kind, device)] if variable else \
        build_indexes(cube, sizes, kind, device)  # type: ignore[arg-type]
    for m in built:
        out.print(f"indexed {m.count} tiles of {m.variable} (scale {m.scale}, {m.kind}, "
                  f"{m.dim} dims, built on {m.params.get('built_on', 'cpu')}) in "
                  f"{index_dir(cube)}: generation {m.generation} (a running `esdc serve` "
                  "swaps it in)", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def search(
    cube: IndexedCube,
    lat: Annotated[float | None, typer.Option("--lat", "--y", help="Latitude (or y) of the "
                                              "query tile.")] = None,
    lon: Annotated[float | None, typer.Option("--lon", "--x", help="Longitude (or x).")] = None,
    time: Annotated[str | None, typer.Option(help="Time of the query tile (and of the "
                                             "marked tiles).")] = None,
    positive: Annotated[list[str] | None, typer.Option(
        "--positive", metavar="LAT,LON[,SCALE]", help="A tile like those wanted (relevance "
        "feedback; repeatable). With --lat/--lon the query tile is one too.")] = None,
    negative: Annotated[list[str] | None, typer.Option(
        "--negative", metavar="LAT,LON[,SCALE]", help="A tile not wanted (repeatable).")]
    = None,
    k: Annotated[int, typer.Option("-k", help="Number of neighbours.")] = 10,
    bbox: Annotated[str | None, typer.Option(help="Keep neighbours in W,S,E,N.")] = None,
    start: Annotated[str | None, typer.Option(help="Keep neighbours from this time.")] = None,
    end: Annotated[str | None, typer.Option(help="Keep neighbours up to this time.")] = None,
    variable: Variable = None,
    scale: Annotated[int | None, typer.Option("--scale", help="The query tile's size in "
                                              "cells (default: the finest indexed); also "
                                              "of marked tiles that give none.")] = None,
    scales: Scales = None,
    negative_weight: NegativeWeight = NEGATIVE_WEIGHT,
    quicklook: Annotated[Path | None, typer.Option(help="PNG of the query beside its "
                                                   "neighbours.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    version: Version = None,
) -> None:
    """Find the tiles most like the one at LAT, LON (reverse image search).

    With --positive/--negative, refine: rank the tiles like the positives and unlike the
    negatives (Rocchio relevance feedback); the marked tiles are left out of the answer.
    """
    if (lat is None) != (lon is None):
        raise EsdcError("give both --lat and --lon (or --y and --x) of the query tile.")
    marks = [[FeedbackTile.parse(t, time) for t in given or []] for given in (positive,
                                                                              negative)]
    if lat is not None and lon is not None:  # the query tile: the first positive
        marks[0].insert(0, FeedbackTile(lat, lon, None, time))
    if negative and not marks[0]:
        raise EsdcError("refinement needs at least one positive tile: --positive "
                        "LAT,LON[,SCALE] (or the query tile, --lat and --lon).")
    if not marks[0]:
        raise EsdcError("give the query tile: --lat and --lon (or --positive LAT,LON[,SCALE]).")
    cube_target(cube).require()
    if quicklook is not None:
        png_target(quicklook, "--quicklook")
    box = parse_bbox(bbox)
    parse_scales(scales)  # a malformed --scales before the index is loaded
    engine = SearchEngine(cube, variable, version)
    if positive or negative:
        result = engine.refine(marks[0], marks[1], k, box, (start, end), negative_weight,
                               scale=scale, scales=scales)
    else:
        result = engine.search_tile(marks[0][0].y, marks[0][0].x, time, k, box, (start, end),
                                    scale=scale, scales=scales)
    if quicklook is not None:
        engine.quicklook(result, quicklook)
    if as_json:
        print(json.dumps(result.to_json()))
        return
    ny, nx = engine.names
    q = result.query
    for role in ("positive", "negative"):
        for m in q.get(role, []):
            out.print(f"{role} {ny}={m[ny]:.3f} {nx}={m[nx]:.3f} time={m['time']} "
                      f"({engine.scales[m['scale']]})", highlight=False)
    if "positive" not in q:
        out.print(f"query {ny}={q[ny]:.3f} {nx}={q[nx]:.3f} time={q['time']} "
                  f"({q['variable']}); scales {q['scales']}", highlight=False)
    for i, n in enumerate(result.neighbours, 1):
        out.print(f"{i:>3}  {ny}={n.y:9.3f} {nx}={n.x:9.3f} time={n.time} "
                  f"scale={n.scale:<3} distance={n.distance:.6f}", highlight=False)
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
    version: Version = None,
) -> None:
    """Serve the reverse image search over HTTP (FastAPI; OpenAPI at /openapi.json)."""
    if not 0 <= port <= 65535:  # the options first: no I/O for a mistyped command
        raise EsdcError(f"--port {port}: give a TCP port, 0 .. 65535.")
    if watch < 0:
        raise EsdcError(f"--watch {watch}: give seconds >= 0 (0: never).")
    cube_target(cube).require()
    api = create_app(cube, variable, watch, version)
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
    refine: Annotated[bool, typer.Option("--refine", help="Measure relevance feedback: "
                                         "precision@k after rounds of simulated clicks, "
                                         "against no refinement.")] = False,
    rounds: Annotated[int, typer.Option(help="With --refine: rounds of feedback.")] = 2,
    clicks: Annotated[int, typer.Option(help="With --refine: tiles judged per round.")] = 5,
    negative_weight: NegativeWeight = NEGATIVE_WEIGHT,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    version: Version = None,
    held_out: Annotated[Path | None, typer.Option(
        "--held-out", help="The encoder's training config: draw the query tiles only "
        "outside its train split (tiles the encoder never saw).")] = None,
) -> None:
    """Precision@k of the search by a class label, against random and raw-pixel PCA.

    With --refine: precision@k after each round of simulated relevance feedback (the
    first CLICKS tiles shown are marked by their label), against the first ranking.
    """
    split = load_train_config(held_out).split if held_out is not None else None
    if refine:
        r = evaluate_refinement(cube, label, variable, k, rounds, clicks, queries, seed,
                                negative_weight, version, held_out=split)
        if as_json:
            print(json.dumps(r))
        else:
            _print_refinement(r)
        return
    r = run_evaluation(cube, label, variable, k, queries, seed, version, held_out=split)
    if as_json:
        print(json.dumps(r))
        return
    p = r["precision_at_k"]
    out.print(f"{r['variable']}: precision@{r['k']} by {r['label']} over {r['queries']} "
              f"{'held-out ' if r.get('held_out') else ''}queries ({r['tiles']} tiles)",
              highlight=False)
    out.print(f"  embedding {p['embedding']:.3f}  raw-pixel PCA {p['pca_pixels']:.3f}  "
              f"random {p['random']:.3f} (expected {p['random_expected']:.3f})",
              highlight=False)
    for c, v in r["per_class"].items():
        if v["queries"]:
            out.print(f"  class {c:>3} {v['name'] or '':<14} share {v['share']:.3f}  queries "
                      f"{v['queries']:>4}  embedding {v['embedding']:.3f}  PCA "
                      f"{v['pca_pixels']:.3f}  random {v['random']:.3f}", highlight=False,
                      soft_wrap=True)
    for size, v in r.get("per_scale", {}).items():
        out.print(f"  scale {size:>3} cells: {v['queries']} queries, precision@{r['k']} within "
                  f"the scale {v['embedding']:.3f}, across all scales {v['all_scales']:.3f}",
                  highlight=False, soft_wrap=True)
    c = r.get("scale_consistency")
    if c:
        pairs = ", ".join(f"{p} {v['parent_in_top_k']:.3f}" for p, v in c["pairs"].items())
        out.print(f"  scale consistency (parent tile in the top {c['k']}, all scales): "
                  f"{c['overall']:.3f} ({pairs}; random {c['random_expected']:.4f})",
                  highlight=False, soft_wrap=True)


def _print_refinement(r: dict) -> None:
    """The table of :func:`esdc.search.evaluate.evaluate_refinement`."""
    head = "".join(f"  {f'round {i}: refined / unrefined':>30}"
                   for i in range(1, r["rounds"] + 1))
    out.print(f"{r['variable']}: precision@{r['k']} by {r['label']} over {r['queries']} "
              f"queries ({r['tiles']} tiles), {r['clicks']} clicks per round, negative "
              f"weight {r['negative_weight']}", highlight=False, soft_wrap=True)
    out.print(f"  {'':<20} {'queries':>7}  none{head}", highlight=False, soft_wrap=True)
    rows = [("all", r["queries"], r["precision_at_k"]),
            ("macro", r["queries"], r["macro_precision_at_k"])]
    rows += [(f"{c} {v['name'] or ''}", v["queries"], v) for c, v in r["per_class"].items()
             if v["queries"]]
    for name, n, p in rows:
        cells = "".join(f"  {f'{a:.3f} / {b:.3f}':>30}"
                        for a, b in zip(p["refined"], p["none_residual"], strict=True))
        out.print(f"  {name:<20} {n:>7}  {p['none']:.3f}{cells}", highlight=False,
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
