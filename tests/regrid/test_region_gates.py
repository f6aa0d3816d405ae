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


def test_the_cli_cluster_workers_keep_a_small_gdal_cache() -> None:
    """GDAL's default block cache (5 % of memory per process) held 0.95 GB of decoded
    Köppen strips per worker that read them, although a build reads each strip once."""
    import os

    from esdc.cluster import dask_client

    with dask_client() as client:
        seen = client.run(lambda: os.environ.get("GDAL_CACHEMAX"))
    assert len(seen) == 2 and set(seen.values()) == {os.environ.get("GDAL_CACHEMAX", "64")}
