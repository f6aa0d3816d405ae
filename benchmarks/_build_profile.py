"""Per-layer and per-phase seconds of an esdc build.

Dask fuses the read, decode, regrid and store of a chunk into one task in the build
(e.g. ``add-getitem-one-rechunk-merge-rechunk-split-store-map``), so one build's task
stream cannot say which part of a task is which. Each layer (cube variable) is instead
run three times on the same cluster, after the full build:

read/decode
    the source pixels that cover the grid, opened with the esdc reader and decoded as
    the build decodes them (scale, offset, fill values, masks), reduced to one maximum
    per chunk on the workers (nothing regridded, nothing large shipped back);
regrid
    the planned layer (read, decode, time alignment, resampling, climatology placement)
    reduced the same way, minus the read/decode seconds;
encode+write
    the layer written alone with :meth:`esdc.storage.Target.write` into a new store
    (the region writes, Blosc encoding, hashing, journal, consolidation), minus the
    planned layer's seconds.

Seconds are task seconds on the workers (``compute`` intervals of
``distributed.get_task_stream``, summed over workers: a 2-worker cluster can give twice
the wall time), which other programs on the machine disturb less than wall seconds;
the wall seconds are reported beside them. Layers computed alone repeat work the full
build shares between layers (a source read once for two layers), so their sum is an
upper bound of the build's.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import dask.array as da
import xarray as xr

from esdc.harmonize import decode
from esdc.recipe import Recipe
from esdc.sources import open_source
from esdc.storage import resolve

__all__ = ["PHASES", "layer_profile", "stream_seconds"]

PHASES = ("read_decode", "regrid", "encode_write")


def stream_seconds(stream: list[dict[str, Any]]) -> tuple[float, float]:
    """``(compute, transfer)`` seconds summed over a ``get_task_stream`` record."""
    compute = transfer = 0.0
    for rec in stream:
        for s in rec.get("startstops", ()):
            if s.get("action") == "compute":
                compute += s["stop"] - s["start"]
            elif s.get("action") == "transfer":
                transfer += s["stop"] - s["start"]
    return compute, transfer


def _timed(client: Any, run: Any) -> tuple[float, float]:
    """Task seconds and wall seconds of ``run()`` on the cluster."""
    from distributed import get_task_stream

    t0 = time.perf_counter()
    with get_task_stream(client) as ts:
        run()
    return stream_seconds(ts.data)[0], time.perf_counter() - t0


def _chunk_max(arr: da.Array) -> da.Array:
    """One value per chunk: forces every chunk to be computed, ships back almost nothing."""
    return arr.map_blocks(lambda b: b.max(keepdims=True) if b.size else b[..., :0],
                          chunks=tuple((1,) * len(c) for c in arr.chunks), dtype=arr.dtype)


def layer_profile(recipe: Recipe, ds: xr.Dataset, client: Any, workdir: Path,
                  covering: Any) -> dict[str, dict[str, float]]:
    """Task seconds per layer and phase (module docstring).

    Parameters
    ----------
    recipe : Recipe
        The recipe built.
    ds : xarray.Dataset
        Its planned cube (:func:`esdc.build.plan`).
    client : distributed.Client
        The cluster the build ran on.
    workdir : pathlib.Path
        Where the one-layer stores are written (and removed).
    covering : callable
        ``covering(data, geo, grid)``: the source pixels that cover the grid.

    Returns
    -------
    dict
        ``{layer: {read_decode, regrid, encode_write, total, wall}}``, seconds.
    """
    grid = recipe.grid.to_grid()
    chunks, comp = dict(recipe.output.chunks), recipe.output.compressor
    out: dict[str, dict[str, float]] = {}
    for spec in recipe.sources:
        geo = open_source(spec)
        for var in spec.variables:
            if var.name not in ds.data_vars:
                continue
            src = covering(decode(geo.data[var.source], var), geo, grid).data
            read, w_read = _timed(client, lambda s=src: client.compute(_chunk_max(s)).result())
            lay = ds[var.name].data
            planned, w_plan = _timed(client,
                                     lambda a=lay: client.compute(_chunk_max(a)).result())
            store = workdir / f"layer-{var.name}.zarr"
            one = ds[[var.name]]
            total, w_total = _timed(client, lambda o=one, p=store: resolve(p).write(
                o, chunks=chunks, compressor=comp, overwrite=True, client=client))
            shutil.rmtree(store, ignore_errors=True)
            out[var.name] = {"read_decode": round(read, 3),
                             "regrid": round(max(0.0, planned - read), 3),
                             "encode_write": round(max(0.0, total - planned), 3),
                             "total": round(total, 3), "wall": round(w_total, 3)}
    return out
