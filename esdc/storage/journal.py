"""The partial build of a local cube: lock, journal, durable writes and the atomic commit.

A cube is written into a hidden sibling folder and moved into place only when every
region is written, every chunk's SHA-256 recorded and the metadata consolidated, so a
reader of the target sees the old cube (or nothing) until the new one is complete, and
a failed or killed build leaves an existing cube as it was. The folder's name is fixed
by the target's, so an interrupted build can be found and continued (``resume=True``)::

    .NAME.partial-build/   locked (flock) by the process writing it
        cube.zarr/         the store being written
        build.json         journal header: build fingerprint, mode, regions; written (and
                           fsynced) once the metadata and coordinates are in the store
        regions.done       one JSON line per region, appended (and fsynced) only after
                           every chunk file of the region is durably written; it holds
                           their SHA-256
        complete           checksums recorded, metadata consolidated: only the commit is left

The commit (:func:`commit_store`) swaps the new store with the old cube in one
``renameat2(RENAME_EXCHANGE)`` where the system has it (else two renames, during which
the target is briefly absent). This is the "session that commits" of a local target:
:mod:`esdc.storage.write` drives it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from esdc.errors import BuildConflictError

__all__ = ["PARTIAL_SUFFIX", "PartialBuild", "commit_store", "discard_stale", "fsync_dir",
           "fsync_tree", "partial_path", "remove_trash", "write_json"]

PARTIAL_SUFFIX = ".partial-build"


def partial_path(target: Path) -> Path:
    """The hidden folder beside ``target`` where its build is written (``.NAME.partial-build``)."""
    target = Path(target)
    return target.with_name(f".{target.name}{PARTIAL_SUFFIX}")


# --------------------------------------------------------------------------- durability
def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (new, renamed or removed files) to stable storage."""
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


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` (metadata, coordinates, links)."""
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            with contextlib.suppress(OSError), open(os.path.join(dirpath, f), "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(dirpath))


def write_json(path: Path, doc: Any) -> None:
    """Write a JSON document atomically and durably (temporary file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def commit_store(store: Path, target: Path) -> None:
    """Move a complete store to ``target``, swapping out an existing cube atomically."""
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
    fsync_dir(target.parent)


# --------------------------------------------------------------------------- the partial build
class PartialBuild:
    """The hidden build folder of a target: lock, journal, store.

    Parameters
    ----------
    target : pathlib.Path
        The cube's final location.
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        self.dir = partial_path(target)
        self.store = self.dir / "cube.zarr"
        self.header_path = self.dir / "build.json"
        self.done_path = self.dir / "regions.done"
        self.complete_path = self.dir / "complete"
        self._fd: int | None = None

    def lock(self) -> None:
        """Take the folder's lock (created if needed).

        Raises
        ------
        BuildConflictError
            If another process holds it (a build of the same target is running).
        """
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
            raise BuildConflictError(
                f"another esdc build is writing {self.target} (its unfinished build {self.dir} "
                "is locked); wait for it to end or stop it.") from None
        self._fd = fd

    def unlock(self) -> None:
        """Release the lock (the folder stays)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def header(self) -> dict[str, Any] | None:
        """The journal header (``build.json``), or None when there is no usable one."""
        try:
            head = json.loads(self.header_path.read_text())
        except (OSError, ValueError):
            return None
        return head if isinstance(head, dict) and self.store.is_dir() else None

    def write_header(self, head: dict[str, Any]) -> None:
        """Write the journal header durably: the build is resumable from here on."""
        write_json(self.header_path, head)

    def mark_complete(self, fingerprint_sha256: str) -> None:
        """Record that only the commit is left."""
        write_json(self.complete_path, {"fingerprint_sha256": fingerprint_sha256})

    def is_complete(self) -> bool:
        """Whether checksums and consolidated metadata are written (only the commit is left)."""
        return self.complete_path.exists()

    def clear(self) -> None:
        """Empty the folder (keeping it, and the lock)."""
        for child in self.dir.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def done(self) -> dict[tuple[int, int], dict[str, list[Any]]]:
        """Journaled regions: ``{(y0, x0): {chunk key: [sha256, size]}}``."""
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
        """Append a finished region to the journal (fsynced)."""
        line = json.dumps({"tile": list(tile), "chunks": sums}) + "\n"
        with open(self.done_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def remove(self) -> None:
        """Delete the folder and release the lock."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.unlock()


def discard_stale(target: Path) -> None:
    """Remove an unlocked leftover build folder and old-cube trash of ``target``."""
    part = PartialBuild(target)
    if part.dir.exists():
        try:
            part.lock()
        except BuildConflictError:
            return
        part.remove()
    remove_trash(target)


def remove_trash(target: Path) -> None:
    """Remove old cubes left aside by a commit that was interrupted (``.NAME.old-*``)."""
    for old in target.parent.glob(f".{target.name}.old-*"):
        shutil.rmtree(old, ignore_errors=True)
