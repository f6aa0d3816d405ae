"""Recognising an Icechunk repository on disk, and the format version it was written in.

Every binary file of an Icechunk repository (snapshots, manifests, transaction logs and,
from format version 2 on, the ``repo`` object at its root) starts with a header: 12 magic
bytes ``ICE🧊CHUNK``, 24 bytes naming the writer (``ic-1.1.21``), then one byte, at
index 36, of the specification (format) version. esdc uses icechunk 1.1.21, the last
release for Python 3.11, which reads and writes format version 1; Icechunk 2 writes
format version 2 (a ``repo`` object replaces the ``refs/`` folder). A repository of a
format this Icechunk cannot read is refused with a message that names it
(:func:`format_error`), never with Icechunk's internal error.

No import of icechunk here: the checks read a few bytes of local files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from esdc.errors import StorageError

__all__ = ["MAGIC", "SPEC_VERSION", "format_error", "format_version", "is_repository"]

MAGIC = "ICE🧊CHUNK".encode()
"""The first 12 bytes of every binary file of an Icechunk repository."""
SPEC_VERSION = 1
"""The Icechunk format version esdc reads and writes (icechunk 1.1.21)."""
_VERSION_BYTE = 36


def is_repository(location: str | os.PathLike[str]) -> bool:
    """Whether a local folder is an Icechunk repository of any format version.

    A ``snapshots/`` folder and either ``refs/`` (format 1) or a ``repo`` object
    (format 2), and no root ``zarr.json`` (a plain Zarr store).
    """
    p = Path(location)
    return ((p / "snapshots").is_dir() and ((p / "refs").is_dir() or (p / "repo").is_file())
            and not (p / "zarr.json").exists())


def _header_version(path: Path) -> int | None:
    try:
        with open(path, "rb") as f:
            head = f.read(_VERSION_BYTE + 1)
    except OSError:
        return None
    if len(head) <= _VERSION_BYTE or not head.startswith(MAGIC):
        return None
    return head[_VERSION_BYTE]


def format_version(location: str | os.PathLike[str]) -> int | None:
    """The format version of the local repository at ``location`` (None: not readable).

    Read from the header of the ``repo`` object (format 2 and later), else of the
    snapshot that branch ``main`` points to.

    Parameters
    ----------
    location : str or path-like
        The repository's folder.

    Returns
    -------
    int or None
        1 for a repository esdc can use; None when neither file is there or has a header.
    """
    p = Path(location)
    if (p / "repo").is_file():
        return _header_version(p / "repo")
    try:
        ref = json.loads((p / "refs" / "branch.main" / "ref.json").read_text())
        return _header_version(p / "snapshots" / str(ref["snapshot"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def format_error(location: object, version: int | None, detail: str = "") -> StorageError:
    """The error for a repository written in a format esdc's Icechunk cannot read.

    Parameters
    ----------
    location : object
        The repository (its path or URL is named).
    version : int or None
        Its format version, when known.
    detail : str
        What Icechunk said.

    Returns
    -------
    StorageError
    """
    which = f"format version {version}" if version else "a newer format"
    said = f" (Icechunk: {detail})" if detail else ""
    return StorageError(
        f"{location} is an Icechunk repository of {which}{said}; esdc uses icechunk 1.1.21 "
        f"(the last release for Python 3.11), which reads format version {SPEC_VERSION} "
        "only. Open it with Icechunk 2 or later, or build the cube again into another "
        "out=PATH.")
