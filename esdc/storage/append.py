"""Appending time steps to a local cube without rewriting it.

``append=True`` adds new time steps to an existing cube: the new store gets the grown
metadata, hard links to every chunk file of the old cube that holds no new step (they
are not rewritten: same bytes, same inode, same mtime; copied where the file system
refuses links), and region writes of the new steps only; then it is committed like a
build (:mod:`esdc.storage.write`). Arrays written into the cube after its build (not in
its checksum record: embeddings and their coordinates) are carried over whole, those
along ``time`` grown to the new length (the new steps read as their fill value, NaN,
until written: ``esdc embed --append``); they stay outside the record. An append whose
recipe is not the old cube grown along time is refused
(:class:`~esdc.errors.BuildConflictError`), the old cube untouched.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from esdc.conventions import ATTR_RECIPE, ATTR_SOURCES, GRANULE_TABLE, TIME_DIM
from esdc.errors import BuildConflictError, CubeNotFoundError
from esdc.hashing import file_sha256
from esdc.storage.integrity import ROOT_META, array_dirs, chunk_files, chunk_index, read_manifest

__all__ = ["AppendBase", "append_attrs", "carry_derived", "check_append", "grow_derived",
           "link_old_chunks"]


def _zjson(path: Path) -> dict[str, Any]:
    return json.loads((path / ROOT_META).read_text())


class AppendBase:
    """The existing cube an append grows: its root attributes, arrays and record.

    Parameters
    ----------
    target : pathlib.Path
        The cube.

    Raises
    ------
    CubeNotFoundError
        If there is no cube at ``target``.
    BuildConflictError
        If it is not a Zarr v3 cube with a time axis.
    """

    def __init__(self, target: Path) -> None:
        try:
            root = _zjson(target)
        except (OSError, ValueError):
            raise CubeNotFoundError(f"append=True: there is no cube at {target} to append to; "
                                    "build it first (without append=True).") from None
        if root.get("zarr_format") != 3 or root.get("node_type") != "group":
            raise BuildConflictError(f"append=True: {target} is not a Zarr v3 cube; rebuild it "
                                     "with overwrite=True.")
        self.target = target
        self.attrs: dict[str, Any] = root.get("attributes", {})
        # the cube's own arrays; its tables (esdc_granules) are written anew with each append
        self.arrays = {name: _zjson(path) for name, path in array_dirs(target).items()
                       if not name.startswith(f"{GRANULE_TABLE}/")}
        if TIME_DIM not in self.arrays:
            raise BuildConflictError(f"append=True: {target} has no time axis to append to.")
        self.n_time = int(self.arrays[TIME_DIM]["shape"][0])
        self.manifest = read_manifest(target)
        # arrays written after the build (embeddings): carried over, not the recipe's
        recorded = (self.manifest or {}).get("arrays")
        self.derived = sorted(n for n in self.arrays if recorded and n not in recorded)
        for name in self.derived:
            del self.arrays[name]
        self.ident = ((self.manifest or {}).get("fingerprint_sha256")
                      or file_sha256(target / ROOT_META))


def append_attrs(ds: xr.Dataset, base: AppendBase) -> xr.Dataset:
    """``ds`` with the old cube's ``date_created``, a ``date_modified`` and a ``history`` line."""
    n_old, n_new = base.n_time, ds.sizes[TIME_DIM]
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    attrs = dict(ds.attrs)
    if "date_created" in base.attrs:
        attrs["date_created"] = base.attrs["date_created"]
    attrs["date_modified"] = now
    line = str(attrs.get("history", f"{now} built by esdc"))
    line = (line.replace(" built by ", f" appended time steps {n_old}..{n_new - 1} by ", 1)
            if " built by " in line else f"{line} (appended time steps {n_old}..{n_new - 1})")
    attrs["history"] = f"{base.attrs['history']}\n{line}" if base.attrs.get("history") else line
    return ds.assign_attrs(attrs)


def _series_sources(ds: xr.Dataset) -> set[str] | None:
    import yaml

    try:
        recipe = yaml.safe_load(ds.attrs[ATTR_RECIPE])
        return {s["name"] for s in recipe.get("sources", []) if s.get("time") == "series"}
    except (KeyError, TypeError, AttributeError, ValueError, yaml.YAMLError):
        return None


def _refuse(what: str) -> BuildConflictError:
    return BuildConflictError(f"append=True: {what}")


def check_append(ds: xr.Dataset, base: AppendBase, store: Path, data_vars: list[str]) -> None:
    """Refuse an append whose new store is not the old cube grown along time.

    Parameters
    ----------
    ds : xarray.Dataset
        The planned, longer cube.
    base : AppendBase
        The stored cube.
    store : pathlib.Path
        The new store, its metadata and coordinates written.
    data_vars : list of str
        The variables whose chunk files are carried over.

    Raises
    ------
    BuildConflictError
        If arrays, dims, encoding, attributes, non-time coordinates, the old time steps or
        a source that is not a time series differ.
    """
    new = {name: _zjson(path) for name, path in array_dirs(store).items()
           if not name.startswith(f"{GRANULE_TABLE}/")}
    if set(new) != set(base.arrays):
        raise _refuse(f"the cube's arrays {sorted(base.arrays)} differ from the recipe's "
                      f"{sorted(new)}; rebuild it with overwrite=True.")
    for name, b in new.items():
        a = base.arrays[name]
        same = {k: v for k, v in a.items() if k not in ("shape", "attributes")}
        # Coordinates are written anew (their values are compared below); data variables
        # keep their old chunk files, so their encoding must be the same.
        if name in data_vars and same != {k: v for k, v in b.items()
                                          if k not in ("shape", "attributes")}:
            raise _refuse(f"{name!r} is stored differently in the cube and by the recipe "
                          "(chunks, codecs, dtype or fill value); appending needs the same "
                          "encoding and a time chunk length (output.chunks.time) that does "
                          "not depend on the length of the axis. Rebuild with overwrite=True.")
        if (a.get("dimension_names") or []) != (b.get("dimension_names") or []):
            raise _refuse(f"{name!r} has dims {a.get('dimension_names')} in the cube but "
                          f"{b.get('dimension_names')} by the recipe; rebuild it with "
                          "overwrite=True.")
        for d, na, nb in zip(a.get("dimension_names") or [], a["shape"], b["shape"],
                             strict=False):
            if d != TIME_DIM and na != nb:
                raise _refuse(f"{name!r} has {d}={na} in the cube but {nb} by the recipe; "
                              "only the time axis can grow. Rebuild with overwrite=True.")
        if name in data_vars and a.get("attributes") != b.get("attributes"):
            keys = sorted(k for k in set(a.get("attributes", {})) | set(b.get("attributes", {}))
                          if a.get("attributes", {}).get(k) != b.get("attributes", {}).get(k))
            raise _refuse(f"attributes {keys} of {name!r} differ between the cube and the "
                          "recipe; rebuild with overwrite=True.")
    n_old = base.n_time
    for name, a in base.arrays.items():
        dims = a.get("dimension_names") or []
        if name in data_vars or len(dims) > 2 or not dims:
            continue
        old = zarr.open_array(str(base.target / name), mode="r")[...]
        cur = zarr.open_array(str(store / name), mode="r")
        cur = cur[:n_old] if dims[0] == TIME_DIM else cur[...]
        if not np.array_equal(np.asarray(old), np.asarray(cur), equal_nan=True):
            what = ("the first time steps of the recipe" if dims[0] == TIME_DIM
                    else "the recipe's")
            raise _refuse(f"coordinate {name!r} of the cube differs from {what}; appending "
                          "only adds steps after the cube's last one. Rebuild with "
                          "overwrite=True.")
    series = _series_sources(ds)
    if series is not None:
        try:
            old = {s["source"]: s.get("sha256") for s in json.loads(base.attrs[ATTR_SOURCES])}
            cur = {s["source"]: s.get("sha256") for s in json.loads(ds.attrs[ATTR_SOURCES])}
        except (KeyError, TypeError, ValueError):
            return
        changed = sorted(n for n in set(old) | set(cur)
                         if n not in series and old.get(n) != cur.get(n))
        if changed:
            raise _refuse(f"source(s) {changed} are not time series and differ from the ones "
                          "the cube was built from; their layers would be stale. Rebuild with "
                          "overwrite=True.")


def link_old_chunks(base: AppendBase, store: Path, names: list[str],
                    first_new_chunk: int) -> dict[str, str]:
    """Hard-link the old cube's chunk files that hold no new time step into ``store``.

    Parameters
    ----------
    base : AppendBase
        The stored cube.
    store : pathlib.Path
        The new store.
    names : list of str
        Variables to carry over.
    first_new_chunk : int
        Index of the first time chunk written again (the last, partly filled one).

    Returns
    -------
    dict
        ``{chunk key: sha256}`` of every file carried over (from the old record where it
        has one).
    """
    carried: dict[str, str] = {}
    recorded = (base.manifest or {}).get("chunks", {})
    for name in names:
        meta = base.arrays[name]
        enc = meta.get("chunk_key_encoding", {})
        dims = meta.get("dimension_names") or []
        tpos = dims.index(TIME_DIM) if TIME_DIM in dims else None
        for key, src in chunk_files(base.target, [name]).items():
            if tpos is not None and chunk_index(key, name, enc)[tpos] >= first_new_chunk:
                continue  # the last, partly filled time chunk is written again
            dst = _link(src, store / key)
            carried[key] = recorded.get(key) or file_sha256(dst)
    return carried


def carry_derived(base: AppendBase, store: Path, n_time: int) -> list[str]:
    """Carry the arrays written after the build (embeddings) into ``store``, grown along time.

    Their chunk files are hard-linked (copied where links are refused); an array along
    ``time`` gets ``n_time`` steps in its metadata, the new ones reading as its fill
    value until written.

    Parameters
    ----------
    base : AppendBase
        The stored cube (its ``derived`` arrays).
    store : pathlib.Path
        The new store.
    n_time : int
        Time steps of the grown cube.

    Returns
    -------
    list of str
        The arrays carried over (keep them out of the new checksum record).
    """
    for name in base.derived:
        meta = _zjson(base.target / name)
        dims = meta.get("dimension_names") or []
        if TIME_DIM in dims:
            meta["shape"][dims.index(TIME_DIM)] = n_time
        (store / name).mkdir(parents=True, exist_ok=True)
        (store / name / ROOT_META).write_text(json.dumps(meta, indent=2))
        for key, src in chunk_files(base.target, [name]).items():
            _link(src, store / key)
    return list(base.derived)


def _link(src: Path, dst: Path) -> Path:
    """Hard-link ``src`` to ``dst`` (copied where the file system refuses links)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def grow_derived(store: Any, ds: xr.Dataset) -> list[str]:
    """Grow the arrays written after the build (embeddings) to the new time length.

    An append writes the recipe's variables; arrays the cube holds besides them (written
    by ``esdc embed`` or statistics) keep their chunks and get the new steps as their fill
    value, so every array of the version shares one ``time`` length.

    Parameters
    ----------
    store : zarr store
        The session's (forked) store, the recipe's arrays already appended.
    ds : xarray.Dataset
        The planned, longer cube.

    Returns
    -------
    list of str
        The arrays grown.
    """
    n_time = ds.sizes[TIME_DIM]
    grown = []
    for name, arr in zarr.open_group(store, mode="r+").arrays():
        dims = list(arr.metadata.dimension_names or ())
        if name in ds.variables or TIME_DIM not in dims:
            continue
        axis = dims.index(TIME_DIM)
        if arr.shape[axis] < n_time:
            arr.resize(tuple(n_time if i == axis else n for i, n in enumerate(arr.shape)))
            grown.append(name)
    return grown
