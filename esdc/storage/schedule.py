"""Region writes on the Dask cluster: every region in one graph, reported as each ends.

A region (one spatial tile of chunks, :mod:`esdc.storage.regions`) is stored with
``dask.array.store`` straight into the target's arrays, and all the regions of a build
are computed together with ``optimize_graph=False``, so a source read or a whole-source
regrid that several regions share keeps one key and runs once. (A ``Delayed`` of
``to_zarr(region=...)`` gives every upstream task a key of its own per region: dask's
``ProhibitReuse``.) The caller journals (Zarr) or commits (Icechunk) each region as its
result arrives, so a build killed half way keeps the regions that ended. Tasks run in
region order (:func:`region_priorities`), with a bounded number of regions in flight
(:func:`gate_regions`). Linear chains of tasks are fused under their last key
(:func:`fuse_chains`), as Dask's optimisation would, without touching shared keys.

Used by :mod:`esdc.storage.write` (Zarr folders) and :mod:`esdc.storage.icechunk`.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from typing import Any

import dask
import numpy as np
import xarray as xr
import zarr

__all__ = ["REGIONS_AHEAD", "bind_arrays", "encoded_variables", "finish_region", "fuse_chains",
           "gate_regions", "region_priorities", "run_regions", "store_region"]

#: Regions in flight per worker thread: the first tasks of region ``i`` wait for the write
#: of region ``i - REGIONS_AHEAD x threads`` (:func:`gate_regions`).
REGIONS_AHEAD = 2


def encoded_variables(ds: xr.Dataset, names: list[str],
                      dtypes: dict[str, Any]) -> dict[str, xr.Variable]:
    """Each variable CF-encoded as the store holds it and cast to its stored dtype, lazily.

    Done once per write, not once per region (xarray's encoding of 14 variables x 16
    regions took 0.12 s of the client before the first task of the Earth cube).

    Parameters
    ----------
    ds : xarray.Dataset
        The planned cube, rechunked to the store's write units
        (:func:`esdc.storage.regions.prepare`).
    names : list of str
        The variables written by region.
    dtypes : dict
        ``{variable: numpy dtype}`` of the stored arrays.

    Returns
    -------
    dict
        ``{variable: xarray.Variable}``, Dask-backed, dims of ``ds[variable]``.
    """
    out = {}
    for n in names:
        var = xr.conventions.encode_cf_variable(ds[n].variable, name=n)
        if var.dtype != dtypes[n]:
            var = var.astype(dtypes[n])
        out[n] = var
    return out


def bind_arrays(arrays: list[Any], store: Any) -> list[Any]:
    """``arrays`` (zarr arrays, their metadata read once) opened on another ``store``.

    Nothing is read: an Icechunk build stores each region into a fork session of its
    own, and reading a group's arrays again per region took 0.3 s of the client for the
    ``--quick`` Earth cube's 6 regions x 14 arrays, before the first task.

    Parameters
    ----------
    arrays : list of zarr.Array
        Arrays of a group in another store with the same metadata (same paths).
    store : zarr.abc.store.Store
        The store to bind them to.

    Returns
    -------
    list of zarr.Array
        In the order of ``arrays``.
    """
    from zarr.core.array import AsyncArray
    from zarr.storage import StorePath

    return [zarr.Array(AsyncArray(a.metadata, StorePath(store, a.path), a.config))
            for a in arrays]


def store_region(variables: dict[str, xr.Variable], targets: list[Any],
                 sel: dict[str, slice], return_stored: bool = False) -> list[Any]:
    """One region of each variable stored into its array, lazily (nothing computed).

    One task per Dask chunk the region meets: it stores its part of the chunk (a view)
    straight into the target. (``dask.array.store`` of the region's slice added a
    ``getitem`` task per piece, which copies a slice under half its chunk: 28 % of a
    build's tasks.) With :func:`esdc.storage.regions.prepare`'s chunks no two tasks
    write into one stored chunk. The tasks are named by a random token: Dask's token of
    a Zarr array walks its metadata field by field (2-3 ms per array and region, all in
    the client before the first task starts), and a target is written by one build.

    Parameters
    ----------
    variables : dict
        ``{name: xarray.Variable}`` from :func:`encoded_variables`, Dask-backed.
    targets : list of zarr.Array
        Their stored arrays, in that order.
    sel : dict
        ``{dim: slice}`` of the region (spatial dims, and ``time`` for an append); dims
        not named are written whole.
    return_stored : bool
        True: each task returns its target (Icechunk reads its session from it); False:
        None.

    Returns
    -------
    list of dask.array.Array
        One per variable, shaped as its region; computing them writes the chunks.
    """
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    token = uuid.uuid4().hex
    out = []
    for var, into in zip(variables.values(), targets, strict=True):
        arr = var.data
        parts, chunks = [], []
        for d, cs in zip(var.dims, arr.chunks, strict=True):
            start, stop, _ = sel.get(str(d), slice(None)).indices(var.sizes[d])
            edges = np.cumsum((0, *cs))
            dim = [(i, max(start, lo) - lo, min(stop, hi) - lo, max(start, lo))
                   for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True))
                   if lo < stop and hi > start]
            parts.append(dim)
            chunks.append(tuple(b - a for _, a, b, _ in dim))
        name = f"store-map-{tokenize(arr.name, token, sorted(sel.items(), key=str))}"
        dsk = {}
        for pos, combo in zip(itertools.product(*(range(len(p)) for p in parts)),
                              itertools.product(*parts), strict=True):
            src = tuple(slice(int(a), int(b)) for _, a, b, _ in combo)
            dst = tuple(slice(int(o), int(o + b - a)) for _, a, b, o in combo)
            dsk[(name, *pos)] = (_store_piece, (arr.name, *(c[0] for c in combo)), into, src,
                                 dst, return_stored)
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=[arr])
        out.append(da.Array(graph, name, chunks=tuple(chunks), meta=arr._meta))
    return out


def _store_piece(chunk: np.ndarray, target: Any, src: tuple[slice, ...],
                 dst: tuple[slice, ...], return_stored: bool) -> Any:
    """``target[dst] = chunk[src]``: one region's part of one chunk, stored."""
    target[dst] = chunk[src]
    return target if return_stored else None


def finish_region(parts: list[Any], end: Callable[[list[Any]], Any], label: str) -> Any:
    """One ``Delayed`` that runs ``end`` on the computed ``parts`` (Dask collections).

    ``parts`` keep their keys (no re-keying per region), so work they share with other
    regions' parts is computed once when the regions are computed together.

    Parameters
    ----------
    parts : list
        Dask collections: the region's stored chunks, or what reduces them.
    end : callable
        Applied on a worker to the flat list of the parts' chunk results; its return
        value is the region's result.
    label : str
        Prefix of the new key.

    Returns
    -------
    dask.delayed.Delayed
    """
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    keys = [k for a in parts for k in dask.core.flatten(a.__dask_keys__())]
    name = f"{label}-" + dask.base.tokenize(*(a.name for a in parts))
    graph = HighLevelGraph.from_collections(name, {name: (end, keys)}, dependencies=parts)
    return Delayed(name, graph)


def _merged_graph(writes: list[Any]) -> dict[Any, Any]:
    from dask.highlevelgraph import HighLevelGraph

    return dict(HighLevelGraph.merge(*(w.__dask_graph__() for w in writes)))


def _first_regions(dsk: dict[Any, Any], writes: list[Any]) -> dict[Any, int]:
    """``{key: i}``: the first region write (in order) that needs each task of ``dsk``."""
    seen: dict[Any, int] = {}
    for i, write in enumerate(writes):
        stack = [write.key]
        while stack:
            key = stack.pop()
            if key in seen or key not in dsk:
                continue
            seen[key] = i
            stack.extend(dask.core.get_dependencies(dsk, key))
    return seen


def _priorities(first: dict[Any, int]) -> dict[Any, int]:
    """``{key: -i}`` from :func:`_first_regions` (0 for a key not in it)."""
    from collections import defaultdict

    return defaultdict(int, {k: -i for k, i in first.items()})


def region_priorities(writes: list[Any]) -> dict[Any, int]:
    """Each task's priority: minus the index of the first region write that needs it.

    Dask's own order (:func:`dask.order.order`) sees a band of a layer that many regions
    share (the 54 steps of the SST interpolated on a band of rows, a climatology placed
    on every month) as ready work and may compute it long before the regions that write
    it. With these priorities a worker runs the tasks of the earliest unfinished region
    first; it still runs later regions' ready tasks when it has nothing else to do.

    Parameters
    ----------
    writes : list of dask.delayed.Delayed
        The region writes, in the order they should finish (tiles row after row).

    Returns
    -------
    collections.defaultdict
        ``{key: -i}`` for every task of the writes' graph (0 for a key not in it).
    """
    return _priorities(_first_regions(_merged_graph(writes), writes))


def _after(value: Any, _gate: Any) -> Any:
    """``value``, computed once the gate's task has run."""
    return value


def gate_regions(writes: list[Any], ahead: int) -> tuple[dict[Any, Any], dict[Any, int]]:
    """The writes' graph with the work of region ``i`` held back until write ``i - ahead`` ends.

    Priorities (:func:`region_priorities`) order the ready tasks of a worker, but a worker
    with nothing of the current regions to do still starts any ready task: the row bands
    of later regions (a regrid of whole grid rows over all time steps, its pieces for
    each store chunk), which then wait in memory for the regions that store them; at
    0.05 degree they grew to GBs. Here every task first needed by region ``i`` whose
    inputs all belong to earlier regions (where region ``i``'s own work starts: a source
    read, a regrid of rows no earlier region needed) also waits for the write of region
    ``i - ahead``, so at most ``ahead`` regions are in flight. Values are unchanged
    (the task runs as before; the write's result only orders it). The graph is not
    optimised (as ``optimize_graph=False``): shared upstream keys stay shared.

    Parameters
    ----------
    writes : list of dask.delayed.Delayed
        The region writes, in the order they should finish.
    ahead : int
        Regions in flight, at least 1.

    Returns
    -------
    graph : dict
        The writes' tasks, gated, as one graph (``Client.get(graph, keys)`` computes it:
        one graph, where 400 collections sharing it cost minutes to merge at 0.05 degree).
    first : dict
        ``{key: i}``, the first region that needs each task.
    """
    from dask.task_spec import GraphNode, Task, TaskRef

    dsk = _merged_graph(writes)
    first = _first_regions(dsk, writes)
    for key, node in list(dsk.items()):
        i = first.get(key, 0)
        if i < ahead or any(first.get(d, 0) >= i
                            for d in dask.core.get_dependencies(dsk, key)):
            continue
        gate = writes[i - ahead].key
        dsk[key] = (Task(key, _after, node, TaskRef(gate)) if isinstance(node, GraphNode)
                    else (_after, node, gate))  # a legacy tuple task (or alias)
    return dsk, first


def fuse_chains(graph: dict[Any, Any], keys: list[Any]) -> dict[Any, Any]:
    """Each linear chain of tasks fused into one task that keeps the chain's last key.

    A chain: tasks each with one dependency and one dependent (a source's ``getitem``,
    ``transpose``, ``astype``, a rechunk's split), which Dask's optimisation would fuse
    and ``optimize_graph=False`` keeps apart. Unlike
    ``dask._task_spec.fuse_linear_task_spec`` the fused task keeps the last key (no
    alias task under it), so priorities and gates given by key still apply; re-keying
    that function's result instead fused less (217 against 209 tasks on the ``--quick``
    Earth build: it leaves a chain whose walk starts at a task already seen). A task two
    others need is never fused, so shared upstream work still runs once.

    Parameters
    ----------
    graph : dict
        ``{key: task}`` (legacy tuples are converted).
    keys : list
        The keys asked for: kept.

    Returns
    -------
    dict
        The fused graph.
    """
    try:  # Dask's task spec (dask is pinned); another dask: the graph as it is
        from dask._task_spec import DependenciesMapping, Task, convert_legacy_graph
    except ImportError:  # pragma: no cover
        return graph
    from dask.core import reverse_dict

    dsk = convert_legacy_graph(graph)
    wanted = set(keys)
    deps = DependenciesMapping(dsk)
    users = reverse_dict(deps)
    out: dict[Any, Any] = {}
    seen: set[Any] = set()
    for key in dsk:
        if key in seen:
            continue
        seen.add(key)
        chain, top = [dsk[key]], key
        below = deps[key]
        while len(below) == 1:  # down, to the leaves
            (k,) = below
            if k in seen or k not in dsk or len(users[k]) != 1 or k in wanted \
                    or dsk[k].block_fusion:
                break
            seen.add(k)
            chain.insert(0, dsk[k])
            below = deps[k]
        above = users[top]
        while len(above) == 1 and top not in wanted:  # up, to the root
            (k,) = above
            if k in seen or len(deps[k]) != 1 or dsk[k].block_fusion:
                break
            seen.add(k)
            chain.append(dsk[k])
            top, above = k, users[k]
        out[top] = chain[0] if len(chain) == 1 else Task.fuse(*chain, key=top)
    return out


def _named_graph(graph: dict[Any, Any]) -> Any:
    """The graph as Dask's low-level graph expression, named by a random token.

    ``Client.get`` otherwise names a plain dict by a token of every task in it: 0.1 s
    for the ``--quick`` Earth build's 470 tasks, 0.3 s for the full cube's 1,150 (before
    :func:`store_region`), spent in the client before the first task starts.
    (``dask._expr.LLGExpr`` is what ``Client.get`` makes of a dict; dask is pinned.)
    """
    try:
        from dask._expr import LLGExpr
    except ImportError:  # pragma: no cover - another dask: tokenized as before
        return graph
    return LLGExpr(graph, _determ_token=uuid.uuid4().hex)


def run_regions(writes: list[Any], todo: list[list[int]], client: Any,
                finished: Callable[[list[int], Any], bool]) -> list[list[int]]:
    """Compute the region writes together; ``finished(tile, result)`` on each as it ends.

    With a client every task's priority is its first region's
    (:func:`region_priorities`), so the workers finish the regions in tile order, and at
    most :data:`REGIONS_AHEAD` regions per worker thread are in flight
    (:func:`gate_regions`).

    Parameters
    ----------
    writes : list of dask.delayed.Delayed
        One per region (:func:`finish_region`).
    todo : list of list of int
        The regions' tiles ``[y0, y1, x0, x1]``, in the order of ``writes``.
    client : distributed.Client, optional
        Without one, Dask's default scheduler computes all the regions, then ``finished``
        is called on each in order.
    finished : callable
        ``finished(tile, result) -> bool``: journals or commits the region; False when
        its write was lost (written again by the caller).

    Returns
    -------
    list of list of int
        The tiles whose ``finished`` returned False.
    """
    lost: list[list[int]] = []
    if not writes:
        return lost
    if client is None:
        results = dask.compute(*writes)
        return [t for t, r in zip(todo, results, strict=True) if not finished(t, r)]
    from distributed import as_completed

    # Unoptimised graphs keep the upstream keys (read, regrid) identical across the
    # tiles, so the scheduler computes shared work once instead of once per tile.
    # (Submitting the regions a few at a time instead, with the shared tasks held by
    # futures, doubled the peak memory at 0.25 degree: 4.4 against 2.4 GB; gating keeps
    # them in one graph.)
    threads = sum(client.nthreads().values()) or 1
    graph, first = gate_regions(writes, REGIONS_AHEAD * threads)
    graph = fuse_chains(graph, [w.key for w in writes])
    with dask.annotate(priority=_priorities(first).__getitem__):
        futures = client.get(_named_graph(graph), [w.key for w in writes], sync=False)
    index = {f.key: i for i, f in enumerate(futures)}
    for fut in as_completed(futures):
        result = fut.result()
        tile = todo[index[fut.key]]
        if not finished(tile, result):
            lost.append(tile)
    return lost
