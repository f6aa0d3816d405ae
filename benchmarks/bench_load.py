"""Load test of ``esdc serve`` on loopback, with an index swap while it serves.

What is measured
----------------
cube
    A synthetic Blue Marble cube of ``--shape`` cells (512 x 1024: 8,192 tiles of 8 x 8;
    ``--quick`` 256 x 512: 2,048 tiles) embedded by two freshly initialised, seeded
    encoders ("A", seed 0, and "B", seed 1; ``--dim`` 64), so the two embeddings give
    different neighbours. State A (A's embeddings and their flat index) is served.
server
    A real ``esdc serve CUBE --watch 1`` subprocess on a free 127.0.0.1 port (uvicorn,
    one process), exactly as a user starts it.
expected answers
    A pool of ``--pool`` (500) distinct requests: 55 % ``GET /search/tile`` at a random
    point of a random embedded tile (k = 10), 15 % the same with a bbox of a third of
    the grid, 20 % ``POST /search/vector`` (a tile's A embedding, k = 10), 10 % ``GET
    /tiles/{y}/{x}.png``. Each is answered once by state A, then (after a rebuild to B,
    waited for in ``/health``) once by state B, then the cube goes back to A: for every
    request and index generation the exact bytes expected (SHA-256 of the body).
load
    ``--requests`` (10,000; quick 2,000) draws from the pool are sent by ``--clients``
    (32) threads, each with its own keep-alive ``http.client`` connection, after 200
    warm-up requests. When half of them are answered (``--swaps`` > 1: evenly spaced),
    this process rebuilds the index as ``esdc embed`` + ``esdc index`` would: it writes
    the other encoder's embeddings into the cube and runs ``build_index`` (a new index
    generation); the server's watcher loads it off the request path and swaps it in.
checks
    Every answer must be 200 and carry an ``X-Esdc-Index`` header naming generation A
    or B, and its body must be byte-for-byte the expected answer of that generation:
    ``failed`` counts non-200 answers and connection errors (``server_errors``: 5xx and
    connection errors), ``mixed`` answers of a known generation with other bytes,
    ``unknown_index`` answers naming no known generation.
figures
    Client-side latency (send to last byte) ``p50_ms``/``p90_ms``/``p99_ms``/``max_ms``
    over the timed requests and by kind, ``requests_per_s``, server and client CPU per
    request (psutil), and for each swap: the rebuild's seconds, how long after its
    commit the first answer came from the new generation (``seen_after_s``, bounded by
    the 1 s watch interval plus the load of the new engine), the requests answered
    meanwhile and their failures. Client and server share the machine's cores.

Aims (issue 7): zero server errors, zero failed or mixed answers during the swap;
p50/p99 reported. Timings depend on the machine and its load (reported at start and end).

How to run
----------
::

    python benchmarks/bench_load.py            # 10,000 requests, 32 clients, 1 swap
    python benchmarks/bench_load.py --quick    # 2,000 requests, smaller cube
    python benchmarks/bench_load.py --json     # one JSON object on stdout

The functions are also used by ``tests/search/test_load.py`` and
``tests/search/test_hot_swap.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HEADER = "x-esdc-index"
INPUTS = ["bmng_red", "bmng_green", "bmng_blue"]
#: Request mix: kind -> share.
MIX = {"tile": 0.55, "tile_bbox": 0.15, "vector": 0.20, "png": 0.10}


def log(msg: str) -> None:
    print(f"[bench_load {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- cube, states
@dataclass
class State:
    """One embedding of the cube (an encoder's vectors) and the index built from it."""

    name: str
    embeddings: Any  # xarray.Dataset of esdc.embed.compute_embeddings
    sha16: str = ""  # first 16 hex digits of its (flat) index file's SHA-256


def embedded_cube(folder: Path, shape: tuple[int, int] = (512, 1024), dim: int = 64,
                  tile: int = 8, seeds: tuple[int, ...] = (0, 1), times: int = 0) -> tuple[
                      Path, list[State]]:
    """A Blue Marble-like cube embedded by one seeded, untrained encoder per seed.

    The cube holds the first state's embeddings and flat index; the others are kept in
    memory for :func:`swap_to`.

    Returns
    -------
    (pathlib.Path, list of State)
        ``folder/cube.zarr`` and one state per seed (named A, B, ...).
    """
    import torch

    import esdc.testing
    from esdc.embed import EncoderBundle, compute_embeddings
    from esdc.ml.ssl import Encoder

    folder.mkdir(parents=True, exist_ok=True)
    cube = folder / "cube.zarr"
    chunks = {"lat": min(256, shape[0]), "lon": min(256, shape[1])}  # like a built cube
    esdc.testing.new_cube(shape=shape, times=times, variables=tuple(INPUTS),
                          chunks=chunks).to_zarr(cube, zarr_format=3, consolidated=True)
    meta = {"class": "esdc.ml.ssl.Encoder", "in_channels": len(INPUTS),
            "params": {"dim": dim, "width": 8}, "inputs": INPUTS, "tile": [tile, tile]}
    states = []
    for i, seed in enumerate(seeds):
        name = chr(ord("A") + i)
        torch.manual_seed(seed)
        weights = folder / f"encoder-{name}.pt"
        torch.save(Encoder(len(INPUTS), **meta["params"]).state_dict(), weights)
        bundle = EncoderBundle(weights, meta, f"bench-run-{name}")
        states.append(State(name, compute_embeddings(str(cube), bundle, tile)))
    for st in reversed(states):  # learn each state's index checksum; end in state A
        swap_to(cube, st)
    return cube, states


def swap_to(cube: Path, state: State, kind: str = "flat", cli: bool = False) -> dict[str, Any]:
    """Write ``state``'s embeddings into the cube and rebuild its index (a new generation).

    What ``esdc embed`` then ``esdc index`` do; with ``cli`` the index is built by an
    ``esdc index CUBE --kind KIND`` subprocess. Returns the new manifest as a dict and
    sets ``state.sha16``.
    """
    from dataclasses import asdict

    from esdc.embed import write_embeddings
    from esdc.search import build_index, index_dir

    write_embeddings(cube, state.embeddings)
    if cli:
        subprocess.run([sys.executable, "-m", "esdc.cli", "index", str(cube), "--kind", kind],
                       check=True, capture_output=True)
        var = str(next(iter(state.embeddings.data_vars)))
        manifest = json.loads((index_dir(cube) / f"{var}.json").read_text())
    else:
        manifest = asdict(build_index(cube, kind=kind))
    state.sha16 = manifest["index_sha256"][:16]
    return manifest


# ---------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 10) -> tuple[int, bytes, str]:
    """One GET: status, body and the ``X-Esdc-Index`` header ("" if absent)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader(HEADER, "")
    finally:
        conn.close()


class Server:
    """``esdc serve CUBE --watch W`` in a subprocess on a free loopback port (a context manager).

    Raises
    ------
    RuntimeError
        If the server exits or does not answer ``/health`` within ``timeout`` seconds.
    """

    def __init__(self, cube: Path, log_path: Path, watch: float = 1.0,
                 timeout: float = 120) -> None:
        self.cube, self.log_path, self.watch, self.timeout = cube, log_path, watch, timeout
        self.port = free_port()

    def __enter__(self) -> Server:
        self._log = open(self.log_path, "w+b")  # noqa: SIM115 -- closed in __exit__
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "esdc.cli", "serve", str(self.cube), "--host", "127.0.0.1",
             "--port", str(self.port), "--watch", str(self.watch)],
            stdout=self._log, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError("esdc serve exited: " + self.log_path.read_text())
            try:
                if self.health(timeout=2)["status"] == "ok":
                    break
            except (OSError, http.client.HTTPException, ValueError):
                pass
            if time.monotonic() - t0 > self.timeout:
                self.__exit__(None, None, None)
                raise RuntimeError(f"esdc serve did not answer /health in {self.timeout} s")
            time.sleep(0.2)
        self.startup_s = time.monotonic() - t0
        return self

    def health(self, timeout: float = 10) -> dict[str, Any]:
        status, body, _ = http_get(self.port, "/health", timeout)
        if status != 200:
            raise ValueError(f"/health answered {status}")
        return json.loads(body)

    def wait_for(self, sha16: str, timeout: float = 60) -> float:
        """Seconds until ``/health`` reports the index ``sha16``.

        Raises
        ------
        RuntimeError
            If it does not within ``timeout`` seconds.
        """
        t0 = time.monotonic()
        while not self.health()["index"].endswith(sha16):
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"the server did not swap to index {sha16} in {timeout} s: "
                                   f"{self.health()}")
            time.sleep(0.05)
        return time.monotonic() - t0

    def __exit__(self, *exc: Any) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# ---------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class Request:
    kind: str
    method: str
    path: str
    body: bytes | None = None


def request_pool(cube: Path, count: int, seed: int = 0) -> list[Request]:
    """``count`` distinct requests of the :data:`MIX` on the cube's embedded tiles.

    Tile queries pick a point inside a random tile that has an embedding (so every
    request is valid: all answers must be 200), vector queries that tile's vector.
    """
    from urllib.parse import urlencode

    from esdc.search.index import embedding_variable
    from esdc.storage import open_cube

    ds = open_cube(cube)
    var = embedding_variable(ds)
    emb = ds[var]
    ydim, xdim = str(emb.dims[0]), str(emb.dims[1])
    names = list(emb.attrs.get("esdc_tile_dims", ["lat", "lon"]))
    yb, xb = (np.asarray(ds[f"{d}_bounds"].values, dtype=float) for d in (ydim, xdim))
    vec = np.asarray(emb.values, dtype="float32")
    times = ([str(t)[:10] for t in ds["time"].values] if emb.ndim == 4 else None)
    ok = np.isfinite(vec).all(axis=-1)
    valid = np.argwhere(ok if ok.ndim == 2 else ok.all(axis=-1))
    lo_y, hi_y, lo_x, hi_x = yb.min(), yb.max(), xb.min(), xb.max()
    rng = np.random.default_rng(seed)
    kinds, shares = list(MIX), np.array(list(MIX.values()))
    out: list[Request] = []
    for _ in range(count):
        kind = kinds[int(rng.choice(len(kinds), p=shares / shares.sum()))]
        ty, tx = (int(v) for v in valid[int(rng.integers(len(valid)))])
        t = int(rng.integers(len(times))) if times else None
        if kind == "png":
            out.append(Request(kind, "GET", f"/tiles/{ty}/{tx}.png"
                               + ("" if t is None else f"?t={t}")))
        elif kind == "vector":
            v = vec[ty, tx] if t is None else vec[ty, tx, t]
            body = json.dumps({"vector": [round(float(x), 6) for x in v], "k": 10}).encode()
            out.append(Request(kind, "POST", "/search/vector", body))
        else:
            q: dict[str, Any] = {
                names[0]: round(float(rng.uniform(yb[ty].min(), yb[ty].max())), 4),
                names[1]: round(float(rng.uniform(xb[tx].min(), xb[tx].max())), 4), "k": 10}
            if times:
                q["time"] = times[t or 0]
            if kind == "tile_bbox":
                w, s = float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))
                q["bbox"] = (f"{w:.3f},{s:.3f},{min(hi_x, w + (hi_x - lo_x) / 3):.3f},"
                             f"{min(hi_y, s + (hi_y - lo_y) / 3):.3f}")
            out.append(Request(kind, "GET", "/search/tile?" + urlencode(q)))
    return out


@dataclass
class Answer:
    """One request's outcome, as the client saw it."""

    pool_index: int
    status: int = 0  # 0: no answer (connection error)
    index: str = ""  # X-Esdc-Index header
    digest: str = ""  # SHA-256 of the body, 16 hex digits
    ms: float = float("nan")
    start: float = 0.0  # time.perf_counter() when it was sent
    end: float = 0.0  # time.perf_counter() when it ended
    error: str = ""


@dataclass
class Load:
    answers: list[Answer] = field(default_factory=list)
    wall_s: float = 0.0


def hammer(port: int, pool: list[Request], order: list[int] | np.ndarray, clients: int,
           progress: Any = None, stop: threading.Event | None = None) -> Load:
    """Send ``pool[i]`` for each ``i`` in ``order`` from ``clients`` keep-alive threads.

    Parameters
    ----------
    port : int
        Loopback port of the server.
    pool, order
        The requests and the sequence in which they are taken (each once); with
        ``stop``, the sequence is repeated until ``stop`` is set.
    clients : int
        Concurrent client threads, each with its own connection.
    progress : callable, optional
        Called with the number of answers so far after each answer.
    stop : threading.Event, optional
        Run until set (at least one pass over ``order``).

    Returns
    -------
    Load
        Every answer (in completion order) and the wall time (s).
    """
    answers: list[Answer] = []
    lock = threading.Lock()
    counter = iter(range(1 << 62))
    order = list(order)

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                n = next(counter)
            if n >= len(order) and (stop is None or stop.is_set()):
                break
            req = pool[order[n % len(order)]]
            a = Answer(order[n % len(order)])
            headers = {"content-type": "application/json"} if req.body is not None else {}
            t0 = a.start = time.perf_counter()
            try:
                conn.request(req.method, req.path, body=req.body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                a.end = time.perf_counter()
                a.ms = (a.end - t0) * 1000
                a.status, a.index = resp.status, resp.getheader(HEADER, "")
                a.digest = hashlib.sha256(data).hexdigest()[:16]
                if resp.status != 200:
                    a.error = f"{resp.status} {req.path[:80]}: {data[:200]!r}"
            except (OSError, http.client.HTTPException) as exc:
                a.end = time.perf_counter()
                a.error = f"{req.path[:80]}: {exc!r}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with lock:
                answers.append(a)
                done = len(answers)
            if progress is not None:
                progress(done)
        conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Load(answers, time.perf_counter() - t0)


def expected_answers(server: Server, pool: list[Request], clients: int) -> tuple[str, list[str]]:
    """The index the server serves now and the digest of its answer to each pool request.

    Raises
    ------
    RuntimeError
        If an answer is not 200, or the index changed while asking.
    """
    load = hammer(server.port, pool, range(len(pool)), clients)
    digests = [""] * len(pool)
    indexes = {a.index for a in load.answers}
    bad = [a.error for a in load.answers if a.status != 200]
    if bad or len(indexes) != 1:
        raise RuntimeError(f"expected answers: errors {bad[:3]}, indexes {indexes}")
    for a in load.answers:
        digests[a.pool_index] = a.digest
    return indexes.pop(), digests


def check(load: Load, expected: dict[str, list[str]]) -> dict[str, Any]:
    """Count failed, mixed and unknown-index answers against ``expected`` (sha16 -> digests).

    Returns
    -------
    dict
        ``failed`` (non-200 or no answer), ``server_errors`` (5xx or no answer),
        ``mixed`` (known index, other bytes), ``unknown_index``, ``by_index`` (answers
        per ``X-Esdc-Index``), ``examples`` (up to 5 problems).
    """
    failed = server_errors = mixed = unknown = 0
    examples: list[str] = []
    for a in load.answers:
        sha16 = a.index.split("-", 1)[-1]
        problem = ""
        if a.status != 200:
            failed += 1
            server_errors += a.status == 0 or a.status >= 500
            problem = a.error
        elif sha16 not in expected:
            unknown += 1
            problem = f"unknown index {a.index!r}"
        elif expected[sha16][a.pool_index] != a.digest:
            mixed += 1
            problem = f"request {a.pool_index}: answer of {a.index} differs from that index's"
        if problem and len(examples) < 5:
            examples.append(problem)
    return {"failed": failed, "server_errors": server_errors, "mixed": mixed,
            "unknown_index": unknown,
            "by_index": dict(Counter(a.index for a in load.answers)), "examples": examples}


def percentiles(ms: np.ndarray) -> dict[str, float]:
    ms = ms[np.isfinite(ms)]
    if not ms.size:
        return {}
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)} | {
        "max_ms": round(float(ms.max()), 2)}


# ---------------------------------------------------------------------------- the run
def run(requests: int = 10_000, clients: int = 32, swaps: int = 1, pool_size: int = 500,
        shape: tuple[int, int] = (512, 1024), dim: int = 64, watch: float = 1.0,
        work: Path | None = None, seed: int = 0) -> dict[str, Any]:
    """The load test of the module docstring; returns its figures (one JSON-able dict)."""
    import psutil

    with tempfile.TemporaryDirectory(prefix="bench_load-") as tmp:
        folder = Path(work or tmp)
        t0 = time.perf_counter()
        cube, states = embedded_cube(folder, shape, dim)
        log(f"cube {shape[0]} x {shape[1]}, two embeddings, built in "
            f"{time.perf_counter() - t0:.1f} s")
        pool = request_pool(cube, pool_size, seed)
        with Server(cube, folder / "serve.log", watch) as server:
            log(f"esdc serve up on 127.0.0.1:{server.port} in {server.startup_s:.1f} s")
            expected: dict[str, list[str]] = {}
            for st in (states[0], states[1], states[0]):
                if server.health()["index"].split("-", 1)[-1] != st.sha16:
                    swap_to(cube, st)
                    server.wait_for(st.sha16)
                index, digests = expected_answers(server, pool, clients)
                expected[index.split("-", 1)[-1]] = digests
            log(f"expected answers of {len(pool)} requests from indexes "
                f"{', '.join(s.name + '=' + s.sha16 for s in states)}")
            warm = hammer(server.port, pool, np.arange(200) % len(pool), clients)
            if any(a.status != 200 for a in warm.answers):
                raise RuntimeError(f"warm-up failed: {[a.error for a in warm.answers][:3]}")

            order = np.random.default_rng(seed + 1).integers(0, len(pool), requests)
            marks = [int(requests * (i + 1) / (swaps + 1)) for i in range(swaps)]
            reached = [threading.Event() for _ in marks]
            swap_log: list[dict[str, Any]] = []

            def progress(done: int) -> None:
                for m, ev in zip(marks, reached, strict=True):
                    if done >= m and not ev.is_set():
                        ev.set()

            def swapper() -> None:
                current = 0
                for ev in reached:
                    ev.wait()
                    current = 1 - current
                    t_start = time.perf_counter()
                    manifest = swap_to(cube, states[current])
                    swap_log.append({"to": states[current].name, "start": t_start,
                                     "commit": time.perf_counter(),
                                     "generation": manifest["generation"],
                                     "sha16": states[current].sha16})

            sw = threading.Thread(target=swapper, daemon=True)
            sw.start()
            proc, me = psutil.Process(server.proc.pid), psutil.Process()
            cpu0, own0 = proc.cpu_times(), me.cpu_times()
            load = hammer(server.port, pool, order, clients, progress)
            cpu1, own1 = proc.cpu_times(), me.cpu_times()
            sw.join(timeout=120)
            health = server.health()
    ms = np.array([a.ms for a in load.answers])
    kinds = np.array([pool[a.pool_index].kind for a in load.answers])
    result: dict[str, Any] = {
        "requests": requests, "clients": clients, "pool": len(pool), "mix": MIX,
        "cube": f"synthetic {shape[0]} x {shape[1]}, {int(np.prod(shape)) // 64:,} tiles "
                f"of 8 x 8, {dim}-dim embeddings, flat index",
        "wall_s": round(load.wall_s, 2), "requests_per_s": round(requests / load.wall_s, 1),
        **percentiles(ms),
        "by_kind": {k: {"count": int((kinds == k).sum()), **percentiles(ms[kinds == k])}
                    for k in MIX},
        **check(load, expected),
        "server_cpu_ms_per_request": round((cpu1.user + cpu1.system - cpu0.user - cpu0.system)
                                           / requests * 1000, 3),
        "client_cpu_ms_per_request": round((own1.user + own1.system - own0.user - own0.system)
                                           / requests * 1000, 3),
        "server_startup_s": round(server.startup_s, 1), "watch_s": watch,
        "health_after": {k: health[k] for k in ("generation", "index", "reloads",
                                                "reload_error")},
    }
    swaps_out = []
    for s in swap_log:
        new = [a for a in load.answers if a.index.endswith(s["sha16"]) and a.end > s["start"]]
        first = min((a.end for a in new), default=float("nan"))
        window = [a for a in load.answers if s["start"] <= a.end <= first]
        swaps_out.append({"to": s["to"], "generation": s["generation"],
                          "rebuild_s": round(s["commit"] - s["start"], 2),
                          "seen_after_s": round(first - s["commit"], 2),
                          "requests_during": len(window),
                          "failed_during": sum(a.status != 200 for a in window)})
    result["swaps"] = swaps_out
    return result


def main(argv: list[str] | None = None) -> int:
    import _machine  # benchmarks/_machine.py

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,000 requests, 256 x 512 cube")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--requests", type=int, help="timed requests (default 10,000; quick 2,000)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--swaps", type=int, default=1, help="index swaps during the timed run")
    ap.add_argument("--pool", type=int, default=500, help="distinct requests")
    ap.add_argument("--shape", type=int, nargs=2, metavar=("NY", "NX"),
                    help="cube cells (default 512 1024; quick 256 512)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--watch", type=float, default=1.0, help="esdc serve --watch seconds")
    args = ap.parse_args(argv)
    requests = args.requests or (2_000 if args.quick else 10_000)
    shape = tuple(args.shape or ((256, 512) if args.quick else (512, 1024)))
    t0 = time.perf_counter()
    mach = _machine.machine()
    out = {"quick": args.quick, "machine": mach,
           "versions": _machine.versions(("esdc", "numpy", "faiss-cpu", "fastapi", "starlette",
                                          "uvicorn", "pydantic"))}
    out |= run(requests, args.clients, args.swaps, args.pool, shape, args.dim, args.watch)
    out["machine"]["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    out["aims_met"] = {"zero server errors": out["server_errors"] == 0,
                       "zero failed or mixed answers": out["failed"] + out["mixed"]
                       + out["unknown_index"] == 0}
    out["total_s"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(out))
    else:
        for key in ("requests", "clients", "requests_per_s", "p50_ms", "p90_ms", "p99_ms",
                    "max_ms", "by_kind", "server_errors", "failed", "mixed", "unknown_index",
                    "by_index", "swaps", "server_cpu_ms_per_request",
                    "client_cpu_ms_per_request", "health_after", "aims_met", "machine",
                    "total_s"):
            print(f"{key:>26}: {out.get(key)}")
    return 0 if all(out["aims_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
