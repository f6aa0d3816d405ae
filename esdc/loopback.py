"""A real HTTP file server on 127.0.0.1 with fault injection: a test and benchmark helper.

:class:`LoopbackServer` serves a folder over HTTP/1.1 (stdlib
:class:`http.server.ThreadingHTTPServer` in a thread; a context manager) the way an
archive server does: ``GET`` and ``HEAD``, ``ETag`` (from mtime and size, as nginx),
``Last-Modified``, ``Content-Length``, ``Accept-Ranges`` and single ``Range`` requests
(``206 Partial Content``, ``416`` past the end, ``If-Range``), ``404`` for missing files.
It is how esdc's tests and ``benchmarks/bench_ingest.py`` exercise the fetch layer
(:mod:`esdc.storage.fetch`) against a real socket, never beyond the loopback interface.

Faults, per path (:meth:`LoopbackServer.inject`, consumed one per request) or at random
with a seeded generator (``chaos=``):

=============  ==========================================================================
``"503"``      ``503 Service Unavailable`` with ``Retry-After`` (``status=`` for 429, 500)
``"stall"``    answer nothing for ``seconds`` (longer than the client's timeout), close
``"truncate"`` send the headers and ``fraction`` of the body, then close the connection
``"reset"``    close the connection with a TCP reset before answering
``"404"``      answer ``404 Not Found`` although the file exists
=============  ==========================================================================

``latency`` seconds are added to every request and ``rate`` limits body bytes per second.
Every request is logged (:class:`Request`: method, path, status, Range, bytes sent), and
the server counts the most requests it held at once (:attr:`LoopbackServer.max_in_flight`).
"""

from __future__ import annotations

import email.utils
import os
import random
import socket
import struct
import threading
from collections import defaultdict, deque
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote, urlsplit

__all__ = ["FAULTS", "Fault", "LoopbackServer", "Request"]

FAULTS = ("503", "stall", "truncate", "reset", "404")
"""The fault kinds a :class:`LoopbackServer` injects."""

_BLOCK = 1 << 16


@dataclass(frozen=True)
class Fault:
    """One injected fault (see the module's table).

    Attributes
    ----------
    kind : str
        One of :data:`FAULTS`.
    status : int
        The status sent by ``"503"`` faults (503, 429, 500, ...).
    retry_after : str or None
        ``Retry-After`` sent with a ``"503"`` fault (seconds or an HTTP date).
    seconds : float
        How long a ``"stall"`` waits before closing, in seconds.
    fraction : float
        Share of the body a ``"truncate"`` sends, in [0, 1).
    """

    kind: str
    status: int = 503
    retry_after: str | None = "1"
    seconds: float = 30.0
    fraction: float = 0.5


@dataclass(frozen=True)
class Request:
    """One logged request.

    Attributes
    ----------
    method : str
        ``"GET"`` or ``"HEAD"``.
    path : str
        The URL path, decoded (``/granules/a.nc``).
    status : int
        The status answered; 0 when the connection was stalled or reset.
    range : str or None
        The ``Range`` header sent by the client.
    sent : int
        Body bytes written.
    fault : str or None
        The fault injected, if any.
    """

    method: str
    path: str
    status: int
    range: str | None
    sent: int
    fault: str | None = None


class LoopbackServer:
    """An HTTP server of the files under ``root`` on ``127.0.0.1`` (a context manager).

    Parameters
    ----------
    root : path-like
        The folder served; ``/a/b.nc`` is ``root/a/b.nc``.
    latency : float
        Seconds added to every request, before it is answered.
    rate : float, optional
        Body bytes per second (per request); unlimited when None.
    chaos : float
        Probability in [0, 1] that a request gets a random fault of ``chaos_kinds``
        (drawn from ``random.Random(seed)``, so a run is reproducible).
    chaos_kinds : tuple of str
        The fault kinds drawn by ``chaos``.
    seed : int
        Seed of the chaos generator.
    fault : Fault, optional
        The parameters (stall seconds, truncated fraction, ...) of chaos faults.
    port : int
        0 picks a free port.

    Examples
    --------
    >>> with LoopbackServer(folder, latency=0.02) as server:  # doctest: +SKIP
    ...     server.inject("/a.nc", "503", times=2)
    ...     fetch_granules([server.url("a.nc")])
    """

    def __init__(self, root: str | os.PathLike[str], *, latency: float = 0.0,
                 rate: float | None = None, chaos: float = 0.0,
                 chaos_kinds: tuple[str, ...] = ("503",), seed: int = 0,
                 fault: Fault | None = None, port: int = 0) -> None:
        for kind in chaos_kinds:
            _check_kind(kind)
        self.root = Path(root).resolve()
        self.latency = float(latency)
        self.rate = rate
        self.chaos = float(chaos)
        self.chaos_kinds = tuple(chaos_kinds)
        self.chaos_fault = fault or Fault("503")
        self.log: list[Request] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._rng = random.Random(seed)  # nosec B311 - seeded fault injection, not security
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when no request is in flight
        self._faults: dict[tuple[str, str], deque[Fault]] = defaultdict(deque)
        self._stop = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, relpath: str | os.PathLike[str] = "") -> str:
        """The URL of a file under ``root`` (a path relative to it, ``/`` separated)."""
        return f"{self.base_url}/{quote(Path(relpath).as_posix().lstrip('/'))}"

    def start(self) -> LoopbackServer:
        """Serve in a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever,
                                            name="esdc-loopback", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, end stalled answers and close the socket."""
        self._stop.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ faults, log
    def inject(self, path: str, kind: str, *, times: int = 1, method: str = "GET",
               **params: Any) -> None:
        """Give the next ``times`` ``method`` requests of ``path`` the fault ``kind``.

        Parameters
        ----------
        path : str
            A URL path (``/a.nc``) or a full URL of this server.
        kind : str
            One of :data:`FAULTS`.
        times : int
            How many requests get it (one each, in order, after earlier injections).
        method : str
            ``"GET"`` or ``"HEAD"``.
        **params
            Fields of :class:`Fault` (``status``, ``retry_after``, ``seconds``,
            ``fraction``).
        """
        _check_kind(kind)
        fault = Fault(kind, **params)
        with self._lock:
            self._faults[(method.upper(), _url_path(path))].extend([fault] * times)

    def requests(self, method: str | None = None, path: str | None = None,
                 settle: float = 2.0) -> list[Request]:
        """The logged requests, of one method and/or one path when given.

        A request is logged after its answer is sent, so a client may have its answer
        before the server logged it; this waits up to ``settle`` seconds for the requests
        in flight to end (a stalled one may stay in flight: it is then not waited for).
        """
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=settle)
            log = list(self.log)
        return [r for r in log if (method is None or r.method == method.upper())
                and (path is None or r.path == _url_path(path))]

    def clear_log(self) -> None:
        """Forget the logged requests and the in-flight maximum."""
        with self._lock:
            self.log.clear()
            self.max_in_flight = self._in_flight

    def _enter(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            queue = self._faults.get((method, path))
            if queue:
                return queue.popleft()
            if self.chaos and self._rng.random() < self.chaos:
                kind = self._rng.choice(self.chaos_kinds)
                return Fault(kind, self.chaos_fault.status, self.chaos_fault.retry_after,
                             self.chaos_fault.seconds, self.chaos_fault.fraction)
        return None

    def _leave(self, record: Request) -> None:
        with self._idle:
            self._in_flight -= 1
            self.log.append(record)
            if self._in_flight == 0:
                self._idle.notify_all()


def _check_kind(kind: str) -> None:
    if kind not in FAULTS:
        raise ValueError(f"fault {kind!r} is not one of {', '.join(FAULTS)}")


def _url_path(path: str) -> str:
    return "/" + unquote(urlsplit(path).path).lstrip("/")


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """``(start, stop)`` of one ``bytes=`` range, None to send the whole file, or "416"."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].strip().partition("-")
    try:
        if not first:  # suffix: the last N bytes
            n = int(last)
            return (max(size - n, 0), size) if n > 0 else "416"
        start = int(first)
        stop = min(int(last) + 1, size) if last else size
    except ValueError:
        return None
    if start >= size or stop <= start:
        return "416"
    return start, stop


def _handler_for(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "esdc-loopback"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            """Silent: requests are in :attr:`LoopbackServer.log`."""

        def do_GET(self) -> None:  # noqa: N802 - http.server's names
            self._answer(body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(body=False)

        def _answer(self, body: bool) -> None:
            path = _url_path(self.path)
            rng = self.headers.get("Range")
            fault = server._enter(self.command, path)
            status, sent = 0, 0
            self.logged = False
            try:
                if server.latency and server._stop.wait(server.latency):
                    return
                status, sent = self._serve(path, rng, body, fault)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                self.close_connection = True
            finally:
                if not self.logged:
                    server._leave(Request(self.command, path, status, rng, sent,
                                          fault.kind if fault else None))

        def _serve(self, path: str, rng: str | None, body: bool,
                   fault: Fault | None) -> tuple[int, int]:
            kind = fault.kind if fault else None
            if kind == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()  # freed with the handler's files: a RST, no FIN
                return 0, 0
            if kind == "stall":  # logged now: the client gives up before it ends
                server._leave(Request(self.command, path, 0, rng, 0, kind))
                self.logged = True
                server._stop.wait(fault.seconds)
                self.close_connection = True
                return 0, 0
            if kind == "503":
                extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                return self._empty(fault.status, extra), 0
            file = (server.root / path.lstrip("/")).resolve()
            if kind == "404" or not file.is_relative_to(server.root) or not file.is_file():
                return self._empty(404), 0
            st = file.stat()
            size = st.st_size
            etag = f'"{st.st_mtime_ns:x}-{size:x}"'
            if self.headers.get("If-Range") not in (None, etag):
                rng = None
            span = _parse_range(rng, size)
            if span == "416":
                return self._empty(416, {"Content-Range": f"bytes */{size}"}), 0
            start, stop = span if isinstance(span, tuple) else (0, size)
            status = 206 if isinstance(span, tuple) else 200
            self.send_response(status)
            self.send_header("Content-Length", str(stop - start))
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
            self.end_headers()
            if not body:
                return status, 0
            if kind == "truncate":
                stop = start + int((stop - start) * fault.fraction)
                self.close_connection = True
            return status, self._send(file, start, stop)

        def _send(self, file: Path, start: int, stop: int) -> int:
            sent = 0
            step = max(int(server.rate) // 20, 1024) if server.rate else _BLOCK
            with open(file, "rb") as f:
                f.seek(start)
                while sent < stop - start:
                    block = f.read(min(step, _BLOCK, stop - start - sent))
                    if not block or (server.rate and server._stop.wait(len(block) / server.rate)):
                        break
                    self.wfile.write(block)
                    sent += len(block)
            self.wfile.flush()
            return sent

        def _empty(self, status: int, headers: dict[str, str] | None = None) -> int:
            self.send_response(status, HTTPStatus(status).phrase)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return status

    return Handler
