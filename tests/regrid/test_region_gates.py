"""Regions in flight are bounded: region i's work starts after region i - ahead's write.

Priorities order a worker's ready tasks, but a worker with nothing of the current
regions to do took ready tasks of any later region (row bands of a regrid, their pieces
per store chunk) and held them; at 0.05 degree they grew to GBs
(:func:`esdc.storage.schedule.gate_regions`). Real Zarr arrays, a real cluster.
"""

from __future__ import annotations

from pathlib import Path

import dask.threaded
import numpy as np

from esdc.storage.schedule import gate_regions
from tests.storage.conftest import region_writes


def test_a_region_starts_after_the_write_ahead_of_it_ends(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster, get_task_stream

    writes, _todo, arr, expected = region_writes(tmp_path, "time")  # row bands
    assert len(writes) == 6
    graph, first = gate_regions(writes, ahead=1)
    keys = [w.key for w in writes]
    assert set(graph) == set(first) and {first[k] for k in keys} == set(range(6))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client, \
            get_task_stream(client) as ts:
        results = client.gather(client.get(graph, keys, sync=False))
    assert results == [2] * 6  # each region stored its 2 chunks (8 steps in 4s)
    np.testing.assert_allclose(arr[:], expected, rtol=1e-6)
    start = {r["key"]: min(s["start"] for s in r["startstops"] if s["action"] == "compute")
             for r in ts.data}
    stop = {r["key"]: max(s["stop"] for s in r["startstops"] if s["action"] == "compute")
            for r in ts.data}
    assert set(start) == set(first)  # every task ran, once
    for key, i in first.items():
        if i >= 1:
            assert start[key] >= stop[writes[i - 1].key], (key, i)
    # the same graph on Dask's local threads
    assert list(dask.threaded.get(graph, keys)) == [2] * 6


def test_the_cli_cluster_workers_keep_a_small_gdal_cache(monkeypatch) -> None:
    """GDAL's default block cache (5 % of memory per process) held 0.95 GB of decoded
    Köppen strips per worker that read them, although a build reads each strip once."""
    import os

    from esdc.cluster import WORKER_MALLOC, dask_client

    names = ["GDAL_CACHEMAX", *WORKER_MALLOC]
    for k in names:  # as in a fresh shell (an earlier nanny here set distributed's default)
        monkeypatch.delenv(k, raising=False)
    with dask_client() as client:
        seen = client.run(lambda: tuple(os.environ.get(k) for k in names))
    want = ("64", *WORKER_MALLOC.values())
    assert len(seen) == 2 and set(seen.values()) == {want}  # allocator set before spawning


def test_worker_allocator_settings_yield_to_the_users(monkeypatch) -> None:
    """distributed's default trim threshold is replaced (it pins the mmap threshold at
    128 KiB: every chunk a fresh mapping); a pre-spawn setting of the user's is kept."""
    import dask

    from esdc.cluster import WORKER_MALLOC, spawn_environ

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # left here by a default nanny
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    env = spawn_environ()
    assert {k: env[k] for k in WORKER_MALLOC} == WORKER_MALLOC
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4096")  # the user's own
    assert spawn_environ()["MALLOC_MMAP_THRESHOLD_"] == "4096"
    assert env.get("OMP_NUM_THREADS") == "1"  # distributed's other settings kept
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {
            "MALLOC_TRIM_THRESHOLD_": 1 << 20}}):
        assert spawn_environ() == {"MALLOC_TRIM_THRESHOLD_": str(1 << 20)}
