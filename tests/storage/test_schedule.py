"""Region writes scheduled together (esdc.storage.schedule): shared upstream once, in order.

Real Zarr arrays on disk and a real ``distributed`` cluster: every region of a layer that
needs the whole cube's mean writes its tile; the mean runs once, and with one thread the
regions finish in tile order (each task's priority is its first region's).
"""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
from dask.utils import key_split

from esdc.storage.schedule import region_priorities, run_regions
from tests.storage.conftest import region_writes


def _writes(tmp_path: Path) -> tuple[list, list[list[int]], object, np.ndarray]:
    return region_writes(tmp_path)  # every region needs the whole-cube mean


def test_priorities_follow_the_first_region_that_needs_a_task(tmp_path: Path) -> None:
    writes, todo, _arr, _expected = _writes(tmp_path)
    assert len(todo) == 6  # 2 x 3 tiles of 6 x 8 cells
    prio = region_priorities(writes)
    for i, w in enumerate(writes):
        assert prio[w.key] == -i
    shared = [k for k in prio if key_split(k).startswith("mean")]
    assert shared and all(prio[k] == 0 for k in shared)  # needed by region 0 already
    assert {prio[k] for k in prio} == {-i for i in range(len(todo))}


def test_regions_finish_in_order_sharing_the_upstream(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster, get_task_stream

    writes, todo, arr, expected = _writes(tmp_path)
    planned = sum(key_split(k) == "mean_chunk" for k in dict(writes[0].__dask_graph__()))
    order: list[list[int]] = []

    def finished(tile: list[int], result: object) -> bool:
        order.append(tile)
        return result == 2  # the region's chunks stored: 8 steps in chunks of 4

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client, \
            get_task_stream(client) as ts:
        lost = run_regions(writes, todo, client, finished)
    assert lost == []
    assert order == todo
    ran = sum(key_split(r["key"]) == "mean_chunk" for r in ts.data)
    assert planned >= 1 and ran == planned  # the shared mean ran once, not once per region
    np.testing.assert_allclose(arr[:], expected, rtol=1e-6)
    with dask.config.set(scheduler="threads"):  # without a client: the same result
        assert run_regions(writes, todo, None, finished) == []


def test_linear_chains_are_fused_under_their_last_key(tmp_path: Path) -> None:
    from dask.core import get_dependencies, reverse_dict
    from dask.local import get_sync

    from esdc.storage.schedule import fuse_chains, gate_regions

    writes, todo, arr, expected = _writes(tmp_path)
    graph, _first = gate_regions(writes, 2)
    keys = [w.key for w in writes]
    fused = fuse_chains(graph, keys)
    deps = {k: get_dependencies(graph, k) for k in graph}
    users = reverse_dict(deps)
    assert set(fused) < set(graph)  # fewer tasks, none renamed
    assert set(keys) <= set(fused)
    shared = [k for k in graph if len(users[k]) > 1]
    assert shared and set(shared) <= set(fused)  # work two tasks need is kept apart
    # a task whose one dependent needs nothing else is gone: the chain's last task holds it
    chained = [k for k in graph if len(users[k]) == 1 and len(deps[next(iter(users[k]))]) == 1]
    assert chained and not set(chained) & set(fused)
    assert get_sync(fused, keys) == tuple(get_sync(graph, keys))
    np.testing.assert_allclose(arr[:], expected, rtol=1e-6)
