"""Per-chunk SHA-256 checksums of a cube: recorded at build time, checked on demand.

A cube built by esdc holds, beside its arrays, a Zarr group ``esdc_integrity``
(:data:`MANIFEST_GROUP`) whose attributes record the SHA-256 of every chunk file of every
array (``{"sst/c/3/1/2": "ab12..."}``), the algorithm and the build's fingerprint.
Being a proper Zarr group it is part of the consolidated metadata and invisible to
``xarray.open_zarr`` (which reads the root group's arrays only); no stray file sits in
the store for Zarr to warn about.

Chunk keys are the chunk files' paths relative to the store root, so a message such
as ``sst/c/3/1/2: checksum mismatch`` names the array and the chunk's grid index.
Metadata documents (``zarr.json``) are not recorded: they change legitimately
(statistics, reconsolidation) and hold no data.

This module knows the record and the layout of a local store; comparing a store with
its record is :meth:`esdc.storage.target.Target.checksums`, the same for every target.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esdc.conventions import ATTR_CHECKSUMS, ATTR_INTEGRITY_GROUP

__all__ = [
    "ALGORITHM",
    "MANIFEST_GROUP",
    "ROOT_META",
    "ChecksumReport",
    "array_dirs",
    "chunk_files",
    "chunk_index",
    "chunk_key",
    "read_manifest",
    "record_of",
    "remove_temp_files",
    "write_manifest",
]

MANIFEST_GROUP = ATTR_INTEGRITY_GROUP
"""Name of the Zarr group (at the store root) that holds the checksum record."""
ALGORITHM = "sha256"
ROOT_META = "zarr.json"
"""The metadata document of every Zarr v3 node; the root one is a cube's commit point."""
# zarr-python's LocalStore writes every file to ``NAME.<32 hex>.partial`` and renames it;
# a killed writer can leave such a file behind.
_TEMP = re.compile(r"\.[0-9a-f]{32}\.partial$")


def _node(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / ROOT_META).read_text())
    except (OSError, ValueError):
        return None


def array_dirs(store: str | os.PathLike[str]) -> dict[str, Path]:
    """Every Zarr v3 array of a local store (nested groups included) by its path.

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
            if f == ROOT_META and Path(dirpath) == array:
                continue
            if _TEMP.search(f):
                continue
            yield Path(dirpath) / f


def chunk_files(store: str | os.PathLike[str],
                arrays: Iterable[str] | None = None) -> dict[str, Path]:
    """Every chunk file of a local store, by chunk key (its path relative to the store root).

    Parameters
    ----------
    store : str or path-like
        Root of a local Zarr v3 store.
    arrays : iterable of str, optional
        Only these arrays (all when omitted).

    Returns
    -------
    dict
        ``{"sst/c/0/1/2": Path(...), ...}``, sorted by key; zarr's half-written temporary
        files are left out.
    """
    root = Path(store)
    dirs = array_dirs(root)
    names = dirs if arrays is None else [a for a in arrays if a in dirs]
    out = {}
    for name in names:
        for p in _array_files(dirs[name]):
            out[p.relative_to(root).as_posix()] = p
    return dict(sorted(out.items()))


def _separator(encoding: dict[str, Any]) -> str:
    default = "/" if encoding.get("name", "default") == "default" else "."
    return str(encoding.get("configuration", {}).get("separator", default))


def chunk_key(array: str, index: Iterable[int], encoding: dict[str, Any] | None = None) -> str:
    """The store key of chunk ``index`` of ``array`` under a Zarr v3 chunk key encoding.

    Parameters
    ----------
    array : str
        Array path in the store, e.g. ``"sst"``.
    index : iterable of int
        Chunk grid index, one per dim of the array, e.g. ``(3, 1, 2)``.
    encoding : dict, optional
        The array's ``chunk_key_encoding`` (default: ``default`` with ``/``).

    Returns
    -------
    str
        E.g. ``"sst/c/3/1/2"`` (``default``) or ``"sst/3.1.2"`` (``v2``).
    """
    enc = encoding or {"name": "default", "configuration": {"separator": "/"}}
    sep = _separator(enc)
    idx = [str(int(i)) for i in index]
    if enc.get("name") == "v2":
        return f"{array}/{sep.join(idx) or '0'}"
    return f"{array}/{sep.join(['c', *idx])}"


def chunk_index(key: str, array: str, encoding: dict[str, Any] | None = None) -> tuple[int, ...]:
    """The chunk grid index a chunk key names: the inverse of :func:`chunk_key`.

    Parameters
    ----------
    key : str
        E.g. ``"sst/c/3/1/2"``.
    array : str
        The array's path, a prefix of ``key`` (``"sst"``).
    encoding : dict, optional
        The array's ``chunk_key_encoding`` (default: ``default`` with ``/``).

    Returns
    -------
    tuple of int
        One index per dim, e.g. ``(3, 1, 2)``; ``()`` for a 0-d array.
    """
    enc = encoding or {"name": "default", "configuration": {"separator": "/"}}
    parts = key[len(array) + 1:].split(_separator(enc))
    if enc.get("name") != "v2":
        parts = parts[1:]  # the leading "c"
    return tuple(int(i) for i in parts if i != "")


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
    """Record chunk checksums in a local store's ``esdc_integrity`` group (atomically).

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
    doc = {"zarr_format": 3, "node_type": "group", "attributes": {ATTR_CHECKSUMS: record}}
    meta = group / ROOT_META
    tmp = group / f"{ROOT_META}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, sort_keys=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, meta)
    return meta


def record_of(node: dict[str, Any] | None) -> dict[str, Any] | None:
    """The checksum record in the ``esdc_integrity`` group's metadata document, or None.

    Parameters
    ----------
    node : dict or None
        The parsed ``esdc_integrity/zarr.json``.

    Returns
    -------
    dict or None
        ``{"algorithm", "chunks": {key: sha256}, "arrays", "fingerprint_sha256", ...}``;
        None when there is no (valid) record.
    """
    if not isinstance(node, dict):
        return None
    rec = (node.get("attributes") or {}).get(ATTR_CHECKSUMS)
    return rec if isinstance(rec, dict) and isinstance(rec.get("chunks"), dict) else None


def read_manifest(store: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The checksum record of a local store, or None when it has none (or it is unreadable)."""
    return record_of(_node(Path(store) / MANIFEST_GROUP))


def _inside(labels: list[str] | None) -> str:
    if not labels:
        return ""
    if labels == ["index"]:
        return "; the shard's index is damaged"
    return f"; changed inside the shard: chunk {', '.join(labels)}"


@dataclass
class ChecksumReport:
    """What :meth:`esdc.storage.target.Target.checksums` found.

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
    damaged : dict
        ``{shard key: [chunk grid index, ...]}``: the chunks inside a mismatched shard
        whose bytes changed, ``["index"]`` for a damaged shard index
        (:func:`esdc.storage.shards.locate_damage`).
    error : str or None
        Why nothing could be checked (no record).
    """

    checked: int = 0
    mismatched: dict[str, tuple[str, str]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    uncovered: list[str] = field(default_factory=list)
    damaged: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    @property
    def problems(self) -> list[str]:
        """One message per problem, naming the chunk file (``sst/c/3/1/2: ...``).

        For a shard file, also the chunks inside it that changed.
        """
        out = [self.error] if self.error else []
        out += [f"{k}: checksum mismatch (recorded {a[:16]}..., found {b[:16]}...)"
                + _inside(self.damaged.get(k))
                for k, (a, b) in sorted(self.mismatched.items())]
        out += [f"{k}: chunk file missing" for k in sorted(self.missing)]
        out += [f"{k}: chunk file not in the checksum record" for k in sorted(self.unexpected)]
        return out
