"""The granule cache of :mod:`esdc.storage.fetch`: one folder per URL, records, a local index.

Layout under the cache root (``$ESDC_CACHE/granules`` by default)::

    <h[:2]>/<h>/                 h = SHA-256 of the URL (the string as given)
        <name>                   the verified granule (name: the URL's base name)
        <name>.part              a download in progress (resumed with an HTTP Range)
        .part.json               ETag and size of the upstream version the .part is of
        .record.json             url, etag, size, sha256, fetched_at: the verified record
        .lock                    held (flock) while a process fetches the URL
    local/<k[:2]>/<k>.json       k = SHA-256 of a local file's absolute path: its size,
                                 mtime_ns and SHA-256, so a re-run does not hash it again

A record is written only after the bytes were counted against ``Content-Length`` and
hashed, and after the ``.part`` was renamed into place (the record of an older version
is removed first), so a record always describes the file beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from esdc.samples import cache_dir as samples_cache_dir

try:  # POSIX: one process fetches a URL at a time
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["CacheEntry", "FetchedGranule", "LocalIndex", "SkippedGranule", "cached_path",
           "granule_cache_dir", "granule_name", "read_json", "utc_now", "write_json"]


@dataclass(frozen=True)
class FetchedGranule:
    """A granule that is available locally, verified.

    Attributes
    ----------
    url : str
        As given (a URL, or a local path as given).
    path : Path
        The local file to open: the cache entry, or the local file itself (absolute).
    size : int
        Bytes.
    sha256 : str
        Hex SHA-256 of the bytes.
    etag : str or None
        The server's ETag, when given.
    fetched_at : str
        ISO 8601 UTC (seconds) of when the bytes were first verified.
    downloaded : bool
        Bytes were transferred in this call.
    """

    url: str
    path: Path
    size: int
    sha256: str
    etag: str | None
    fetched_at: str
    downloaded: bool


@dataclass(frozen=True)
class SkippedGranule:
    """A granule missing upstream, skipped (``missing="skip"``).

    Attributes
    ----------
    url : str
        As given.
    reason : str
        Why, e.g. ``"HTTP 404 Not Found"``.
    """

    url: str
    reason: str


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def granule_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The granule cache folder.

    ``cache_dir``, else ``$ESDC_GRANULE_CACHE``, else ``esdc.samples.cache_dir() /
    "granules"`` (``$ESDC_CACHE/granules``).
    """
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("ESDC_GRANULE_CACHE")
    return Path(env).expanduser() if env else samples_cache_dir() / "granules"


def cached_path(url: str, *, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the verified granule of ``url`` is (or will be) in the cache.

    Its download in progress is the same path with ``.part`` appended. Nothing is created.
    """
    return CacheEntry.of(url, granule_cache_dir(cache_dir)).data


def utc_now() -> str:
    """The current time, ISO 8601 in UTC to the second (``2026-01-31T12:00:00+00:00``)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def granule_name(url: str) -> str:
    """A safe file name for the granule of ``url``: its base name, keeping the suffix.

    Characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``; a name
    starting with ``.`` gets a ``_`` in front (the entry's own files start with ``.``).
    """
    base = unquote(urlsplit(url).path if "://" in url else url).rstrip("/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", base)[-120:] or "granule"
    return "_" + name if name.startswith(".") else name


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing or unreadable."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` atomically (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


@dataclass(frozen=True)
class CacheEntry:
    """The cache folder of one URL (see the module's layout).

    Attributes
    ----------
    url : str
        The URL as given.
    folder : Path
        ``<root>/<h[:2]>/<h>``.
    """

    url: str
    folder: Path

    @classmethod
    def of(cls, url: str, root: Path) -> CacheEntry:
        """The entry of ``url`` under the cache ``root`` (nothing is created)."""
        digest = hashlib.sha256(url.encode("utf-8")).hexdigest()
        return cls(url, root / digest[:2] / digest)

    @property
    def data(self) -> Path:
        """The verified granule."""
        return self.folder / granule_name(self.url)

    @property
    def part(self) -> Path:
        """The download in progress."""
        return self.data.with_name(self.data.name + ".part")

    @property
    def part_meta(self) -> Path:
        """ETag and size of the upstream version the ``.part`` holds the start of."""
        return self.folder / ".part.json"

    @property
    def record_path(self) -> Path:
        """The verified record."""
        return self.folder / ".record.json"

    def record(self) -> dict[str, Any] | None:
        """The verified record, when the granule beside it has the recorded size."""
        rec = read_json(self.record_path)
        if rec is None or rec.get("url") != self.url:
            return None
        try:
            size = self.data.stat().st_size
        except OSError:
            return None
        return rec if rec.get("size") == size and isinstance(rec.get("sha256"), str) else None

    def commit(self, *, size: int, sha256: str, etag: str | None,
               fetched_at: str | None = None) -> dict[str, Any]:
        """Move the finished ``.part`` into place and write its record.

        The old record goes first, so a crash between the steps leaves a granule
        without a record (fetched again), never a record of other bytes.

        Returns
        -------
        dict
            The record: url, etag, size, sha256, fetched_at.
        """
        rec = {"url": self.url, "etag": etag, "size": size, "sha256": sha256,
               "fetched_at": fetched_at or utc_now()}
        self.record_path.unlink(missing_ok=True)
        os.replace(self.part, self.data)
        write_json(self.record_path, rec)
        self.part_meta.unlink(missing_ok=True)
        return rec

    def hash_part(self) -> Any:
        """A ``hashlib.sha256`` object fed with the bytes of the ``.part`` so far."""
        h = hashlib.sha256()
        with open(self.part, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        return h

    def discard_part(self) -> None:
        """Remove the ``.part`` and what is known of it."""
        self.part.unlink(missing_ok=True)
        self.part_meta.unlink(missing_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the entry's lock (``flock``; blocks while another process fetches it)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover - Windows
            yield
            return
        fd = os.open(self.folder / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


@dataclass(frozen=True)
class LocalIndex:
    """SHA-256 of local files, keyed by absolute path, size and ``mtime_ns``.

    Attributes
    ----------
    root : Path
        ``<cache root>/local``.
    """

    root: Path

    def _path(self, file: Path) -> Path:
        key = hashlib.sha256(str(file).encode("utf-8")).hexdigest()
        return self.root / key[:2] / f"{key}.json"

    def lookup(self, file: Path, st: os.stat_result) -> dict[str, Any] | None:
        """The remembered record of ``file`` when its size and mtime are unchanged."""
        rec = read_json(self._path(file))
        if rec and rec.get("path") == str(file) and rec.get("size") == st.st_size \
                and rec.get("mtime_ns") == st.st_mtime_ns:
            return rec
        return None

    def remember(self, file: Path, st: os.stat_result, sha256: str) -> dict[str, Any]:
        """Record the SHA-256 of ``file`` as it is now (``st``); returns the record."""
        rec = {"path": str(file), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
               "sha256": sha256, "fetched_at": utc_now()}
        with contextlib.suppress(OSError):  # a read-only cache only costs a re-hash
            write_json(self._path(file), rec)
        return rec
