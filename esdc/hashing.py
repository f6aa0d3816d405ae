"""SHA-256 digests of files, the one helper every module uses.

A leaf module: it imports nothing of esdc.
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["file_sha256"]


def file_sha256(path: str | os.PathLike[str], *, fsync: bool = False,
                blocksize: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file (FIPS 180-4, :mod:`hashlib`).

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

    Raises
    ------
    FileNotFoundError, PermissionError
        If the file cannot be read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(blocksize):
            h.update(block)
        if fsync:
            os.fsync(f.fileno())
    return h.hexdigest()
