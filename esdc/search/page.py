"""The search page of ``esdc serve``: a slippy map of the cube; click a place, see tiles like it.

``esdc serve cubes/earth.zarr`` serves, besides the JSON API of :mod:`esdc.search.http`,
a self-contained web page (HTML, CSS and JavaScript from ``esdc/search/static/`` and the
Leaflet files vendored under ``static/vendor/leaflet/``, rebuilt by ``web/build.sh``;
nothing is loaded from another site) at ``http://127.0.0.1:8000/``:

- a Leaflet map (zoom, pan) over XYZ tiles of the cube's variables
  (:mod:`esdc.search.xyz`): plate carrée for geographic grids (Earth, Moon), cell
  (pixel) coordinates for the others (the Sun's helioprojective grid, projected grids);
  a layer selector (``rgb`` and every variable on the grid), a time slider (the cube's
  time steps) and a scale selector (the embedding scales; default the finest);
- clicking the map asks ``GET /search/tile`` for the ``k`` nearest tiles of the point;
  a box drawn with the mouse (shift-drag, or the *Draw box* button) filters them
  (``bbox``); neighbours are outlined on the map (each result's ``bounds``) and listed
  with thumbnails (``GET /tiles/...png``), each with *more like this* / *not this* tick
  boxes; *Refine* sends the ticked tiles to ``POST /search/refine`` and shows the new
  ranking;
- a rejected query (``422``) is shown as a message on the page.

The page of earlier versions (one static overview image, click to search) is at
``GET /overview``.

Routes added by :func:`mount_page`:

``GET /``
    The map page.
``GET /overview``
    The overview page.
``GET /static/{file}``
    The pages' scripts, style sheets and vendored Leaflet.
``GET /map.json``
    The map's set-up (:meth:`esdc.search.xyz.MapRenderer.info`) plus what the search
    needs: coordinate names, the tile grid, its bounds, scales, index.
``GET /map/{variable}/{z}/{x}/{y}.png?time=``
    An XYZ tile (256 x 256 RGBA PNG) of a layer (``rgb`` or a variable). An unknown
    layer or a bad ``time`` is answered ``422``; a tile outside the pyramid (zoom
    outside ``min_zoom .. max_zoom`` of ``/map.json``, ``x``/``y`` outside the tiles
    of that zoom) ``404``; a tile of the pyramid outside the cube is transparent
    (``200``).
``GET /map/{variable}/legend.json``
    How a layer is drawn: colour map and value range (:meth:`~esdc.search.xyz.MapRenderer.legend`).
``GET /overview.json``
    What the overview page needs to place clicks and markers: the coordinate names and
    units, the tile grid and each tile's bounds (in row/column order, as drawn), the size
    of the overview image and how many cells one of its pixels spans, the time steps.
``GET /overview.png?t=``
    The overview image: one pixel per ``step x step`` cells (every ``step``-th cell,
    at most :data:`MAX_SIDE` pixels a side), rows and columns in the cube's order
    (north up), covering exactly the embedded cells.

The overview page computes the query point of a click from the clicked cell: the centre
of that cell, interpolated between the bounds of the tile containing it, so a click
always asks for the tile under the cursor.
"""

# No ``from __future__ import annotations``: FastAPI reads the handlers' annotations,
# which name classes imported inside mount_page.
import math
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from esdc.conventions import ATTR_INPUTS, ATTR_TILE_DIMS, ATTR_TILE_SIZE, SPATIAL_DIMS
from esdc.errors import EsdcError
from esdc.search.query import SearchEngine
from esdc.search.render import RGB_BANDS, display_pixels, png_bytes
from esdc.search.xyz import MapRenderer, TileRange

__all__ = ["LAYER_PATTERN", "MAX_SIDE", "STATIC", "map_info", "mount_page", "overview_image",
           "overview_info", "renderer"]

#: Longest side of the overview image, in pixels.
MAX_SIDE = 1024
#: What a map layer's name may be (a CF variable name: letters, digits, ``_``, ``-``, ``.``).
LAYER_PATTERN = r"^[A-Za-z0-9_.\-]+$"
#: Folder of the page's files (package data).
STATIC = Path(__file__).with_name("static")


def _extent(engine: SearchEngine) -> tuple[int, int, int, int]:
    """``(tile size, embedded rows, embedded columns, step)``."""
    size = int(engine.attrs[ATTR_TILE_SIZE])
    rows, cols = int(engine.shape[0]) * size, int(engine.shape[1]) * size
    step = max(1, math.ceil(max(rows, cols) / MAX_SIDE))
    return size, rows, cols, step


def _tile_dims(engine: SearchEngine) -> tuple[str, str]:
    ydim, xdim = (str(d) for d in engine.attrs.get(ATTR_TILE_DIMS, SPATIAL_DIMS[0]))
    return ydim, xdim


def overview_info(engine: SearchEngine) -> dict[str, Any]:
    """What the page needs to map clicks to coordinates and tiles to the image.

    Parameters
    ----------
    engine : esdc.search.query.SearchEngine
        The search served.

    Returns
    -------
    dict
        ``coordinates`` (names of the query coordinates, ``[lat, lon]`` or ``[y, x]``),
        ``units``, ``tiles`` ``[tile rows, tile columns]``, ``tile_size`` (cells),
        ``y_bounds``/``x_bounds`` (per tile row/column, ``[start, end]`` in the order the
        rows/columns are drawn, in the grid's units), ``cells`` (embedded ``[rows,
        columns]``), ``step`` (cells per overview pixel), ``width``/``height`` (overview
        pixels), ``times`` (dates of the time steps or None), ``shown`` (what the image
        shows), ``cube``, ``variable``, ``index`` (kind and count of the index).
    """
    size, rows, cols, step = _extent(engine)
    shown = ("RGB (" + ", ".join(RGB_BANDS) + ")" if all(v in engine.ds for v in RGB_BANDS)
             else str(engine.attrs[ATTR_INPUTS][0]))
    return {
        **_searched(engine),
        "y_bounds": np.asarray(engine.ybounds, dtype=float).tolist(),
        "x_bounds": np.asarray(engine.xbounds, dtype=float).tolist(),
        "cells": [rows, cols], "step": step,
        "height": -(-rows // step), "width": -(-cols // step),
        "times": None if engine.times is None else [str(t.date()) for t in engine.times],
        "shown": shown,
    }


def _searched(engine: SearchEngine) -> dict[str, Any]:
    """``cube``, ``variable``, ``coordinates``, ``units``, ``tiles``, ``tile_size``, ``index``."""
    ydim, xdim = _tile_dims(engine)
    return {"cube": engine.cube.name, "variable": engine.variable,
            "coordinates": [str(n) for n in engine.names],
            "units": [str(engine.ds[d].attrs.get("units", "")) if d in engine.ds else ""
                      for d in (ydim, xdim)],
            "tiles": [int(engine.shape[0]), int(engine.shape[1])],
            "tile_size": int(engine.attrs[ATTR_TILE_SIZE]),
            "index": {"kind": engine.manifest.kind, "count": int(engine.manifest.count)}}


def overview_image(engine: SearchEngine, t: int | None = None) -> np.ndarray:
    """Downsampled pixels of the embedded part of the cube.

    Parameters
    ----------
    engine : esdc.search.query.SearchEngine
        The search served (its ``ds`` is read: every ``step``-th cell, see
        :func:`overview_info`).
    t : int, optional
        Time step of time-varying inputs (default 0).

    Returns
    -------
    numpy.ndarray
        ``(height, width, 3)`` RGB in [0, 1] when the cube has the Blue Marble channels,
        else ``(height, width)`` values of the first input variable of the embeddings.

    Raises
    ------
    SearchIndexError
        If ``t`` is not a time step of the cube.
    """
    _, rows, cols, step = _extent(engine)
    engine.check_time_step(t)
    ydim, xdim = _tile_dims(engine)
    sel = {ydim: slice(0, rows, step), xdim: slice(0, cols, step)}
    return display_pixels(engine.ds, engine.attrs[ATTR_INPUTS], sel, t)


#: Map tiles drawn at once (threads): more only fight over the GIL, delaying cached tiles.
RENDER_THREADS = 2

_renderers: weakref.WeakKeyDictionary[Any, MapRenderer] = weakref.WeakKeyDictionary()
_renderers_lock = threading.Lock()


def renderer(engine: SearchEngine) -> MapRenderer:
    """The :class:`~esdc.search.xyz.MapRenderer` of an engine's cube (one per engine).

    A rebuilt index swaps the engine (:class:`~esdc.search.http.IndexWatcher`), and with
    it the renderer and its tile cache. A new renderer colours the chunks of each layer's
    first time step and encodes its zoomed-out tiles in a background thread
    (:meth:`~esdc.search.xyz.MapRenderer.warm`; ``ready`` in ``GET /map.json`` when done).

    Raises
    ------
    SearchIndexError
        If the cube has no variable on its grid.
    """
    with _renderers_lock:
        got = _renderers.get(engine)
        if got is None:
            ydim, xdim = _tile_dims(engine)
            got = _renderers[engine] = MapRenderer(engine.ds, (ydim, xdim),
                                                   str(engine.attrs[ATTR_INPUTS][0]))
            # in the background: the layers' chunks coloured, the zoomed-out tiles encoded
            threading.Thread(target=got.warm, name="esdc-map-prepare", daemon=True).start()
        return got


def map_info(engine: SearchEngine) -> dict[str, Any]:
    """What the map page needs: the map's set-up and the search's geometry.

    Parameters
    ----------
    engine : esdc.search.query.SearchEngine
        The search served.

    Returns
    -------
    dict
        :meth:`esdc.search.xyz.MapRenderer.info` plus ``cube``, ``variable``,
        ``coordinates`` (query coordinate names), ``units``, ``tiles`` (embedding tile
        grid), ``tile_size`` (cells), ``scales`` (tile sizes of the cube's embeddings,
        finest first), ``embedded`` (cells covered by the tiles, ``[rows, columns]``) and
        ``index`` (kind and count).
    """
    size, rows, cols, _ = _extent(engine)
    return {**renderer(engine).info(), **_searched(engine),
            "scales": sorted(int(s) for s in getattr(engine, "scales", {size: None})),
            "embedded": [rows, cols]}


def mount_page(app: Any) -> None:
    """Add the search page and its routes to an app made by :func:`~esdc.search.http.create_app`.

    Parameters
    ----------
    app : fastapi.FastAPI
        The application; its ``state.engine`` (a
        :class:`~esdc.search.query.SearchEngine`) is read at each request.

    Raises
    ------
    EsdcError
        If the page's files are missing from the installation.
    """
    import anyio
    import anyio.to_thread
    from fastapi import Path as PathParam
    from fastapi import Query, Request
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles

    index_html = STATIC / "index.html"
    if not index_html.is_file():
        raise EsdcError(f"the search page is missing from the installation ({index_html}); "
                        "reinstall esdc.")
    # PNG bytes per engine (a rebuilt index swaps the engine) and time step.
    cache: weakref.WeakKeyDictionary[Any, dict[int, bytes]] = weakref.WeakKeyDictionary()
    lock = threading.Lock()
    limiters: list[Any] = []  # made in the event loop, by the first tile drawn

    def render_limiter() -> Any:
        """The limiter of map tiles drawn at once (:data:`RENDER_THREADS`)."""
        if not limiters:
            limiters.append(anyio.CapacityLimiter(RENDER_THREADS))
        return limiters[0]

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(index_html, media_type="text/html")

    @app.get("/overview", include_in_schema=False)
    async def overview_page() -> FileResponse:
        return FileResponse(STATIC / "overview.html", media_type="text/html")

    @app.get("/map.json", summary="Set-up of the search page's map")
    def map_json(request: Request) -> dict[str, Any]:
        """Tile scheme, zoom range, layers, times, and the search's geometry and scales."""
        return map_info(request.app.state.engine)

    @app.get("/map/{variable}/legend.json", summary="How a map layer is drawn")
    def map_legend(request: Request,
                   variable: str = PathParam(description="layer: rgb or a variable",
                                             pattern=LAYER_PATTERN, max_length=200)
                   ) -> dict[str, Any]:
        """Kind, colour map, value range (``vmin``/``vmax``), units of a layer."""
        return renderer(request.app.state.engine).legend(variable)

    @app.get("/map/{variable}/{z}/{x}/{y}.png", response_class=Response,
             summary="An XYZ map tile of a layer (256 x 256 PNG)",
             responses={200: {"content": {"image/png": {}}, "description": "PNG image"},
                        404: {"description": "tile outside the pyramid",
                              "content": {"application/json": {"schema": {
                                  "type": "object", "required": ["detail"],
                                  "properties": {"detail": {"type": "string"}}}}}}})
    async def map_tile(
        request: Request,
        variable: str = PathParam(description="layer: rgb or a variable of the grid",
                                  pattern=LAYER_PATTERN, max_length=200),
        z: int = PathParam(description="zoom level (see /map.json)"),
        x: int = PathParam(description="tile column"),
        y: int = PathParam(description="tile row"),
        time: str | None = Query(None, description="date of the time step shown (nearest; "
                                 "default the first)"),
    ) -> Response:
        """Nearest-neighbour pixels of the cube; transparent outside it or on missing cells."""
        try:
            # a cached tile is answered in the event loop; one to draw in a worker thread
            maps = renderer(request.app.state.engine)
            data = maps.cached(variable, z, x, y, time)
            if data is None:
                data = await anyio.to_thread.run_sync(maps.tile, variable, z, x, y, time,
                                                      limiter=render_limiter())
        except TileRange as exc:
            return JSONResponse(status_code=404, content={"detail": str(exc)})
        return Response(content=data, media_type="image/png",
                        headers={"Cache-Control": "max-age=60"})

    @app.get("/overview.json", summary="Geometry of the search page's overview map")
    async def overview_json(request: Request) -> dict[str, Any]:
        """Coordinate names and units, tile bounds, overview image size, time steps."""
        return overview_info(request.app.state.engine)

    @app.get("/overview.png", response_class=Response,
             summary="Overview image of the embedded cells",
             responses={200: {"content": {"image/png": {}}, "description": "PNG image"}})
    def overview_png(
        request: Request,
        t: int | None = Query(None, ge=0, description="time step (default 0)"),
    ) -> Response:
        """Every ``step``-th cell of the RGB or first input variable, north up."""
        engine = request.app.state.engine
        with lock:
            images = cache.setdefault(engine, {})
            data = images.get(t or 0)
            if data is None:
                data = png_bytes(overview_image(engine, t))
                if len(images) >= 16:  # a few time steps; the oldest goes
                    images.pop(next(iter(images)))
                images[t or 0] = data
        return Response(content=data, media_type="image/png")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
