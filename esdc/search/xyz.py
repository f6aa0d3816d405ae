"""XYZ map tiles of a cube's variables: the slippy map of the search page.

A :class:`MapRenderer` draws 256 x 256 pixel PNG tiles ``(z, x, y)`` of one layer of a
cube, for Leaflet's tile layers (``GET /map/{variable}/{z}/{x}/{y}.png``,
:mod:`esdc.search.page`):

Tile schemes (:attr:`MapRenderer.crs`)
    ``"EPSG:4326"`` for geographic grids (``lat``/``lon``: Earth and Moon): plate
    carrée as Leaflet's ``L.CRS.EPSG4326``: at zoom ``z`` the world is ``2 ** (z + 1)``
    tiles wide (``x``, from 180 W eastwards) and ``2 ** z`` tiles high (``y``, from
    90 N southwards), ``180 / 256 / 2 ** z`` degrees a pixel; longitudes wrap, so a
    cube in 0 .. 360 E is drawn at its place too. ``"pixel"`` for every other grid (the
    Sun's helioprojective arcseconds, projected metres): Leaflet's ``L.CRS.Simple``
    over cell indices, map ``lng`` = column, ``lat`` = ``-row`` (row 0, the cube's
    first row, on top); at zoom ``z`` a pixel is ``2 ** -z`` cells (zoom 0: one cell a
    pixel; negative zooms zoom out), tile ``x`` covers columns ``[256 x, 256 (x + 1))
    2 ** -z`` and tile ``y`` rows likewise.
Layers (:attr:`MapRenderer.layers`)
    ``rgb`` (the Blue Marble channels :data:`~esdc.search.render.RGB_BANDS` as true
    colour, values clipped to 0 .. 1) when the cube has them, then every variable on
    the cube's cell grid (dims ``([time,] y, x)``), drawn with a matplotlib colour map:
    the variable's ``colormap`` (or ``cmap``) attribute when it names one, else
    ``viridis`` (the choice of :func:`esdc.plot.quicklook`); flag variables
    (``flag_values``) with ``tab10``, one colour per flag. The colour scale is fixed per
    layer (so tiles match): ``valid_range`` or ``valid_min``/``valid_max`` when given,
    else the 2nd .. 98th percentile of a subsample (at most 512 x 512 cells) of the
    first time step.
Pixels
    Nearest neighbour: each pixel shows the cell containing its centre; a pixel outside
    the cube, or on a missing (NaN) cell, is transparent. Cells are read and coloured a
    Zarr chunk at a time, only the chunks a tile covers; coloured chunks (RGBA) are kept
    (:data:`CACHE_BYTES`, least recently used dropped first), so a later tile over them
    is a gather, no read. PNGs are encoded by :func:`esdc.search.render.encode_png` (rows
    "Up"-filtered, zlib level 1: half a millisecond; RGB when no pixel is transparent,
    else RGBA) and kept too. Threads
    asking for a chunk or tile being made wait for it instead of making it again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from esdc.conventions import SPATIAL_DIMS, TIME_DIM
from esdc.errors import SearchIndexError
from esdc.search.render import RGB_BANDS, encode_png

__all__ = ["CACHE_BYTES", "RGB_LAYER", "TILE", "Layer", "MapRenderer", "TileRange"]

#: Tile side in pixels.
TILE = 256
#: Name of the true-colour layer (Blue Marble channels).
RGB_LAYER = "rgb"
#: Bytes of PNG tiles kept per renderer, and bytes of coloured chunks (RGBA), each
#: (least recently used dropped first).
CACHE_BYTES = 256 * 2**20
#: Cells a side of a colour block when the variable is not chunked (Zarr chunks otherwise).
BLOCK = 256
#: Cells a side of the subsample that sets a layer's colour scale.
SAMPLE_SIDE = 512
#: Colour map of variables without a ``colormap`` attribute (as esdc.plot.quicklook).
DEFAULT_CMAP = "viridis"
#: Zoom levels served beyond the one showing a cell per pixel (nearest neighbour).
OVERZOOM = 4


class TileRange(SearchIndexError):
    """A tile ``(z, x, y)`` outside the tile pyramid served (HTTP 404)."""


@dataclass(frozen=True)
class Layer:
    """One layer of the map.

    Attributes
    ----------
    name : str
        ``"rgb"`` or the variable's name (the ``{variable}`` of the tile URL).
    variables : tuple of str
        The cube variables read (three for ``rgb``).
    kind : str
        ``"rgb"``, ``"continuous"`` or ``"flags"``.
    cmap : str or None
        matplotlib colour map (None for ``rgb``).
    long_name, units : str
        From the variable's attributes.
    has_time : bool
        Whether the layer varies in time.
    """

    name: str
    variables: tuple[str, ...]
    kind: str
    cmap: str | None
    long_name: str
    units: str
    has_time: bool


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges ``(n + 1,)`` of centres ``(n,)`` (midpoints, outer cells mirrored)."""
    c = np.asarray(centres, dtype="float64")
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])


def _cell_index(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the cell containing each value (``-1`` outside), edges in either order."""
    n = edges.size - 1
    if edges[-1] < edges[0]:
        i = np.searchsorted(edges[::-1], values, side="left")
        idx = n - i
    else:
        idx = np.searchsorted(edges, values, side="right") - 1
    lo, hi = min(edges[0], edges[-1]), max(edges[0], edges[-1])
    ok = (values >= lo) & (values < hi) & (idx >= 0) & (idx < n)
    return np.where(ok, idx, -1)


class _Cache:
    """A thread-safe LRU cache bounded in bytes; each value is made once, by one thread.

    Threads asking for a value that another thread is making wait for it rather than
    making it again (16 map clients often ask for the same chunk at once).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.held = 0
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._making: dict[Any, threading.Event] = {}
        self._lock = threading.Lock()

    def peek(self, key: Any) -> Any:
        """The value of ``key`` if cached, else None (never waits)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
                done = self._making.get(key)
                if done is None:
                    done = self._making[key] = threading.Event()
                    break
            done.wait()  # made by another thread: now cached (or failed: try again)
        try:
            value = make()
            with self._lock:
                self._items[key] = value
                self.held += _nbytes(value)
                while self.held > self.max_bytes and len(self._items) > 1:
                    _, old = self._items.popitem(last=False)
                    self.held -= _nbytes(old)
            return value
        finally:
            with self._lock:
                del self._making[key]
            done.set()


def _nbytes(value: Any) -> int:
    return value.nbytes if isinstance(value, np.ndarray) else len(value)


def _span(idx: np.ndarray) -> slice | np.ndarray:
    """``idx`` as a slice when it is a run of consecutive integers (faster to assign)."""
    if idx.size and int(idx[-1]) - int(idx[0]) + 1 == idx.size:
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


def _cmap_name(attrs: dict[str, Any]) -> str:
    """The variable's ``colormap``/``cmap`` attribute if matplotlib knows it, else viridis."""
    from matplotlib import colormaps

    for key in ("colormap", "cmap"):
        name = attrs.get(key)
        if isinstance(name, str) and name in colormaps:
            return name
    return DEFAULT_CMAP


class MapRenderer:
    """Render XYZ PNG tiles of a cube's variables (see the module docstring).

    Parameters
    ----------
    ds : xarray.Dataset
        The cube, opened without Dask (``open_cube(..., chunks=None)``: each tile reads
        only the cells it samples).
    dims : tuple of str
        The cell grid's ``(row dim, column dim)``, e.g. ``("lat", "lon")`` or ``("y", "x")``.
    first : str, optional
        Layer listed first after ``rgb`` (the embeddings' first input).
    cache_bytes : int
        Bytes of PNG tiles kept, and bytes of coloured chunks.

    Raises
    ------
    SearchIndexError
        If the cube has no variable on the grid ``dims``.
    """

    def __init__(self, ds: xr.Dataset, dims: Sequence[str], first: str | None = None,
                 cache_bytes: int = CACHE_BYTES) -> None:
        self.ds = ds
        self.ydim, self.xdim = (str(d) for d in dims)
        self.geographic = (self.ydim, self.xdim) == SPATIAL_DIMS[0]
        self.crs = "EPSG:4326" if self.geographic else "pixel"
        self.yc = np.asarray(ds[self.ydim].values, dtype="float64")
        self.xc = np.asarray(ds[self.xdim].values, dtype="float64")
        self.yedges, self.xedges = _edges(self.yc), _edges(self.xc)
        self.shape = (self.yc.size, self.xc.size)
        self.times = (pd.DatetimeIndex(ds[TIME_DIM].values) if TIME_DIM in ds.dims
                      else None)
        self.layers = self._find_layers(first)
        if not self.layers:
            raise SearchIndexError(f"the cube has no variable on its ({self.ydim}, "
                                   f"{self.xdim}) grid to draw on a map.")
        self.cache_bytes = int(cache_bytes)
        self._png = _Cache(cache_bytes)  # PNG bytes of tiles
        self._blocks = _Cache(cache_bytes)  # RGBA of chunks
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._styles: dict[str, tuple[np.ndarray, float, float, np.ndarray | None]] = {}
        # zoom range: pixel grids from the whole cube in one tile to OVERZOOM past 1:1
        if self.geographic:
            step = min(abs(float(np.diff(self.yedges).mean())),
                       abs(float(np.diff(self.xedges).mean())))
            native = max(0, int(np.ceil(np.log2(180 / TILE / step))))
            self.min_zoom, self.native_zoom = 0, native
        else:
            self.min_zoom = -int(np.ceil(np.log2(max(1, max(self.shape) / TILE))))
            self.native_zoom = 0
        self.max_zoom = self.native_zoom + OVERZOOM

    def prepare(self, name: str | None = None, time: str | None = None) -> int:
        """Colour the chunks of layers ahead of the first tiles (e.g. in a thread at start).

        At most as many chunks as half the cache holds. The first view of the map, and of
        each layer at its first time step (zoom 0 sees the whole cube), then costs gathers
        and PNG encodings, no read: a zoomed-out tile of a layer not prepared reads every
        chunk of the layer, tens to hundreds of milliseconds.

        Parameters
        ----------
        name : str, optional
            Layer (default: every layer, the first, what the page shows first, first).
        time : str, optional
            Date of the time step (default: the first).

        Returns
        -------
        int
            Chunks coloured.

        Raises
        ------
        SearchIndexError
            If the layer or date is unknown.
        """
        names = [name] if name is not None else list(self.layers)
        done = 0
        for layer in (self.layer(n) for n in names):
            t = self.time_index(time) if layer.has_time else None
            h, w = self._block_shape(layer)
            ny, nx = -(-self.shape[0] // h), -(-self.shape[1] // w)
            budget = self.cache_bytes // 2 // (h * w * 4)
            for by in range(ny):
                for bx in range(nx):
                    if done >= budget:
                        return done
                    self._block(layer, t, by, bx, (h, w))
                    done += 1
        return done

    def seed(self, time: str | None = None) -> int:
        """Encode the PNG tiles of every layer from ``min_zoom`` to ``native_zoom`` ahead.

        As a tile server seeds its cache: the zoomed-out levels, what every user sees
        first, coarsest first and layer by layer (the first layer first), at one time
        step, skipping tiles that hold no cell of the cube, until half the PNG cache is
        used. A 0.25 degree cube has 42 such tiles a layer (zooms 0 .. 2); tiles closer in
        than one cell a pixel are drawn when asked for. Meant for a background thread at
        start, after :meth:`prepare`.

        Parameters
        ----------
        time : str, optional
            Date of the time step (default: the first).

        Returns
        -------
        int
            Tiles encoded (or found cached).

        Raises
        ------
        SearchIndexError
            If the date is unknown.
        """
        budget, done, held = self.cache_bytes // 2, 0, 0
        for z in range(self.min_zoom, self.native_zoom + 1):
            ny, nx = self._tiles_at(z)
            for y in range(ny):
                for x in range(nx):
                    rows, cols = self.pixel_cells(z, x, y)
                    if not ((rows >= 0).any() and (cols >= 0).any()):
                        continue  # outside the cube: a transparent tile, cheap when asked
                    for name in self.layers:
                        if held >= budget:
                            return done
                        held += len(self.tile(name, z, x, y, time))
                        done += 1
        return done

    def warm(self) -> None:
        """:meth:`prepare` every layer, then :meth:`seed`; :attr:`ready` is set when done.

        For a background thread at start; a failure leaves :attr:`ready` unset (tiles are
        then drawn when asked for, as without warming).
        """
        self.prepare()
        self.seed()
        self._ready.set()

    @property
    def ready(self) -> bool:
        """Whether :meth:`warm` has finished (``ready`` in ``GET /map.json``)."""
        return self._ready.is_set()

    # ------------------------------------------------------------------ layers
    def _find_layers(self, first: str | None) -> dict[str, Layer]:
        ds, grid = self.ds, {self.ydim, self.xdim}
        names = [str(n) for n, v in ds.data_vars.items()
                 if set(v.dims) - {TIME_DIM} == grid and v.ndim == len(grid) + (TIME_DIM in v.dims)
                 and v.dtype.kind in "fiub"]
        if first in names:
            names.remove(first)
            names.insert(0, first)
        out: dict[str, Layer] = {}
        if all(b in names for b in RGB_BANDS):
            out[RGB_LAYER] = Layer(RGB_LAYER, RGB_BANDS, "rgb", None,
                                   "true colour (" + ", ".join(RGB_BANDS) + ")", "1",
                                   any(TIME_DIM in ds[b].dims for b in RGB_BANDS))
        for n in names:
            a = ds[n].attrs
            flags = a.get("flag_values") is not None
            out[n] = Layer(n, (n,), "flags" if flags else "continuous",
                           "tab10" if flags else _cmap_name(a), str(a.get("long_name", n)),
                           str(a.get("units", "")), TIME_DIM in ds[n].dims)
        return out

    def layer(self, name: str) -> Layer:
        """The layer called ``name``.

        Raises
        ------
        SearchIndexError
            If there is none (the message lists the layers).
        """
        try:
            return self.layers[name]
        except KeyError:
            raise SearchIndexError(f"no map layer {name!r}; the cube's layers are "
                                   f"{', '.join(self.layers)}.") from None

    def _style(self, layer: Layer) -> tuple[np.ndarray, float, float, np.ndarray | None]:
        """Colour table ``(256 | flags, 4)`` uint8, value range, flag values (cached)."""
        with self._lock:
            got = self._styles.get(layer.name)
        if got is not None:
            return got
        from matplotlib import colormaps

        da = self.ds[layer.name]
        a = da.attrs
        if layer.kind == "flags":
            flags = np.sort(np.atleast_1d(np.asarray(a["flag_values"], dtype="float64")))
            base = colormaps["tab10"].colors
            lut = np.array([[*base[i % 10], 1.0] for i in range(flags.size)])
            style = ((lut * 255).round().astype("uint8"), 0.0, 1.0, flags)
        else:
            lo, hi = self._range(da)
            lut = colormaps[layer.cmap or DEFAULT_CMAP](np.linspace(0, 1, 256))
            style = ((np.asarray(lut) * 255).round().astype("uint8"), lo, hi, None)
        with self._lock:
            self._styles[layer.name] = style
        return style

    def _range(self, da: xr.DataArray) -> tuple[float, float]:
        a = da.attrs
        rng = a.get("valid_range")
        if rng is not None and np.size(rng) == 2:
            return float(np.ravel(rng)[0]), float(np.ravel(rng)[1])
        if a.get("valid_min") is not None and a.get("valid_max") is not None:
            return float(a["valid_min"]), float(a["valid_max"])
        sy = max(1, -(-self.shape[0] // SAMPLE_SIDE))
        sx = max(1, -(-self.shape[1] // SAMPLE_SIDE))
        sel: dict[str, Any] = {self.ydim: slice(None, None, sy), self.xdim: slice(None, None, sx)}
        if TIME_DIM in da.dims:
            sel[TIME_DIM] = 0
        v = np.asarray(da.isel(sel).values, dtype="float64")
        v = v[np.isfinite(v)]
        if v.size == 0:
            return 0.0, 1.0
        lo, hi = (float(q) for q in np.percentile(v, [2, 98]))
        return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)

    def legend(self, name: str) -> dict[str, Any]:
        """How layer ``name`` is drawn: kind, colour map, value range, units, flags.

        Raises
        ------
        SearchIndexError
            If there is no such layer.
        """
        layer = self.layer(name)
        out = asdict(layer)
        out["variables"] = list(layer.variables)
        if layer.kind == "continuous":
            _, lo, hi, _ = self._style(layer)
            out.update(vmin=lo, vmax=hi)
        elif layer.kind == "flags":
            out["flags"] = list(self._style(layer)[3].tolist())
            out["flag_meanings"] = str(self.ds[name].attrs.get("flag_meanings", "")).split()
        return out

    # ------------------------------------------------------------------ geometry
    def time_index(self, time: str | None) -> int | None:
        """The time step nearest ``time`` (None: the first; None for a static cube).

        Raises
        ------
        SearchIndexError
            If ``time`` is not a date.
        """
        if self.times is None:
            return None
        if time is None:
            return 0
        try:
            stamp = pd.Timestamp(time)
        except ValueError:
            raise SearchIndexError(f"time={time!r} is not a date.") from None
        return int(self.times.get_indexer([stamp], method="nearest")[0])

    def check_tile(self, z: int, x: int, y: int) -> None:
        """Check that ``(z, x, y)`` is a tile of the pyramid served.

        Raises
        ------
        TileRange
            If ``z`` is outside ``min_zoom .. max_zoom`` or ``x``/``y`` outside the
            tiles of zoom ``z`` (geographic: ``2 ** (z + 1)`` by ``2 ** z``; pixel grids:
            the tiles holding the cube's cells).
        """
        if not self.min_zoom <= z <= self.max_zoom:
            raise TileRange(f"zoom {z} is outside {self.min_zoom} .. {self.max_zoom}.")
        ny, nx = self._tiles_at(z)
        if not (0 <= x < nx and 0 <= y < ny):
            raise TileRange(f"tile ({x}, {y}) is outside the {nx} x {ny} tiles of zoom {z}.")

    def _tiles_at(self, z: int) -> tuple[int, int]:
        """Tile rows and columns of zoom ``z`` (see :meth:`check_tile`)."""
        if self.geographic:
            return 2**z, 2 ** (z + 1)
        cells = TILE * 2.0**-z
        ny, nx = (int(np.ceil(n / cells)) for n in self.shape)
        return ny, nx

    def pixel_cells(self, z: int, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
        """Cell row of each pixel row and cell column of each pixel column of a tile.

        Returns
        -------
        rows, cols : numpy.ndarray
            ``(256,)`` int each, ``-1`` where the pixel lies outside the cube.
        """
        centre = np.arange(TILE) + 0.5
        if self.geographic:
            world = TILE * 2.0**z  # pixels per 180 degrees
            lat = (0.5 - (y * TILE + centre) / world) * 180
            lon = ((x * TILE + centre) / world - 1) * 180
            west = float(min(self.xedges[0], self.xedges[-1]))
            lon = (lon - west) % 360 + west  # wrap into the cube's longitudes
            return _cell_index(self.yedges, lat), _cell_index(self.xedges, lon)
        per = 2.0**-z  # cells per pixel
        rows = np.floor((y * TILE + centre) * per).astype("int64")
        cols = np.floor((x * TILE + centre) * per).astype("int64")
        return (np.where(rows < self.shape[0], rows, -1),
                np.where(cols < self.shape[1], cols, -1))

    # ------------------------------------------------------------------ pixels
    def _block_shape(self, layer: Layer) -> tuple[int, int]:
        """Cells ``(rows, columns)`` of a colour block: the first variable's Zarr chunks.

        On a sharded cube (``output.shards``) a block is a whole shard: one read of one
        shard file colours it.
        """
        da = self.ds[layer.variables[0]]
        pref = dict(da.encoding.get("preferred_chunks") or {})
        if da.encoding.get("shards"):
            pref.update(zip(da.dims, (int(n) for n in da.encoding["shards"]), strict=True))
        return (int(pref.get(self.ydim, BLOCK)), int(pref.get(self.xdim, BLOCK)))

    def _colour(self, layer: Layer, values: list[np.ndarray]) -> np.ndarray:
        """RGBA ``(h, w, 4)`` uint8 of a layer's values ``[(h, w), ...]`` (alpha 0: missing)."""
        out = np.empty((*values[0].shape, 4), dtype="uint8")
        if layer.kind == "rgb":
            rgb = np.stack(values, -1)
            out[..., :3] = np.round(np.clip(np.nan_to_num(rgb), 0, 1) * 255)
            out[..., 3] = np.where(np.isfinite(rgb).all(-1), 255, 0)
            return out
        lut, lo, hi, flags = self._style(layer)
        v = values[0]
        valid = np.isfinite(v)
        if flags is not None:
            i = np.clip(np.searchsorted(flags, np.nan_to_num(v)), 0, flags.size - 1)
            valid &= flags[i] == v
        else:
            i = np.clip((np.nan_to_num(v, nan=lo) - lo) * (255.0 / (hi - lo)), 0, 255)
            i = i.astype("uint8")
        out[:] = lut[i]
        out[..., 3] = np.where(valid, out[..., 3], 0)
        return out

    def _block(self, layer: Layer, t: int | None, by: int, bx: int,
               shape: tuple[int, int]) -> np.ndarray:
        """The coloured block ``(by, bx)`` (RGBA, cached): the cells of one chunk."""
        h, w = shape
        pick: dict[str, Any] = {self.ydim: slice(by * h, (by + 1) * h),
                                self.xdim: slice(bx * w, (bx + 1) * w)}

        def make() -> np.ndarray:
            values = []
            for name in layer.variables:
                da = self.ds[name]
                sel = {**pick, TIME_DIM: t or 0} if TIME_DIM in da.dims else pick
                # one chunk: read in this thread (no scheduler threads to wake and join)
                part = da.isel(sel).transpose(self.ydim, self.xdim).compute(scheduler="sync")
                values.append(np.asarray(part.values, dtype="float32"))
            return np.ascontiguousarray(self._colour(layer, values))

        return self._blocks.get((layer.name, t, by, bx), make)

    def rgba(self, name: str, z: int, x: int, y: int, time: str | None = None) -> np.ndarray:
        """The pixels of a tile.

        Each pixel is the colour of the cell containing its centre. Cells are read and
        coloured a Zarr chunk at a time, the chunks the tile covers only; coloured chunks
        are kept (least recently used dropped first, :data:`CACHE_BYTES`), so a tile
        whose chunks were drawn before costs a gather and no read.

        Parameters
        ----------
        name : str
            Layer name.
        z, x, y : int
            The tile (see :meth:`check_tile`).
        time : str, optional
            Date of the time step shown (nearest; default the first).

        Returns
        -------
        numpy.ndarray
            ``(256, 256, 4)`` uint8 RGBA, rows north (or the cube's first row) first;
            alpha 0 outside the cube and on missing cells.

        Raises
        ------
        SearchIndexError
            If the layer or date is unknown.
        TileRange
            If the tile is outside the pyramid.
        """
        layer = self.layer(name)
        t = self.time_index(time) if layer.has_time else None
        self.check_tile(z, x, y)
        rows, cols = self.pixel_cells(z, x, y)
        out = np.zeros((TILE, TILE), dtype="uint32")  # RGBA bytes as one word a pixel
        h, w = self._block_shape(layer)
        brow, bcol = np.where(rows >= 0, rows // h, -1), np.where(cols >= 0, cols // w, -1)
        for by in np.unique(brow[brow >= 0]):
            pr = _span(np.flatnonzero(brow == by))
            for bx in np.unique(bcol[bcol >= 0]):
                pc = _span(np.flatnonzero(bcol == bx))
                block = self._block(layer, t, int(by), int(bx), (h, w)).view("uint32")[..., 0]
                part = block.take(rows[pr] - by * h, 0).take(cols[pc] - bx * w, 1)
                if isinstance(pr, slice) and isinstance(pc, slice):
                    out[pr, pc] = part
                else:
                    out[np.ix_(np.arange(TILE)[pr], np.arange(TILE)[pc])] = part
        return out.view("uint8").reshape(TILE, TILE, 4)

    def tile(self, name: str, z: int, x: int, y: int, time: str | None = None) -> bytes:
        """The PNG of a tile (:meth:`rgba`), from the cache when drawn before.

        Raises
        ------
        SearchIndexError, TileRange
            As :meth:`rgba`.
        """
        return self._png.get(self._key(name, z, x, y, time),
                             lambda: encode_png(self.rgba(name, z, x, y, time)))

    def _key(self, name: str, z: int, x: int, y: int, time: str | None) -> tuple[Any, ...]:
        layer = self.layer(name)
        return (name, self.time_index(time) if layer.has_time else None, z, x, y)

    def cached(self, name: str, z: int, x: int, y: int, time: str | None = None) -> bytes | None:
        """The PNG of a tile if it is in the cache, else None (reads nothing).

        For a server's event loop, which asks :meth:`tile` in a worker thread on a miss.

        Raises
        ------
        SearchIndexError
            If the layer or date is unknown.
        """
        return self._png.peek(self._key(name, z, x, y, time))

    def info(self) -> dict[str, Any]:
        """What the page needs to set up its map (``GET /map.json``).

        Returns
        -------
        dict
            ``crs`` (``"EPSG:4326"`` or ``"pixel"``), ``dims``, ``shape`` (cells),
            ``tile`` (pixels), ``min_zoom``/``native_zoom``/``max_zoom``, ``y_edges``/
            ``x_edges`` (first and last cell edge, grid units: a regular grid's cell
            ``i`` spans ``edge0 + i * step`` .. ``+ step``), ``bounds`` ``[W, S, E, N]``,
            ``layers`` (:class:`Layer` as dicts, the default first; value ranges are in
            :meth:`legend`), ``times`` (dates or None), ``ready`` (:attr:`ready`: the
            zoomed-out tiles are encoded).
        """
        ye, xe = self.yedges, self.xedges
        return {
            "crs": self.crs, "dims": [self.ydim, self.xdim], "shape": list(self.shape),
            "tile": TILE, "min_zoom": self.min_zoom, "native_zoom": self.native_zoom,
            "max_zoom": self.max_zoom,
            "y_edges": [float(ye[0]), float(ye[-1])], "x_edges": [float(xe[0]), float(xe[-1])],
            "bounds": [float(min(xe[0], xe[-1])), float(min(ye[0], ye[-1])),
                       float(max(xe[0], xe[-1])), float(max(ye[0], ye[-1]))],
            "layers": [{**asdict(v), "variables": list(v.variables)}
                       for v in self.layers.values()],
            "times": None if self.times is None else [str(t.date()) for t in self.times],
            "ready": self.ready,
        }
