"""Zarr storage of cubes: encoding, journaled region writes, checksums, atomic commit.

A cube is written into a hidden sibling folder and moved into place only when every
region is written, every chunk's SHA-256 recorded and the metadata consolidated, so a
reader of the target sees the old cube (or nothing) until the new one is complete, and
a failed or killed build leaves an existing cube as it was. The folder's name is fixed
by the target's, so an interrupted build can be found and continued
(``esdc build ... --resume``)::

    .NAME.partial-build/   locked (flock) by the process writing it
        cube.zarr/         the store being written
        build.json         journal header: build fingerprint, mode, regions; written (and
                           fsynced) once the metadata and coordinates are in the store
        regions.done       one JSON line per region, appended (and fsynced) only after
                           every chunk file of the region is durably written; it holds
                           their SHA-256
        complete           checksums recorded, metadata consolidated: only the commit is left

A region is one spatial tile of chunks (all times, all variables). On ``resume`` the
regions named in ``regions.done`` are skipped and the others written again; zarr writes
each chunk file to a temporary name and renames it, so a chunk file is never
half-written, and the leftovers of a killed writer are removed. The commit swaps the
new store with the old cube in one ``renameat2(RENAME_EXCHANGE)`` where the system has
it (else two renames, during which the target is briefly absent).

``append`` adds new time steps to an existing cube: the new store gets the grown
metadata, hard links to every chunk file of the old cube that holds no new step (they
are not rewritten: same bytes, same inode, same mtime), and region writes of the new
steps only; then it is committed like a build.

The checksum record is the ``esdc_integrity`` group of the store (see
:mod:`esdc.integrity`); it also holds the build's fingerprint (recipe and source
SHA-256, grid, encoding) that tells whether a complete cube is up to date.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import hashlib
import itertools
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from esdc.errors import CubeExistsError, EsdcError, OutputPathError
from esdc.integrity import (
    array_dirs,
    chunk_files,
    chunk_key,
    file_sha256,
    read_manifest,
    remove_temp_files,
    write_manifest,
)
from esdc.recipe import CompressorSpec

__all__ = ["check_target", "cube_is_current", "encoding", "fingerprint", "open_cube",
           "partial_path", "regions", "write_cube"]

PARTIAL_SUFFIX = ".partial-build"
def check_target(target: Path | str, overwrite: bool, *,
                 storage_options: dict[str, Any] | None = None) -> None:
    """Fail early when the cube cannot be written at ``target``.

    A URL (``s3://bucket/cube.zarr``) is checked by
    :func:`esdc.remote.check_remote_target` with ``storage_options``.

    Raises
    ------
    CubeExistsError
        If ``target`` exists and ``overwrite`` is false.
    OutputPathError
        If ``target``'s folder cannot be created or written.
    """
    from esdc.remote import check_remote_target, is_url

    if is_url(target):
        return check_remote_target(str(target), overwrite, options=storage_options)
    target = Path(target)
    if target.exists() and not overwrite:
        raise CubeExistsError(
            f"{target} exists; pass --overwrite to replace it (the old cube is kept until the "
            "new one is complete) or choose another --out."
        )
    parent = target.parent
    blocker = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise OutputPathError(
            f"cannot write the cube into {parent}: {blocker} is a file, not a folder. Choose "
            "a writable --out path."
        )
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".esdc-probe-{uuid.uuid4().hex[:8]}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise OutputPathError(
            f"cannot write the cube into {parent}: {exc.strerror or exc}. Choose a writable "
            "--out path."
        ) from None


def encoding(ds: xr.Dataset, chunks: dict[str, int], compressor: CompressorSpec) -> dict[str, Any]:
    """Zarr v3 encoding of every data variable: chunks and a Blosc compressor.

    Parameters
    ----------
    ds : xarray.Dataset
        The cube.
    chunks : dict
        Chunk length per dim; dims not named take their full length.
    compressor : CompressorSpec
        Blosc settings (``zarr.codecs.BloscCodec``).

    Returns
    -------
    dict
        ``{var: {"chunks": tuple, "compressors": (BloscCodec,)}}``.
    """
    codec = zarr.codecs.BloscCodec(cname=compressor.cname, clevel=compressor.clevel,
                                   shuffle=compressor.shuffle)
    enc: dict[str, Any] = {}
    for name, v in ds.data_vars.items():
        enc[str(name)] = {
            "chunks": tuple(min(chunks.get(str(d), n), n) for d, n in v.sizes.items()),
            "compressors": (codec,),
        }
        if np.issubdtype(v.dtype, np.floating):
            enc[str(name)]["fill_value"] = np.nan
    if "time" in ds.coords:
        enc["time"] = {"units": "days since 1970-01-01", "calendar": "proleptic_gregorian",
                       "dtype": "float64"}
        if "time_bnds" in ds:
            enc["time_bnds"] = dict(enc["time"])
    return enc


def regions(ds: xr.Dataset, dim: str, size: int) -> list[slice]:
    """Slices of ``dim`` in steps of ``size`` (one chunk band each); regions are their products."""
    n = ds.sizes[dim]
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]



# --------------------------------------------------------------------------- fingerprint
def fingerprint(ds: xr.Dataset, chunks: dict[str, int],
                compressor: CompressorSpec) -> dict[str, Any]:
    """What identifies a build's result: recipe, sources, grid, variables, encoding.

    Two builds with equal fingerprints write the same chunks. Nothing is computed: the
    recipe and source SHA-256 come from the plan's provenance attributes, the
    coordinates are hashed from memory.

    Parameters
    ----------
    ds : xarray.Dataset
        The planned cube (:func:`esdc.build.plan`).
    chunks : dict
        Chunk length per dim.
    compressor : CompressorSpec
        Compressor settings.

    Returns
    -------
    dict
        JSON-serializable; :func:`cube_is_current` compares its SHA-256.
    """
    try:
        sources = sorted((str(s.get("source")), str(s.get("sha256")))
                         for s in json.loads(ds.attrs.get("esdc_sources", "[]")))
    except (TypeError, ValueError, AttributeError):
        sources = []
    coords = {}
    for d in map(str, ds.dims):
        if d in ds.coords:
            coords[d] = hashlib.sha256(np.ascontiguousarray(ds[d].values).tobytes()).hexdigest()
    return {
        "format": 1,
        "recipe_sha256": ds.attrs.get("esdc_recipe_sha256"),
        "sources": [list(s) for s in sources],
        "sizes": {str(k): int(v) for k, v in sorted(ds.sizes.items())},
        "coords": coords,
        "variables": {str(k): {"dims": list(map(str, v.dims)), "dtype": str(v.dtype)}
                      for k, v in sorted(ds.data_vars.items())},
        "chunks": {str(k): int(v) for k, v in sorted(chunks.items())},
        "compressor": {"cname": compressor.cname, "clevel": int(compressor.clevel),
                       "shuffle": compressor.shuffle},
    }


def _digest(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


def partial_path(target: Path) -> Path:
    """The hidden folder beside ``target`` where its build is written (``.NAME.partial-build``)."""
    target = Path(target)
    return target.with_name(f".{target.name}{PARTIAL_SUFFIX}")


def _complete_digest(target: Path) -> str | None:
    """Fingerprint SHA-256 of a complete esdc cube at ``target``, else None."""
    try:
        root = json.loads((target / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    if root.get("consolidated_metadata") is None:
        return None
    rec = read_manifest(target)
    return None if rec is None else rec.get("fingerprint_sha256")


def cube_is_current(ds: xr.Dataset, target: Path | str, *, chunks: dict[str, int],
                    compressor: CompressorSpec,
                    storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``target`` is a complete cube built with the same fingerprint as ``ds``.

    Reads only the target's metadata (not its chunks; ``esdc verify --checksums``
    checks those).

    Parameters
    ----------
    ds : xarray.Dataset
        The planned cube.
    target : pathlib.Path
        The cube on disk.
    chunks : dict
        Chunk length per dim.
    compressor : CompressorSpec
        Compressor settings.

    Returns
    -------
    bool
        True when rebuilding would write the same chunks: nothing to do.
    """
    from esdc.remote import is_url, remote_is_current

    if is_url(target):
        return remote_is_current(ds, str(target), chunks=chunks, compressor=compressor,
                                 options=storage_options)
    return _complete_digest(Path(target)) == _digest(fingerprint(ds, chunks, compressor))


# --------------------------------------------------------------------------- durability
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` (metadata, coordinates, links)."""
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            with contextlib.suppress(OSError), open(os.path.join(dirpath, f), "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(dirpath))


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


# --------------------------------------------------------------------------- the partial build
class _Partial:
    """The hidden build folder of a target: lock, journal, store."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.dir = partial_path(target)
        self.store = self.dir / "cube.zarr"
        self.header_path = self.dir / "build.json"
        self.done_path = self.dir / "regions.done"
        self.complete_path = self.dir / "complete"
        self._fd: int | None = None

    def lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            self.dir.mkdir(exist_ok=True)
            return
        self.dir.mkdir(exist_ok=True)
        fd = os.open(self.dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EsdcError(f"another esdc build is writing {self.target} (its unfinished "
                            f"build {self.dir} is locked); wait for it to end or stop it."
                            ) from None
        self._fd = fd

    def unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def header(self) -> dict[str, Any] | None:
        try:
            head = json.loads(self.header_path.read_text())
        except (OSError, ValueError):
            return None
        return head if isinstance(head, dict) and self.store.is_dir() else None

    def clear(self) -> None:
        for child in self.dir.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def done(self) -> dict[tuple[int, int], dict[str, list[Any]]]:
        out: dict[tuple[int, int], dict[str, list[Any]]] = {}
        try:
            lines = self.done_path.read_text().splitlines()
        except OSError:
            return out
        for line in lines:
            try:  # a torn last line (killed while appending) is ignored
                rec = json.loads(line)
                out[(int(rec["tile"][0]), int(rec["tile"][1]))] = rec["chunks"]
            except (ValueError, KeyError, TypeError, IndexError):
                continue
        return out

    def record(self, tile: tuple[int, int], sums: dict[str, list[Any]]) -> None:
        line = json.dumps({"tile": list(tile), "chunks": sums}) + "\n"
        with open(self.done_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.unlock()


def _discard_stale(target: Path) -> None:
    """Remove an unlocked leftover build folder and old-cube trash of ``target``."""
    part = _Partial(target)
    if part.dir.exists():
        try:
            part.lock()
        except EsdcError:
            return
        part.remove()
    _remove_trash(target)


def _remove_trash(target: Path) -> None:
    for old in target.parent.glob(f".{target.name}.old-*"):
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- append
def _zjson(path: Path) -> dict[str, Any]:
    return json.loads((path / "zarr.json").read_text())


class _Base:
    """The existing cube an ``append`` grows."""

    def __init__(self, target: Path) -> None:
        try:
            root = _zjson(target)
        except (OSError, ValueError):
            raise EsdcError(f"--append: there is no cube at {target} to append to; build it "
                            "first (without --append).") from None
        if root.get("zarr_format") != 3 or root.get("node_type") != "group":
            raise EsdcError(f"--append: {target} is not a Zarr v3 cube; rebuild it with "
                            "--overwrite.")
        self.target = target
        self.attrs: dict[str, Any] = root.get("attributes", {})
        self.arrays = {name: _zjson(path) for name, path in array_dirs(target).items()}
        if "time" not in self.arrays:
            raise EsdcError(f"--append: {target} has no time axis to append to.")
        self.n_time = int(self.arrays["time"]["shape"][0])
        self.manifest = read_manifest(target)
        self.ident = (self.manifest or {}).get("fingerprint_sha256") or hashlib.sha256(
            (target / "zarr.json").read_bytes()).hexdigest()


def _append_attrs(ds: xr.Dataset, base: _Base) -> xr.Dataset:
    n_old, n_new = base.n_time, ds.sizes["time"]
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
        recipe = yaml.safe_load(ds.attrs["esdc_recipe"])
        return {s["name"] for s in recipe.get("sources", []) if s.get("time") == "series"}
    except (KeyError, TypeError, AttributeError, ValueError, yaml.YAMLError):
        return None


def _check_append(ds: xr.Dataset, base: _Base, store: Path, data_vars: list[str]) -> None:
    """Refuse an append whose new store is not the old cube grown along time."""
    new = {name: _zjson(path) for name, path in array_dirs(store).items()}
    if set(new) != set(base.arrays):
        raise EsdcError(f"--append: the cube's arrays {sorted(base.arrays)} differ from the "
                        f"recipe's {sorted(new)}; rebuild it with --overwrite.")
    for name, b in new.items():
        a = base.arrays[name]
        same = {k: v for k, v in a.items() if k not in ("shape", "attributes")}
        # Coordinates are written anew (their values are compared below); data variables
        # keep their old chunk files, so their encoding must be the same.
        if name in data_vars and same != {k: v for k, v in b.items()
                                          if k not in ("shape", "attributes")}:
            raise EsdcError(f"--append: {name!r} is stored differently in the cube and by the "
                            "recipe (chunks, codecs, dtype or fill value); appending needs the "
                            "same encoding and a time chunk length (output.chunks.time) that "
                            "does not depend on the length of the axis. Rebuild with "
                            "--overwrite.")
        if (a.get("dimension_names") or []) != (b.get("dimension_names") or []):
            raise EsdcError(f"--append: {name!r} has dims {a.get('dimension_names')} in the "
                            f"cube but {b.get('dimension_names')} by the recipe; rebuild it "
                            "with --overwrite.")
        for d, na, nb in zip(a.get("dimension_names") or [], a["shape"], b["shape"],
                             strict=False):
            if d != "time" and na != nb:
                raise EsdcError(f"--append: {name!r} has {d}={na} in the cube but {nb} by the "
                                "recipe; only the time axis can grow. Rebuild with --overwrite.")
        if name in data_vars and a.get("attributes") != b.get("attributes"):
            keys = sorted(k for k in set(a.get("attributes", {})) | set(b.get("attributes", {}))
                          if a.get("attributes", {}).get(k) != b.get("attributes", {}).get(k))
            raise EsdcError(f"--append: attributes {keys} of {name!r} differ between the cube "
                            "and the recipe; rebuild with --overwrite.")
    n_old = base.n_time
    for name, a in base.arrays.items():
        dims = a.get("dimension_names") or []
        if name in data_vars or len(dims) > 2 or not dims:
            continue
        old = zarr.open_array(str(base.target / name), mode="r")[...]
        cur = zarr.open_array(str(store / name), mode="r")
        cur = cur[:n_old] if dims[0] == "time" else cur[...]
        if not np.array_equal(np.asarray(old), np.asarray(cur), equal_nan=True):
            what = "the first time steps of the recipe" if dims[0] == "time" else "the recipe's"
            raise EsdcError(f"--append: coordinate {name!r} of the cube differs from {what}; "
                            "appending only adds steps after the cube's last one. Rebuild with "
                            "--overwrite.")
    series = _series_sources(ds)
    if series is not None:
        try:
            old = {s["source"]: s.get("sha256") for s in json.loads(base.attrs["esdc_sources"])}
            cur = {s["source"]: s.get("sha256") for s in json.loads(ds.attrs["esdc_sources"])}
        except (KeyError, TypeError, ValueError):
            return
        changed = sorted(n for n in set(old) | set(cur)
                         if n not in series and old.get(n) != cur.get(n))
        if changed:
            raise EsdcError(f"--append: source(s) {changed} are not time series and differ from "
                            "the ones the cube was built from; their layers would be stale. "
                            "Rebuild with --overwrite.")


def _key_index(key: str, name: str, enc: dict[str, Any]) -> tuple[int, ...]:
    rest = key[len(name) + 1:]
    if enc.get("name") == "v2":
        sep = enc.get("configuration", {}).get("separator", ".")
        return tuple(int(i) for i in rest.split(sep))
    sep = enc.get("configuration", {}).get("separator", "/")
    parts = rest.split(sep)
    return tuple(int(i) for i in parts[1:])


def _link_old_chunks(base: _Base, store: Path, ds: xr.Dataset, names: list[str],
                     first_new_chunk: int) -> dict[str, str]:
    """Hard-link the old cube's chunk files that hold no new time step into ``store``."""
    carried: dict[str, str] = {}
    recorded = (base.manifest or {}).get("chunks", {})
    for name in names:
        meta = base.arrays[name]
        enc = meta.get("chunk_key_encoding", {})
        dims = meta.get("dimension_names") or []
        tpos = dims.index("time") if "time" in dims else None
        for key, src in chunk_files(base.target, [name]).items():
            if tpos is not None and _key_index(key, name, enc)[tpos] >= first_new_chunk:
                continue  # the last, partly filled time chunk is written again
            dst = store / key
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
            carried[key] = recorded.get(key) or file_sha256(dst)
    return carried


# --------------------------------------------------------------------------- writing
def _prepare(ds: xr.Dataset, chunks: dict[str, int]) -> xr.Dataset:
    ds = ds.chunk({d: chunks.get(str(d), -1) for d in ds.dims if d != "nv"})
    # Small non-spatial coordinates (time bounds) go in memory: the metadata write
    # stores them, the region writes leave them alone.
    return ds.assign_coords({c: ds[c].load() for c in ds.coords
                             if ds[c].chunks is not None and not {"lat", "lon", "y", "x"} & set(
                                 ds[c].dims)})


def write_cube(
    ds: xr.Dataset,
    target: Path,
    *,
    chunks: dict[str, int],
    compressor: CompressorSpec,
    overwrite: bool = False,
    client: Any = None,
    on_region: Callable[[int, int], None] | None = None,
    resume: bool = False,
    append: bool = False,
    report: Callable[[str], None] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Path | str:
    """Write a lazy cube to Zarr (format 3) region by region, then commit atomically.

    The metadata and the in-memory coordinates are written first; then each spatial
    tile of chunks (all times, all variables) is a region write, all submitted to the
    ``distributed`` client at once (shared inputs are computed once). As each region
    finishes, its chunk files are hashed and flushed to disk and the region is
    journaled; then the checksums are recorded, the metadata consolidated and the
    store moved into place. See the module docstring for the layout.

    Parameters
    ----------
    ds : xarray.Dataset
        The cube, Dask-backed; dims ``time``, ``lat|y``, ``lon|x``.
    target : pathlib.Path
        Final location of the store.
    chunks : dict
        Chunk length per dim.
    compressor : CompressorSpec
        Compressor settings.
    overwrite : bool
        Replace an existing cube (only once the new one is complete).
    client : distributed.Client, optional
        Where to compute; the current Dask scheduler when omitted.
    on_region : callable, optional
        Called as ``on_region(done, total)`` after each region.
    resume : bool
        Continue the unfinished build of the same fingerprint at :func:`partial_path`
        (skipping its journaled regions); do nothing when ``target`` is complete and
        current. Without it an unfinished build is discarded and started over.
    append : bool
        Grow the existing cube at ``target`` along time: write only the new time steps,
        keep (hard-link) every old chunk file that holds none of them.
    report : callable, optional
        Called with a one-line message on what is done (resumed, up to date, ...).
    storage_options : dict, optional
        For a URL ``target`` (``s3://bucket/cube.zarr``): fsspec options. Such a cube is
        built into local staging, then uploaded with its root metadata last
        (:func:`esdc.remote.write_remote`).

    Returns
    -------
    pathlib.Path or str
        ``target``.

    Raises
    ------
    CubeExistsError, OutputPathError
        See :func:`check_target`; also when ``resume`` finds a different cube at
        ``target`` and ``overwrite`` is false.
    EsdcError
        If another process is writing the target, if ``resume`` finds an unfinished
        build of another fingerprint, or if ``append`` finds no compatible cube.
    """
    from esdc.remote import is_url, write_remote

    if is_url(target):
        return write_remote(ds, str(target), chunks=chunks, compressor=compressor,
                            overwrite=overwrite, client=client, on_region=on_region,
                            resume=resume, append=append, report=report,
                            options=storage_options)
    target = Path(target)
    say = report or (lambda _msg: None)
    if append and overwrite:
        raise EsdcError("--append grows the existing cube; it does not go with --overwrite.")
    check_target(target, overwrite or resume or append)
    fp = fingerprint(ds, chunks, compressor)
    digest = _digest(fp)
    if (resume or append) and _complete_digest(target) == digest:
        _discard_stale(target)
        say(f"{target} is up to date")
        return target
    base = _Base(target) if append else None
    if base is None and target.exists() and not overwrite:
        raise CubeExistsError(
            f"{target} exists and was built from other inputs (or is incomplete); pass "
            "--overwrite to replace it (the old cube is kept until the new one is complete), "
            "--append to add new time steps, or choose another --out.")
    if base is not None and ds.sizes.get("time", 0) <= base.n_time:
        raise EsdcError(f"--append: the recipe gives {ds.sizes.get('time', 0)} time steps and "
                        f"{target} has {base.n_time} already: nothing to append. Extend the "
                        "time axis, or rebuild with --overwrite.")
    ds = _prepare(ds, chunks)
    if base is not None:
        ds = _append_attrs(ds, base)
    enc = encoding(ds, chunks, compressor)
    ydim, xdim = next((y, x) for y, x in (("lat", "lon"), ("y", "x")) if y in ds.dims)
    spatial = [str(v) for v in ds.data_vars if ydim in ds[v].dims]
    mode = "append" if base is not None else "build"
    part = _Partial(target)
    part.lock()
    keep = False
    try:
        head = part.header()
        if head is not None and not resume:
            say(f"discarding the unfinished build in {part.dir} (--resume continues one)")
            head = None
        elif head is not None and (head.get("fingerprint_sha256") != digest
                                   or head.get("mode") != mode
                                   or head.get("base") != (base.ident if base else None)):
            keep = True
            raise EsdcError(
                f"--resume: the unfinished build in {part.dir} is of other inputs (recipe "
                f"SHA-256 {head.get('fingerprint', {}).get('recipe_sha256')}, {head.get('mode')}"
                f"); this one is recipe SHA-256 {fp.get('recipe_sha256')} ({mode}). Remove that "
                "folder, or build without --resume to start over.")
        if head is None:
            part.clear()
            head = _start(ds, part, enc, fp, digest, base, spatial, ydim, xdim, chunks, say)
        keep = True
        if not part.complete_path.exists():
            _write_regions(ds, part, head, enc, ydim, xdim, client, on_region, say)
            try:
                _check_not_empty(ds, part, target)
            except EsdcError:
                keep = False  # resuming would find the same empty layer: discard the build
                raise
            _finish(part, head, fp, digest)
        _commit(part.store, target)
        part.remove()
        _remove_trash(target)
    except BaseException:
        if keep and part.header() is not None:
            say(f"the unfinished build is kept in {part.dir}; `esdc build ... --resume` "
                "continues it")
            part.unlock()
        else:
            part.remove()
        raise
    return target


def _start(ds: xr.Dataset, part: _Partial, enc: dict[str, Any], fp: dict[str, Any],
           digest: str, base: _Base | None, spatial: list[str], ydim: str, xdim: str,
           chunks: dict[str, int], say: Callable[[str], None]) -> dict[str, Any]:
    """Write metadata and coordinates (and an append's links), then the journal header."""
    ds.to_zarr(part.store, mode="w-", compute=False, zarr_format=3, consolidated=False,
               encoding=enc)
    carried: dict[str, str] = {}
    trange = None
    names = spatial
    if base is not None:
        _check_append(ds, base, part.store, spatial)
        names = [v for v in spatial if "time" in ds[v].dims]
        if not names:
            raise EsdcError("--append: the cube has no time-varying variable to append to.")
        ct = enc[names[0]]["chunks"][ds[names[0]].dims.index("time")]
        first = base.n_time // ct
        trange = (first * ct, ds.sizes["time"])
        carried = _link_old_chunks(base, part.store, ds, spatial, first)
        say(f"appending time steps {base.n_time}..{ds.sizes['time'] - 1} to {part.target}; "
            f"{len(carried)} chunk files of the cube are kept as they are")
    _fsync_tree(part.store)
    tiles = [[ysl.start, ysl.stop, xsl.start, xsl.stop]
             for ysl in regions(ds, ydim, chunks.get(ydim, ds.sizes[ydim]))
             for xsl in regions(ds, xdim, chunks.get(xdim, ds.sizes[xdim]))]
    head = {"version": 1, "mode": "append" if base is not None else "build",
            "fingerprint": fp, "fingerprint_sha256": digest,
            "base": base.ident if base is not None else None,
            "variables": names, "time_range": trange, "tiles": tiles, "carried": carried}
    _write_json(part.header_path, head)
    return head


def _tile_keys(ds: xr.Dataset, key_encs: dict[str, Any], names: list[str], enc: dict[str, Any],
               tile: list[int], ydim: str, xdim: str,
               trange: list[int] | None) -> list[str]:
    """Chunk keys a region write of ``tile`` stores."""
    y0, y1, x0, x1 = tile
    keys = []
    for name in names:
        v = ds[name]
        key_enc = key_encs[name]
        ranges = []
        for d, c in zip(v.dims, enc[name]["chunks"], strict=True):
            lo, hi = ((y0, y1) if d == ydim else (x0, x1) if d == xdim
                      else tuple(trange) if d == "time" and trange else (0, v.sizes[d]))
            ranges.append(range(lo // c, -(-hi // c)))
        keys += [chunk_key(name, idx, key_enc) for idx in itertools.product(*ranges)]
    return keys


def _write_regions(ds: xr.Dataset, part: _Partial, head: dict[str, Any], enc: dict[str, Any],
                   ydim: str, xdim: str, client: Any,
                   on_region: Callable[[int, int], None] | None,
                   say: Callable[[str], None]) -> None:
    store = part.store
    names = [str(n) for n in head["variables"]]
    trange = head.get("time_range")
    tiles = [list(map(int, t)) for t in head["tiles"]]
    key_encs = {n: _zjson(store / n).get("chunk_key_encoding") for n in names}
    keys = {(t[0], t[2]): _tile_keys(ds, key_encs, names, enc, t, ydim, xdim, trange)
            for t in tiles}
    remove_temp_files(store)  # a killed writer's half-written temporary files
    done = part.done()
    for tid, sums in list(done.items()):  # journaled, and every file still there?
        ok = tid in keys and set(sums) == set(keys[tid])
        for k, (_sha, size) in sums.items() if ok else ():
            try:
                ok = (store / k).stat().st_size == size
            except OSError:
                ok = False
            if not ok:
                break
        if not ok:
            del done[tid]
    todo = [t for t in tiles if (t[0], t[2]) not in done]
    if done:
        say(f"resuming {part.target}: {len(done)} of {len(tiles)} regions already written")
    total = len(tiles)

    def region_write(tile: list[int]) -> Any:
        sel = {ydim: slice(tile[0], tile[1]), xdim: slice(tile[2], tile[3])}
        if trange:
            sel["time"] = slice(*trange)
        part_ds = ds[names].isel(sel)
        part_ds = part_ds.drop_vars([c for c in part_ds.coords
                                     if not {ydim, xdim} <= set(part_ds[c].dims)])
        # Every chunk is stored, even all-fill ones, so a missing chunk file always
        # means a lost write and is detected below.
        return part_ds.to_zarr(store, region=sel, compute=False, zarr_format=3,
                               consolidated=False, write_empty_chunks=True)

    def finished(tile: list[int]) -> bool:
        """Hash and flush the tile's chunk files, then journal it; False if one is lost."""
        sums: dict[str, list[Any]] = {}
        try:
            for k in keys[(tile[0], tile[2])]:
                p = store / k
                sums[k] = [file_sha256(p, fsync=True), p.stat().st_size]
        except FileNotFoundError:
            return False
        for d in {(store / k).parent for k in sums}:
            _fsync_dir(d)
        part.record((tile[0], tile[2]), sums)
        done[(tile[0], tile[2])] = sums
        if on_region:
            on_region(len(done), total)
        return True

    lost = _run([region_write(t) for t in todo], todo, client, finished)
    if lost:  # rewrite lost regions once, then give up loudly
        lost = _run([region_write(t) for t in lost], lost, client, finished)
        if lost:
            raise OSError(f"region writes of {len(lost)} tile(s) were lost twice; the cube was "
                          f"not committed: {lost[:3]}")


def _check_not_empty(ds: xr.Dataset, part: _Partial, target: Path) -> None:
    """Refuse to commit a floating-point layer that holds no valid value at all.

    A layer that is NaN everywhere means its source gave nothing on this grid (an
    all-NaN file, a wrong ``fill_value``/``valid_min``/``scale_factor``, a grid beside the
    data). Checked from the journal without reading the cube: for each layer the
    chunks are decoded largest file first (a chunk of one repeated value, such as all
    NaN, compresses to a few bytes) until one holds a finite value, so a layer with data
    costs one chunk read.

    Raises
    ------
    EsdcError
        Naming the empty layers and their sources; the build stays unfinished and an
        existing cube at ``target`` is untouched.
    """
    import zarr

    sizes: dict[str, list[tuple[int, str]]] = {}
    for sums in part.done().values():
        for key, (_sha, size) in sums.items():
            name, _, rest = key.partition("/")
            sizes.setdefault(name, []).append((int(size), rest))
    empty = []
    for name, chunks in sizes.items():
        if name not in ds.data_vars or ds[name].dtype.kind != "f":
            continue
        arr = zarr.open_array(part.store / name, mode="r")
        sep = "." if (arr.metadata.chunk_key_encoding.to_dict().get("configuration", {})
                      .get("separator") == ".") else "/"
        for _size, rest in sorted(chunks, reverse=True):
            parts = rest.split(sep)
            block = tuple(int(i) for i in (parts[1:] if parts and parts[0] == "c" else parts))
            if np.isfinite(arr.blocks[block]).any():
                break
        else:
            empty.append(f"{name} (source {ds[name].attrs.get('esdc_source', '?')})")
    if empty:
        raise EsdcError(
            f"no valid value anywhere in the grid for {', '.join(empty)}: every cell is NaN. "
            "Check the source file, the variable's fill_value, valid_min/valid_max and "
            "scale_factor, and that grid.bbox covers the data; or remove the variable from "
            f"the recipe. Nothing was committed; {target} is unchanged.")


def _run(writes: list[Any], tiles: list[list[int]], client: Any,
         finished: Callable[[list[int]], bool]) -> list[list[int]]:
    """Compute region writes; call ``finished`` on each as it ends; return the lost tiles."""
    lost = []
    if not writes:
        return lost
    if client is not None:
        from distributed import as_completed

        # Unoptimised graphs keep the upstream keys (read, regrid) identical across the
        # tiles, so the scheduler computes shared work once instead of once per tile.
        futures = client.compute(writes, optimize_graph=False)
        index = {f.key: i for i, f in enumerate(futures)}
        for fut in as_completed(futures):
            fut.result()
            tile = tiles[index[fut.key]]
            if not finished(tile):
                lost.append(tile)
    else:
        import dask

        dask.compute(*writes)
        lost = [t for t in tiles if not finished(t)]
    return lost


def _finish(part: _Partial, head: dict[str, Any], fp: dict[str, Any], digest: str) -> None:
    """Record every chunk's checksum, consolidate the metadata, mark the build complete."""
    store = part.store
    remove_temp_files(store)
    sums = dict(head.get("carried") or {})
    for rec in part.done().values():
        sums.update({k: v[0] for k, v in rec.items()})
    files = chunk_files(store)
    gone = sorted(set(sums) - set(files))
    if gone:
        raise OSError(f"chunk file(s) {gone[:3]} of {store} were written and are now missing; "
                      "the cube was not committed.")
    for k, p in files.items():  # coordinates (written with the metadata)
        if k not in sums:
            sums[k] = file_sha256(p, fsync=True)
    write_manifest(store, sums, fingerprint=fp, fingerprint_sha256=digest,
                   recipe_sha256=fp.get("recipe_sha256"), arrays=sorted(array_dirs(store)))
    with warnings.catch_warnings():
        # Consolidated metadata is not (yet) in the Zarr v3 spec; zarr-python and
        # xarray read it, and it makes opening a cube one read.
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        zarr.consolidate_metadata(str(store), zarr_format=3)
    with open(store / "zarr.json", "rb") as f:
        os.fsync(f.fileno())
    _fsync_dir(store)
    _write_json(part.complete_path, {"fingerprint_sha256": digest})


def _commit(store: Path, target: Path) -> None:
    """Move the complete store to ``target``, swapping out an existing cube."""
    if target.exists():
        if _exchange(store, target):
            shutil.rmtree(store, ignore_errors=True)  # now the old cube
        else:
            trash = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, trash)
            os.replace(store, target)
            shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(store, target)
    _fsync_dir(target.parent)


def open_cube(path: str | os.PathLike[str], *,
              storage_options: dict[str, Any] | None = None, **kwargs: Any) -> xr.Dataset:
    """Open a cube lazily (consolidated metadata, Dask chunks = Zarr chunks).

    Parameters
    ----------
    path : str or path-like
        The Zarr store: a folder, or a URL such as ``s3://bucket/cube.zarr``.
    storage_options : dict, optional
        fsspec options of a URL (:func:`esdc.remote.storage_options`); ignored for a
        folder.
    **kwargs
        Passed to :func:`xarray.open_zarr`.

    Returns
    -------
    xarray.Dataset
        Nothing is read but metadata and the 1-D coordinates.

    Raises
    ------
    FileNotFoundError
        If there is no cube at ``path``.
    """
    from esdc.errors import SourceNotFoundError
    from esdc.remote import is_url, open_remote

    if is_url(path):
        return open_remote(str(path), storage_options, **kwargs)
    p = Path(path)
    if not (p / "zarr.json").exists() and not (p / ".zgroup").exists():
        raise SourceNotFoundError(f"no Zarr cube at {p}.")
    kwargs.setdefault("consolidated", True)
    kwargs.setdefault("chunks", {})
    try:
        ds = xr.open_zarr(p, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure to read the metadata: a bad store
        from esdc.errors import SourceError

        raise SourceError(f"{p} is not a readable Zarr cube ({type(exc).__name__}: "
                          f"{str(exc)[:200]}); its metadata is corrupt or was edited. "
                          "Rebuild the cube (`esdc verify` lists what it can).") from None
    # CF cell bounds (e.g. the embeddings' tile bounds) are coordinates, not data.
    bounds = {c.attrs["bounds"] for c in ds.coords.values() if "bounds" in c.attrs}
    return ds.set_coords([b for b in bounds if b in ds.data_vars])
