"""HTTP API of the reverse image search: FastAPI app and ``esdc serve``.

Endpoints (the OpenAPI document is at ``/openapi.json``, interactive docs at ``/docs``):

``GET /health``
    ``{"status": "ok", ...}``, the index generation served and its manifest (lineage).
``GET /search/tile?lat=&lon=&time=&k=&bbox=W,S,E,N&start=&end=&scale=&scales=``
    Neighbours of the tile containing the point. ``scale`` is the query tile's size in
    cells (default the finest indexed), ``scales`` those of the neighbours (``all`` or a
    comma list such as ``8,16``; default ``scale``), merged by distance; each neighbour
    gives its ``scale`` and ``bounds`` ([west, south, east, north]). Coordinates are
    named like the grid's (``lat``/``lon`` for geographic grids, ``y``/``x`` for projected ones, in
    the grid's units); ``y``/``x`` are accepted for every grid as well.
``POST /search/vector``
    Neighbours of an embedding, body ``{"vector": [...], "k": 10, "bbox": [W, S, E, N],
    "start": "2020-01", "end": "2020-06"}`` (all but ``vector`` optional).
``POST /search/refine``
    Relevance feedback (:mod:`esdc.search.feedback`): a new ranking from tiles marked
    *more like this* and *not this*, body ``{"positive": [{"lat": -4, "lon": -62,
    "scale": 8, "time": "2008-07"}, ...], "negative": [...], "k": 10, "bbox": [W, S, E,
    N], "start": ..., "end": ..., "negative_weight": 0.5, "exclude_marked": true}`` (at
    least one positive; ``scale`` and ``time`` optional, ``y``/``x`` for ``lat``/``lon``).
``GET /tiles/{tile_y}/{tile_x}.png?t=&scale=``
    The tile's pixels as PNG: RGB for Blue Marble cubes, else the first input variable
    in grey levels scaled to the tile's range. Tile indices are integers checked
    against the embedding grid; nothing is read from a path built from the request.
``GET /map/{variable}/{z}/{x}/{y}.png?time=``, ``GET /map.json``
    XYZ map tiles of the cube's variables and the map's set-up, for the search page's
    slippy map (:mod:`esdc.search.page`, :mod:`esdc.search.xyz`).

Answers use the JSON of :meth:`esdc.search.query.SearchResult.to_json`; every answer
that a search engine made carries the header ``X-Esdc-Index: GENERATION-SHA16``
(:attr:`esdc.search.query.SearchEngine.identity`), naming the index that answered. Invalid input
(a point outside the grid, ``k`` outside 1 .. indexed tiles, a vector of the wrong
dimension, a malformed bounding box or date, ``scale``/``scales`` the cube does not
hold or has not indexed (the scales held are named), a refinement without positive
tile or with a tile outside the grid or at a scale not held) is answered ``422`` with
``{"detail": message}``; FastAPI's own validation errors are ``422`` too (``detail`` is
then a list).

The :class:`~esdc.search.query.SearchEngine` (cube, index, vectors) is loaded by
:func:`create_app` and kept in ``app.state.engine``. Rebuilding the index while the
service runs (``esdc index CUBE``) swaps it in without a failed or mixed answer: an
:class:`IndexWatcher` task checks every ``watch`` seconds (one ``stat`` of the
manifest and of the cube's ``zarr.json``) whether a new index generation was
committed (:mod:`esdc.search.index`) or the cube changed; if so it loads a complete
new engine in a worker thread, off the request path, and swaps it in with one
reference assignment. Each request takes one reference to the engine when it starts
(the ``get_engine`` dependency) and uses only that, so it is answered wholly by the
old engine or wholly by the new one; the old one is freed when its last request ends.
A reload that fails (e.g. the cube was re-embedded but the index not yet rebuilt:
lineage mismatch) keeps the engine being served and is reported in ``/health``
(``reload_error``); the next change on disk is tried again. A live archive (``esdc
update``, ``esdc embed --append``, ``esdc index --update``: :mod:`esdc.search.live`)
goes the same way: an engine reads only the time steps its index covers, so the grown
cube reloads as the same generation, and the updated index is swapped in when its
manifest is committed. The search handlers are
coroutines that search in the event loop: one query costs well under a millisecond
for the indexes ``esdc index`` builds (exact below 200,000 vectors, HNSW above), less
than handing it to a worker thread (measured: 0.55 against 0.9 ms of server CPU per
request), and they use one OpenMP thread each (:func:`_one_thread`). The PNG handler
reads Zarr chunks, so it runs in the server's thread pool.
"""

# No ``from __future__ import annotations``: FastAPI reads the handlers' annotations,
# which name models made inside create_app.
import asyncio
import contextlib
import logging
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from esdc.conventions import SPATIAL_DIMS
from esdc.errors import EsdcError, SearchIndexError
from esdc.grid import parse_bbox
from esdc.search.feedback import MAX_TILES, NEGATIVE_WEIGHT
from esdc.search.index import Manifest, index_dir, require_faiss
from esdc.search.page import mount_page
from esdc.search.query import SearchEngine
from esdc.storage import open_cube

__all__ = ["INDEX_HEADER", "MAX_DIM", "IndexWatcher", "create_app", "load_engine", "run_app",
           "serve"]

#: Largest vector length the API accepts (the index's dimension is checked after).
MAX_DIM = 65_536
#: Response header naming the index generation that answered.
INDEX_HEADER = "X-Esdc-Index"

#: uvicorn's logger: reloads appear in the ``esdc serve`` log.
log = logging.getLogger("uvicorn.error")


def load_engine(cube: str | Path, variable: str | None = None,
                version: str | None = None) -> SearchEngine:
    """A :class:`~esdc.search.query.SearchEngine` set up for serving.

    Tile pixels are read a few cells at a time: without Dask (a read through Dask
    builds and runs a graph per variable, about twice the time of the read itself).

    Parameters
    ----------
    cube : str or path-like
        Cube with embeddings and an index.
    variable : str, optional
        Embedding variable (default: the smallest tile size).
    version : str, optional
        Version of a versioned cube (a tag or snapshot id): the one indexed.

    Returns
    -------
    SearchEngine

    Raises
    ------
    CubeNotFoundError, StorageError, SearchIndexError
        As :class:`~esdc.search.query.SearchEngine`.
    """
    engine = SearchEngine(cube, variable, version)
    engine.ds = open_cube(engine.cube, chunks=None, version=engine.version)
    return engine


class IndexWatcher:
    """Swap a rebuilt index (or a changed cube) into a running app, atomically.

    Parameters
    ----------
    app : fastapi.FastAPI
        App of :func:`create_app`; its ``state.engine`` is replaced.
    interval : float
        Seconds between checks in :meth:`run`.
    version : str, optional
        The cube version served when one was asked for (``create_app(version=)``).

    Attributes
    ----------
    reloads : int
        Engines swapped in since start.
    error : str or None
        Why the last reload failed (None after a successful one).
    """

    def __init__(self, app: Any, interval: float = 1.0, version: str | None = None) -> None:
        engine = app.state.engine
        self.app, self.interval = app, float(interval)
        self.version = version  # a service of a version asked for reloads that version only
        self.cube, self.variable = engine.cube, engine.variable
        self._files = (index_dir(self.cube) / f"{self.variable}.json", self.cube / "zarr.json",
                       *(index_dir(self.cube) / f"{v}.json" for v in engine.scales.values()
                         if v != self.variable))
        self._seen = self._signature()
        self.reloads = 0
        self.error: str | None = None
        self._delay = max(5.0, 10 * self.interval)  # retry of a failed reload, doubling
        self._retry_at = float("inf")

    def _signature(self) -> tuple[Any, ...]:
        """Inode, mtime and size of the manifest and the cube's metadata (None: missing)."""
        out: list[Any] = []
        for f in self._files:
            try:
                st = f.stat()
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def load_if_changed(self) -> SearchEngine | None:
        """A new engine if the files changed since the last check, else None (blocking).

        Failures are recorded in :attr:`error` and logged, not raised: the engine being
        served stays. A failed reload is tried again at the next change on disk, or
        after 10 intervals (at least 5 s), then twice as long each time (at most 5 min).
        """
        sig = self._signature()
        now = time.monotonic()
        if sig == self._seen and now < self._retry_at:
            return None
        self._seen = sig  # a change during the load is seen by the next check
        try:
            engine = load_engine(self.cube, self.variable, self.version)
        except Exception as exc:  # noqa: BLE001 -- anything: keep serving the old engine
            self.error = f"{type(exc).__name__}: {exc}"
            self._retry_at = now + self._delay
            self._delay = min(300.0, 2 * self._delay)
            log.warning("esdc: index not reloaded, still serving %s: %s",
                        self.app.state.engine.identity, self.error)
            return None
        self._retry_at, self._delay = float("inf"), max(5.0, 10 * self.interval)
        return engine

    def swap(self, engine: SearchEngine) -> None:
        """Serve ``engine`` from now on (one reference assignment)."""
        old = self.app.state.engine
        self.app.state.engine = engine
        self.reloads += 1
        self.error = None
        log.info("esdc: now serving index %s (was %s)", engine.identity, old.identity)

    def check(self) -> bool:
        """Reload now if the files changed (blocking); True if a new engine was swapped in."""
        engine = self.load_if_changed()
        if engine is not None:
            self.swap(engine)
        return engine is not None

    async def run(self) -> None:
        """Check every :attr:`interval` seconds, loading in a worker thread, until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            engine = await asyncio.to_thread(self.load_if_changed)
            if engine is not None:
                self.swap(engine)  # in the event loop, between two requests' steps


def _version() -> str:
    """The installed version of esdc (package metadata), shown in the OpenAPI document."""
    try:
        return version("esdc")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "0"


def _fastapi() -> Any:
    try:
        import fastapi
    except ImportError:
        raise EsdcError("the HTTP API needs FastAPI and uvicorn: pip install 'esdc[search]'.") \
            from None
    return fastapi


def _one_thread() -> None:
    """Search single queries with one OpenMP thread in the calling (request) thread.

    FAISS parallelises a search over OpenMP threads; for one query vector the thread
    wake-ups cost far more than they save (1 ms against 0.02 ms for a 16,200-vector
    index, measured on 2 busy cores), and concurrency comes from the server's request
    threads anyway. The setting is per thread (OpenMP ICV), so it is made in every
    request thread and leaves the rest of the process alone.
    """
    require_faiss().omp_set_num_threads(1)


def _pick(names: tuple[str, str], given: dict[str, float | None]) -> tuple[float, float]:
    """The query point from ``lat``/``lon`` or ``y``/``x`` (one pair, not both)."""
    out = []
    for i, (named, plain) in enumerate(zip(*SPATIAL_DIMS, strict=True)):  # lat|y, lon|x
        a, b = given[named], given[plain]
        if a is not None and b is not None and a != b:
            raise SearchIndexError(f"give {named} or {plain}, not both.")
        v = a if a is not None else b
        if v is None:
            raise SearchIndexError(f"give the query point: {named}= (or {plain}=, the "
                                   f"grid's {names[i]}) is missing.")
        out.append(float(v))
    return out[0], out[1]


def _models(engine: SearchEngine) -> dict[str, Any]:
    """Pydantic models of the answers, with the coordinate names of this cube's grid."""
    from pydantic import BaseModel, ConfigDict, Field, create_model

    ny, nx = engine.names
    unit = "degrees" if ny == SPATIAL_DIMS[0][0] else "grid units"  # lat: geographic

    def coords(what: str) -> dict[str, Any]:
        return {ny: (float, Field(description=f"{ny} of the {what} centre ({unit})")),
                nx: (float, Field(description=f"{nx} of the {what} centre ({unit})")),
                "time": (str | None, Field(description="date of the time step (None: "
                                           "static embeddings)")),
                "tile_y": (int, Field(description="row of the tile in the embedding grid")),
                "tile_x": (int, Field(description="column of the tile in the embedding grid"))}

    scaled = {"scale": (int, Field(description="tile size in cells")),
              "bounds": (list[float] | None, Field(None, description="the tile's west, "
                                                   "south, east, north"))}
    searched = {"scales": (list[int] | None, Field(None, description="scales (tile sizes) "
                                                   "searched, merged by distance"))}
    neighbour = create_model("Neighbour", __doc__="One neighbour, nearest first.",
                             **coords("tile"), **scaled,
                             distance=(float, Field(description="cosine distance 1 - cos, "
                                                    "in [0, 2]")))
    filters: dict[str, Any] = {
        "bbox": (list[float] | None, Field(None, description="W, S, E, N filter")),
        "start": (str | None, Field(None, description="earliest time kept")),
        "end": (str | None, Field(None, description="latest time kept"))}
    tile_query = create_model("TileQuery", __doc__="The query tile and the search's settings.",
                              variable=(str, ...), k=(int, ...), **coords("query tile"),
                              **scaled, **searched, **filters)
    vector_query = create_model("VectorQuery", __doc__="The vector search's settings.",
                                variable=(str, ...), k=(int, ...),
                                dim=(int, Field(description="dimension of the vector")),
                                **searched, **filters)
    marked = create_model("MarkedTile", __doc__="A tile marked in a refinement.",
                          **coords("tile"), **scaled)
    refine_query = create_model(
        "RefineQuery", __doc__="The marked tiles and the refinement's settings.",
        variable=(str, ...), k=(int, ...), positive=(list[marked], ...),  # type: ignore[valid-type]
        negative=(list[marked], ...),  # type: ignore[valid-type]
        negative_weight=(float, Field(description="Rocchio weight of the negatives")),
        **searched, **filters)

    class TileResult(BaseModel):
        """A tile query and its neighbours, nearest first."""

        query: tile_query  # type: ignore[valid-type]
        neighbours: list[neighbour]  # type: ignore[valid-type]

    class VectorResult(BaseModel):
        """A vector query and its neighbours, nearest first."""

        query: vector_query  # type: ignore[valid-type]
        neighbours: list[neighbour]  # type: ignore[valid-type]

    class RefineResult(BaseModel):
        """The marked tiles and the new ranking (marked tiles left out unless asked)."""

        query: refine_query  # type: ignore[valid-type]
        neighbours: list[neighbour]  # type: ignore[valid-type]

    class Health(BaseModel):
        """The service is up; what it serves."""

        status: str = Field(description="'ok'")
        cube: str
        variable: str = Field(description="embedding variable searched")
        coordinates: list[str] = Field(description="names of the query coordinates")
        tiles: list[int] = Field(description="embedding grid (tile_y, tile_x[, time])")
        times: list[str] | None = Field(description="dates of the time steps")
        generation: int = Field(description="index generation served (manifest)")
        index: str = Field(description="GENERATION-SHA16 of the index served (as the "
                           f"{INDEX_HEADER} header of answers)")
        reloads: int = Field(description="indexes swapped in since start")
        reload_error: str | None = Field(description="why the last reload failed (the "
                                         "previous index is still served)")
        manifest: Manifest = Field(description="the index manifest (lineage)")

    class Filtered(BaseModel):
        """``k`` and the filters of a search body."""

        model_config = ConfigDict(extra="forbid")

        k: int = Field(10, ge=1, description="number of neighbours (at most the indexed "
                       "tiles)")
        bbox: list[float] | None = Field(None, min_length=4, max_length=4,
                                         description="keep tiles whose centre is in W, S, "
                                         "E, N")
        start: str | None = Field(None, description="keep tiles from this time")
        end: str | None = Field(None, description="keep tiles up to this time")
        scales: str | list[int] | None = Field(None, description="scales (tile sizes in "
                                               "cells) searched: 'all', '8,16' or [8, 16]")

    class VectorSearch(Filtered):
        """Body of ``POST /search/vector``."""

        vector: list[float] = Field(min_length=1, max_length=MAX_DIM,
                                    description="embedding, as many values as the index "
                                    f"dimension ({engine.dim} here)")

    fin = {"default": None, "allow_inf_nan": False}

    class TileMark(BaseModel):
        """A tile marked in a refinement: a point in it, and its scale and time."""

        model_config = ConfigDict(extra="forbid")

        lat: float | None = Field(**fin, description=f"latitude (the grid's {ny}; same as y)")
        lon: float | None = Field(**fin, description=f"longitude (the grid's {nx}; same as x)")
        y: float | None = Field(**fin, description=f"{ny} in the grid's units (same as lat)")
        x: float | None = Field(**fin, description=f"{nx} in the grid's units (same as lon)")
        scale: int | None = Field(None, ge=1, description="tile size in cells (default: "
                                  "the finest scale indexed)")
        time: str | None = Field(None, description="date of the tile (nearest time step); "
                                 "required when embeddings vary in time")

    class RefineSearch(Filtered):
        """Body of ``POST /search/refine``."""

        positive: list[TileMark] = Field(max_length=MAX_TILES, description="tiles like "
                                         "those wanted (at least one; usually the query "
                                         "tile)")
        negative: list[TileMark] = Field(default_factory=list, max_length=MAX_TILES,
                                         description="tiles not wanted")
        negative_weight: float = Field(NEGATIVE_WEIGHT, ge=0, allow_inf_nan=False,
                                       description="Rocchio weight of the negatives' mean")
        exclude_marked: bool = Field(True, description="leave the marked tiles out of the "
                                     "answer")

    return {"TileResult": TileResult, "VectorResult": VectorResult, "Health": Health,
            "VectorSearch": VectorSearch, "RefineResult": RefineResult,
            "RefineSearch": RefineSearch}


def _document_user_errors(app: Any) -> None:
    """Make the OpenAPI document say what a 422 answer holds.

    FastAPI documents ``detail`` as its list of validation errors; esdc's own checks
    (a point outside the grid, a vector of the wrong dimension, ...) answer 422 with
    ``detail`` a message string. The document gives both, so clients generated from
    it (and schemathesis, tests/reliability/test_openapi_fuzz.py) accept both.
    """
    make = app.openapi

    def openapi() -> dict[str, Any]:
        doc = make()
        err = doc.get("components", {}).get("schemas", {}).get("HTTPValidationError")
        detail = (err or {}).get("properties", {}).get("detail")
        if detail is not None and "anyOf" not in detail:
            listed = {k: v for k, v in detail.items() if k != "title"}
            err["properties"]["detail"] = {
                "title": "Detail",
                "anyOf": [listed, {"type": "string", "description": "what is wrong with the "
                                   "request (esdc's message)"}]}
        return doc

    app.openapi = openapi


def create_app(cube: str | Path, variable: str | None = None,
               watch: float | None = 1.0, version: str | None = None) -> Any:
    """The FastAPI application serving the search of one cube's embeddings.

    Parameters
    ----------
    cube : str or path-like
        Cube with embeddings and an index (``esdc embed``, ``esdc index``).
    variable : str, optional
        Embedding variable (default: the smallest tile size).
    watch : float or None
        Seconds between checks for a rebuilt index while the app runs (its lifespan:
        uvicorn, or ``with TestClient(app)``); None or 0: never. ``app.state.watcher``
        (an :class:`IndexWatcher`) can also be asked to ``check()`` at any time.
    version : str, optional
        Version of a versioned cube (a tag or snapshot id) to serve: it must be the one
        the index was built from; a rebuilt index of another version is not swapped in.

    Returns
    -------
    fastapi.FastAPI
        With the :class:`~esdc.search.query.SearchEngine` in ``app.state.engine``
        and the :class:`IndexWatcher` in ``app.state.watcher``.

    Raises
    ------
    CubeNotFoundError
        If there is no cube at ``cube``.
    SearchIndexError
        If the cube has no embeddings or index, the index's lineage does not match, or
        ``version`` is not the version indexed (raised here, before anything is served).
    StorageError
        If ``version`` names nothing, or the cube has no versions.
    EsdcError
        If FastAPI is missing.
    """
    fastapi = _fastapi()
    from fastapi import Depends, FastAPI, Query, Request
    from fastapi.responses import JSONResponse, Response

    engine = load_engine(cube, variable, version)
    m = _models(engine)
    TileResult, VectorResult, Health, VectorSearch = (m["TileResult"], m["VectorResult"],
                                                     m["Health"], m["VectorSearch"])
    RefineResult, RefineSearch = m["RefineResult"], m["RefineSearch"]
    ny, nx = engine.names

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        task = asyncio.create_task(app.state.watcher.run()) if watch else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(title="esdc search", lifespan=lifespan,
                  version=_version(),
                  description=f"Reverse image search over `{engine.variable}` of "
                  f"`{engine.cube.name}`: tiles like this one. Distances are cosine "
                  "distances of centred, L2-normalised embeddings.")
    app.state.engine = engine
    _document_user_errors(app)
    app.state.watcher = IndexWatcher(app, watch or 1.0, version)

    @app.exception_handler(EsdcError)
    async def _user_error(request: Request, exc: EsdcError) -> JSONResponse:
        eng = getattr(request.state, "engine", None)
        return JSONResponse(status_code=422, content={"detail": str(exc)},
                            headers=None if eng is None else {INDEX_HEADER: eng.identity})

    async def get_engine(request: Request, response: Response) -> SearchEngine:
        """The engine that answers this request: ONE reference, taken when it starts."""
        eng = request.app.state.engine
        request.state.engine = eng
        response.headers[INDEX_HEADER] = eng.identity
        return eng

    Engine = Annotated[SearchEngine, Depends(get_engine)]

    @app.get("/health", response_model=Health, summary="Service status and index manifest")
    async def health(eng: Engine, request: Request) -> dict[str, Any]:
        """Status, what is served (index generation, reloads), and the index manifest."""
        watcher = request.app.state.watcher
        return {"status": "ok", "cube": str(eng.cube), "variable": eng.variable,
                "coordinates": list(eng.names), "tiles": [int(s) for s in eng.shape],
                "times": None if eng.times is None else [str(t.date()) for t in eng.times],
                "generation": eng.manifest.generation, "index": eng.identity,
                "reloads": watcher.reloads, "reload_error": watcher.error,
                "manifest": eng.served_manifest()}

    def _filters(bbox: Any, start: str | None, end: str | None) -> dict[str, Any]:
        return {"bbox": None if bbox is None else list(bbox), "start": start, "end": end}

    fin = {"allow_inf_nan": False}

    @app.get("/search/tile", response_model=TileResult,
             summary="Tiles like the one at a point")
    async def search_tile(
        eng: Engine,
        lat: Annotated[float | None, Query(description="latitude of the query point "
                                           f"(the grid's {ny}; same as y)", **fin)] = None,
        lon: Annotated[float | None, Query(description="longitude of the query point "
                                           f"(the grid's {nx}; same as x)", **fin)] = None,
        y: Annotated[float | None, Query(description=f"{ny} of the query point in the "
                                         "grid's units (projected grids; same as lat)",
                                         **fin)] = None,
        x: Annotated[float | None, Query(description=f"{nx} of the query point in the "
                                         "grid's units (same as lon)", **fin)] = None,
        time: Annotated[str | None, Query(description="time of the query tile (nearest "
                                          "step); required when embeddings vary in time")]
        = None,
        k: Annotated[int, Query(ge=1, description="number of neighbours")] = 10,
        bbox: Annotated[str | None, Query(description="keep neighbours whose centre is in "
                                          "W,S,E,N", examples=["-10,35,30,60"])] = None,
        start: Annotated[str | None, Query(description="keep neighbours from this time")]
        = None,
        end: Annotated[str | None, Query(description="keep neighbours up to this time")]
        = None,
        scale: Annotated[int | None, Query(ge=1, description="the query tile's size in "
                                           "cells (default: the finest indexed)")] = None,
        scales: Annotated[str | None, Query(description="scales of the neighbours: 'all' "
                                            "or a comma list of tile sizes (default: "
                                            "scale)", examples=["all", "8,16"])] = None,
    ) -> dict[str, Any]:
        """Neighbours of the tile containing the point (the tile itself first)."""
        py, px = _pick(eng.names, {"lat": lat, "lon": lon, "y": y, "x": x})
        box = parse_bbox(bbox)
        _one_thread()
        result = eng.search_tile(py, px, time, k, box, (start, end), scale=scale,
                                 scales=scales).to_json()
        result["query"].update(_filters(box, start, end))
        return result

    @app.post("/search/vector", response_model=VectorResult,
              summary="Tiles nearest to an embedding vector")
    async def search_vector(body: VectorSearch, eng: Engine) -> dict[str, Any]:  # type: ignore[valid-type]
        """Neighbours of an embedding (normalised like the indexed vectors)."""
        b: Any = body
        box = parse_bbox(b.bbox)
        query = {"variable": eng.variable, "k": b.k, "dim": len(b.vector),
                 "scales": [s.scale for s in eng.targets(b.scales)],
                 **_filters(box, b.start, b.end)}
        _one_thread()
        return eng.search_vector(np.asarray(b.vector, dtype="float32"), b.k, box,
                                 (b.start, b.end), query, scales=b.scales).to_json()

    @app.post("/search/refine", response_model=RefineResult,
              summary="More like these, not like those (relevance feedback)")
    async def search_refine(body: RefineSearch, eng: Engine) -> dict[str, Any]:  # type: ignore[valid-type]
        """A new ranking from marked tiles (Rocchio on the embeddings), judged ones left out."""
        b: Any = body
        box = parse_bbox(b.bbox)
        pos, neg = ([t.model_dump(exclude_none=True) for t in tiles]
                    for tiles in (b.positive, b.negative))
        _one_thread()
        result = eng.refine(pos, neg, b.k, box, (b.start, b.end), b.negative_weight,
                            b.exclude_marked, scales=b.scales).to_json()
        result["query"].update(_filters(box, b.start, b.end))
        return result

    @app.get("/tiles/{tile_y}/{tile_x}.png", response_class=Response,
             summary="A tile's pixels as PNG",
             responses={200: {"content": {"image/png": {}}, "description": "PNG image"}})
    def tile_png(
        eng: Engine,
        tile_y: Annotated[int, fastapi.Path(ge=0, description="row of the tile")],
        tile_x: Annotated[int, fastapi.Path(ge=0, description="column of the tile")],
        t: Annotated[int | None, Query(ge=0, description="time step (default 0)")] = None,
        scale: Annotated[int | None, Query(ge=1, description="tile size in cells: the "
                                           "embedding grid of tile_y, tile_x (default: "
                                           "the finest indexed)")] = None,
    ) -> Response:
        """The tile's pixels: RGB (Blue Marble) or the first input variable in grey."""
        return Response(content=eng.tile_png(tile_y, tile_x, t, scale), media_type="image/png",
                        headers={INDEX_HEADER: eng.identity})

    mount_page(app)  # GET /: the search page (esdc.search.page)
    return app


def run_app(app: Any, host: str = "127.0.0.1", port: int = 8000, access_log: bool = False,
            log_level: str = "info") -> None:
    """Serve an app made by :func:`create_app` with uvicorn until interrupted (SIGINT/SIGTERM).

    Parameters
    ----------
    app : fastapi.FastAPI
        The application.
    host : str
        Interface to bind (``127.0.0.1``: this machine only).
    port : int
        TCP port.
    access_log : bool
        Log every request (costs latency under load).
    log_level : str
        uvicorn's log level.

    Raises
    ------
    EsdcError
        If uvicorn is not installed.
    """
    try:
        import uvicorn
    except ImportError:
        raise EsdcError("the HTTP API needs uvicorn: pip install 'esdc[search]'.") from None
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)


def serve(cube: str | Path, variable: str | None = None, host: str = "127.0.0.1",
          port: int = 8000, access_log: bool = False, watch: float | None = 1.0) -> None:
    """Load the search of ``cube`` and serve it over HTTP (what ``esdc serve`` does).

    Parameters
    ----------
    cube : str or path-like
        Cube with embeddings and an index.
    variable : str, optional
        Embedding variable.
    host : str
        Interface to bind.
    port : int
        TCP port.
    access_log : bool
        Log every request.
    watch : float or None
        Seconds between checks for a rebuilt index (None or 0: never).

    Raises
    ------
    EsdcError
        If FastAPI/uvicorn are missing or the search cannot be loaded.
    """
    run_app(create_app(cube, variable, watch), host, port, access_log=access_log)
