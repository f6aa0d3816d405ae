"""Benchmark a build from >= 1,000 remote granules against a download floor and a naive loop.

What is compared
----------------
One folder of OISST-format daily granules (``esdc.mirror.write_oisst_granules``: the
OSTIA monthly sample in NOAA OISST v2.1's file format and NCEI's layout) is served by
``esdc.loopback.LoopbackServer`` on 127.0.0.1 with ``--latency`` seconds (default 20 ms)
added to every request. ``recipes/oisst.yaml`` with its time range widened to the
granules is built from it through ``mirrors=`` (``esdc build --mirror``):

esdc
    :func:`esdc.build.build` with an empty granule cache: list the granules (no request),
    fetch them in parallel (``files.concurrency``, default 8) with SHA-256, open them
    lazily, bin the days into months, bucket-average onto the 1 degree grid, write the
    Zarr store (default Dask scheduler of the process: threads).
floor
    Downloading the same bytes at the same concurrency and nothing else: a thread pool
    of ``concurrency`` workers, one ``httpx.Client``, each granule streamed to a file.
naive
    What a user writes without esdc: a sequential loop of ``httpx`` downloads to files,
    ``xr.open_mfdataset`` over them, the month mean (``resample(time="MS").mean()``),
    the same regrid (:func:`esdc.regrid.regrid`, bucket average) and ``to_zarr``.

Printed (``--json``: one JSON object): ``ratio_to_download_floor`` (esdc / floor seconds;
aim <= 1.5), ``speedup_vs_naive`` (naive / esdc; aim >= 10), ``granules_per_s``,
``peak_rss_mb`` (this process while esdc builds; memory must be bounded by concurrency
x granule size, not by the number of granules), ``plan_seconds_100k`` (validating a
recipe whose pattern covers 100,000 hourly granules and listing them: no request),
``refetched_on_rerun`` (GET requests when the fetch phase runs again: must be 0).

WMTS case (``wmts`` in the output): the Blue Marble sample cut into 512 px PNG tiles in
NASA GIBS's layout (``tests/sources/test_wmts.py``: ``write_gibs``, 66 tiles at 1/15
degree), served with the same latency; ``format: wmts`` built on a global 0.2 degree grid
(capabilities fetched, tiles over the grid listed, fetched in parallel, mosaicked,
regridded, written) against downloading the same tiles at the same concurrency: ``tiles``,
``download_floor_seconds``, ``esdc_seconds``, ``ratio_to_download_floor``, ``tiles_per_s``,
``fetch_seconds`` and ``fetch_ratio_to_download_floor`` (the fetch phase alone: capabilities
and tiles into an empty cache), ``refetched_on_rerun``.

Update case (``update`` in the output): a live archive. The OSTIA monthly sample cut into
one granule per month, served with the same latency; a cube of 36 months (``--quick``
12) of its equatorial band at 0.5 degree, embedded in 3 x 3 cell tiles (a seeded,
untrained encoder of 64 dims) and indexed (HNSW); then one more month is published:
``update_seconds`` from the new granule to searchable vectors (``cube_append_seconds`` of
``esdc update``, ``embed_append_seconds`` of ``esdc embed --append``,
``index_update_seconds`` of ``esdc index --update``) against ``rebuild_seconds`` (the same
cube append, then every step embedded again and the index built anew:
``rebuild_embed_seconds``, ``rebuild_index_seconds``), ``speedup_vs_rebuild``,
``new_step_found`` (a search at the new month finds its tile).

How to run
----------
With the samples cached (``esdc samples fetch ostia-monthly``)::

    python benchmarks/bench_ingest.py            # 1,096 daily granules (2007-2009)
    python benchmarks/bench_ingest.py --quick    # 240 granules, about a minute
    python benchmarks/bench_ingest.py --json
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _machine  # benchmarks/_machine.py: machine and versions
import numpy as np
import pandas as pd
import psutil
import xarray as xr
import yaml

ROOT = Path(__file__).resolve().parents[1]


def recipe_doc(start: str, end: str) -> dict[str, Any]:
    """recipes/oisst.yaml with its grid and granule times from ``start`` to ``end``."""
    doc = yaml.safe_load((ROOT / "recipes" / "oisst.yaml").read_text())
    first_month = f"{start[:7]}-01"
    doc["grid"]["time"] = {"start": first_month, "end": f"{end[:7]}-01", "freq": "MS"}
    doc["sources"][0]["files"]["time"] = {"start": start, "end": end, "freq": "D"}
    return doc


class PeakRSS:
    """The most resident memory of this process, sampled every 20 ms in a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def download(urls: list[str], folder: Path, concurrency: int) -> int:
    """Stream every URL to a file with ``concurrency`` threads; bytes downloaded."""
    import httpx

    folder.mkdir(parents=True, exist_ok=True)
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        def one(item: tuple[int, str]) -> int:
            i, url = item
            n = 0
            with client.stream("GET", url) as r, open(folder / f"{i:06d}.nc", "wb") as f:
                r.raise_for_status()
                for block in r.iter_bytes(1 << 16):
                    f.write(block)
                    n += len(block)
            return n

        if concurrency == 1:
            return sum(map(one, enumerate(urls)))
        with cf.ThreadPoolExecutor(concurrency) as pool:
            return sum(pool.map(one, enumerate(urls)))


def naive(urls: list[str], folder: Path, recipe: Any, out: Path) -> None:
    """Sequential downloads, open_mfdataset, month means, the same regrid, to_zarr."""
    from esdc.regrid import regrid
    from esdc.sources import open_source

    download(urls, folder, 1)
    files = sorted(folder.glob("*.nc"))
    ds = xr.open_mfdataset(files, combine="by_coords")
    monthly = ds["sst"].squeeze("zlev", drop=True).resample(time="MS").mean()
    # longitudes to [-180, 180), north up: what every user does before regridding
    monthly = monthly.assign_coords(lon=(monthly.lon + 180) % 360 - 180).sortby("lon")
    monthly = monthly.sortby("lat", ascending=False)
    # the grid and the source's location as esdc reads them, so only the path differs
    spec = recipe.sources[0].model_copy(update={"path": str(files[0]), "files": None})
    geo = open_source(spec)
    grid = recipe.grid.to_grid()
    monthly = monthly.rename({"lat": geo.ydim, "lon": geo.xdim})
    np.testing.assert_allclose(monthly[geo.xdim].values, geo.data[geo.xdim].values, atol=1e-4)
    data = regrid(monthly, geo, grid, "bucket_average")
    data.to_dataset(name="sst").to_zarr(out, mode="w", zarr_format=3, consolidated=True)


def plan_100k(tmp: Path) -> float:
    """Seconds to validate a recipe whose pattern covers 100,000 hourly granules and list them."""
    from esdc.recipe import Recipe
    from esdc.sources.granules import list_granules

    doc = recipe_doc("2007-01-01", "2007-01-31")
    files = doc["sources"][0]["files"]
    files["pattern"] = "https://archive.example/{time:%Y/%m/%d}/sst_{time:%Y%m%dT%H}.nc"
    last = pd.Timestamp("2000-01-01") + pd.Timedelta(hours=99_999)
    files["time"] = {"start": "2000-01-01T00:00", "end": last.isoformat(), "freq": "h"}
    t0 = time.perf_counter()
    recipe = Recipe.from_dict(doc)
    granules = list_granules(recipe.sources[0], None)
    seconds = time.perf_counter() - t0
    assert len(granules) == 100_000, len(granules)
    return seconds


def wmts_case(tmp: Path, latency: float) -> dict[str, Any]:
    """Tiles/s of a WMTS build (GIBS-like tiles of the Blue Marble sample) vs the floor."""
    from PIL import Image

    from esdc.build import build, fetch_sources
    from esdc.loopback import LoopbackServer
    from esdc.recipe import Recipe
    from esdc.samples import sample_path

    sys.path.insert(0, str(ROOT))
    from tests.sources.test_wmts import GIBS, wmts_recipe, write_gibs

    with Image.open(sample_path("bmng")) as im:
        write_gibs(tmp / "gibs", np.asarray(im.convert("RGB")))
    recipe = Recipe.from_dict(wmts_recipe([-180, -90, 180, 90], 0.2, zoom=1))
    concurrency = recipe.sources[0].wmts.concurrency
    with LoopbackServer(tmp / "gibs", latency=latency) as server:
        mirrors = {GIBS: server.base_url}
        os.environ["ESDC_GRANULE_CACHE"] = str(tmp / "wmts_fetch_only")
        t0 = time.perf_counter()
        fetch_sources(recipe, mirrors=mirrors)  # capabilities + tiles, nothing else
        fetch_s = time.perf_counter() - t0
        os.environ["ESDC_GRANULE_CACHE"] = str(tmp / "wmts_cache")
        server.clear_log()
        t0 = time.perf_counter()
        build(recipe, tmp / "wmts.zarr", mirrors=mirrors)
        esdc_s = time.perf_counter() - t0
        tiles = sorted(r.path for r in server.requests("GET") if r.path.endswith(".png"))
        server.clear_log()
        fetch_sources(recipe, mirrors=mirrors)
        refetched = len(server.requests("GET"))
        t0 = time.perf_counter()
        nbytes = download([server.url(t) for t in tiles], tmp / "wmts_floor", concurrency)
        floor = time.perf_counter() - t0
    return {"tiles": len(tiles), "bytes": nbytes, "concurrency": concurrency,
            "download_floor_seconds": round(floor, 2), "esdc_seconds": round(esdc_s, 2),
            "ratio_to_download_floor": round(esdc_s / floor, 2),
            "tiles_per_s": round(len(tiles) / esdc_s, 1), "fetch_seconds": round(fetch_s, 2),
            "fetch_ratio_to_download_floor": round(fetch_s / floor, 2),
            "refetched_on_rerun": refetched}


def update_case(tmp: Path, latency: float, months: int) -> dict[str, Any]:
    """Seconds from a new granule to searchable vectors (a live archive) vs a full rebuild.

    The OSTIA monthly sample cut into one granule per month, served with ``latency``;
    a cube of ``months`` months of its equatorial band at 0.5 degree (18 x 720 cells)
    is built, embedded in tiles of 3 x 3 cells by a seeded, untrained encoder of
    simsiam's default size (64 dims) and indexed (HNSW). Then one more month is
    published and timed: ``esdc update`` (build ``append=True``), ``esdc embed
    --append`` and ``esdc index --update``, after which a search finds the new month
    (a running ``esdc serve`` swaps the generation in within its ``--watch``); against
    the same cube append followed by a full rebuild: every step embedded again and the
    index built anew.
    """
    import torch

    from esdc.build import build
    from esdc.embed import EncoderBundle, embed_cube
    from esdc.loopback import LoopbackServer
    from esdc.ml.ssl import Encoder
    from esdc.recipe import Recipe
    from esdc.samples import sample_path
    from esdc.search import SearchEngine, build_index, update_index

    folder = tmp / "monthly"
    folder.mkdir()
    with xr.open_dataset(sample_path("ostia-monthly")) as ds:
        stamps = [pd.Timestamp(t) for t in ds.time.values[: months + 1]]
        for i, t in enumerate(stamps):
            ds.isel(time=[i]).to_netcdf(folder / f"ostia_{t:%Y%m}.nc")
    newest = folder / f"ostia_{stamps[-1]:%Y%m}.nc"
    held = newest.rename(tmp / newest.name)  # not published yet
    prefix = "https://archive.example/ostia"

    def recipe(last: pd.Timestamp) -> Recipe:
        return Recipe.from_dict({
            "name": "ostia_live", "title": "OSTIA, a live archive",
            "grid": {"body": "earth", "bbox": [0, -5, 360, 4], "resolution": 0.5,
                     "time": {"start": f"{stamps[0]:%Y-%m}-01", "end": f"{last:%Y-%m}-01",
                              "freq": "MS"}},
            "output": {"chunks": {"time": 1, "lat": 18, "lon": 720}},
            "sources": [{"name": "ostia", "format": "netcdf", "time": "series",
                         "files": {"pattern": f"{prefix}/ostia_{{time:%Y%m}}.nc"},
                         "variables": [{"name": "sst", "source": "surface_temperature",
                                        "resampling": "bilinear", "units": "K"}]}]})

    torch.manual_seed(0)
    meta = {"class": "esdc.ml.ssl.Encoder", "in_channels": 1, "params": {"dim": 64, "width": 32},
            "inputs": ["sst"], "tile": [3, 3]}
    torch.save(Encoder(1, **meta["params"]).state_dict(), tmp / "encoder.pt")
    encoder = EncoderBundle(tmp / "encoder.pt", meta)
    cube = tmp / "live.zarr"
    os.environ["ESDC_GRANULE_CACHE"] = str(tmp / "live_cache")
    with LoopbackServer(folder, latency=latency) as server:
        mirrors = {prefix: server.base_url.rstrip("/")}
        build(recipe(stamps[-2]), cube, mirrors=mirrors)
        embed_cube(str(cube), encoder, [3])
        first = build_index(cube, kind="hnsw")
        held.rename(newest)  # the archive publishes the next month
        t0 = time.perf_counter()
        build(recipe(stamps[-1]), cube, mirrors=mirrors, append=True)
        t1 = time.perf_counter()
        embed_cube(str(cube), encoder, append=True)
        t2 = time.perf_counter()
        m = update_index(cube)
        t3 = time.perf_counter()
    engine = SearchEngine(cube)
    month = f"{stamps[-1]:%Y-%m}-01"
    hit = engine.search_tile(-0.5, 169.5, month, k=5).neighbours
    found = bool(hit) and hit[0].time == month and hit[0].distance < 1e-5
    t4 = time.perf_counter()
    embed_cube(str(cube), encoder, [3])  # the full rebuild: every step, then the index
    t5 = time.perf_counter()
    rebuilt = build_index(cube, kind="hnsw")
    t6 = time.perf_counter()
    cube_s, update_s, rebuild_s = t1 - t0, t3 - t0, (t1 - t0) + (t6 - t4)
    return {"months": months, "tiles_per_step": int(engine.shape[0] * engine.shape[1]),
            "vectors": rebuilt.count, "added": m.count - first.count,
            "generation": m.generation, "cube_append_seconds": round(cube_s, 2),
            "embed_append_seconds": round(t2 - t1, 2),
            "index_update_seconds": round(t3 - t2, 2), "update_seconds": round(update_s, 2),
            "rebuild_embed_seconds": round(t5 - t4, 2), "rebuild_index_seconds": round(t6 - t5, 2),
            "rebuild_seconds": round(rebuild_s, 2),
            "speedup_vs_rebuild": round(rebuild_s / update_s, 2),
            "new_step_found": found}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from esdc.build import build, fetch_sources
    from esdc.loopback import LoopbackServer
    from esdc.mirror import OISST_PREFIX, oisst_name, write_oisst_granules
    from esdc.recipe import Recipe

    start, end = ("2007-01-01", "2007-08-28") if args.quick else ("2007-01-01", "2009-12-31")
    tmp = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    files = write_oisst_granules(tmp / "ncei", start, end)
    recipe = Recipe.from_dict(recipe_doc(start, end))
    concurrency = recipe.sources[0].files.concurrency
    os.environ["ESDC_GRANULE_CACHE"] = str(tmp / "cache")
    with LoopbackServer(tmp / "ncei", latency=args.latency) as server:
        base = server.base_url.rstrip("/")
        mirrors = {OISST_PREFIX: base}
        urls = [f"{base}/{oisst_name(d)}" for d in pd.date_range(start, end, freq="D")]
        t0 = time.perf_counter()
        nbytes = download(urls, tmp / "floor", concurrency)
        floor = time.perf_counter() - t0

        with PeakRSS() as rss:
            t0 = time.perf_counter()
            build(recipe, tmp / "esdc.zarr", mirrors=mirrors)
            esdc_s = time.perf_counter() - t0
        server.clear_log()
        fetch_sources(recipe, mirrors=mirrors)
        refetched = len(server.requests("GET"))

        t0 = time.perf_counter()
        naive(urls, tmp / "naive_files", recipe, tmp / "naive.zarr")
        naive_s = time.perf_counter() - t0
    with xr.open_zarr(tmp / "esdc.zarr") as a, xr.open_zarr(tmp / "naive.zarr") as b:
        same = bool(np.allclose(a["sst"].values, b["sst"].values, equal_nan=True, atol=1e-4))
    return {
        "benchmark": "bench_ingest",
        "granules": len(files),
        "bytes": nbytes,
        "latency_s": args.latency,
        "concurrency": concurrency,
        "download_floor_seconds": round(floor, 2),
        "esdc_seconds": round(esdc_s, 2),
        "naive_seconds": round(naive_s, 2),
        "ratio_to_download_floor": round(esdc_s / floor, 2),
        "speedup_vs_naive": round(naive_s / esdc_s, 2),
        "granules_per_s": round(len(files) / esdc_s, 1),
        "peak_rss_mb": round(rss.peak / 2**20, 1),
        "plan_seconds_100k": round(plan_100k(tmp), 2),
        "refetched_on_rerun": refetched,
        "esdc_equals_naive": same,
        "wmts": wmts_case(tmp, args.latency),
        "update": update_case(tmp, args.latency, 12 if args.quick else 36),
        "machine": _machine.machine(),
        "versions": _machine.versions(("esdc", "numpy", "xarray", "dask", "zarr", "httpx")),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="240 granules instead of 1,096")
    p.add_argument("--latency", type=float, default=0.02, help="seconds added per request")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    res = run(args)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in res.items():
            if k not in ("machine", "versions"):
                print(f"{k:>26}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
