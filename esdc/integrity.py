"""Per-chunk SHA-256 checksums of a cube: recorded at build time, checked on demand.

A cube built by :func:`esdc.store.write_cube` holds, beside its arrays, a Zarr group
``esdc_integrity`` whose attributes record the SHA-256 of every chunk file of every
array (``{"sst/c/3/1/2": "ab12..."}``), the algorithm and the build's fingerprint.
Being a proper Zarr group it is part of the consolidated metadata and invisible to
``xarray.open_zarr`` (which reads the root group's arrays only); no stray file sits in
the store for Zarr to warn about.

Chunk keys are the chunk files' paths relative to the store root, so a message such
as ``sst/c/3/1/2: checksum mismatch`` names the array and the chunk's grid index.
Metadata documents (``zarr.json``) are not recorded: they change legitimately
(statistics, reconsolidation) and hold no data.

``esdc verify CUBE --checksums`` (:func:`check_checksums`) recomputes every hash and
reports each mismatch, each missing chunk file and each chunk file of a recorded
array that the record does not know.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ALGORITHM",
    "MANIFEST_GROUP",
    "ChecksumReport",
    "array_dirs",
    "check_checksums",
    "chunk_files",
    "chunk_key",
    "file_sha256",
    "read_manifest",
    "remove_temp_files",
    "verify_checksums",
    "write_manifest",
]

MANIFEST_GROUP = "esdc_integrity"
ALGORITHM = "sha256"
_ATTR = "esdc_checksums"
# zarr-python's LocalStore writes every file to ``NAME.<32 hex>.partial`` and renames it;
# a killed writer can leave such a file behind.
_TEMP = re.compile(r"\.[0-9a-f]{32}\.partial$")


def file_sha256(path: str | os.PathLike[str], *, fsync: bool = False,
                blocksize: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file.

    Parameters
    ----------
    path : str or path-like
        The file.
    fsync : bool
        Also flush the file to stable storage (``os.fsync``) after reading it.
    blocksize : int
        Bytes read at a time.

    Returns
    -------
    str
        64 hex digits.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(blocksize):
            h.update(block)
        if fsync:
            os.fsync(f.fileno())
    return h.hexdigest()


def _node(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return None


def array_dirs(store: str | os.PathLike[str]) -> dict[str, Path]:
    """Every Zarr v3 array of a store (nested groups included) by its path.

    The ``esdc_integrity`` group is skipped.

    Parameters
    ----------
    store : str or path-like
        Root of a local Zarr v3 store.

    Returns
    -------
    dict
        ``{"sst": Path(".../sst"), "group/arr": ...}``, sorted by name.
    """
    root = Path(store)
    out: dict[str, Path] = {}

    def walk(d: Path, prefix: str) -> None:
        for child in sorted(d.iterdir()):
            if not child.is_dir() or (not prefix and child.name == MANIFEST_GROUP):
                continue
            meta = _node(child)
            if meta is None:
                continue
            name = f"{prefix}{child.name}"
            if meta.get("node_type") == "array":
                out[name] = child
            elif meta.get("node_type") == "group":
                walk(child, f"{name}/")

    walk(root, "")
    return out


def _array_files(array: Path) -> Iterator[Path]:
    for dirpath, _dirs, files in os.walk(array):
        for f in files:
            if f == "zarr.json" and Path(dirpath) == array:
                continue
            if _TEMP.search(f):
                continue
            yield Path(dirpath) / f


def chunk_files(store: str | os.PathLike[str],
                arrays: Iterable[str] | None = None) -> dict[str, Path]:
    """Every chunk file of a store, by chunk key (its path relative to the store root).

    Parameters
    ----------
    store : str or path-like
        Root of a local Zarr v3 store.
    arrays : iterable of str, optional
        Only these arrays (all when omitted).

    Returns
    -------
    dict
        ``{"sst/c/0/1/2": Path(...), ...}``; zarr's half-written temporary files are left
        out.
    """
    root = Path(store)
    dirs = array_dirs(root)
    names = dirs if arrays is None else [a for a in arrays if a in dirs]
    out = {}
    for name in names:
        for p in _array_files(dirs[name]):
            out[p.relative_to(root).as_posix()] = p
    return dict(sorted(out.items()))


def chunk_key(array: str, index: Iterable[int], encoding: dict[str, Any] | None = None) -> str:
    """The store key of chunk ``index`` of ``array`` under a Zarr v3 chunk key encoding.

    Parameters
    ----------
    array : str
        Array path in the store, e.g. ``"sst"``.
    index : iterable of int
        Chunk grid index, e.g. ``(3, 1, 2)``.
    encoding : dict, optional
        The array's ``chunk_key_encoding`` (default: ``default`` with ``/``).

    Returns
    -------
    str
        E.g. ``"sst/c/3/1/2"`` (``default``) or ``"sst/3.1.2"`` (``v2``).
    """
    enc = encoding or {"name": "default", "configuration": {"separator": "/"}}
    sep = enc.get("configuration", {}).get("separator", "/" if enc.get("name") == "default"
                                            else ".")
    idx = [str(int(i)) for i in index]
    if enc.get("name") == "v2":
        return f"{array}/{sep.join(idx) or '0'}"
    return f"{array}/{sep.join(['c', *idx])}"


def remove_temp_files(store: str | os.PathLike[str]) -> int:
    """Delete zarr's leftover ``*.<hex>.partial`` files under ``store``; return how many."""
    n = 0
    for dirpath, _dirs, files in os.walk(store):
        for f in files:
            if _TEMP.search(f):
                try:
                    os.unlink(os.path.join(dirpath, f))
                    n += 1
                except FileNotFoundError:
                    pass
    return n


def write_manifest(store: str | os.PathLike[str], checksums: dict[str, str],
                   **info: Any) -> Path:
    """Record chunk checksums in the store's ``esdc_integrity`` group (atomically).

    Parameters
    ----------
    store : str or path-like
        Root of the Zarr v3 store.
    checksums : dict
        ``{chunk key: sha256 hex}``.
    **info
        Further JSON-serializable entries (``fingerprint``, ``arrays``, ...).

    Returns
    -------
    pathlib.Path
        The group's ``zarr.json``. Reconsolidate the store's metadata afterwards.
    """
    group = Path(store) / MANIFEST_GROUP
    group.mkdir(exist_ok=True)
    record = {"algorithm": ALGORITHM, **info, "chunks": dict(sorted(checksums.items()))}
    doc = {"zarr_format": 3, "node_type": "group", "attributes": {_ATTR: record}}
    meta = group / "zarr.json"
    tmp = group / "zarr.json.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, sort_keys=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, meta)
    return meta


def read_manifest(store: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The checksum record of a store, or None when it has none (or it is unreadable)."""
    meta = _node(Path(store) / MANIFEST_GROUP)
    if meta is None:
        return None
    rec = meta.get("attributes", {}).get(_ATTR)
    return rec if isinstance(rec, dict) and isinstance(rec.get("chunks"), dict) else None


@dataclass
class ChecksumReport:
    """What :func:`check_checksums` found.

    Attributes
    ----------
    checked : int
        Chunk files hashed.
    mismatched : dict
        ``{key: (recorded, found)}``.
    missing : list of str
        Recorded chunks whose file is gone.
    unexpected : list of str
        Chunk files of recorded arrays that the record does not list.
    uncovered : list of str
        Arrays the record does not cover (written after the build, e.g. embeddings).
    error : str or None
        Why nothing could be checked (no record).
    """

    checked: int = 0
    mismatched: dict[str, tuple[str, str]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    uncovered: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def problems(self) -> list[str]:
        """One message per problem, naming the chunk (``sst/c/3/1/2: ...``)."""
        out = [self.error] if self.error else []
        out += [f"{k}: checksum mismatch (recorded {a[:16]}..., found {b[:16]}...)"
                for k, (a, b) in sorted(self.mismatched.items())]
        out += [f"{k}: chunk file missing" for k in sorted(self.missing)]
        out += [f"{k}: chunk file not in the checksum record" for k in sorted(self.unexpected)]
        return out


def check_checksums(store: str | os.PathLike[str], *, workers: int = 4,
                    storage_options: dict[str, Any] | None = None) -> ChecksumReport:
    """Recompute every recorded chunk's SHA-256 and compare with the build's record.

    Parameters
    ----------
    store : str or path-like
        Root of a cube built by esdc: a folder, or a URL (``s3://bucket/cube.zarr``,
        checked by :func:`esdc.remote.check_remote_checksums`).
    workers : int
        Files hashed in parallel (hashlib releases the GIL).
    storage_options : dict, optional
        fsspec options of a URL.

    Returns
    -------
    ChecksumReport
        Mismatched, missing and unexpected chunk files; ``error`` if there is no record.
    """
    from esdc.remote import check_remote_checksums, is_url

    if is_url(store):
        return check_remote_checksums(str(store), options=storage_options)
    root = Path(store)
    rec = read_manifest(root)
    if rec is None:
        return ChecksumReport(error=f"{root} has no chunk checksum record ({MANIFEST_GROUP} "
                              "group); it was not built by this esdc version. Rebuild it to "
                              "record checksums.")
    recorded: dict[str, str] = rec["chunks"]
    arrays = rec.get("arrays") or sorted({k.split("/c/")[0] for k in recorded})
    present = chunk_files(root, arrays)
    report = ChecksumReport()
    report.uncovered = [a for a in array_dirs(root) if a not in set(arrays)]
    report.missing = [k for k in recorded if k not in present]
    report.unexpected = [k for k in present if k not in recorded]
    keys = [k for k in recorded if k in present]

    def one(key: str) -> tuple[str, str | None]:
        try:
            return key, file_sha256(present[key])
        except FileNotFoundError:
            return key, None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for key, found in pool.map(one, keys):
            if found is None:
                report.missing.append(key)
                continue
            report.checked += 1
            if found != recorded[key]:
                report.mismatched[key] = (recorded[key], found)
    return report


def verify_checksums(store: str | os.PathLike[str], *,
                     storage_options: dict[str, Any] | None = None) -> list[str]:
    """Problems of a cube's chunk files against its checksum record.

    Parameters
    ----------
    store : str or path-like
        Root of a cube built by esdc (a folder or a URL).
    storage_options : dict, optional
        fsspec options of a URL.

    Returns
    -------
    list of str
        One message per corrupted (``sst/c/3/1/2: checksum mismatch ...``), missing or
        unrecorded chunk file; empty when every chunk matches.
    """
    return check_checksums(store, storage_options=storage_options).problems
