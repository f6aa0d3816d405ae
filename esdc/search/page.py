"""The search page of ``esdc serve``: click a place, see the tiles that look like it.

``esdc serve cubes/earth.zarr`` serves, besides the JSON API of :mod:`esdc.search.http`,
a small self-contained web page (plain HTML, CSS and JavaScript from
``esdc/search/static/``; nothing is loaded from another site) at
``http://127.0.0.1:8000/``:

- an overview map of the embedded part of the cube (Blue Marble RGB when the cube has
  it, else the first input variable of the embeddings in grey levels), with the grid's
  coordinates on its axes and under the cursor;
- clicking the map, or entering a point in the form (``lat``/``lon`` for geographic
  grids, ``y``/``x`` in the grid's units for projected ones; the names come from the
  cube), asks ``GET /search/tile`` for the ``k`` nearest tiles and shows the query tile
  and its neighbours as thumbnails (``GET /tiles/{tile_y}/{tile_x}.png``) with their
  coordinates, time and cosine distance, and as numbered markers on the map;
- for embeddings that vary in time a time step is chosen in a list, and the map shows
  that step;
- a rejected query (``422``: a point outside the grid, ``k`` out of range) is shown as
  a message on the page.

Routes added by :func:`mount_page`:

``GET /``
    The page.
``GET /static/{file}``
    Its script and style sheet.
``GET /overview.json``
    What the page needs to place clicks and markers: the coordinate names and units,
    the tile grid and each tile's bounds (in row/column order, as drawn), the size of
    the overview image and how many cells one of its pixels spans, the time steps.
``GET /overview.png?t=``
    The overview image: one pixel per ``step x step`` cells (every ``step``-th cell,
    at most :data:`MAX_SIDE` pixels a side), rows and columns in the cube's order
    (north up), covering exactly the embedded cells.

The page computes the query point of a click from the clicked cell: the centre of
that cell, interpolated between the bounds of the tile containing it, so a click
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

__all__ = ["MAX_SIDE", "STATIC", "mount_page", "overview_image", "overview_info"]

#: Longest side of the overview image, in pixels.
MAX_SIDE = 1024
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
    ydim, xdim = _tile_dims(engine)
    shown = ("RGB (" + ", ".join(RGB_BANDS) + ")" if all(v in engine.ds for v in RGB_BANDS)
             else str(engine.attrs[ATTR_INPUTS][0]))
    return {
        "cube": engine.cube.name, "variable": engine.variable,
        "coordinates": [str(n) for n in engine.names],
        "units": [str(engine.ds[ydim].attrs.get("units", "")) if ydim in engine.ds else "",
                  str(engine.ds[xdim].attrs.get("units", "")) if xdim in engine.ds else ""],
        "tiles": [int(engine.shape[0]), int(engine.shape[1])], "tile_size": size,
        "y_bounds": np.asarray(engine.ybounds, dtype=float).tolist(),
        "x_bounds": np.asarray(engine.xbounds, dtype=float).tolist(),
        "cells": [rows, cols], "step": step,
        "height": -(-rows // step), "width": -(-cols // step),
        "times": None if engine.times is None else [str(t.date()) for t in engine.times],
        "shown": shown,
        "index": {"kind": engine.manifest.kind, "count": int(engine.manifest.count)},
    }


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
    from fastapi import Query, Request
    from fastapi.responses import FileResponse, Response
    from fastapi.staticfiles import StaticFiles

    index_html = STATIC / "index.html"
    if not index_html.is_file():
        raise EsdcError(f"the search page is missing from the installation ({index_html}); "
                        "reinstall esdc.")
    # PNG bytes per engine (a rebuilt index swaps the engine) and time step.
    cache: weakref.WeakKeyDictionary[Any, dict[int, bytes]] = weakref.WeakKeyDictionary()
    lock = threading.Lock()

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(index_html, media_type="text/html")

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
