"""The fetch layer: granules from local paths, HTTP(S) and fsspec URLs into a verified cache.

:func:`fetch_granules` is the one entry. It takes a list of local paths and URLs and
returns, in the same order, a :class:`FetchedGranule` (a local file to open, its size
and SHA-256) or a :class:`SkippedGranule` (missing upstream, ``missing="skip"``).

- Local paths (no scheme, ``file://``) are not copied; their SHA-256 is remembered by
  absolute path, size and ``mtime_ns`` so a re-run does not hash them again.
- ``http(s)://`` URLs are streamed (``httpx``, as received: at most 64 KiB a read) to a
  ``.part`` file by a pool of at most ``concurrency`` threads (one request in flight
  each), counted against ``Content-Length``, hashed and renamed into the cache
  (:mod:`esdc.storage.fetchcache`). A ``.part`` (a failed attempt, a killed process) is
  resumed with ``Range: bytes=N-`` (``If-Range`` the ETag it began with). 5xx, 408, 429,
  timeouts, resets and truncated bodies are retried with capped exponential backoff
  and jitter, obeying ``Retry-After``; 404/410 mean missing.
- Other schemes (``s3://``, ``gs://``, ...) go through fsspec with ``storage_options``:
  the same cache, records, resume (by seek), SHA-256 and retries; ``fs.info`` gives the
  size and ETag. A scheme fsspec does not know is refused before any request.

Nothing is fetched twice: a granule with a verified record is revalidated with one
cheap request (HEAD, ``fs.info``) and downloaded again only if its ETag or size changed.
Memory is bounded by ``concurrency`` x 64 KiB (x :data:`FSSPEC_BLOCK_BYTES` for fsspec),
never by the size of a granule or by the number of granules.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import os
import random
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import httpx

from esdc.errors import FetchError, GranuleNotFoundError, SourceError
from esdc.hashing import file_sha256
from esdc.storage.fetchcache import (
    CacheEntry,
    FetchedGranule,
    LocalIndex,
    SkippedGranule,
    cached_path,
    granule_cache_dir,
    read_json,
    write_json,
)
from esdc.storage.target import is_url

__all__ = ["BACKOFF_BASE", "BACKOFF_CAP", "FSSPEC_BLOCK_BYTES",
           "RETRY_AFTER_CAP", "FetchedGranule", "SkippedGranule", "backoff_delay",
           "cached_path", "fetch_granules", "granule_cache_dir"]

FSSPEC_BLOCK_BYTES = 8 << 20
"""Bytes read from an fsspec file at a time (one ranged GET each on object stores)."""
BACKOFF_BASE = 0.25
"""Seconds before the first retry (before jitter)."""
BACKOFF_CAP = 30.0
"""The longest backoff between two attempts, in seconds."""
RETRY_AFTER_CAP = 120.0
"""The longest ``Retry-After`` obeyed, in seconds (a longer one is cut to this)."""

_TRANSIENT_STATUS = frozenset({408, 425, 429})
_MISSING_STATUS = frozenset({404, 410})


Result = FetchedGranule | SkippedGranule


def backoff_delay(failures: int, retry_after: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait after the ``failures``-th failure (1 = the first).

    Exponential backoff with "equal jitter" (M. Brooker, "Exponential Backoff And
    Jitter", AWS Architecture Blog, 2015): with
    ``d = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (failures - 1))`` the wait is drawn
    uniformly from ``[d / 2, d]``; a server's ``Retry-After`` (seconds, at most
    :data:`RETRY_AFTER_CAP`) is a lower bound.

    Parameters
    ----------
    failures : int
        How many attempts have failed so far (>= 1).
    retry_after : float, optional
        The server's ``Retry-After``, in seconds.
    rng : random.Random, optional
        The jitter's generator.

    Returns
    -------
    float
        Seconds.
    """
    d = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** max(failures - 1, 0))
    wait_s = d / 2 + (rng or random).uniform(0.0, d / 2)
    if retry_after is not None:
        wait_s = max(wait_s, min(max(retry_after, 0.0), RETRY_AFTER_CAP))
    return wait_s


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date (RFC 9110, 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


# ---------------------------------------------------------------- outcomes of one request
class _Missing(Exception):
    """The granule is not there (404, 410, no such key or file)."""


class _Transient(Exception):
    """Worth another attempt (5xx, 429, timeout, reset, truncated body)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _Fatal(Exception):
    """Not worth another attempt (401, 403, a redirect loop, no permission)."""


class _Restart(Exception):
    """The ``.part`` does not continue the upstream file: download it from byte 0."""


class _Cancelled(Exception):
    """Another granule failed; this one stops (its ``.part`` is kept for a resume)."""


@dataclass(frozen=True)
class _Meta:
    size: int | None
    etag: str | None


@dataclass(frozen=True)
class _Body:
    start: int                 # the offset of the first byte of ``chunks``
    total: int | None          # the whole file's size, when the server says
    etag: str | None
    chunks: Iterator[bytes]


def _guard(chunks: Iterable[bytes], mapper: Callable[[Exception], Exception]) -> Iterator[bytes]:
    """``chunks``, with transport errors raised while reading mapped by ``mapper``."""
    try:
        yield from chunks
    except Exception as exc:  # noqa: BLE001 - mapper decides; unknown ones are re-raised
        raise mapper(exc) from exc


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _http_error(exc: Exception) -> Exception:
    if isinstance(exc, httpx.TransportError):
        return _Transient(_describe(exc))
    if isinstance(exc, httpx.TooManyRedirects):
        return _Fatal(_describe(exc))
    return exc


def _check_status(r: httpx.Response, allow: tuple[int, ...] = (416,)) -> None:
    code = r.status_code
    reason = f"HTTP {code} {r.reason_phrase}".rstrip()
    if code < 300 or code in allow:
        return
    if code in _MISSING_STATUS:
        raise _Missing(reason)
    if code in _TRANSIENT_STATUS or code >= 500:
        raise _Transient(reason, _retry_after(r.headers.get("Retry-After")))
    raise _Fatal(reason)


def _content_range(r: httpx.Response) -> tuple[int | None, int | None]:
    """``(first byte, total size)`` of a ``Content-Range: bytes a-b/total`` header."""
    value = r.headers.get("Content-Range", "")
    unit, _, spec = value.partition(" ")
    span, _, total = spec.partition("/")
    try:
        start = int(span.partition("-")[0]) if unit == "bytes" else None
    except ValueError:
        start = None
    return start, int(total) if total.isdigit() else None


def _length(r: httpx.Response) -> int | None:
    value = r.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


class _Http:
    """HTTP(S) through one ``httpx.Client`` (a pool of ``concurrency`` connections).

    ``storage_options`` may give ``headers`` (sent with every request) and
    ``client_kwargs`` (keyword arguments of ``httpx.Client``: ``auth``, ``verify``, ...);
    other keys (meant for object stores) are ignored.
    """

    def __init__(self, concurrency: int, timeout: float, options: dict[str, Any]) -> None:
        headers = {"Accept-Encoding": "identity", **dict(options.get("headers") or {})}
        self.client = httpx.Client(
            timeout=httpx.Timeout(timeout), follow_redirects=True, headers=headers,
            limits=httpx.Limits(max_connections=concurrency,
                                max_keepalive_connections=concurrency),
            **dict(options.get("client_kwargs") or {}))

    def close(self) -> None:
        self.client.close()

    @contextlib.contextmanager
    def _send(self, method: str, url: str, headers: dict[str, str] | None = None,
              allow: tuple[int, ...] = (416,)) -> Iterator[httpx.Response]:
        try:
            r = self.client.send(self.client.build_request(method, url, headers=headers),
                                 stream=True)
        except (httpx.TransportError, httpx.TooManyRedirects) as exc:
            raise _http_error(exc) from exc
        try:
            _check_status(r, allow)
            yield r
        finally:
            r.close()

    def stat(self, url: str) -> _Meta:
        with self._send("HEAD", url, allow=(405, 501)) as r:
            if r.status_code not in (405, 501):
                return _Meta(_length(r), r.headers.get("ETag"))
        with self._send("GET", url, {"Range": "bytes=0-0"}) as r:  # no HEAD: one byte
            total = _content_range(r)[1] if r.status_code == 206 else _length(r)
            return _Meta(total, r.headers.get("ETag"))

    @contextlib.contextmanager
    def open(self, url: str, offset: int, etag: str | None) -> Iterator[_Body]:
        headers = {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if etag and not etag.startswith("W/"):  # If-Range takes strong validators only
                headers["If-Range"] = etag
        with self._send("GET", url, headers) as r:
            if r.status_code == 416:
                raise (_Restart if offset else _Fatal)(f"HTTP 416 for bytes={offset}-")
            start, total = _content_range(r) if r.status_code == 206 else (0, _length(r))
            if start is None:
                raise _Restart(f"unreadable Content-Range {r.headers.get('Content-Range')!r}")
            yield _Body(start, total, r.headers.get("ETag"),
                        _guard(r.iter_raw(), _http_error))


def _fs_error(exc: Exception) -> Exception:
    if isinstance(exc, FileNotFoundError):
        return _Missing(f"not found ({_describe(exc)})")
    if isinstance(exc, PermissionError):
        return _Fatal(_describe(exc))
    return _Transient(_describe(exc))


def _etag(info: dict[str, Any]) -> str | None:
    for key in ("ETag", "etag", "Etag"):
        if info.get(key):
            return str(info[key])
    return None


class _Fsspec:
    """An fsspec filesystem of one protocol (``s3``, ``gs``, ...), opened with options."""

    def __init__(self, protocol: str, options: dict[str, Any]) -> None:
        import fsspec

        self.fs = fsspec.filesystem(protocol, **options)

    def close(self) -> None:
        """Nothing to close: fsspec keeps its filesystems."""

    def stat(self, url: str) -> _Meta:
        try:
            self.fs.invalidate_cache(url)
            info = self.fs.info(url)
        except Exception as exc:  # noqa: BLE001 - mapped
            raise _fs_error(exc) from exc
        if info.get("type") == "directory":
            raise _Missing("a folder, not a file")
        return _Meta(info.get("size"), _etag(info))

    @contextlib.contextmanager
    def open(self, url: str, offset: int, etag: str | None) -> Iterator[_Body]:
        try:
            self.fs.invalidate_cache(url)
            f = self.fs.open(url, "rb", block_size=FSSPEC_BLOCK_BYTES, cache_type="none")
        except Exception as exc:  # noqa: BLE001 - mapped
            raise _fs_error(exc) from exc
        with f:
            details = getattr(f, "details", None) or {}
            now = _etag(details)
            start = 0 if offset and etag and now and now != etag else offset
            try:
                f.seek(start)
            except Exception as exc:  # noqa: BLE001 - mapped
                raise _fs_error(exc) from exc
            chunks = iter(lambda: f.read(FSSPEC_BLOCK_BYTES), b"")
            yield _Body(start, getattr(f, "size", None), now, _guard(chunks, _fs_error))


# ---------------------------------------------------------------- the fetch of one granule
def _local_path(url: str) -> Path:
    if "://" in url:  # file:// or local://
        url = unquote(urlsplit(url).path)
    return Path(url).expanduser().absolute()


def _unchanged(rec: dict[str, Any], meta: _Meta) -> bool:
    """A verified record still describes upstream: same ETag, or same size without one."""
    if rec.get("etag") and meta.etag and rec["etag"] != meta.etag:
        return False
    return meta.size is None or meta.size == rec.get("size")


def _granule(url: str, path: Path, rec: dict[str, Any], downloaded: bool) -> FetchedGranule:
    return FetchedGranule(url, path, int(rec["size"]), rec["sha256"], rec.get("etag"),
                          rec["fetched_at"], downloaded)


class _Fetcher:
    """The state of one :func:`fetch_granules` call, shared by its worker threads."""

    def __init__(self, root: Path, remotes: dict[str, _Http | _Fsspec], retries: int,
                 what: str) -> None:
        self.root = root
        self.index = LocalIndex(root / "local")
        self.remotes = remotes
        self.retries = retries
        self.what = what
        self.cancel = threading.Event()
        self.rng = random.Random()  # nosec B311 - retry jitter, not security
        self._lock = threading.Lock()
        self.bytes_done = 0

    # -- one granule
    def one(self, url: str, kind: str) -> Result:
        try:
            if kind == "local":
                return self._local(url)
            return self._remote(url, self.remotes[kind])
        except _Missing as exc:
            return SkippedGranule(url, str(exc))

    def _local(self, url: str) -> FetchedGranule:
        file = _local_path(url)
        try:
            st = file.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise _Missing(f"no such file: {file}") from None
        if not file.is_file():
            raise SourceError(f"{self.what}: {url} is a folder, not a file; a Zarr store "
                              "is opened as a source of format zarr, not fetched.")
        rec = self.index.lookup(file, st) or self.index.remember(file, st, file_sha256(file))
        return _granule(url, file, rec, downloaded=False)

    def _remote(self, url: str, remote: _Http | _Fsspec) -> FetchedGranule:
        entry = CacheEntry.of(url, self.root)
        tries = _Tries(self, url)
        with entry.locked():
            rec = entry.record()
            if rec is not None:
                meta = tries.run(lambda: remote.stat(url))
                if _unchanged(rec, meta):
                    return _granule(url, entry.data, rec, downloaded=False)
            return tries.run(lambda: self._download(entry, remote))

    def _download(self, entry: CacheEntry, remote: _Http | _Fsspec) -> FetchedGranule:
        """One attempt: continue (or start) the ``.part``, then verify and commit it."""
        part = entry.part
        offset = part.stat().st_size if part.exists() else 0
        known = (read_json(entry.part_meta) or {}) if offset else {}
        try:
            with remote.open(entry.url, offset, known.get("etag")) as body:
                if body.start != offset and body.start != 0:
                    raise _Restart(f"asked for byte {offset}, got byte {body.start}")
                if offset and body.start == offset and known.get("size") not in (
                        None, body.total):
                    raise _Restart("the file changed upstream since the .part began")
                offset = body.start
                if offset == 0:
                    write_json(entry.part_meta, {"etag": body.etag, "size": body.total})
                h = entry.hash_part() if offset else hashlib.sha256()
                got = offset + self._stream(body.chunks, part, h, append=offset > 0)
        except _Restart:
            entry.discard_part()
            raise
        if body.total is not None and got != body.total:
            if got > body.total:
                entry.discard_part()
            raise _Transient(f"truncated body: {got} of {body.total} bytes")
        rec = entry.commit(size=got, sha256=h.hexdigest(), etag=body.etag or known.get("etag"))
        return _granule(entry.url, entry.data, rec, downloaded=True)

    def _stream(self, chunks: Iterator[bytes], part: Path, h: Any, append: bool) -> int:
        written = 0
        with open(part, "ab" if append else "wb") as f:
            for chunk in chunks:
                if self.cancel.is_set():
                    raise _Cancelled
                f.write(chunk)
                h.update(chunk)
                written += len(chunk)
                with self._lock:
                    self.bytes_done += len(chunk)
        return written

    # -- the pool
    def run(self, urls: list[str], kinds: dict[str, str], concurrency: int,
            missing: str, report: Callable[[int, int, int], None],
            on_fetched: Callable[[FetchedGranule], None] | None = None) -> dict[str, Result]:
        order = {u: i for i, u in enumerate(urls)}
        results: dict[str, Result] = {}
        first_missing: int | None = None
        last: tuple[int, int, int] | None = None
        with ThreadPoolExecutor(max_workers=max(min(concurrency, len(urls)), 1),
                                thread_name_prefix="esdc-fetch") as pool:
            futures: dict[Future[Result], str] = {
                pool.submit(self.one_then, u, kinds[u], on_fetched): u for u in urls}
            pending = set(futures)
            try:
                while pending:
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    for fut in sorted(done, key=lambda f: order[futures[f]]):
                        if fut.cancelled():
                            continue
                        url = futures[fut]
                        results[url] = fut.result()  # raises FetchError, SourceError
                        if missing == "error" and isinstance(results[url], SkippedGranule) \
                                and (first_missing is None or order[url] < first_missing):
                            first_missing = order[url]
                            for other in pending:  # not started: not needed any more
                                if order[futures[other]] > first_missing:
                                    other.cancel()
                    if last != (now := (len(results), len(urls), self.bytes_done)):
                        report(*now)
                        last = now
            except BaseException:
                self.cancel.set()
                for fut in pending:
                    fut.cancel()
                raise
        skipped = [r for r in results.values() if isinstance(r, SkippedGranule)]
        if missing == "error" and skipped:
            first = min(skipped, key=lambda r: order[r.url])
            more = f"; {len(skipped)} granules missing" if len(skipped) > 1 else ""
            raise GranuleNotFoundError(
                f"{self.what}: granule not found: {first.url} ({first.reason}{more}). Give "
                "`missing: skip` in the source's files: (or wmts:) to skip missing granules.")
        return results


    def one_then(self, url: str, kind: str,
                 on_fetched: Callable[[FetchedGranule], None] | None) -> Result:
        """:meth:`one`, then ``on_fetched`` of a granule made available (in this thread)."""
        result = self.one(url, kind)
        if on_fetched is not None and isinstance(result, FetchedGranule):
            on_fetched(result)
        return result


class _Tries:
    """Attempts at one granule: retries transient failures, counts them, then gives up."""

    def __init__(self, fetcher: _Fetcher, url: str) -> None:
        self.fetcher = fetcher
        self.url = url
        self.failures = 0

    def run(self, attempt: Callable[[], Any]) -> Any:
        restarted = False
        while True:
            if self.fetcher.cancel.is_set():
                raise _Cancelled
            try:
                return attempt()
            except _Restart as exc:
                if not restarted:  # the .part is gone: the next attempt starts at byte 0
                    restarted = True
                    continue
                failure: _Transient = _Transient(f"restarted twice: {exc}")
            except _Fatal as exc:
                self.failures += 1
                raise self._error(f"{exc} (not retried)") from None
            except _Transient as exc:
                failure = exc
            self.failures += 1
            if self.failures > self.fetcher.retries:
                raise self._error(str(failure))
            delay = backoff_delay(self.failures, failure.retry_after, self.fetcher.rng)
            if self.fetcher.cancel.wait(delay):
                raise _Cancelled

    def _error(self, last: str) -> FetchError:
        n = self.failures
        return FetchError(f"{self.fetcher.what}: could not fetch {self.url} after {n} "
                          f"attempt{'s' if n != 1 else ''}; last failure: {last}. A new "
                          "fetch resumes where this one stopped.")


# ---------------------------------------------------------------- the entry
def _scheme(url: str) -> str:
    """``"local"``, ``"http"`` or the fsspec protocol of ``url``."""
    if not is_url(url):
        return "local"
    scheme = url.split("://", 1)[0].lower()
    return "http" if scheme in ("http", "https") else scheme


def _remotes(kinds: Iterable[str], what: str, examples: dict[str, str], concurrency: int,
             timeout: float, options: dict[str, Any]) -> dict[str, _Http | _Fsspec]:
    """One remote per kind; unknown schemes refused first, before anything is opened."""
    import fsspec

    for kind in sorted(set(kinds) - {"local", "http"}):
        try:
            fsspec.get_filesystem_class(kind)
        except (ValueError, ImportError) as exc:
            raise SourceError(
                f"{what}: the URL scheme {kind!r} of {examples[kind]} cannot be read: "
                f"{exc}. Use a local path, http(s):// or a scheme fsspec knows "
                "(s3://, gs://, az://, ...) with its package installed.") from None
    remotes: dict[str, _Http | _Fsspec] = {}
    for kind in sorted(set(kinds) - {"local"}):
        remotes[kind] = (_Http(concurrency, timeout, options) if kind == "http"
                         else _Fsspec(kind, options))
    return remotes


@contextlib.contextmanager
def _reporter(progress: bool | Callable[[int, int, int], None],
              what: str) -> Iterator[Callable[[int, int, int], None]]:
    if callable(progress):
        yield progress
        return
    if not progress:
        yield lambda done, total, nbytes: None
        return
    from rich.console import Console
    from rich.filesize import decimal
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("granules, {task.fields[nbytes]} downloaded"),
                  console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(f"fetch {what}", total=None, nbytes="0 bytes")

        def report(done: int, total: int, nbytes: int) -> None:
            bar.update(task, completed=done, total=total, nbytes=decimal(nbytes))

        yield report


def fetch_granules(urls: Sequence[str], *, concurrency: int = 8,
                   missing: Literal["error", "skip"] = "error",
                   cache_dir: Path | None = None,
                   storage_options: dict[str, Any] | None = None,
                   retries: int = 6, timeout: float = 60.0,
                   progress: bool | Callable[[int, int, int], None] = False,
                   what: str = "sources",
                   on_fetched: Callable[[FetchedGranule], None] | None = None,
                   ) -> list[FetchedGranule | SkippedGranule]:
    """Make granules available locally, verified, each fetched at most once.

    Parameters
    ----------
    urls : sequence of str
        Local paths (no scheme, or ``file://``), ``http(s)://`` URLs and other fsspec
        URLs (``s3://bucket/key``, ``gs://...``), in any mix. A URL given twice is
        fetched once.
    concurrency : int
        The most requests in flight at once (worker threads), >= 1.
    missing : {"error", "skip"}
        What a granule missing upstream (HTTP 404/410, no such key or file) does:
        raise :class:`~esdc.errors.GranuleNotFoundError` naming the first in ``urls``
        order, or become a :class:`SkippedGranule`.
    cache_dir : Path, optional
        The granule cache; default ``esdc.samples.cache_dir() / "granules"``
        (``$ESDC_CACHE/granules``). Entries are keyed by the SHA-256 of the URL and
        record its ETag, size, SHA-256 and first fetch (:mod:`esdc.storage.fetchcache`).
    storage_options : dict, optional
        fsspec filesystem options for other schemes (s3fs: ``key``, ``secret``,
        ``endpoint_url``, ``anon``, ``config_kwargs`` for its timeouts, ...); for HTTP,
        ``headers`` and ``client_kwargs`` (of ``httpx.Client``) are used.
    retries : int
        Retries of a granule after its first failed attempt (so at most
        ``retries + 1`` attempts) on 5xx, 408, 429, timeouts, connection errors and
        truncated bodies. Waits follow :func:`backoff_delay` (exponential backoff with
        equal jitter, M. Brooker, AWS Architecture Blog 2015: drawn from ``[d/2, d]``,
        ``d = min(30, 0.25 * 2 ** (failures - 1))`` seconds), at least the server's
        ``Retry-After`` (seconds or an HTTP date, at most 120 s).
    timeout : float
        Seconds to connect, and the most seconds between two reads of an HTTP answer.
    progress : bool or callable
        True: a progress bar of granules and bytes (rich, on stderr); a callable is
        called with ``(granules_done, granules_total, bytes_done)`` from the calling
        thread as granules finish.
    what : str
        Prefix of messages (e.g. ``"sources.ostia"``).
    on_fetched : callable, optional
        Called with each granule made available, in the worker thread that fetched it,
        while others are still in flight (the build reads each granule's metadata there).

    Returns
    -------
    list of FetchedGranule or SkippedGranule
        One per entry of ``urls``, in its order.

    Raises
    ------
    SourceError
        Before any request, if a URL's scheme is one fsspec does not know (or its
        package is not installed), or a parameter is invalid; if a local path is a folder.
    GranuleNotFoundError
        With ``missing="error"``, naming the first missing granule (in ``urls`` order).
    FetchError
        If a granule still fails after ``retries`` retries (or at once on 401, 403),
        naming its URL, the attempts and the last failure. Granules in flight stop;
        their ``.part`` files are resumed by the next call.
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise SourceError(f"{what}: concurrency={concurrency!r}: give a whole number >= 1.")
    if missing not in ("error", "skip"):
        raise SourceError(f"{what}: missing={missing!r}: give 'error' or 'skip'.")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise SourceError(f"{what}: retries={retries!r}: give a whole number >= 0.")
    if not timeout > 0:
        raise SourceError(f"{what}: timeout={timeout!r}: give seconds > 0.")
    given = [os.fspath(u) for u in urls]
    unique = list(dict.fromkeys(given))
    kinds = {u: _scheme(u) for u in unique}
    examples = {k: u for u, k in reversed(kinds.items())}
    remotes = _remotes(kinds.values(), what, examples, concurrency, timeout,
                       dict(storage_options or {}))
    fetcher = _Fetcher(granule_cache_dir(cache_dir), remotes, retries, what)
    try:
        with _reporter(progress, what) as report:
            results = (fetcher.run(unique, kinds, concurrency, missing, report, on_fetched)
                       if unique else {})
    finally:
        for remote in remotes.values():
            remote.close()
    return [results[u] for u in given]
