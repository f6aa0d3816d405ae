"""The journaled, resumable write of a cube into a local folder, committed atomically.

:func:`write_store` is what :meth:`esdc.storage.local.LocalTarget.write` runs (and what
an object-store target runs into its staging folder before the upload):

1. the metadata and coordinates are written into the partial build
   (:class:`~esdc.storage.journal.PartialBuild`), every file fsynced, then the journal
   header; an append hard-links the old cube's chunk files here
   (:mod:`esdc.storage.append`);
2. each region (one spatial tile of chunks, :mod:`esdc.storage.regions`) is a region
   write on the Dask cluster; its last task hashes and flushes its chunk files (on the
   worker), then the region is journaled. A missing chunk file means a lost write:
   written again once;
3. every float layer must hold a finite value; the SHA-256 of every chunk goes into the
   ``esdc_integrity`` record, the metadata are consolidated, the build marked complete;
4. commit: the store is swapped into place (:func:`~esdc.storage.journal.commit_store`).

On ``resume`` the regions named in the journal whose files are all there are kept.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import xarray as xr
import zarr

import esdc.storage.journal as journal
from esdc.conventions import SPATIAL_DIMS, TIME_DIM, spatial_dims
from esdc.errors import BuildConflictError, CubeExistsError, EsdcError
from esdc.hashing import file_sha256
from esdc.recipe import CompressorSpec
from esdc.storage.append import (
    AppendBase,
    append_attrs,
    carry_derived,
    check_append,
    link_old_chunks,
)
from esdc.storage.fingerprint import complete_digest, digest, fingerprint
from esdc.storage.integrity import (
    ROOT_META,
    array_dirs,
    chunk_files,
    read_manifest,
    remove_temp_files,
    write_manifest,
)
from esdc.storage.regions import (
    check_not_empty,
    encoding,
    prepare,
    tile_keys,
    tiles,
    write_metadata,
)
from esdc.storage.schedule import encoded_variables, finish_region, run_regions, store_region
from esdc.storage.shards import block_lengths, inner_checksums
from esdc.storage.tables import write_tables

__all__ = ["consolidate", "write_store"]

Report = Callable[[str], None]


def consolidate(store: Path, zarr_format: int | None = 3) -> None:
    """Consolidate a local store's metadata into its root ``zarr.json``.

    Parameters
    ----------
    store : pathlib.Path
        The store's folder.
    zarr_format : int, optional
        3 for a cube esdc builds; None: the store's own format.
    """
    with warnings.catch_warnings():
        # Consolidated metadata is not (yet) in the Zarr v3 spec; zarr-python and
        # xarray read it, and it makes opening a cube one read.
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        zarr.consolidate_metadata(str(store), zarr_format=zarr_format)


def _stored_digest(target: Path) -> str | None:
    try:
        root = json.loads((target / ROOT_META).read_text())
    except (OSError, ValueError):
        return None
    return complete_digest(root, read_manifest(target))


def write_store(ds: xr.Dataset, target: Path, *, chunks: dict[str, int],
                compressor: CompressorSpec, overwrite: bool = False, client: Any = None,
                on_region: Callable[[int, int], None] | None = None, resume: bool = False,
                append: bool = False, report: Report | None = None,
                tables: Mapping[str, xr.Dataset] | None = None,
                shards: dict[str, int] | None = None) -> Path:
    """Write a lazy cube into the local folder ``target``, region by region, then commit.

    The caller has checked the target (:meth:`esdc.storage.target.Target.check`).

    Parameters
    ----------
    ds : xarray.Dataset
        The cube, Dask-backed; dims ``time``, ``lat|y``, ``lon|x``.
    target : pathlib.Path
        Final location of the store.
    chunks, compressor, overwrite, client, on_region, resume, append, report, tables, shards
        As for :meth:`esdc.storage.target.Target.write`. With ``shards`` a region, a
        journaled file and a checksum are a shard (:mod:`esdc.storage.shards`).

    Returns
    -------
    pathlib.Path
        ``target``.

    Raises
    ------
    CubeExistsError
        If ``target`` holds a cube of other inputs and neither ``overwrite`` nor ``append``
        is given.
    BuildConflictError
        If another process is writing the target, if ``resume`` finds an unfinished
        build of other inputs, or if ``append`` finds no compatible cube.
    CubeNotFoundError
        If ``append`` finds no cube.
    SourceError
        If a float layer holds no valid value anywhere (nothing is committed).
    """
    say = report or (lambda _msg: None)
    blocks = block_lengths(chunks, shards)  # the write unit: a shard where sharded
    fp = fingerprint(ds, chunks, compressor, shards)
    fp_sha = digest(fp)
    if (resume or append) and _stored_digest(target) == fp_sha:
        journal.discard_stale(target)
        say(f"{target} is up to date")
        return target
    base = AppendBase(target) if append else None
    if base is None and target.exists() and not overwrite:
        raise CubeExistsError(
            f"{target} exists and was built from other inputs (or is incomplete); pass "
            "overwrite=True to replace it (the old cube is kept until the new one is "
            "complete), append=True to add new time steps, or choose another out=PATH.")
    if base is not None and ds.sizes.get(TIME_DIM, 0) <= base.n_time:
        raise BuildConflictError(
            f"append=True: the recipe gives {ds.sizes.get(TIME_DIM, 0)} time steps and "
            f"{target} has {base.n_time} already: nothing to append. Extend the time axis, "
            "or rebuild with overwrite=True.")
    ds = prepare(ds, blocks)
    if base is not None:
        ds = append_attrs(ds, base)
    enc = encoding(ds, chunks, compressor, shards)
    ydim, xdim = spatial_dims(ds.dims) or SPATIAL_DIMS[-1]
    spatial = [str(v) for v in ds.data_vars if ydim in ds[v].dims]
    mode = "append" if base is not None else "build"
    part = journal.PartialBuild(target)
    part.lock()
    keep = False
    try:
        head = part.header()
        if head is not None and not resume:
            say(f"discarding the unfinished build in {part.dir} (resume=True continues one)")
            head = None
        elif head is not None and (head.get("fingerprint_sha256") != fp_sha
                                   or head.get("mode") != mode
                                   or head.get("base") != (base.ident if base else None)):
            keep = True
            raise BuildConflictError(
                f"resume=True: the unfinished build in {part.dir} is of other inputs (recipe "
                f"SHA-256 {head.get('fingerprint', {}).get('recipe_sha256')}, {head.get('mode')}"
                f"); this one is recipe SHA-256 {fp.get('recipe_sha256')} ({mode}). Remove that "
                "folder, or build without resume=True to start over.")
        if head is None:
            part.clear()
            head = _start(ds, part, enc, fp, fp_sha, base, spatial, ydim, xdim, blocks, say)
        keep = True
        if not part.is_complete():
            _write_regions(ds, part, head, enc, ydim, xdim, client, on_region, say)
            try:
                check_not_empty(ds, part.store, _sizes(part), target)
            except EsdcError:
                keep = False  # resuming would find the same empty layer: discard the build
                raise
            write_tables(part.store, tables)
            _finish(part, head, fp, fp_sha)
        journal.commit_store(part.store, target)
        part.remove()
        journal.remove_trash(target)
    except BaseException:
        if keep and part.header() is not None:
            say(f"the unfinished build is kept in {part.dir}; `esdc build ... --resume` "
                "continues it (resume=True in Python)")
            part.unlock()
        else:
            part.remove()
        raise
    return target


def _blocks(enc: dict[str, Any]) -> tuple[int, ...]:
    """A variable's stored file shape: its shard shape, else its chunk shape."""
    return tuple(enc.get("shards") or enc["chunks"])


def _per_shard(enc: dict[str, Any]) -> dict[str, list[int]]:
    """``{variable: chunks per shard along each dim}`` of the sharded variables."""
    return {n: [s // c for s, c in zip(e["shards"], e["chunks"], strict=True)]
            for n, e in enc.items() if e.get("shards")}


def _hash(path: Path, n_inner: int | None) -> list[Any]:
    """``[sha256, size]`` of a flushed chunk file; a shard's also the SHA-256 of its chunks."""
    if not n_inner:
        return [file_sha256(path, fsync=True), path.stat().st_size]
    with open(path, "rb") as f:
        data = f.read()
        os.fsync(f.fileno())
    return [hashlib.sha256(data).hexdigest(), len(data), inner_checksums(data, n_inner)]


def _sizes(part: journal.PartialBuild) -> dict[str, list[tuple[int, str]]]:
    """``{variable: [(size, chunk key), ...]}`` of the journaled chunk files."""
    sizes: dict[str, list[tuple[int, str]]] = {}
    for sums in part.done().values():
        for key, rec in sums.items():
            size = rec[1]
            sizes.setdefault(key.partition("/")[0], []).append((int(size), key))
    return sizes


def _start(ds: xr.Dataset, part: journal.PartialBuild, enc: dict[str, Any], fp: dict[str, Any],
           fp_sha: str, base: AppendBase | None, spatial: list[str], ydim: str, xdim: str,
           chunks: dict[str, int], say: Report) -> dict[str, Any]:
    """Write metadata and coordinates (and an append's links), then the journal header.

    ``chunks`` are the write units (shards of a sharded variable).
    """
    write_metadata(ds, zarr.storage.LocalStore(part.store), enc)
    carried: dict[str, str] = {}
    derived: list[str] = []
    trange = None
    names = spatial
    if base is not None:
        check_append(ds, base, part.store, spatial)
        names = [v for v in spatial if TIME_DIM in ds[v].dims]
        if not names:
            raise BuildConflictError("append=True: the cube has no time-varying variable to "
                                     "append to.")
        ct = _blocks(enc[names[0]])[ds[names[0]].dims.index(TIME_DIM)]
        first = base.n_time // ct
        trange = (first * ct, ds.sizes[TIME_DIM])
        carried = link_old_chunks(base, part.store, spatial, first)
        derived = carry_derived(base, part.store, ds.sizes[TIME_DIM])
        say(f"appending time steps {base.n_time}..{ds.sizes[TIME_DIM] - 1} to {part.target}; "
            f"{len(carried)} chunk files of the cube are kept as they are")
    journal.fsync_tree(part.store)
    head = {"version": 1, "mode": "append" if base is not None else "build",
            "fingerprint": fp, "fingerprint_sha256": fp_sha,
            "base": base.ident if base is not None else None,
            "variables": names, "time_range": trange,
            "tiles": tiles(ds, ydim, xdim, chunks), "carried": carried, "derived": derived,
            "shards": _per_shard(enc)}
    old_inner = ((base.manifest or {}).get("inner") or {}) if base is not None else {}
    if old_inner:  # the chunks inside a carried shard are those recorded
        head["carried_inner"] = {k: old_inner[k] for k in carried if k in old_inner}
    part.write_header(head)
    return head


def _write_regions(ds: xr.Dataset, part: journal.PartialBuild, head: dict[str, Any],
                   enc: dict[str, Any], ydim: str, xdim: str, client: Any,
                   on_region: Callable[[int, int], None] | None, say: Report) -> None:
    store = part.store
    names = [str(n) for n in head["variables"]]
    trange = head.get("time_range")
    todo_tiles = [list(map(int, t)) for t in head["tiles"]]
    key_encs = {n: json.loads((store / n / ROOT_META).read_text()).get("chunk_key_encoding")
                for n in names}
    keys = {(t[0], t[2]): tile_keys(ds, key_encs, names, enc, t, ydim, xdim, trange)
            for t in todo_tiles}
    remove_temp_files(store)  # a killed writer's half-written temporary files
    per_shard = {n: math.prod(c) for n, c in (head.get("shards") or {}).items()}
    done = part.done()
    for tid, sums in list(done.items()):  # journaled, and every file still there?
        ok = tid in keys and set(sums) == set(keys[tid])
        for k, rec in sums.items() if ok else ():
            size = rec[1]
            try:
                ok = (store / k).stat().st_size == size
            except OSError:
                ok = False
            if not ok:
                break
        if not ok:
            del done[tid]
    todo = [t for t in todo_tiles if (t[0], t[2]) not in done]
    if done:
        say(f"resuming {part.target}: {len(done)} of {len(todo_tiles)} regions already written")
    total = len(todo_tiles)
    if on_region:  # the total is known before the first region is written
        on_region(len(done), total)

    targets = {n: zarr.open_array(store=str(store), path=n, mode="r+").with_config(
        {"write_empty_chunks": True}) for n in names}

    encoded = encoded_variables(ds, names, {n: targets[n].dtype for n in names})

    def region_write(tile: list[int]) -> Any:
        sel = {ydim: slice(tile[0], tile[1]), xdim: slice(tile[2], tile[3])}
        if trange:
            sel[TIME_DIM] = slice(*trange)
        # Every chunk is stored, even all-fill ones, so a missing chunk file always
        # means a lost write and is detected as the region ends.
        return _store_region(encoded, [targets[n] for n in names], sel,
                             functools.partial(_hashed, store, keys[(tile[0], tile[2])],
                                               per_shard))

    def finished(tile: list[int], sums: dict[str, list[Any]] | None) -> bool:
        """Journal a region whose chunk files were hashed and flushed; False if one is lost."""
        if sums is None:
            return False
        for d in {(store / k).parent for k in sums}:
            journal.fsync_dir(d)
        part.record((tile[0], tile[2]), sums)
        done[(tile[0], tile[2])] = sums
        if on_region:
            on_region(len(done), total)
        return True

    lost = run_regions([region_write(t) for t in todo], todo, client, finished)
    if lost:  # rewrite lost regions once, then give up loudly
        lost = run_regions([region_write(t) for t in lost], lost, client, finished)
        if lost:
            raise OSError(f"region writes of {len(lost)} tile(s) were lost twice; the cube was "
                          f"not committed: {lost[:3]}")


def _store_region(encoded: dict[str, Any], targets: list[Any], sel: dict[str, slice],
                  end: Callable[[list[Any]], Any]) -> Any:
    """One region of every variable stored into its Zarr array: one Dask key when done.

    The chunks go straight to the arrays (:func:`~esdc.storage.schedule.store_region`),
    so upstream work shared by the regions keeps its keys (:mod:`esdc.storage.schedule`).
    ``encoded`` are the variables as stored
    (:func:`~esdc.storage.schedule.encoded_variables`), ``targets`` their arrays in that
    order; ``end`` runs on the worker once they are stored, its result the key's.
    """
    stored = store_region(encoded, targets, sel)
    return finish_region(stored, end, "esdc-region")


def _hashed(store: Path, keys: list[str], per_shard: dict[str, int],
            _parts: list[Any]) -> dict[str, list[Any]] | None:
    """The end of a region write, on the worker: :func:`_hash` of each of its chunk files.

    Hashing where the files were written keeps the client (which runs the scheduler of
    a local cluster) free to hand out tasks. None when a file is missing (a lost write).
    """
    try:
        return {k: _hash(store / k, per_shard.get(k.partition("/")[0])) for k in keys}
    except FileNotFoundError:
        return None


def _finish(part: journal.PartialBuild, head: dict[str, Any], fp: dict[str, Any],
            fp_sha: str) -> None:
    """Record every chunk's checksum, consolidate the metadata, mark the build complete."""
    store = part.store
    remove_temp_files(store)
    sums = dict(head.get("carried") or {})
    inner = dict(head.get("carried_inner") or {})  # a shard's chunks: {shard key: [sha256]}
    for rec in part.done().values():
        sums.update({k: v[0] for k, v in rec.items()})
        inner.update({k: v[2] for k, v in rec.items() if len(v) > 2 and v[2] is not None})
    derived = set(head.get("derived") or [])  # embeddings carried by an append: unrecorded
    arrays = sorted(a for a in array_dirs(store) if a not in derived)
    files = chunk_files(store, arrays)
    gone = sorted(set(sums) - set(files))
    if gone:
        raise OSError(f"chunk file(s) {gone[:3]} of {store} were written and are now missing; "
                      "the cube was not committed.")
    for k, p in files.items():  # coordinates (written with the metadata)
        if k not in sums:
            sums[k] = file_sha256(p, fsync=True)
    layout = {"shards": head["shards"], "inner": inner} if head.get("shards") else {}
    write_manifest(store, sums, fingerprint=fp, fingerprint_sha256=fp_sha,
                   recipe_sha256=fp.get("recipe_sha256"), arrays=arrays,
                   **layout)
    consolidate(store)
    with open(store / ROOT_META, "rb") as f:
        os.fsync(f.fileno())
    journal.fsync_dir(store)
    part.mark_complete(fp_sha)
