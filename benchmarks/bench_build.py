"""Benchmark the esdc cube build against an I/O floor and a naive xarray baseline.

What is compared
----------------
All paths produce the same cube (same grid, variables, dtypes, chunks and Blosc
compressor) from the same source files, in one run on the same machine:

esdc
    The way ``esdc build`` runs: :func:`esdc.build.plan` (open the sources lazily, decode,
    regrid, harmonize) then :meth:`esdc.storage.Target.write` on a
    ``distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` as the
    CLI starts it (``esdc.cluster.local_cluster``: worker environment and allocator); its
    start-up time is reported but left out of the ratios. The build runs twice: first on the
    fresh workers (``esdc_first_seconds``: what one ``esdc build`` on a new cluster costs,
    imports and first-touch memory of the worker processes included), then again on the
    same, now warm, workers (``esdc_seconds``, as in a notebook session that builds on a
    running cluster). The I/O floor is measured on those warm workers afterwards, so the
    ratios compare the second build with it (``ratio_to_io_floor``); the first build's ratio
    is reported beside (``ratio_to_io_floor_first_build``). With ``--esdc-only`` the build
    runs once. Peak memory: the RSS summed over the process tree (this process, the nannies
    and the workers), sampled every 50 ms in a thread; the larger of the two builds' peaks.
I/O floor
    What no builder can beat without skipping work: read and decode the source
    pixels that cover the grid (the esdc readers, ``esdc.sources.open_source``,
    computed on the same cluster down to a per-chunk maximum, so nothing is
    regridded and nothing large is shipped back), plus encoding and writing the
    cube's own bytes (the finished esdc cube, loaded into memory beforehand) to a
    new Zarr v3 store with the same chunks and compressor, with 2 threads.
    ``io_floor_seconds`` is the sum of the two.
naive
    What a user would write without esdc: variable after variable, load the source
    fully into memory (numpy), regrid with xarray (``coarsen(...).mean()`` for
    integer-factor area means, ``coarsen(...).reduce(mode)`` for integer-factor
    categorical modes, ``interp`` (linear) for the non-integer-factor Blue Marble
    image and bilinear variables, nearest ``interp`` for non-aligned categorical
    ones) and append it to the store with ``to_zarr``; dask scheduler
    ``"synchronous"``, no cluster. Sources are read with the esdc readers and
    values decoded / time-aligned with :mod:`esdc.harmonize` (and the recipe's derived
    layers computed with :data:`esdc.derive.FUNCTIONS` from the written layers), so the
    paths differ only in how they regrid, schedule and write.
regrid fast path
    Separately, :func:`esdc.regrid.regrid` with ``fast_path=True`` (block reductions
    of aligned integer-factor grids) against ``fast_path=False`` (pyresample
    ``BucketResampler``) on one source (the GSHHG land mask, 2160 x 4320 onto the
    global 0.25 degree grid, ``bucket_average`` and ``bucket_mode``), input already
    in memory, best of 3, 2 threads; the two results are checked to be identical.

Source files are read once before any timing so every path sees a warm page cache.
Ratios are of wall seconds: ``ratio_to_io_floor = esdc / io_floor`` (1 would be
perfect) and ``ratio_to_naive = esdc / naive`` (below 1: esdc is faster). CPU
seconds (user + system, summed over the process tree) are reported beside them:
they are less disturbed than wall time when other programs share the machine, whose
load average at the start is recorded in ``machine.load_avg_1min``.

How to run
----------
With the samples cached (``esdc samples fetch --all``)::

    ESDC_CACHE=/tmp/esdc-cache python benchmarks/bench_build.py            # full earth recipe
    ESDC_CACHE=/tmp/esdc-cache python benchmarks/bench_build.py --quick    # about a minute
    ESDC_CACHE=/tmp/esdc-cache python benchmarks/bench_build.py --json     # one JSON object

``--quick`` builds a reduced recipe (120 x 120 degree bbox, 12 months) instead of the
full one. ``--resolution R`` builds on an R degree grid (:func:`recipe_at`),
``--workers N`` on N worker processes, ``--store icechunk`` builds into an Icechunk
repository (the floor still writes a Zarr folder), ``--esdc-only`` skips the baselines and
``--no-naive`` the naive one; ``layer_seconds`` and ``phase_seconds`` profile the build
(:mod:`_build_profile`; ``--no-profile`` skips the per-layer runs). Stores are written
to a temporary folder that is removed at the end, or under ``--out-dir`` (kept).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _build_profile  # benchmarks/_build_profile.py: per-layer seconds from the task stream
import _machine  # benchmarks/_machine.py: machine and versions
import dask
import numpy as np
import psutil
import scipy.stats
import xarray as xr

from esdc.build import plan
from esdc.cluster import local_cluster
from esdc.derive import FUNCTIONS
from esdc.grid import Grid
from esdc.harmonize import align_series, cf_attrs, decode, place_climatology
from esdc.recipe import GridSpec, Recipe, SourceSpec, VariableSpec, load_recipe
from esdc.regrid import aligned_blocks, regrid
from esdc.sources import Geolocated, open_source
from esdc.storage import encoding, open_cube, resolve

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = REPO / "recipes" / "earth.yaml"
N_WORKERS = 2  # LocalCluster workers (processes x 1 thread); --workers N
STORE = "zarr"  # the esdc build's target kind (--store): "zarr" or "icechunk"
#: The reduced case of ``--quick``: a 120 x 120 degree box (Africa, Europe, the
#: Atlantic and the western Indian Ocean; it crosses the OSTIA band) over 12 months.
QUICK_BBOX = [-60.0, -60.0, 60.0, 60.0]
QUICK_TIME = {"start": "2006-04-01", "end": "2007-03-01", "freq": "MS"}
FAST_PATH_SOURCE = "land_mask"
MB = 1e6


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- helpers


class TreeMonitor:
    """Peak resident memory and CPU time of this process and all its descendants.

    A daemon thread sums ``psutil`` RSS over the process tree every ``interval``
    seconds between ``__enter__`` and ``__exit__``, and keeps each process's last
    seen CPU time (user + system), so ``cpu_seconds`` also counts processes that
    end before ``__exit__``. CPU seconds are less disturbed than wall seconds when
    other programs share the machine.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.proc = psutil.Process()
        self.start_mb = self.peak_mb = 0.0
        self._cpu0: dict[int, float] = {}
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> float:
        rss = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    cpu = p.cpu_times()
                self._cpu[p.pid] = cpu.user + cpu.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return rss / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self._sample())

    @property
    def cpu_seconds(self) -> float:
        return sum(c - self._cpu0.get(pid, 0.0) for pid, c in self._cpu.items())

    def __enter__(self) -> TreeMonitor:
        self.start_mb = self.peak_mb = self._sample()
        self._cpu0 = dict(self._cpu)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._sample())


@contextmanager
def timer(out: dict[str, float], key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        out[key] = time.perf_counter() - t0


def store_mb(path: Path) -> float:
    """Bytes on disk of a store, in MB."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / MB


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def quick_recipe(recipe: Recipe) -> Recipe:
    """The reduced case: same sources and storage, smaller bbox and time axis."""
    d = recipe.to_dict()
    d["name"] = f"{recipe.name}_quick"
    d["grid"]["bbox"] = QUICK_BBOX
    if "time" in d["grid"]:
        d["grid"]["time"] = QUICK_TIME
    return Recipe.from_dict(d)


def recipe_at(recipe: Recipe, resolution: float) -> Recipe:
    """The recipe on a grid of ``resolution`` degrees, chunks and sources unchanged.

    A bucket method cannot put a source onto cells smaller than its pixels (esdc refuses
    it: stripes of empty cells), so a variable whose source is coarser than the new grid
    is switched to ``conservative`` (its area mean, which also holds when upsampling)
    for ``bucket_average`` and to ``nearest`` for ``bucket_mode``; returned in
    ``recipe_changes`` by :func:`main`.
    """
    d = recipe.to_dict()
    d["name"] = f"{recipe.name}_{resolution:g}deg".replace(".", "p")
    d["grid"]["resolution"] = resolution
    for spec, sd in zip(recipe.sources, d["sources"], strict=True):
        sdx, sdy = open_source(spec).resolution
        if max(sdx, sdy) <= resolution * (1 + 1e-6):
            continue
        for vd in sd["variables"]:
            method = vd.get("resampling")
            if method in ("bucket_average", "bucket_mode"):
                vd["resampling"] = "conservative" if method == "bucket_average" else "nearest"
                vd["allow_upsampling"] = True
                CHANGES.append(f"{vd['name']}: {method} -> {vd['resampling']} (source pixel "
                               f"{max(sdx, sdy):.4g} > {resolution:g} deg)")
    return Recipe.from_dict(d)


CHANGES: list[str] = []  # the method changes recipe_at made


def warm_page_cache(recipe: Recipe) -> None:
    """Read every source file once so that no path pays for a cold disk."""
    for spec in recipe.sources:
        with open(open_source(spec).path, "rb") as f:
            while f.read(1 << 24):
                pass


def machine() -> dict[str, Any]:
    return _machine.machine()


def versions() -> dict[str, str]:
    return _machine.versions(("esdc", "numpy", "scipy", "xarray", "dask", "distributed", "zarr",
                              "pyresample"))


def start_cluster() -> tuple[Any, float]:
    """A client on the CLI's LocalCluster (``N_WORKERS`` processes), and its start seconds."""
    from distributed import Client

    t0 = time.perf_counter()
    client = Client(local_cluster(N_WORKERS, silence_logs=logging.ERROR))
    client.wait_for_workers(N_WORKERS)
    return client, time.perf_counter() - t0


def stop_cluster(client: Any) -> None:
    cluster = client.cluster
    client.close()
    cluster.close()


# --------------------------------------------------------------------------- esdc


def run_esdc(recipe: Recipe, target: Path, client: Any) -> dict[str, Any]:
    """Build the cube as ``esdc build`` does; time plan and write; sample the RSS.

    The workers' task stream gives the task seconds (:func:`_profile_keys`).
    """
    from distributed import get_task_stream

    t: dict[str, float] = {}
    with TreeMonitor() as mon:
        with timer(t, "plan"):
            ds = plan(recipe)
        with timer(t, "write"), get_task_stream(client) as ts:
            resolve(target, store=STORE).write(ds, chunks=dict(recipe.output.chunks),
                                  compressor=recipe.output.compressor, overwrite=True,
                                  client=client)
    task_s, transfer_s = _build_profile.stream_seconds(ts.data)
    return {"seconds": t["plan"] + t["write"], "plan_seconds": t["plan"],
            "write_seconds": t["write"], "cpu_seconds": mon.cpu_seconds,
            "task_seconds": task_s, "transfer_seconds": transfer_s, "n_tasks": len(ts.data),
            "ds": ds, "peak_rss_mb": mon.peak_mb, "rss_before_mb": mon.start_mb,
            "output_mb": sum(v.nbytes for v in ds.data_vars.values()) / MB,
            "dims": {str(k): int(v) for k, v in ds.sizes.items() if k != "nv"},
            "variables": list(map(str, ds.data_vars))}


# --------------------------------------------------------------------------- I/O floor


def _covering(data: xr.DataArray, geo: Geolocated, grid: Grid) -> xr.DataArray:
    """The source pixels that cover the grid's bbox (one pixel of margin)."""
    if not geo.crs.equals(grid.pyproj_crs, ignore_axis_order=True):
        return data
    dx, dy = geo.resolution
    west, south, east, north = grid.bbox
    return data.sel({geo.ydim: slice(north + dy, south - dy),
                     geo.xdim: slice(west - dx, east + dx)})


def io_floor_read(recipe: Recipe, client: Any) -> tuple[float, float]:
    """Wall and CPU seconds to open every source and read + decode its pixels."""
    grid = recipe.grid.to_grid()
    with TreeMonitor() as mon:
        t0 = time.perf_counter()
        reads = []
        for spec in recipe.sources:
            geo = open_source(spec)
            for name in dict.fromkeys(v.source for v in spec.variables):
                reads.append(_covering(geo.data[name], geo, grid).data.max())
        client.gather(client.compute(reads))
        seconds = time.perf_counter() - t0
    return seconds, mon.cpu_seconds


def io_floor_write(cube: Path, target: Path, recipe: Recipe) -> tuple[float, float]:
    """Wall and CPU seconds to encode and write the cube's bytes (in memory), 2 threads."""
    src = open_cube(cube)
    ds = xr.Dataset({k: (v.dims, v.values) for k, v in src.data_vars.items()},
                    coords={k: src[k].values for k in src.dims if k in src.coords})
    src.close()
    chunks = dict(recipe.output.chunks)
    ds = ds.chunk({d: chunks.get(str(d), -1) for d in ds.dims})
    enc = encoding(ds, chunks, recipe.output.compressor)
    with TreeMonitor() as mon, dask.config.set(scheduler="threads", num_workers=N_WORKERS):
        t0 = time.perf_counter()
        ds.to_zarr(target, mode="w-", zarr_format=3, consolidated=False, encoding=enc)
        seconds = time.perf_counter() - t0
    return seconds, mon.cpu_seconds


# --------------------------------------------------------------------------- naive


def _mode(x: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
    """Most frequent value over ``axis`` (ties: the smallest), for coarsen.reduce."""
    x = np.moveaxis(x, axis, tuple(range(-len(axis), 0)))
    x = x.reshape(*x.shape[: -len(axis)], -1)
    return scipy.stats.mode(x, axis=-1, keepdims=False).mode


def naive_regrid(data: xr.DataArray, geo: Geolocated, grid: Grid,
                 var: VariableSpec) -> xr.DataArray:
    """Regrid an in-memory variable the way a user would with plain xarray."""
    ydim, xdim = geo.ydim, geo.xdim
    gy, gx = grid.y, grid.x
    (sdx, sdy), (gdx, gdy) = geo.resolution, grid.resolution
    fy, fx = round(gdy / sdy), round(gdx / sdx)
    integer = (abs(gdy / sdy - fy) < 1e-6 and abs(gdx / sdx - fx) < 1e-6
               and fx >= 1 and fy >= 1)
    out = None
    if var.resampling.startswith("bucket") and integer:
        west, south, east, north = grid.bbox
        sub = data.sel({ydim: slice(north, south), xdim: slice(west, east)})
        if sub.sizes[ydim] == fy * gy.size and sub.sizes[xdim] == fx * gx.size:
            blocks = sub.coarsen({ydim: fy, xdim: fx})
            out = blocks.mean() if var.resampling == "bucket_average" else blocks.reduce(_mode)
            out = out.assign_coords({ydim: gy, xdim: gx})
    if out is None:
        categorical = var.resampling in ("nearest", "bucket_mode")
        out = data.interp({ydim: gy, xdim: gx}, method="nearest" if categorical else "linear")
        if categorical:
            out = out.astype(data.dtype)
    if var.resampling != "bucket_mode":
        out = out.astype("float32")
    return out.rename({ydim: grid.dims[0], xdim: grid.dims[1]})


def run_naive(recipe: Recipe, target: Path) -> dict[str, float]:
    """Sequential load -> xarray regrid -> ``to_zarr`` append, variable by variable."""
    grid = recipe.grid.to_grid()
    chunks = dict(recipe.output.chunks)
    written: set[str] = set()
    with TreeMonitor() as mon, dask.config.set(scheduler="synchronous"):
        t0 = time.perf_counter()
        for spec in recipe.sources:
            geo = open_source(spec)
            loaded = geo.data[list(dict.fromkeys(v.source for v in spec.variables))].load()
            for var in spec.variables:
                da = decode(loaded[var.source], var)
                if spec.time == "series":
                    da = align_series(da, grid, spec.name)
                da = naive_regrid(da, geo, grid, var)
                if spec.time == "climatology_monthly":
                    da = place_climatology(da, grid)
                da = da.drop_vars([c for c in da.coords if c not in da.dims])
                da.attrs = cf_attrs(var, spec.name)  # not the file's (_FillValue, ...)
                ds = da.to_dataset(name=var.name)
                enc = {k: v for k, v in encoding(ds, chunks, recipe.output.compressor).items()
                       if k not in written}
                ds.to_zarr(target, mode="a" if written else "w-", zarr_format=3,
                           consolidated=False, encoding=enc)
                written.update(map(str, ds.variables))
                del da, ds
            del loaded
        # derived layers (e.g. the Linke climatology) with esdc's functions, as the build
        done = xr.open_zarr(target, consolidated=False)
        layers = {str(n): done[n] for n in done.data_vars}
        for d in recipe.derived:
            da = FUNCTIONS[d.function]([layers[n] for n in d.inputs], grid, **d.params)
            da = da.astype("float32").load()
            ds = da.drop_vars([c for c in da.coords if c not in da.dims]).to_dataset(name=d.name)
            enc = {k: v for k, v in encoding(ds, chunks, recipe.output.compressor).items()
                   if k not in written}
            ds.to_zarr(target, mode="a", zarr_format=3, consolidated=False, encoding=enc)
            written.update(map(str, ds.variables))
            layers[d.name] = da
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "cpu_seconds": mon.cpu_seconds, "peak_rss_mb": mon.peak_mb,
            "rss_before_mb": mon.start_mb}


def agreement(esdc_cube: Path, naive_cube: Path) -> dict[str, dict[str, float]]:
    """How far the naive cube is from the esdc one, per variable.

    Float variables: mean and median absolute difference where both are finite,
    and the fraction of cells where both agree on being missing or not.
    Categorical ones: the fraction of equal cells.
    """
    a, b = open_cube(esdc_cube), xr.open_zarr(naive_cube, consolidated=False)
    out = {}
    for name in a.data_vars:
        x, y = a[name].values, b[name].values
        if np.issubdtype(x.dtype, np.floating):
            both = np.isfinite(x) & np.isfinite(y)
            diff = np.abs(x[both].astype("float64") - y[both]) if both.any() else np.zeros(1)
            out[str(name)] = {
                "mean_abs_diff": float(diff.mean()),
                "median_abs_diff": float(np.median(diff)),
                "same_missing": float((np.isfinite(x) == np.isfinite(y)).mean()),
            }
        else:
            out[str(name)] = {"equal_fraction": float((x == y).mean())}
    return out


# --------------------------------------------------------------------------- fast path


def fast_path_comparison(recipe: Recipe, repeats: int = 3) -> dict[str, Any]:
    """``regrid(fast_path=True)`` vs ``fast_path=False`` on one aligned source."""
    grid = GridSpec(body=recipe.grid.body, crs=recipe.grid.crs, bbox=(-180, -90, 180, 90),
                    resolution=0.25).to_grid()
    candidates: list[SourceSpec] = sorted(recipe.sources,
                                          key=lambda s: s.name != FAST_PATH_SOURCE)
    for spec in candidates:
        geo = open_source(spec)
        variables = [v for v in spec.variables if v.resampling.startswith("bucket")]
        if variables and aligned_blocks(geo, grid) is not None:
            break
    else:
        raise SystemExit("no source of the recipe is block-aligned with a 0.25 degree grid")
    with dask.config.set(scheduler="threads", num_workers=N_WORKERS):
        inputs = {v.name: decode(geo.data[v.source], v).persist() for v in variables}

        def run(fast: bool) -> tuple[float, list[np.ndarray]]:
            best, result = float("inf"), []
            for _ in range(repeats):
                t0 = time.perf_counter()
                lazy = [regrid(inputs[v.name], geo, grid, v.resampling,
                               flag_values=v.flag_values, fast_path=fast).data
                        for v in variables]
                result = list(dask.compute(*lazy))
                best = min(best, time.perf_counter() - t0)
            return best, result

        fast_s, fast_out = run(True)
        slow_s, slow_out = run(False)
    identical = all(np.array_equal(f, s, equal_nan=np.issubdtype(f.dtype, np.floating))
                    for f, s in zip(fast_out, slow_out, strict=True))
    shape = tuple(int(n) for n in geo.data[variables[0].source].shape[-2:])
    return {"source": spec.name, "source_shape": shape, "grid_shape": grid.shape,
            "methods": {v.name: v.resampling for v in variables},
            "fast_seconds": fast_s, "pyresample_seconds": slow_s,
            "speedup": slow_s / fast_s, "identical": identical}


# --------------------------------------------------------------------------- driver


def _profile_keys(esdc: dict[str, Any], layers: dict[str, Any] | None) -> dict[str, Any]:
    """``layer_seconds`` and ``phase_seconds`` of the esdc build (see the module docstring)."""
    task_s = esdc["task_seconds"]
    phases = {
        "plan": round(esdc["plan_seconds"], 3),
        "write_wall": round(esdc["write_seconds"], 3),
        "task_seconds": round(task_s, 3),
        "transfer_seconds": round(esdc["transfer_seconds"], 3),
        # write wall beyond task seconds / workers: scheduler, inter-process traffic,
        # client hashing and journal, idle workers (the tail of an uneven graph)
        "scheduler_overhead": round(esdc["write_seconds"] - task_s / N_WORKERS, 3),
    }
    if layers:
        for p in _build_profile.PHASES:
            phases[f"{p}_sum_of_layers"] = round(sum(d[p] for d in layers.values()), 3)
    return {"layer_seconds": layers or {}, "phase_seconds": phases, "n_tasks": esdc["n_tasks"]}


def run(recipe: Recipe, workdir: Path, step: Callable[[str], None] = log,
        esdc_only: bool = False, profile: bool = True, naive_too: bool = True,
        ) -> dict[str, Any]:
    """Every path, in order; returns the result dict (see :func:`main`).

    With ``esdc_only`` only the esdc build runs (no I/O floor, naive baseline or fast
    path comparison): for memory and scaling runs at resolutions the baselines cannot
    take. With ``profile`` each layer is also run alone (:mod:`_build_profile`).
    """
    stores = {k: workdir / f"{recipe.name}-{k}.zarr" for k in ("esdc", "io_floor", "naive")}
    for p in stores.values():
        fresh(p)
    host = machine()  # before the run: its load average is the other processes'
    step("warming the page cache")
    warm_page_cache(recipe)

    step(f"starting the LocalCluster ({N_WORKERS} workers)")
    client, startup = start_cluster()
    try:
        step("esdc build" + ("" if esdc_only else " (first, on the fresh workers)"))
        esdc = first = run_esdc(recipe, stores["esdc"], client)
        gc.collect()
        if not esdc_only:  # the floor below runs on warm workers: so does the timed build
            first.pop("ds")
            fresh(stores["esdc"])  # a new store, as the floor's (no old cube to replace)
            step("esdc build (again, on the warm workers: timed against the floor)")
            esdc = run_esdc(recipe, stores["esdc"], client)
            gc.collect()
        layers = None
        if profile:
            step("per-layer profile")
            layers = _build_profile.layer_profile(recipe, esdc.pop("ds"), client, workdir,
                                                  _covering)
        esdc.pop("ds", None)
        if not esdc_only:
            step("I/O floor: reading the sources")
            read_s, read_cpu = io_floor_read(recipe, client)
    finally:
        stop_cluster(client)
    out_mb = esdc["output_mb"]
    common = {
        "recipe": recipe.name,
        "resolution": recipe.grid.resolution,
        "recipe_changes": list(CHANGES),
        "store": STORE,
        "dims": esdc["dims"],
        "variables": esdc["variables"],
        "output_mb": out_mb,
        "cluster": {"n_workers": N_WORKERS, "threads_per_worker": 1, "processes": True},
        "cluster_startup_seconds": startup,
        "esdc_seconds": esdc["seconds"],
        "esdc_plan_seconds": esdc["plan_seconds"],
        "esdc_write_seconds": esdc["write_seconds"],
        "peak_rss_mb": max(esdc["peak_rss_mb"], first["peak_rss_mb"]),
        "esdc_first_seconds": first["seconds"],
        "esdc_first_cpu_seconds": first["cpu_seconds"],
        "rss_before_build_mb": esdc["rss_before_mb"],
        **_profile_keys(esdc, layers),
        "throughput_per_worker_mb_s": out_mb / esdc["seconds"] / N_WORKERS,
        "throughput_mb_per_cpu_s": out_mb / esdc["cpu_seconds"],
    }
    if esdc_only:
        return {**common, "output_disk_mb": {"esdc": store_mb(stores["esdc"])},
                "cpu_seconds": {"esdc": esdc["cpu_seconds"]},
                "throughput_mb_s": {"esdc": out_mb / esdc["seconds"]},
                "machine": {**host, "load_avg_1min_end": round(os.getloadavg()[0], 2)},
                "versions": versions()}
    step("I/O floor: writing the cube's bytes")
    write_s, write_cpu = io_floor_write(stores["esdc"], stores["io_floor"], recipe)
    gc.collect()

    naive: dict[str, Any] = dict.fromkeys(("seconds", "cpu_seconds", "peak_rss_mb",
                                           "rss_before_mb"), float("nan"))
    agree: dict[str, Any] = {}
    if naive_too:
        step("naive xarray baseline")
        naive = run_naive(recipe, stores["naive"])
        gc.collect()
        step("comparing the naive cube with the esdc one")
        agree = agreement(stores["esdc"], stores["naive"])

    step("regrid fast path vs pyresample")
    fast = fast_path_comparison(recipe)

    floor_s = read_s + write_s
    return {
        **common,
        "output_disk_mb": {k: store_mb(p) for k, p in stores.items()},
        "io_floor_seconds": floor_s,
        "io_floor_read_seconds": read_s,
        "io_floor_write_seconds": write_s,
        "naive_seconds": naive["seconds"],
        "cpu_seconds": {"esdc": esdc["cpu_seconds"], "io_floor": read_cpu + write_cpu,
                        "naive": naive["cpu_seconds"]},
        "ratio_to_io_floor": esdc["seconds"] / floor_s,
        "ratio_to_io_floor_first_build": first["seconds"] / floor_s,
        "ratio_to_naive": esdc["seconds"] / naive["seconds"],
        "ratio_to_io_floor_cpu": esdc["cpu_seconds"] / (read_cpu + write_cpu),
        "throughput_mb_s": {"esdc": out_mb / esdc["seconds"], "io_floor": out_mb / floor_s,
                            "naive": out_mb / naive["seconds"]},
        "naive_peak_rss_mb": naive["peak_rss_mb"],
        "naive_rss_before_mb": naive["rss_before_mb"],
        "naive_vs_esdc": agree,
        "fast_path_speedup": fast["speedup"],
        "fast_path": fast,
        "machine": {**host, "load_avg_1min_end": round(os.getloadavg()[0], 2)},
        "versions": versions(),
    }


def print_profile(r: dict[str, Any]) -> None:
    """The per-layer and per-phase table of the esdc build."""
    print(f"esdc build profile (task seconds on the workers; {r['n_tasks']} tasks in the "
          "build, each layer also run alone):")
    print(f"{'layer':<18}{'read/decode':>12}{'regrid':>9}{'encode+write':>14}{'total':>8}"
          f"{'wall':>8}")
    for name, d in sorted(r["layer_seconds"].items(), key=lambda kv: -kv[1]["total"]):
        print(f"{name:<18}{d['read_decode']:>12.2f}{d['regrid']:>9.2f}"
              f"{d['encode_write']:>14.2f}{d['total']:>8.2f}{d['wall']:>8.2f}")
    print("phases: " + ", ".join(f"{k} {v:.2f}" for k, v in r["phase_seconds"].items()))


def print_table(r: dict[str, Any]) -> None:
    dims = ", ".join(f"{k}={v}" for k, v in r["dims"].items())
    disk = r["output_disk_mb"]
    tp = r["throughput_mb_s"]
    m = r["machine"]
    print(f"recipe {r['recipe']}: {dims}; {len(r['variables'])} variables, "
          f"{r['output_mb']:.0f} MB uncompressed")
    print(f"machine: {m['cpu_count']} CPUs ({m['cpu_model']}), {m['ram_gb']} GiB RAM, load "
          f"average {m['load_avg_1min']} at the start, {m['load_avg_1min_end']} at the end; "
          f"LocalCluster {N_WORKERS} processes x 1 thread, started in "
          f"{r['cluster_startup_seconds']:.1f} s (not counted)")
    print()
    cpu = r["cpu_seconds"]
    if "io_floor_seconds" not in r:  # --esdc-only
        print(f"esdc: {r['esdc_seconds']:.2f} s (plan {r['esdc_plan_seconds']:.2f} s), "
              f"{cpu['esdc']:.1f} CPU s, {tp['esdc']:.1f} MB/s "
              f"({r['throughput_per_worker_mb_s']:.1f} per worker), peak RSS "
              f"{r['peak_rss_mb']:.0f} MB (before {r['rss_before_build_mb']:.0f} MB)")
        print_profile(r)
        return
    print(f"{'path':<34}{'seconds':>9}{'CPU s':>8}{'MB/s out':>10}{'on disk MB':>12}"
          f"{'esdc / path':>13}")
    rows = [
        ("esdc (plan + write)", r["esdc_seconds"], cpu["esdc"], tp["esdc"], disk["esdc"],
         1.0),
        (f"  plan {r['esdc_plan_seconds']:.2f} s, write {r['esdc_write_seconds']:.2f} s; the "
         f"first build, on fresh workers: {r['esdc_first_seconds']:.2f} s "
         f"({r['ratio_to_io_floor_first_build']:.2f}x the floor)",),
        ("I/O floor (read + write)", r["io_floor_seconds"], cpu["io_floor"], tp["io_floor"],
         disk["io_floor"], r["ratio_to_io_floor"]),
        (f"  read {r['io_floor_read_seconds']:.2f} s, write "
         f"{r['io_floor_write_seconds']:.2f} s",),
        ("naive xarray, synchronous", r["naive_seconds"], cpu["naive"], tp["naive"],
         disk["naive"], r["ratio_to_naive"]),
    ]
    for row in rows:
        if len(row) == 1:
            print(row[0])
        else:
            name, s, c, t, d, ratio = row
            print(f"{name:<34}{s:>9.2f}{c:>8.1f}{t:>10.1f}{d:>12.1f}{ratio:>13.2f}")
    print()
    print(f"peak RSS, esdc build (process tree, workers included): {r['peak_rss_mb']:.0f} MB "
          f"(before: {r['rss_before_build_mb']:.0f} MB); naive: "
          f"{r['naive_peak_rss_mb']:.0f} MB (before: {r['naive_rss_before_mb']:.0f} MB)")
    print_profile(r)
    f = r["fast_path"]
    print(f"regrid fast path ({f['source']} {f['source_shape'][0]}x{f['source_shape'][1]} -> "
          f"{f['grid_shape'][0]}x{f['grid_shape'][1]}, {', '.join(f['methods'].values())}): "
          f"{f['fast_seconds']:.3f} s vs pyresample {f['pyresample_seconds']:.3f} s = "
          f"{f['speedup']:.1f}x faster, identical: {f['identical']}")
    print("naive vs esdc cube:")
    for name, d in r["naive_vs_esdc"].items():
        print(f"  {name:<18}" + ", ".join(f"{k} {v:.4g}" for k, v in d.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="reduced case: 120 x 120 degree bbox, 12 months (about a minute)")
    p.add_argument("--json", action="store_true", help="print one JSON object only")
    p.add_argument("--out-dir", type=Path,
                   help="write the stores here and keep them (default: a temporary folder, "
                        "removed at the end)")
    p.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE, help="recipe YAML")
    p.add_argument("--resolution", type=float,
                   help="grid resolution in degrees (default: the recipe's, 0.25); bucket "
                        "methods of sources coarser than it become conservative / nearest")
    p.add_argument("--workers", type=int, default=2,
                   help="LocalCluster worker processes (1 thread each; default 2)")
    p.add_argument("--no-profile", action="store_true",
                   help="skip the per-layer profile (each layer run alone after the build)")
    p.add_argument("--no-naive", action="store_true",
                   help="skip the naive baseline (it needs 13 GB for the full cube)")
    p.add_argument("--esdc-only", action="store_true",
                   help="only the esdc build (no I/O floor, naive baseline or fast path)")
    p.add_argument("--store", choices=("zarr", "icechunk"), default="zarr",
                   help="the esdc build's target: a Zarr folder (default) or an Icechunk "
                        "repository (needs esdc[icechunk]); the floor writes Zarr")
    args = p.parse_args(argv)

    globals()["N_WORKERS"] = args.workers
    globals()["STORE"] = args.store
    recipe = load_recipe(args.recipe)
    if args.resolution is not None:
        recipe = recipe_at(recipe, args.resolution)
    if args.quick:
        recipe = quick_recipe(recipe)
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        workdir = args.out_dir
    else:
        workdir = Path(tempfile.mkdtemp(prefix="esdc-bench-"))
    try:
        result = run(recipe, workdir, esdc_only=args.esdc_only,
                     profile=not args.no_profile, naive_too=not args.no_naive)
    finally:
        if args.out_dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    result["quick"] = args.quick
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
