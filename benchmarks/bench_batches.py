"""Benchmark esdc's patch loader against plain xbatcher and a raw Zarr + NumPy floor.

What is compared
----------------
All paths read the same cube (a Zarr v3 store written here with xarray: float32
``(time, lat, lon)`` variables, chunks ``6 x 256 x 256``, Blosc zstd level 3 with byte
shuffle as :func:`esdc.storage.encoding` writes it, consolidated metadata and
``esdc_statistics`` stored with :func:`esdc.ml.stats.write_statistics`) and the same
variables, cut into the same ``C x 64 x 64`` patches (one time step each, no overlap),
in one run on the same machine:

esdc
    :class:`esdc.ml.patches.PatchStream` ``.batches(64)``, shuffled (seeded unit order
    and shuffle buffer), normalised with the stored statistics, in this process
    (``samples_per_s["esdc"]``); then through :class:`esdc.ml.torch.PatchDataset` and
    :func:`esdc.ml.torch.patch_loader` (``torch.utils.data.DataLoader(batch_size=None,
    num_workers=N, multiprocessing_context="forkserver", persistent_workers=True,
    prefetch_factor=<one work unit's messages>)``, 4 batches a message, handed out one
    by one) with 1 and 2 workers. A loader's
    first epoch includes starting its workers; its throughput is taken from the second
    epoch (the workers are running) and the 2-worker / 1-worker ratio is
    ``workers_2_vs_1``. Every path checks that it delivered every patch of the
    cube exactly once per epoch.
plain xbatcher
    ``xbatcher.BatchGenerator(ds[variables].to_dataarray("channel"), input_dims={"time": 1,
    "lat": 64, "lon": 64})`` on the cube opened with ``xarray.open_zarr`` (Dask chunks =
    Zarr chunks), wrapped in ``xbatcher.loaders.torch.MapDataset`` and
    ``DataLoader(batch_size=64, shuffle=True)`` (``num_workers=0``, and 2 for the
    like-for-like worker comparison). It decompresses a whole chunk per patch and runs
    at a few hundred patches per second, so only ``--xbatcher-samples`` patches are
    timed (after the first batch) and patches per second are extrapolated from them.
raw floor
    What no loader can beat on this cube without skipping work: every chunk file of
    each variable read once (``Path.read_bytes``) and decompressed with numcodecs' Blosc
    straight into a ``(C, 6, 256, 256)`` block, which is cut into contiguous ``(N, C,
    64, 64)`` patches with one NumPy reshape / transpose copy; no zarr, no shuffle, no
    normalisation, no NaN mask, no torch. Also run in 2 processes (the chunks split in
    two) as the floor of the 2-worker loader. ``raw_floor_zarr`` is the same through
    ``zarr.open_array(...)[chunk slice]`` (one process): the floor before session 7,
    which pays zarr's per-chunk overhead that esdc's direct chunk reads
    (:func:`esdc.ml.cutting.read_into`) skip, so esdc could beat it.

Main ratios: ``speedup_vs_xbatcher = esdc / xbatcher`` and ``fraction_of_floor = esdc /
raw_floor``, all three in one process (the ``*_2_workers`` variants compare the
2-worker loaders with the 2-process floor). Aims of the issue: speedup >= 100,
fraction >= 0.85, ``workers_2_vs_1 >= 1.6``, ``first_batch_s <= 2`` (from constructing
the ``PatchStream``, i.e. opening the cube, to the first batch in hand; the shuffle
buffer of 4096 patches is filled first). ``first_batch_without_stats_s`` is the same
on the cube before its statistics were stored (the stream computes them: one full
pass). Peak memory is the RSS summed over the process tree (DataLoader workers and the
forkserver included; pages shared between processes are counted once per process),
sampled every 20 ms in a thread, one figure per path. ``fraction_of_floor_paired`` and
``workers_2_vs_1_paired`` are the same ratios taken within rounds that time each path
back to back (``--paired-rounds``, 7), medians over the rounds; a round times each path
over as many epochs as hold about one full-cube epoch of patches (1 epoch on the full
cube, 5 ``--quick``: a single ``--quick`` epoch of 2 workers lasts about 0.1 s, half of
it the shuffle buffer's fill, and single-round ratios ranged 0.9-2.5): on a machine
whose speed drifts within minutes they do not compare one path's fast minute with
another's slow one, as the best-of-epochs ratios may. A round's stream epoch ends by
stopping its read of the next epoch's first units where consecutive epochs would
(``PatchStream.stop_reading_ahead``): that read neither runs on into the floor's time
nor is waited for to the end of a pool's fill.

Every path reads a warm page cache (the cube was just written); cold reads from disk
are not measured. Timings are the best of ``--repeats`` epochs (3; 8 with ``--quick``);
they depend on the machine and on what else runs on it (the load average is reported):
compare runs on the same machine. Each path also reports the CPU seconds of the process tree
(``samples_per_cpu_s``, ``fraction_of_floor_cpu``, ``speedup_vs_xbatcher_cpu``) and
``cpus_busy`` (CPU seconds / wall seconds): the work per patch does not depend on how
many CPUs other jobs leave free, the wall-clock rates and ``workers_2_vs_1`` do.

DataLoader workers are started with ``forkserver``; by default each worker imports the
benchmark's ``__main__`` (torch, xarray, esdc) itself, which dominates a loader's
first batch. ``--forkserver-preload`` imports those modules once in the forkserver
(``multiprocessing.set_forkserver_preload``), as a training script may do.

How to run
----------
::

    python benchmarks/bench_batches.py --quick        # ~230 MB cube, about a minute
    python benchmarks/bench_batches.py                # ~1.1 GB cube, a few minutes
    python benchmarks/bench_batches.py --json         # one JSON object on stdout
    python benchmarks/bench_batches.py --out-dir /tmp/bench   # keep (and reuse) the cube
    python benchmarks/bench_batches.py --forkserver-preload   # workers start faster
    python benchmarks/bench_batches.py --quick --shards       # sharded vs unsharded reads
    python benchmarks/bench_batches.py --quick --workers 4    # DataLoader with 1..4 workers

``--workers N`` (default 2) times the DataLoader with 1, 2, ..., N workers: ``workers``
gives, per worker count, patches per second, per worker and per CPU second, CPUs busy,
CPU microseconds per patch of the main process and of the workers (``cpu_us_per_patch``:
where the CPU goes) and the load average then (``workers_2_vs_1`` and
``workers_2_vs_1_cpu`` from it; ``raw_floor_2_vs_1``: the raw floor's two processes over
its one, the same run's measure of how this machine scales the same decompression).
Each worker decodes with one zarr thread (``PatchDataset(worker_threads=1)``) and hands
its batches over in reused shared-memory slots. The DataLoaders are
:func:`esdc.ml.torch.patch_loader`'s: persistent workers and a prefetch of one work
unit's messages per worker (3 of 4 batches each, on the full cube and ``--quick``);
``--prefetch-factor N`` sets another.

``--shards [TIME,LAT,LON]`` (default ``6,512,512``: 4 chunks of ``6 x 256 x 256`` per
shard) copies the cube into a Zarr v3 store with the same chunks inside shard files
(:func:`esdc.storage.encoding` with ``shards=``) and times
:class:`~esdc.ml.patches.PatchStream` ``.batches(64)`` on both: files per store, patches
per second (``sharded_vs_unsharded``, also as ``sharded_vs_plain`` and per CPU second
``sharded_vs_plain_cpu``; the aim is >= 1: a stream reads whole shards, one read per
file) and that both deliver the same patches. Nothing else is run then.

Progress goes to stderr. The cube is written to a temporary folder that is removed at
the end unless ``--keep`` or ``--out-dir`` is given.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _machine  # benchmarks/_machine.py: machine and versions
import dask.array as dsa
import numpy as np
import psutil
import torch
import xarray as xr
import zarr
from scipy import ndimage

from esdc.ml.patches import PatchStream
from esdc.ml.stats import cube_statistics, normalisation, read_statistics, write_statistics
from esdc.ml.torch import PatchDataset, patch_loader
from esdc.recipe import CompressorSpec
from esdc.storage import encoding, open_cube
from esdc.testing import new_cube

#: Cube shapes ``(time, lat, lon)``: full is 1.1 GB, quick 226 MB of float32 (2 variables).
CASES = {"full": (66, 1024, 2048), "quick": (24, 768, 1536)}
CHUNKS = {"time": 6, "lat": 256, "lon": 256}
VARIABLES = ("air_temperature", "leaf_area_index")
PATCH = (64, 64)
BATCH = 64
MB = 1e6
CTX = "forkserver"  # forking after Dask's thread pool ran deadlocks (shared/STACK.md)
AIMS = {"speedup_vs_xbatcher": 100.0, "fraction_of_floor": 0.85, "workers_2_vs_1": 1.6,
        "first_batch_s": 2.0}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- helpers


class RssSampler:
    """Peak RSS of this process and its descendants, sampled in a daemon thread.

    The list of descendants is refreshed every ``refresh`` seconds only: listing them
    reads every process of the machine (about 2 ms of CPU), which every 20 ms would take
    a tenth of a CPU from the loader being measured; reading the RSS of known processes
    costs tens of microseconds.
    """

    def __init__(self, interval: float = 0.02, refresh: float = 0.25) -> None:
        self.interval, self.refresh = interval, refresh
        self.proc = psutil.Process()
        self.start_mb = self.peak_mb = 0.0
        self._procs: list[psutil.Process] = [self.proc]
        self._listed = -float("inf")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def tree_mb(self, relist: bool = True) -> float:
        if relist or time.perf_counter() - self._listed > self.refresh:
            self._procs = [self.proc, *self.proc.children(recursive=True)]
            self._listed = time.perf_counter()
        total = 0
        for p in self._procs:
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self.tree_mb(relist=False))

    def __enter__(self) -> RssSampler:
        gc.collect()
        self.start_mb = self.peak_mb = self.tree_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.tree_mb())


def main_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process alone (all its threads)."""
    t = psutil.Process().cpu_times()
    return t.user + t.system


def tree_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process and its live descendants."""
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


class Clock:
    """Wall and CPU seconds (process tree) of a block; :meth:`paused` leaves a part out.

    The CPU seconds do not depend on how many CPUs the other jobs on the machine leave
    free (the wall seconds do), so ``samples_per_cpu_s`` compares the work of the paths.
    """

    def __enter__(self) -> Clock:
        self.wall, self.cpu = -time.perf_counter(), -tree_cpu_s()
        self.main = -main_cpu_s()
        self.load = os.getloadavg()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter()
        self.cpu += tree_cpu_s()
        self.main += main_cpu_s()

    @contextmanager
    def paused(self) -> Iterator[None]:
        w, c, m = time.perf_counter(), tree_cpu_s(), main_cpu_s()
        try:
            yield
        finally:
            self.wall -= time.perf_counter() - w
            self.cpu -= tree_cpu_s() - c
            self.main -= main_cpu_s() - m

    def result(self, samples: int) -> dict[str, Any]:
        """Rates, CPU seconds and where they went: this (main) process and the others."""
        per = 1e6 / samples if samples else float("nan")
        return {"samples": samples, "seconds": self.wall, "samples_per_s": rate(
            samples, self.wall), "cpu_s": self.cpu, "samples_per_cpu_s": rate(
            samples, self.cpu), "cpus_busy": self.cpu / self.wall,
            "cpu_us_per_sample": {"main": self.main * per,
                                  "others": (self.cpu - self.main) * per},
            "load_avg_1min": round(self.load, 2)}


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run (wall), with the wall seconds of all runs."""
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["runs_s"] = [round(r["seconds"], 4) for r in runs]
    return best


def machine() -> dict[str, Any]:
    m = _machine.machine()
    m["load_avg_1min_start"] = m.pop("load_avg_1min")
    return m


def versions() -> dict[str, str]:
    return _machine.versions(("esdc", "numpy", "xarray", "dask", "zarr", "numcodecs",
                              "xbatcher", "torch"))


def store_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / MB


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


# --------------------------------------------------------------------------- the cube


def _fields(rng: np.random.Generator, t0: int, nt: int, ny: int, nx: int,
            base: np.ndarray) -> np.ndarray:
    """``(nt, ny, nx)`` smooth random fields (a compressible, not constant, signal).

    A static coarse pattern plus a coarse anomaly per time step, bilinearly upsampled,
    a seasonal cycle varying with latitude, and small cell-scale noise.
    """
    out = np.empty((nt, ny, nx), dtype="float32")
    lat = np.linspace(1.0, -1.0, ny, dtype="float32")[:, None]
    for i in range(nt):
        coarse = base + 0.3 * rng.standard_normal(base.shape).astype("float32")
        f = ndimage.zoom(coarse, (ny / coarse.shape[0], nx / coarse.shape[1]), order=1)
        season = np.float32(np.sin(2 * np.pi * (t0 + i) / 12.0)) * lat
        out[i] = f[:ny, :nx] + season + 0.02 * rng.standard_normal((ny, nx), dtype="float32")
    return out


def build_cube(path: Path, shape: tuple[int, int, int], seed: int = 0) -> dict[str, Any]:
    """Write the benchmark cube (no statistics yet) time chunk by time chunk."""
    nt, ny, nx = shape
    t0 = time.perf_counter()
    ds = new_cube(shape=(ny, nx), times=nt, variables=())
    for v in VARIABLES:
        ds[v] = xr.DataArray(dsa.zeros(shape, chunks=tuple(CHUNKS.values()), dtype="float32"),
                             dims=("time", "lat", "lon"),
                             attrs={"units": "1", "long_name": f"synthetic {v}",
                                    "grid_mapping": "crs"})
    ds.attrs["bench_batches_shape"] = list(shape)
    ds.attrs["bench_batches_seed"] = seed
    ds.to_zarr(path, mode="w-", compute=False, zarr_format=3, consolidated=False,
               encoding=encoding(ds, CHUNKS, CompressorSpec()))
    rng = np.random.default_rng(seed)
    cy, cx = ny // 64 + 2, nx // 64 + 2
    bases = {v: rng.standard_normal((cy, cx)).astype("float32") for v in VARIABLES}
    # leaf_area_index is undefined over "ocean": ~15% of the cells are NaN, as in real cubes
    ocean = ndimage.zoom(bases[VARIABLES[1]], (ny / cy, nx / cx), order=1)[:ny, :nx] < -0.67
    ct = CHUNKS["time"]
    for t in range(0, nt, ct):
        n = min(ct, nt - t)
        air = 280.0 + 8.0 * _fields(rng, t, n, ny, nx, bases[VARIABLES[0]])
        lai = np.clip(2.0 + _fields(rng, t, n, ny, nx, bases[VARIABLES[1]]), 0.0, None)
        lai[:, ocean] = np.nan
        part = xr.Dataset({VARIABLES[0]: (("time", "lat", "lon"), air.astype("float32")),
                           VARIABLES[1]: (("time", "lat", "lon"), lai.astype("float32"))})
        part.to_zarr(path, region={"time": slice(t, t + n), "lat": slice(0, ny),
                                   "lon": slice(0, nx)}, zarr_format=3, consolidated=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        zarr.consolidate_metadata(str(path), zarr_format=3)
    seconds = time.perf_counter() - t0
    raw = len(VARIABLES) * nt * ny * nx * 4 / MB
    disk = store_mb(path)
    return {"shape": {"time": nt, "lat": ny, "lon": nx}, "chunks": dict(CHUNKS),
            "variables": list(VARIABLES), "dtype": "float32",
            "compressor": "blosc zstd clevel 3 shuffle", "uncompressed_mb": round(raw, 1),
            "disk_mb": round(disk, 1), "compression_ratio": round(raw / disk, 2),
            "nan_fraction": {VARIABLES[0]: 0.0, VARIABLES[1]: round(float(ocean.mean()), 3)},
            "build_s": round(seconds, 2)}


def store_statistics(path: Path) -> float:
    """Compute and store ``esdc_statistics``; seconds taken."""
    t0 = time.perf_counter()
    write_statistics(path, cube_statistics(open_cube(path), list(VARIABLES)))
    return time.perf_counter() - t0


def has_statistics(path: Path) -> bool:
    ds = open_cube(path)
    return all("esdc_statistics" in ds[v].attrs for v in VARIABLES)


# --------------------------------------------------------------------------- raw floor


def _chunk_slices(shape: tuple[int, int, int]) -> list[tuple[slice, slice, slice]]:
    nt, ny, nx = shape
    ct, cy, cx = CHUNKS["time"], CHUNKS["lat"], CHUNKS["lon"]
    return [(slice(t, min(t + ct, nt)), slice(y, min(y + cy, ny)), slice(x, min(x + cx, nx)))
            for t in range(0, nt, ct) for y in range(0, ny, cy) for x in range(0, nx, cx)]


def _cut_patches(block: np.ndarray) -> np.ndarray:
    """``(C, t, y, x)`` block -> contiguous ``(N, C, ph, pw)`` patches (the one copy)."""
    nc, nt, ny, nx = block.shape
    ph, pw = PATCH
    gy, gx = ny // ph, nx // pw
    return (block[:, :, : gy * ph, : gx * pw]
            .reshape(nc, nt, gy, ph, gx, pw)
            .transpose(1, 2, 4, 0, 3, 5)
            .reshape(-1, nc, ph, pw))


def floor_read(path: str, chunks: list[tuple[slice, slice, slice]]) -> tuple[int, float]:
    """Decode each chunk file of every variable once and cut it; (patches, checksum).

    The files are read and decompressed with numcodecs' Blosc directly (the cube is an
    unsharded local Zarr v3 store: ``bytes`` + ``blosc`` codecs, C order), each chunk
    straight into its channel of the block.
    """
    import numcodecs.blosc

    arrays = [zarr.open_array(f"{path}/{v}", mode="r") for v in VARIABLES]
    ct, cy, cx = CHUNKS["time"], CHUNKS["lat"], CHUNKS["lon"]
    block = np.empty((len(arrays), ct, cy, cx), dtype="float32")
    n, check = 0, 0.0
    for ts, ys, xs in chunks:
        coords = (ts.start // ct, ys.start // cy, xs.start // cx)
        for c, (v, a) in enumerate(zip(VARIABLES, arrays, strict=True)):
            data = Path(path, v, a.metadata.encode_chunk_key(coords)).read_bytes()
            numcodecs.blosc.decompress(data, block[c])
        patches = _cut_patches(block[:, : ts.stop - ts.start, : ys.stop - ys.start,
                                     : xs.stop - xs.start])
        n += len(patches)
        check += float(patches[-1, 0, 0, 0])
    return n, check


def floor_read_zarr(path: str, chunks: list[tuple[slice, slice, slice]]) -> tuple[int, float]:
    """:func:`floor_read` through ``zarr.open_array(...)[chunk slice]`` (the old floor)."""
    arrays = [zarr.open_array(f"{path}/{v}", mode="r") for v in VARIABLES]
    n, check = 0, 0.0
    for ts, ys, xs in chunks:
        block = np.empty((len(arrays), ts.stop - ts.start, ys.stop - ys.start,
                          xs.stop - xs.start), dtype="float32")
        for c, a in enumerate(arrays):
            block[c] = a[ts, ys, xs]
        patches = _cut_patches(block)
        n += len(patches)
        check += float(patches[-1, 0, 0, 0])
    return n, check


def _noop(_: int) -> int:
    return os.getpid()


def run_floor(path: Path, shape: tuple[int, int, int], repeats: int) -> dict[str, Any]:
    chunks = _chunk_slices(shape)
    runs = []
    with RssSampler() as rss:
        for _ in range(repeats):
            with Clock() as c:
                n, _check = floor_read(str(path), chunks)
            runs.append(c.result(n))
    out = {**best_of(runs), "peak_rss_mb": rss.peak_mb, "rss_before_mb": rss.start_mb}
    runs, checks = [], []
    for read in (floor_read, floor_read_zarr):  # both floors cut the same patches
        checks.append(read(str(path), chunks[:4]))
    if checks[0] != checks[1]:
        raise AssertionError(f"the two raw floors cut different patches: {checks}")
    with RssSampler() as rss_z:
        for _ in range(repeats):
            with Clock() as c:
                n, _check = floor_read_zarr(str(path), chunks)
            runs.append(c.result(n))
    out["zarr"] = {**best_of(runs), "peak_rss_mb": rss_z.peak_mb}
    # Two processes, the chunks split in two (the floor of a 2-worker loader).
    halves = [chunks[0::2], chunks[1::2]]
    runs = []
    with RssSampler() as rss2, ProcessPoolExecutor(
            2, mp_context=multiprocessing.get_context(CTX)) as pool:
        list(pool.map(_noop, range(4)))  # start the processes before timing
        for _ in range(repeats):
            with Clock() as c:
                n2 = sum(r[0] for r in pool.map(floor_read, [str(path)] * 2, halves))
            runs.append(c.result(n2))
    out["two_processes"] = {**best_of(runs), "peak_rss_mb": rss2.peak_mb}
    return out


# --------------------------------------------------------------------------- esdc


def first_batch_without_stats(path: Path) -> float:
    """Open -> first batch on a cube without stored statistics (computed on the fly)."""
    t0 = time.perf_counter()
    stream = PatchStream(path, VARIABLES, patch=PATCH, seed=0, shuffle=True)
    next(stream.batches(BATCH))
    return time.perf_counter() - t0


def check_batch(path: Path, x: np.ndarray, valid: np.ndarray, index: np.ndarray,
                k: int = 8) -> bool:
    """The first ``k`` patches of a batch equal the cube's cells, normalised (NaN -> 0)."""
    stats = read_statistics(open_cube(path), list(VARIABLES))
    assert stats is not None
    mean, scale = normalisation(stats, list(VARIABLES))
    arrays = [zarr.open_array(f"{path}/{v}", mode="r") for v in VARIABLES]
    ph, pw = PATCH
    for i in range(min(k, len(x))):
        t, y, x0 = (int(j) for j in index[i])
        raw = np.stack([a[t, y: y + ph, x0: x0 + pw] for a in arrays])
        want = (raw - mean[:, None, None]) / scale[:, None, None]
        ok = np.isnan(raw)
        if not (np.array_equal(~ok, valid[i]) and np.allclose(x[i][~ok], want[~ok],
                                                              rtol=1e-5, atol=1e-5)
                and np.all(x[i][ok] == 0.0)):
            return False
    return True


def _complete(index: np.ndarray, expected: int) -> bool:
    """Every patch once: as many unique ``(t, y, x)`` as expected, no duplicates."""
    return len(index) == expected == len(np.unique(index, axis=0))


def run_esdc_inprocess(path: Path, repeats: int) -> dict[str, Any]:
    """``PatchStream.batches`` in this process; first batch timed from opening the cube.

    Epoch 0 is timed from constructing the stream (opening the cube) to its last batch,
    the value check of its first batch left out; later epochs from ``batches()``.
    """
    runs, complete = [], []
    with RssSampler() as rss:
        with Clock() as c:
            t0 = time.perf_counter()
            stream = PatchStream(path, VARIABLES, patch=PATCH, seed=0, shuffle=True)
            open_s = time.perf_counter() - t0
            it = stream.batches(BATCH, epoch=0)
            first = next(it)
            first_s = time.perf_counter() - t0
            with c.paused():
                correct = check_batch(path, first.x, first.valid, first.index)
            seen = [first.index, *(b.index for b in it)]
        idx = np.concatenate(seen)
        runs.append(c.result(len(idx)))
        complete.append(_complete(idx, len(stream)))
        for epoch in range(1, repeats):
            with Clock() as c:
                seen = [b.index for b in stream.batches(BATCH, epoch=epoch)]
            idx = np.concatenate(seen)
            runs.append(c.result(len(idx)))
            complete.append(_complete(idx, len(stream)))
    return {"open_s": open_s, "first_batch_s": first_s, **best_of(runs),
            "complete": all(complete), "values_match_cube": correct,
            "peak_rss_mb": rss.peak_mb, "rss_before_mb": rss.start_mb}


def run_esdc_threads(path: Path, threads: int, repeats: int) -> dict[str, Any]:
    """``PatchStream.threaded_batches`` (``threads`` reading threads) in this process."""
    stream = PatchStream(path, VARIABLES, patch=PATCH, seed=0, shuffle=True)
    runs, complete = [], []
    with RssSampler() as rss:
        for epoch in range(repeats):
            with Clock() as c:
                idx = np.concatenate([b.index for b in stream.threaded_batches(
                    BATCH, epoch=epoch, threads=threads)])
            runs.append(c.result(len(idx)))
            complete.append(_complete(idx, len(stream)))
    return {"threads": threads, **best_of(runs), "complete": all(complete),
            "peak_rss_mb": rss.peak_mb}


def run_esdc_loader(path: Path, workers: int, repeats: int,
                    prefetch_factor: int | None = None) -> dict[str, Any]:
    """``PatchDataset`` through a DataLoader with ``workers`` persistent workers.

    Epoch 0 starts the workers (its first batch is timed from constructing the stream);
    the throughput is the best of the following ``repeats`` epochs, each timed from
    ``iter(loader)`` (the workers restart their shard: reopen the cube, refill the
    shuffle buffer) to its last batch. ``prefetch_factor``: DataLoader's (None:
    :func:`esdc.ml.torch.patch_loader`'s, one work unit's messages per worker).
    """
    runs, complete = [], []
    with RssSampler() as rss:
        with Clock() as c0:
            t0 = time.perf_counter()
            stream = PatchStream(path, VARIABLES, patch=PATCH, seed=0, shuffle=True)
            loader = patch_loader(PatchDataset(stream, batch_size=BATCH), workers,
                                  prefetch_factor=prefetch_factor, multiprocessing_context=CTX)
            prefetch_factor = loader.prefetch_factor
            it = iter(loader)
            _x, _valid, index = next(it)
            first_s = time.perf_counter() - t0
            idx = np.concatenate([index.numpy(), *(b[2].numpy() for b in it)])
        first_epoch = c0.result(len(idx))
        complete.append(_complete(idx, len(stream)))
        for _ in range(repeats):
            with Clock() as c:
                idx = np.concatenate([b[2].numpy() for b in loader])
            runs.append(c.result(len(idx)))
            complete.append(_complete(idx, len(stream)))
        del it, loader
    return {"workers": workers, "prefetch_factor": prefetch_factor,
            "first_batch_s": first_s, "first_epoch": first_epoch,
            **best_of(runs), "complete": all(complete),
            "peak_rss_mb": rss.peak_mb, "rss_before_mb": rss.start_mb}


def run_paired(path: Path, shape: tuple[int, int, int], rounds: int,
               prefetch_factor: int | None = None, epochs: int = 1) -> dict[str, Any]:
    """The main ratios again, each round timing one epoch of every path back to back.

    The best epochs of the separate runs above may come from different minutes of a
    machine whose speed drifts (a shared host): the raw floor at its fastest against esdc
    at its slowest, or the reverse. Here each of ``rounds`` rounds times one raw-floor
    epoch, one in-process ``PatchStream.batches`` epoch, and one epoch of each of the 1-
    and 2-worker DataLoaders (both kept running), and the ratios are taken within the
    round: ``fraction_of_floor_paired`` and ``workers_2_vs_1_paired`` are their medians.
    ``epochs``: consecutive epochs of each path timed together in a round (a path's
    epochs on a small cube are too short to time one by one).
    """
    chunks = _chunk_slices(shape)
    stream = PatchStream(path, VARIABLES, patch=PATCH, seed=0, shuffle=True)
    loaders = {w: patch_loader(
        PatchDataset(PatchStream(path, VARIABLES, patch=PATCH, seed=0, shuffle=True),
                     batch_size=BATCH), w, prefetch_factor=prefetch_factor,
        multiprocessing_context=CTX) for w in (1, 2)}
    for loader in loaders.values():  # start the workers, fill their buffers once
        for _ in loader:
            pass
    list(stream.batches(BATCH, epoch=0))
    rates: dict[str, list[float]] = {"raw_floor": [], "esdc": [], "loader_1": [],
                                     "loader_2": []}
    for r in range(rounds):
        with Clock() as c:
            n = sum(floor_read(str(path), chunks)[0] for _ in range(epochs))
        rates["raw_floor"].append(c.result(n)["samples_per_s"])
        with Clock() as c:
            n = sum(len(b.index) for e in range(epochs)
                    for b in stream.batches(BATCH, epoch=1 + r * epochs + e))
            # the next epoch's first units are read while this one drains, and no longer:
            # in consecutive epochs the next epoch's start stops that read (the stream's
            # reading threads read the rest); it must not run on into the floor's time
            stream.stop_reading_ahead()
        rates["esdc"].append(c.result(n)["samples_per_s"])
        for w, loader in loaders.items():
            with Clock() as c:
                n = sum(len(b[2]) for _ in range(epochs) for b in loader)
            rates[f"loader_{w}"].append(c.result(n)["samples_per_s"])
    del loaders
    fraction = [e / f for e, f in zip(rates["esdc"], rates["raw_floor"], strict=True)]
    workers = [b / a for a, b in zip(rates["loader_1"], rates["loader_2"], strict=True)]
    return {"rounds": rounds, "epochs_per_round": epochs, "samples_per_s": rates,
            "fraction_of_floor": fraction, "workers_2_vs_1": workers,
            "fraction_of_floor_median": float(np.median(fraction)),
            "workers_2_vs_1_median": float(np.median(workers))}


# --------------------------------------------------------------------------- xbatcher


def run_xbatcher(path: Path, samples: int, workers: int = 0) -> dict[str, Any]:
    """BatchGenerator -> xbatcher's torch MapDataset -> DataLoader(batch_size=64, shuffle).

    The first batch is timed from opening the cube (workers started included). Then a
    fresh iterator (persistent workers: no start-up) is timed over ``samples`` patches
    (whole batches) and patches per second are extrapolated from them.
    """
    import xbatcher
    from xbatcher.loaders.torch import MapDataset

    with RssSampler() as rss:
        t0 = time.perf_counter()
        ds = xr.open_zarr(path, consolidated=True)
        da = ds[list(VARIABLES)].to_dataarray("channel")  # MapDataset needs a DataArray
        gen = xbatcher.BatchGenerator(da, input_dims={"time": 1, "lat": PATCH[0],
                                                      "lon": PATCH[1]})
        generator_s = time.perf_counter() - t0
        kw: dict[str, Any] = {"num_workers": workers}
        if workers:
            kw.update(multiprocessing_context=CTX, persistent_workers=True)
        loader = torch.utils.data.DataLoader(MapDataset(gen), batch_size=BATCH, shuffle=True,
                                             generator=torch.Generator().manual_seed(0), **kw)
        first = next(iter(loader))
        first_s = time.perf_counter() - t0
        with Clock() as c:
            it = iter(loader)
            n = 0
            while n < samples:
                n += len(next(it))
        timed = c.result(n)
        del it, loader
    # Same cells as the cube: the first patch of the generator is cube[:, 0, :64, :64].
    arrays = [zarr.open_array(f"{path}/{v}", mode="r") for v in VARIABLES]
    raw = np.stack([a[0, : PATCH[0], : PATCH[1]] for a in arrays])
    same = bool(np.array_equal(np.asarray(gen[0].values).reshape(raw.shape), raw,
                               equal_nan=True))
    return {"workers": workers, "patches_per_epoch": len(gen), "generator_s": generator_s,
            "first_batch_s": first_s, "batch_shape": list(first.shape), **timed,
            "epoch_s_extrapolated": len(gen) / timed["samples_per_s"],
            "values_match_cube": same, "peak_rss_mb": rss.peak_mb,
            "rss_before_mb": rss.start_mb}


# --------------------------------------------------------------------------- run


def prepare(cube: Path, shape: tuple[int, int, int]) -> tuple[dict[str, Any], float | None]:
    """Write (or reuse) the cube and store its statistics; ``(info, first batch without
    statistics in seconds, None when reused)``."""
    info: dict[str, Any] = {}
    if (cube / "zarr.json").exists() and \
            open_cube(cube).attrs.get("bench_batches_shape") == list(shape):
        log(f"reusing the cube at {cube}")
        info["cube"] = {"reused": True, "disk_mb": round(store_mb(cube), 1),
                        "uncompressed_mb": round(len(VARIABLES) * np.prod(shape) * 4 / MB, 1)}
        if not has_statistics(cube):
            info["cube"]["stats_s"] = store_statistics(cube)
        first_nostats = None
    else:
        shutil.rmtree(cube, ignore_errors=True)
        log(f"writing a {len(VARIABLES)} x {shape} float32 cube to {cube}")
        info["cube"] = build_cube(cube, shape)
        log(f"  {info['cube']['uncompressed_mb']:.0f} MB, {info['cube']['disk_mb']:.0f} MB on "
            f"disk, {info['cube']['build_s']:.1f} s; first batch without stored statistics")
        first_nostats = first_batch_without_stats(cube)
        log("storing esdc_statistics")
        info["cube"]["stats_s"] = round(store_statistics(cube), 2)
    info["cube"]["patches_per_epoch"] = len(PatchStream(cube, VARIABLES, patch=PATCH))
    return info, first_nostats


def shard_copy(src: Path, dst: Path, shards: dict[str, int]) -> dict[str, Any]:
    """Copy the cube into a sharded store (same chunks, compressor, values and statistics)."""
    t0 = time.perf_counter()
    ds = open_cube(src)
    for v in ds.variables.values():
        v.encoding = {}
    enc = encoding(ds, CHUNKS, CompressorSpec(), shards=shards)
    ds.chunk(shards).to_zarr(dst, mode="w", zarr_format=3, consolidated=False, encoding=enc)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        zarr.consolidate_metadata(str(dst), zarr_format=3)
    return {"copy_s": round(time.perf_counter() - t0, 2), "disk_mb": round(store_mb(dst), 1)}


def data_files(path: Path) -> int:
    """Chunk (or shard) files of the benchmark's variables."""
    return sum(1 for v in VARIABLES for f in (path / v).rglob("*")
               if f.is_file() and f.name != "zarr.json")


def _all_patches(path: Path) -> str:
    """SHA-256 of every patch of an epoch, in ``(t, y, x)`` order (units differ by store)."""
    import hashlib

    parts = [(b.index, b.x) for b in PatchStream(path, VARIABLES, patch=PATCH,
                                                 shuffle=False).batches(BATCH)]
    index = np.concatenate([p[0] for p in parts])
    x = np.concatenate([p[1] for p in parts])
    order = np.lexsort(index.T[::-1])
    return hashlib.sha256(index[order].tobytes() + x[order].tobytes()).hexdigest()


def run_shards(cube: Path, shape: tuple[int, int, int], shards: dict[str, int],
               repeats: int) -> dict[str, Any]:
    """PatchStream on the cube and on a sharded copy: files, throughput, same patches."""
    info, _ = prepare(cube, shape)
    sharded = cube.with_name(cube.stem + "_sharded.zarr")
    shutil.rmtree(sharded, ignore_errors=True)
    log(f"copying the cube into {sharded} with shards {shards}")
    copy = shard_copy(cube, sharded, shards)
    paths = {}
    for name, path in (("unsharded", cube), ("sharded", sharded)):
        log(f"esdc PatchStream.batches, {name} cube")
        paths[name] = run_esdc_inprocess(path, repeats)
        paths[name]["files"] = data_files(path)
        log(f"  {paths[name]['samples_per_s']:,.0f} patches/s from {paths[name]['files']} files")
    a, b = (paths[k] for k in ("unsharded", "sharded"))
    same = _all_patches(cube) == _all_patches(sharded)
    return {"case": cube.stem.removeprefix("bench_batches_"), "chunks": dict(CHUNKS),
            "shards": dict(shards), "shard_copy": copy, **info,
            "files": {"unsharded": a["files"], "sharded": b["files"]},
            "files_ratio": a["files"] / b["files"],
            "samples_per_s": {"unsharded": a["samples_per_s"], "sharded": b["samples_per_s"]},
            "sharded_vs_unsharded": b["samples_per_s"] / a["samples_per_s"],
            "sharded_vs_plain": b["samples_per_s"] / a["samples_per_s"],
            "sharded_vs_plain_cpu": b["samples_per_cpu_s"] / a["samples_per_cpu_s"],
            "load_avg_1min": {k: paths[k]["load_avg_1min"] for k in paths},
            "samples_per_cpu_s": {"unsharded": a["samples_per_cpu_s"],
                                  "sharded": b["samples_per_cpu_s"]},
            "first_batch_s": {"unsharded": a["first_batch_s"], "sharded": b["first_batch_s"]},
            "same_patches": same, "all_epochs_complete": a["complete"] and b["complete"],
            "values_match_cube": a["values_match_cube"] and b["values_match_cube"],
            "paths": paths}


def print_shards(r: dict[str, Any]) -> None:
    print(f"cube ({r['case']}): chunks {tuple(r['chunks'].values())}, shards "
          f"{tuple(r['shards'].values())}; {r['files']['unsharded']} chunk files, "
          f"{r['files']['sharded']} shard files ({r['files_ratio']:.1f}x fewer)")
    for k in ("unsharded", "sharded"):
        print(f"  {k:<10} {r['samples_per_s'][k]:>10,.0f} patches/s "
              f"{r['samples_per_cpu_s'][k]:>10,.0f} /CPU-s  first batch "
              f"{r['first_batch_s'][k]:.2f} s")
    print(f"sharded / unsharded: {r['sharded_vs_unsharded']:.2f}x (aim >= 1: "
          f"{'ok' if r['sharded_vs_unsharded'] >= 1 else 'MISSED'}), per CPU second "
          f"{r['sharded_vs_plain_cpu']:.2f}x; same patches: {r['same_patches']}; load average "
          f"{r['load_avg_1min']}")


# --------------------------------------------------------------------------- device


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def run_device(cube: Path, shape: tuple[int, int, int], device: str, workers: int,
               repeats: int) -> dict[str, Any]:
    """Batches delivered onto ``device`` against the same loader on the host, one run.

    The loader is what :mod:`esdc.ml.fit.torch` trains with: ``PatchDataset`` through a
    ``DataLoader`` with ``workers`` persistent workers, ``pin_memory=True`` on CUDA, each
    batch's ``x`` and ``valid`` copied with ``.to(device, non_blocking=True)``; an epoch
    ends when the device has finished its copies (``torch.cuda.synchronize``). The host
    epoch is the same loader, batches left on the host. The copy floor: one pinned batch
    copied to the device as many times as an epoch has batches (the host-to-device
    bandwidth, nothing read). Best of ``repeats`` epochs each, after one that starts the
    workers.
    """
    info, _ = prepare(cube, shape)
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: torch sees no CUDA device on this machine")

    def epochs(to_device: bool) -> dict[str, Any]:
        stream = PatchStream(cube, VARIABLES, patch=PATCH, seed=0, shuffle=True)
        loader = patch_loader(PatchDataset(stream, batch_size=BATCH), workers,
                              multiprocessing_context=CTX, pin_memory=cuda)
        runs, complete = [], []
        for epoch in range(repeats + 1):
            with Clock() as c:
                idx = []
                for x, valid, index in loader:
                    if to_device:
                        x = x.to(device, non_blocking=cuda)
                        valid = valid.to(device, non_blocking=cuda)
                    idx.append(index.numpy())
                _sync(device)
            if epoch:  # the first starts the workers
                runs.append(c.result(sum(len(i) for i in idx)))
            complete.append(_complete(np.concatenate(idx), len(stream)))
        del loader
        return {**best_of(runs), "complete": all(complete)}

    log(f"esdc loader, {workers} workers, batches left on the host")
    host = epochs(False)
    log(f"  {host['samples_per_s']:,.0f} patches/s")
    log(f"esdc loader, {workers} workers, batches copied to {device}")
    dev = epochs(True)
    log(f"  {dev['samples_per_s']:,.0f} patches/s")
    c, ph, pw = len(VARIABLES), *PATCH
    n_batches = -(-info["cube"]["patches_per_epoch"] // BATCH)
    x = torch.empty((BATCH, c, ph, pw), dtype=torch.float32, pin_memory=cuda)
    valid = torch.empty((BATCH, c, ph, pw), dtype=torch.bool, pin_memory=cuda)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n_batches):
            x.to(device, non_blocking=cuda)
            valid.to(device, non_blocking=cuda)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    batch_bytes = x.nbytes + valid.nbytes
    copy = {"samples_per_s": n_batches * BATCH / best,
            "gb_per_s": n_batches * batch_bytes / best / 1e9}
    log(f"  copy floor {copy['samples_per_s']:,.0f} patches/s ({copy['gb_per_s']:.1f} GB/s)")
    return {"case": cube.stem.removeprefix("bench_batches_"), "device": device,
            "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
            "workers": workers, "pin_memory": cuda, "batch_mb": batch_bytes / 1e6,
            "samples_per_s": {"host": host["samples_per_s"], "device": dev["samples_per_s"],
                              "copy_floor": copy["samples_per_s"]},
            "device_fraction": dev["samples_per_s"] / host["samples_per_s"],
            "copy_floor_gb_per_s": copy["gb_per_s"],
            "all_epochs_complete": host["complete"] and dev["complete"],
            "paths": {"host": host, "device": dev, "copy_floor": copy}}


def run(cube: Path, shape: tuple[int, int, int], repeats: int, xb_samples: int,
        workers: int = 2, prefetch_factor: int | None = None,
        paired_rounds: int = 7) -> dict[str, Any]:
    info, first_nostats = prepare(cube, shape)

    log("raw floor: chunk files + numcodecs + NumPy reshape (1 and 2 processes; and "
        "through zarr)")
    floor = run_floor(cube, shape, repeats)
    log(f"  {floor['samples_per_s']:,.0f} / {floor['two_processes']['samples_per_s']:,.0f} "
        "patches/s")
    log("esdc PatchStream.batches in this process")
    esdc0 = run_esdc_inprocess(cube, repeats)
    log(f"  {esdc0['samples_per_s']:,.0f} patches/s, first batch {esdc0['first_batch_s']:.2f} s")
    loaders = {}
    for w in range(1, max(2, workers) + 1):
        log(f"esdc PatchDataset -> DataLoader, {w} worker(s)")
        loaders[w] = run_esdc_loader(cube, w, repeats, prefetch_factor)
        log(f"  {loaders[w]['samples_per_s']:,.0f} patches/s, first batch "
            f"{loaders[w]['first_batch_s']:.2f} s")
    log("esdc PatchStream.threaded_batches, 2 reading threads in this process")
    threads2 = run_esdc_threads(cube, 2, repeats)
    log(f"  {threads2['samples_per_s']:,.0f} patches/s")
    paired = None
    if paired_rounds > 0:
        # about one full-cube epoch of patches per path and round
        epochs = max(1, round(math.prod(CASES["full"]) / math.prod(shape)))
        log(f"raw floor, esdc, 1 and 2 workers in turn, {paired_rounds} rounds of "
            f"{epochs} epoch(s)")
        paired = run_paired(cube, shape, paired_rounds, prefetch_factor, epochs)
        log(f"  esdc / raw floor {paired['fraction_of_floor_median']:.1%}, 2 workers / 1 "
            f"{paired['workers_2_vs_1_median']:.2f} (medians)")
    xb = {}
    for w in (0, 2):
        log(f"plain xbatcher, {w} DataLoader workers, {xb_samples} patches")
        xb[w] = run_xbatcher(cube, xb_samples, w)
        log(f"  {xb[w]['samples_per_s']:,.0f} patches/s, first batch "
            f"{xb[w]['first_batch_s']:.2f} s")

    r: dict[str, Any] = {
        "case": cube.stem.removeprefix("bench_batches_"),
        "samples_per_s": {"esdc": esdc0["samples_per_s"], "xbatcher": xb[0]["samples_per_s"],
                          "raw_floor": floor["samples_per_s"],
                          "raw_floor_zarr": floor["zarr"]["samples_per_s"]},
        "speedup_vs_xbatcher": esdc0["samples_per_s"] / xb[0]["samples_per_s"],
        "fraction_of_floor": esdc0["samples_per_s"] / floor["samples_per_s"],
        "fraction_of_zarr_floor": esdc0["samples_per_s"] / floor["zarr"]["samples_per_s"],
        "first_batch_s": esdc0["first_batch_s"],
        # The same per CPU second used (process tree): independent of the other jobs.
        "samples_per_cpu_s": {"esdc": esdc0["samples_per_cpu_s"],
                              "xbatcher": xb[0]["samples_per_cpu_s"],
                              "raw_floor": floor["samples_per_cpu_s"],
                              "raw_floor_zarr": floor["zarr"]["samples_per_cpu_s"]},
        "speedup_vs_xbatcher_cpu": esdc0["samples_per_cpu_s"] / xb[0]["samples_per_cpu_s"],
        "fraction_of_floor_cpu": esdc0["samples_per_cpu_s"] / floor["samples_per_cpu_s"],
        "peak_rss_mb": {"esdc": esdc0["peak_rss_mb"],
                        "esdc_loader_1_worker": loaders[1]["peak_rss_mb"],
                        "esdc_loader_2_workers": loaders[2]["peak_rss_mb"],
                        "xbatcher": xb[0]["peak_rss_mb"],
                        "xbatcher_2_workers": xb[2]["peak_rss_mb"],
                        "raw_floor": floor["peak_rss_mb"],
                        "raw_floor_2_processes": floor["two_processes"]["peak_rss_mb"]},
        "workers_2_vs_1": loaders[2]["samples_per_s"] / loaders[1]["samples_per_s"],
        # the same ratios taken within rounds of back-to-back epochs (run_paired)
        "fraction_of_floor_paired": None if paired is None else paired[
            "fraction_of_floor_median"],
        "workers_2_vs_1_paired": None if paired is None else paired["workers_2_vs_1_median"],
        "paired": paired,
        "workers_2_vs_1_cpu": loaders[2]["samples_per_cpu_s"] / loaders[1]["samples_per_cpu_s"],
        # what a second process gives the raw floor on this machine, in the same run: the
        # machine's own scaling of decompression and copies, for workers_2_vs_1 to be
        # read against
        "raw_floor_2_vs_1": floor["two_processes"]["samples_per_s"] / floor["samples_per_s"],
        # DataLoader throughput for 1..N workers, and per worker (scaling)
        "workers": {str(w): {"samples_per_s": d["samples_per_s"],
                             "samples_per_s_per_worker": d["samples_per_s"] / w,
                             "samples_per_cpu_s": d["samples_per_cpu_s"],
                             "cpus_busy": d["cpus_busy"],
                             # CPU per patch: the main process (DataLoader, batches
                             # received) and the workers (read, cut, shuffle, send)
                             "cpu_us_per_patch": d["cpu_us_per_sample"],
                             "vs_1_worker": d["samples_per_s"] / loaders[1]["samples_per_s"],
                             "load_avg_1min": d["load_avg_1min"]}
                    for w, d in loaders.items()},
        # Reading threads instead of DataLoader processes: no pickling, no shared memory.
        "threads_2_vs_1": threads2["samples_per_s"] / esdc0["samples_per_s"],
        "samples_per_s_2_threads": threads2["samples_per_s"],
        "cpus_busy": {"esdc_loader_1_worker": loaders[1]["cpus_busy"],
                      "esdc_loader_2_workers": loaders[2]["cpus_busy"]},
        "samples_per_s_2_workers": {
            "esdc": loaders[2]["samples_per_s"], "xbatcher": xb[2]["samples_per_s"],
            "raw_floor": floor["two_processes"]["samples_per_s"]},
        "speedup_vs_xbatcher_2_workers": loaders[2]["samples_per_s"] / xb[2]["samples_per_s"],
        "fraction_of_floor_2_workers": (loaders[2]["samples_per_s"]
                                        / floor["two_processes"]["samples_per_s"]),
        "first_batch_s_loader": {"1_worker": loaders[1]["first_batch_s"],
                                 "2_workers": loaders[2]["first_batch_s"]},
        "first_batch_without_stats_s": first_nostats,
        "seconds": {"esdc": esdc0["seconds"], "esdc_loader_1_worker": loaders[1]["seconds"],
                    "esdc_loader_2_workers": loaders[2]["seconds"],
                    "xbatcher_timed": xb[0]["seconds"],
                    "xbatcher_epoch_extrapolated": xb[0]["epoch_s_extrapolated"],
                    "raw_floor": floor["seconds"],
                    "raw_floor_2_processes": floor["two_processes"]["seconds"]},
        "paths": {"esdc": esdc0, "esdc_loader_1_worker": loaders[1],
                  "esdc_loader_2_workers": loaders[2], "esdc_2_threads": threads2,
                  **{f"esdc_loader_{w}_workers": d for w, d in loaders.items() if w > 2},
                  "xbatcher": xb[0],
                  "xbatcher_2_workers": xb[2], "raw_floor": floor},
        "patch": {"size": list(PATCH), "channels": len(VARIABLES), "batch": BATCH,
                  "shuffle": True, "buffer_size": 4096},
        **info,
    }
    r["aims_met"] = {
        "speedup_vs_xbatcher": r["speedup_vs_xbatcher"] >= AIMS["speedup_vs_xbatcher"],
        "fraction_of_floor": r["fraction_of_floor"] >= AIMS["fraction_of_floor"],
        "workers_2_vs_1": r["workers_2_vs_1"] >= AIMS["workers_2_vs_1"],
        "first_batch_s": r["first_batch_s"] <= AIMS["first_batch_s"],
    }
    return r


def print_table(r: dict[str, Any]) -> None:
    c, m = r["cube"], r["machine"]
    shape = " x ".join(f"{k}={v}" for k, v in c.get("shape", {}).items()) or "reused"
    print(f"cube ({r['case']}): {len(VARIABLES)} float32 variables, {shape}, chunks "
          f"{tuple(CHUNKS.values())}, {c['uncompressed_mb']:.0f} MB uncompressed, "
          f"{c['disk_mb']:.0f} MB on disk; {c['patches_per_epoch']} patches of "
          f"{len(VARIABLES)} x {PATCH[0]} x {PATCH[1]} per epoch, batch {BATCH}")
    print(f"machine: {m['cpu_count']} CPUs ({m['cpu_model']}), {m['ram_gb']} GiB RAM; load "
          f"average {m['load_avg_1min_start']} at the start, {m['load_avg_1min_end']} at the "
          "end (other jobs make timings noisy)")
    print()
    p = r["paths"]
    rows = [
        ("esdc PatchStream.batches (in process)", p["esdc"]),
        ("esdc DataLoader, 1 worker", p["esdc_loader_1_worker"]),
        ("esdc DataLoader, 2 workers", p["esdc_loader_2_workers"]),
        ("xbatcher MapDataset, DataLoader 0 w.", p["xbatcher"]),
        ("xbatcher MapDataset, DataLoader 2 w.", p["xbatcher_2_workers"]),
        ("raw floor (chunk files + NumPy)", p["raw_floor"]),
        ("raw floor, 2 processes", p["raw_floor"]["two_processes"]),
        ("raw floor through zarr (before s7)", p["raw_floor"]["zarr"]),
        *((f"esdc DataLoader, {k.split('_')[2]} workers", d) for k, d in p.items()
          if k.startswith("esdc_loader_") and k.split("_")[2] not in ("1", "2")),
    ]
    floor = r["samples_per_s"]["raw_floor"]
    print(f"{'path':<40}{'patches/s':>10}{'of floor':>9}{'/CPU-s':>9}{'CPUs':>6}"
          f"{'1st batch s':>12}{'peak RSS MB':>12}")
    for name, d in rows:
        fb = d.get("first_batch_s")
        print(f"{name:<40}{d['samples_per_s']:>10,.0f}{d['samples_per_s'] / floor:>9.1%}"
              f"{d['samples_per_cpu_s']:>9,.0f}{d['cpus_busy']:>6.2f}"
              f"{'' if fb is None else f'{fb:.2f}':>12}{d['peak_rss_mb']:>12.0f}")
    print("(/CPU-s: patches per CPU second of the process tree; CPUs: CPU seconds / wall "
          "seconds, how many CPUs the path got)")
    print("DataLoader CPU per patch, main process / workers: " + ", ".join(
        f"{w} worker(s) {d['cpu_us_per_patch']['main']:.1f} / "
        f"{d['cpu_us_per_patch']['others']:.1f} us" for w, d in r["workers"].items()))
    print()
    a = r["aims_met"]

    def mark(k: str) -> str:
        return "ok" if a[k] else "MISSED"

    print(f"esdc / xbatcher (1 process):   {r['speedup_vs_xbatcher']:8.1f}x  (aim >= 100: "
          f"{mark('speedup_vs_xbatcher')})")
    print(f"esdc / raw floor (1 process):  {r['fraction_of_floor']:8.1%}   (aim >= 85%: "
          f"{mark('fraction_of_floor')})")
    print(f"esdc 2 workers / 1 worker:     {r['workers_2_vs_1']:8.2f}x  (aim >= 1.6: "
          f"{mark('workers_2_vs_1')})")
    if r["paired"] is not None:
        print(f"  the same in {r['paired']['rounds']} rounds of back-to-back epochs "
              f"({r['paired']['epochs_per_round']} a path and round) "
              f"(medians): esdc / raw floor {r['fraction_of_floor_paired']:.1%}, 2 workers "
              f"/ 1 {r['workers_2_vs_1_paired']:.2f}x")
    print(f"first batch from opening:      {r['first_batch_s']:8.2f} s  (aim <= 2 s: "
          f"{mark('first_batch_s')})")
    print(f"per CPU second: esdc / xbatcher {r['speedup_vs_xbatcher_cpu']:.1f}x, esdc / "
          f"raw floor {r['fraction_of_floor_cpu']:.1%}")
    print(f"esdc / raw floor through zarr (the floor before session 7): "
          f"{r['fraction_of_zarr_floor']:.1%}")
    print(f"2 workers: esdc / xbatcher {r['speedup_vs_xbatcher_2_workers']:.1f}x, esdc / "
          f"2-process floor {r['fraction_of_floor_2_workers']:.1%}")
    print(f"raw floor 2 processes / 1 (this machine's own scaling): "
          f"{r['raw_floor_2_vs_1']:.2f}x")
    print(f"esdc 2 workers / 1 worker per CPU second: {r['workers_2_vs_1_cpu']:.2f}x; per "
          "worker: " + ", ".join(f"{w}: {d['samples_per_s_per_worker']:,.0f}/s"
                                 for w, d in r["workers"].items()))
    print(f"esdc 2 reading threads / 1 (no DataLoader processes): {r['threads_2_vs_1']:.2f}x "
          f"({r['samples_per_s_2_threads']:,.0f} patches/s)")
    if r["first_batch_without_stats_s"] is not None:
        print(f"first batch without stored statistics (computed on the fly): "
              f"{r['first_batch_without_stats_s']:.2f} s")
    print(f"all esdc epochs complete (every patch once): {r['all_epochs_complete']}; "
          f"values match the cube: esdc {p['esdc']['values_match_cube']}, xbatcher "
          f"{p['xbatcher']['values_match_cube']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="reduced case: 226 MB cube, fewer xbatcher samples (about a minute)")
    ap.add_argument("--json", action="store_true", help="print one JSON object only")
    ap.add_argument("--out-dir", type=Path,
                    help="write the cube here and keep it; an existing cube of the same case "
                         "is reused (default: a temporary folder, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary cube")
    ap.add_argument("--repeats", type=int,
                    help="epochs timed per path, the best is reported (default 3; quick 8: "
                         "its epochs take a tenth of a second, 3 of them are noise)")
    ap.add_argument("--xbatcher-samples", type=int,
                    help="patches timed for xbatcher (default 640, quick 320)")
    ap.add_argument("--forkserver-preload", action="store_true",
                    help="import torch, xarray, zarr, xbatcher and esdc.ml.torch once in the "
                         "forkserver, so that DataLoader workers do not import them each")
    ap.add_argument("--shape", type=lambda s: tuple(int(v) for v in s.split(",")),
                    help="custom cube shape TIME,LAT,LON instead of the full or quick case")
    ap.add_argument("--workers", type=int, default=2, metavar="N",
                    help="time the DataLoader with 1..N workers (default 2): throughput per "
                         "worker count and per worker")
    ap.add_argument("--prefetch-factor", type=int, metavar="N",
                    help="DataLoader prefetch_factor of the esdc loaders (default: "
                         "patch_loader's, one work unit's messages in flight per worker)")
    ap.add_argument("--paired-rounds", type=int, default=7, metavar="N",
                    help="rounds of back-to-back epochs (raw floor, esdc, 1 and 2 workers) "
                         "for the drift-proof *_paired ratios; 0 skips them (default 7)")
    ap.add_argument("--device", metavar="DEVICE",
                    help="instead of the full run: the loader's batches copied onto DEVICE "
                         "(cuda, cuda:1; cpu runs the same code on the host) against the "
                         "same loader on the host, and the host-to-device copy floor")
    ap.add_argument("--shards", nargs="?", const="6,512,512", metavar="TIME,LAT,LON",
                    help="compare PatchStream on the cube and on a sharded copy (default "
                         "shards 6,512,512: 4 chunks per shard) instead of the full run")
    args = ap.parse_args(argv)

    case = "quick" if args.quick else "full"
    shape = CASES[case]
    if args.shape:
        case, shape = "custom", args.shape
    xb_samples = args.xbatcher_samples or (320 if args.quick else 640)
    repeats = args.repeats or (8 if args.quick else 3)
    mach = machine()
    if args.forkserver_preload:
        multiprocessing.get_context(CTX).set_forkserver_preload(
            ["torch", "xarray", "zarr", "xbatcher", "esdc.ml.torch"])
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        workdir = args.out_dir
    else:
        workdir = Path(tempfile.mkdtemp(prefix="esdc-bench-batches-"))
    cube = workdir / f"bench_batches_{case}.zarr"
    t0 = time.perf_counter()
    if args.device:
        try:
            result = run_device(cube, shape, args.device, max(1, args.workers),
                                max(1, repeats))
        finally:
            if args.out_dir is None and not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        mach["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
        result.update(machine=mach, versions=versions(), total_s=time.perf_counter() - t0)
        if args.json:
            print(json.dumps(result, indent=2, default=float))
        else:
            print(f"{result['device_name']}: host {result['samples_per_s']['host']:,.0f}, "
                  f"device {result['samples_per_s']['device']:,.0f} patches/s "
                  f"(device_fraction {result['device_fraction']:.2f}); copy floor "
                  f"{result['copy_floor_gb_per_s']:.1f} GB/s")
        return 0
    if args.shards:
        shards = dict(zip(CHUNKS, (int(v) for v in args.shards.split(",")), strict=True))
        try:
            result = run_shards(cube, shape, shards, max(1, repeats))
        finally:
            if args.out_dir is None and not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        result.update(machine=mach, versions=versions(), total_s=time.perf_counter() - t0)
        mach["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
        if args.json:
            print(json.dumps(result, indent=2, default=float))
        else:
            print_shards(result)
        return 0
    try:
        result = run(cube, shape, max(1, repeats), xb_samples, args.workers,
                     args.prefetch_factor, args.paired_rounds)
    finally:
        if args.out_dir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.keep:
            log(f"cube kept at {cube}")
    mach["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    p = result["paths"]
    result["all_epochs_complete"] = all(d["complete"] for k, d in p.items()
                                        if k.startswith("esdc"))
    result["load_avg_1min"] = {"start": mach["load_avg_1min_start"],
                               "end": mach["load_avg_1min_end"]}
    result["machine"] = mach
    result["forkserver_preload"] = args.forkserver_preload
    result["versions"] = versions()
    result["total_s"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(result, indent=2, default=float))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
