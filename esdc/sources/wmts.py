"""OGC Web Map Tile Services (``format: wmts``): a layer's tiles over the grid, mosaicked.

A WMTS source is read in three steps, the first and last here, the fetch between them
in the build's fetch phase (:func:`esdc.build.fetch_sources`):

1. :meth:`Wmts.index_url`: the capabilities document (``GetCapabilities``), fetched as a
   granule of the fetch layer (cache, retries, SHA-256, a row of the granule table).
2. :meth:`Wmts.list_tiles`: the document parsed with OWSLib (the layer, its tile matrix
   set and ``TileMatrix`` list: ``TopLeftCorner``, ``ScaleDenominator``, tile and matrix
   sizes, ``TileMatrixSetLimits``, ``ResourceURL`` templates, the ``Time`` dimension);
   one tile :class:`~esdc.sources.granules.Granule` per tile that intersects the grid's
   bounding box (a one-pixel margin around it), per time. The build fetches them in
   parallel, like any granules.
3. :meth:`Wmts.open_tiles`: the fetched tiles (read with Pillow) placed side by side in a
   lazy mosaic (one Dask chunk per tile) with its georeference, padding cropped: a
   regular :class:`~esdc.sources.base.Geolocated` that is regridded like any source.

Pixel size follows the WMTS 1.0 standard (OGC 07-057r7, 6.1): ``ScaleDenominator x
0.28 mm`` in metres, divided by the metres of one CRS unit (``6378137 x 2 pi / 360``
for degrees). NASA GIBS's quirks are handled: its EPSG:4326 ``TopLeftCorner`` is given
as ``-180 90`` (x, y) although the CRS's axis order is latitude first (either order is
read: the corner that lies on the globe is taken); its tiles (512 px) run past 180
degrees east and 90 degrees south, filled with padding that is cropped; its ``Time``
values are ISO 8601 intervals ``START/END/PERIOD``.

Tiles are rendered imagery: 8-bit colours (a palette image becomes RGB or RGBA), not
the physical values they picture.
"""

from __future__ import annotations

import difflib
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pyproj
import xarray as xr
from PIL import Image

from esdc.conventions import SPATIAL_DIMS, TIME_DIM
from esdc.errors import SourceError, SourceNotFoundError
from esdc.grid import Grid
from esdc.recipe import SourceSpec
from esdc.recipe.files import MAX_GRANULES, WmtsSpec
from esdc.sources.base import Geolocated, normalize
from esdc.sources.granules import Granule, TilePlace, is_local

__all__ = ["METERS_PER_DEGREE", "PIXEL_METRES", "WMTS", "Wmts", "capabilities_url",
           "in_time_domain", "open_wmts", "pixel_size"]

#: Metres of one degree in WMTS scale denominators (OGC 07-057r7, 6.1: the equatorial
#: circumference of the WGS 84 ellipsoid over 360).
METERS_PER_DEGREE = 6378137.0 * 2 * math.pi / 360
#: The "standardized rendering pixel size" of WMTS scale denominators, in metres.
PIXEL_METRES = 0.00028

#: Image modes by number of bands, and the 8-bit mode each Pillow mode is read as.
_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
_AS_8BIT = {"1": "L", "L": "L", "I": "L", "F": "L", "I;16": "L", "LA": "LA", "PA": "LA",
            "RGB": "RGB", "YCbCr": "RGB", "CMYK": "RGB", "RGBA": "RGBA"}
_TIME_FORMAT = {"date": "%Y-%m-%d", "datetime": "%Y-%m-%dT%H:%M:%SZ"}
_PERIOD = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?"
                     r"(?:(\d+(?:\.\d+)?)S)?)?$")
_EPS = 1e-9


def capabilities_url(url: str) -> str:
    """The capabilities document of a service URL (a local file or ``.xml`` URL as is).

    ``https://host/wmts.cgi`` becomes ``https://host/wmts.cgi?SERVICE=WMTS&
    REQUEST=GetCapabilities&VERSION=1.0.0`` (the KVP request every WMTS answers).
    """
    if is_local(url) or "?" in url or url.lower().endswith(".xml"):
        return url
    return f"{url}?SERVICE=WMTS&REQUEST=GetCapabilities&VERSION=1.0.0"


def pixel_size(scale_denominator: float, crs: pyproj.CRS) -> float:
    """A tile matrix's pixel size in CRS units (degrees or metres), from its scale.

    Parameters
    ----------
    scale_denominator : float
        The ``ScaleDenominator`` of the ``TileMatrix``.
    crs : pyproj.CRS
        The tile matrix set's CRS.

    Returns
    -------
    float
        ``scale_denominator * 0.00028 / metres_per_unit``.
    """
    per_unit = METERS_PER_DEGREE if crs.is_geographic else float(
        crs.axis_info[0].unit_conversion_factor or 1.0)
    return scale_denominator * PIXEL_METRES / per_unit


def _period(text: str) -> tuple[int, pd.Timedelta] | None:
    """An ISO 8601 period as (months, rest); None if it is not one."""
    m = _PERIOD.match(text.strip())
    if not m or not any(m.groups()):
        return None
    y, mo, d, h, mi, s = m.groups()
    months = int(y or 0) * 12 + int(mo or 0)
    rest = pd.Timedelta(days=int(d or 0), hours=int(h or 0), minutes=int(mi or 0),
                        seconds=float(s or 0))
    return months, rest


def _stamp(text: str) -> pd.Timestamp:
    t = pd.Timestamp(text.strip())
    return t.tz_convert("UTC").tz_localize(None) if t.tzinfo is not None else t


def in_time_domain(t: pd.Timestamp, values: Sequence[str]) -> bool:
    """Whether time ``t`` is one of a WMTS Time dimension's values.

    Parameters
    ----------
    t : pandas.Timestamp
        Naive UTC.
    values : sequence of str
        The dimension's ``Value`` entries: single times, or ISO 8601 intervals
        ``START/END/PERIOD`` (GIBS: ``2000-02-24/2024-06-10/P1D``) or ``START/END``.

    Returns
    -------
    bool
    """
    for value in values:
        parts = (value or "").strip().split("/")
        try:
            if len(parts) == 1:
                if _stamp(parts[0]) == t:
                    return True
                continue
            start, end = _stamp(parts[0]), _stamp(parts[1])
        except ValueError:
            continue
        if not start <= t <= end:
            continue
        period = _period(parts[2]) if len(parts) > 2 else None
        if period is None:
            return True
        months, rest = period
        if months:
            steps = (t.year - start.year) * 12 + (t.month - start.month)
            if steps % months == 0 and (t.day, t.time()) == (start.day, start.time()):
                return True
        elif rest > pd.Timedelta(0) and (t - start) % rest == pd.Timedelta(0):
            return True
    return False


def _listing(names: Sequence[str], asked: str) -> str:
    """The names that exist, for a message: all of a few, else the close ones and a count."""
    names = list(names)
    if len(names) <= 30:
        return f"it has {names}"
    close = difflib.get_close_matches(asked, names, n=5, cutoff=0.5)
    return (f"it has {len(names):,} (closest: {close}; first: {names[:10]})" if close
            else f"it has {len(names):,} (first: {names[:10]})")


def _parse(index: Path, what: str) -> Any:
    """The capabilities document parsed by OWSLib (``WebMapTileService``)."""
    try:
        from owslib.wmts import WebMapTileService
    except ImportError:
        raise SourceError(f"{what}: format wmts parses capabilities with OWSLib, which is not "
                          "installed: pip install 'esdc[wmts]'.") from None

    data = index.read_bytes()
    try:
        with warnings.catch_warnings():  # OWSLib 0.35 truth-tests lxml elements (FutureWarning)
            warnings.simplefilter("ignore", FutureWarning)
            return WebMapTileService(str(index), xml=data)
    except Exception as exc:  # noqa: BLE001 - lxml, OWSLib: any failure is a bad document
        head = data[:60].decode("utf-8", "replace").strip()
        raise SourceError(f"{what}.wmts.capabilities: {index} is not a WMTS capabilities "
                          f"document ({type(exc).__name__}: {exc}); it begins {head!r}.") from None


def _crs(text: str, what: str) -> pyproj.CRS:
    try:
        return pyproj.CRS.from_user_input(text)
    except pyproj.exceptions.CRSError:
        m = re.search(r"EPSG:[\d.]*:?(\d+)$", text)
        if m:
            return pyproj.CRS.from_epsg(int(m.group(1)))
        raise SourceError(f"{what}: the tile matrix set's CRS {text!r} is unknown to "
                          "PROJ.") from None


def _corner(matrix: Any, crs: pyproj.CRS) -> tuple[float, float]:
    """The ``TopLeftCorner`` as (x, y): in the CRS's axis order, else the other order.

    GIBS writes EPSG:4326 corners as ``-180 90`` (x, y) although EPSG:4326 is
    latitude first; a geographic corner is taken in the order that lies on the globe
    (|lat| <= 90, above the south pole).
    """
    a, b = matrix.topleftcorner
    north_first = crs.axis_info[0].direction in ("north", "south")
    first, second = ((b, a), (a, b)) if north_first else ((a, b), (b, a))
    if crs.is_geographic:
        for x, y in (first, second):
            if abs(x) <= 360 and -90 < y <= 90:
                return float(x), float(y)
    return float(first[0]), float(first[1])


class _Plan:
    """The layer, tile matrix, style, times and request form chosen for a source."""

    def __init__(self, spec: SourceSpec, grid: Grid, caps: Any, url: str) -> None:
        self.what = f"sources.{spec.name}"
        w: WmtsSpec = spec.wmts  # type: ignore[assignment]
        self.wmts = w
        if w.layer not in caps.contents:
            raise SourceNotFoundError(f"{self.what}.wmts.layer: {w.layer!r} is not in the "
                                      f"capabilities of {url}; {_listing(caps.contents, w.layer)}.")
        self.layer = layer = caps.contents[w.layer]
        links = list(layer.tilematrixsetlinks)
        self.set_id = w.tile_matrix_set or (links[0] if links else "")
        if self.set_id not in links or self.set_id not in caps.tilematrixsets:
            raise SourceNotFoundError(
                f"{self.what}.wmts.tile_matrix_set: layer {w.layer!r} has no tile matrix set "
                f"{self.set_id!r}; {_listing(links, self.set_id)}.")
        tms = caps.tilematrixsets[self.set_id]
        self.crs = _crs(tms.crs, self.what)
        limits = layer.tilematrixsetlinks[self.set_id].tilematrixlimits or {}
        matrices = sorted((m for m in tms.tilematrix.values()
                           if not limits or m.identifier in limits),
                          key=lambda m: -m.scaledenominator)
        self.matrix = self._zoom(matrices, grid)
        self.limits = limits.get(self.matrix.identifier)
        self.style = self._style()
        self.time_key, self.times = self._times(grid)
        self.template, self.kvp = self._request(caps)

    def _zoom(self, matrices: list[Any], grid: Grid) -> Any:
        ids = [m.identifier for m in matrices]
        if self.wmts.zoom is not None:
            if self.wmts.zoom not in ids:
                raise SourceNotFoundError(
                    f"{self.what}.wmts.zoom: tile matrix set {self.set_id!r} of layer "
                    f"{self.wmts.layer!r} has no TileMatrix {self.wmts.zoom!r}; "
                    f"{_listing(ids, self.wmts.zoom)}.")
            return matrices[ids.index(self.wmts.zoom)]
        if not matrices:
            raise SourceError(f"{self.what}: tile matrix set {self.set_id!r} has no TileMatrix.")
        w, s, e, n = self.grid_box(grid)
        ny, nx = grid.shape
        cell = min((e - w) / nx, (n - s) / ny)
        fine = [m for m in matrices
                if pixel_size(m.scaledenominator, self.crs) <= cell * (1 + _EPS)]
        return fine[0] if fine else matrices[-1]

    def grid_box(self, grid: Grid) -> tuple[float, float, float, float]:
        """The grid's bounding box in the tile matrix set's CRS (x, y order)."""
        if grid.pyproj_crs == self.crs or (grid.is_geographic and self.crs.is_geographic
                                           and grid.pyproj_crs.datum == self.crs.datum):
            return grid.bbox
        t = pyproj.Transformer.from_crs(grid.pyproj_crs, self.crs, always_xy=True)
        w, s, e, n = t.transform_bounds(*grid.bbox, densify_pts=21)
        return float(w), float(s), float(e), float(n)

    def _style(self) -> str:
        styles = self.layer.styles or {}
        if self.wmts.style is not None:
            if styles and self.wmts.style not in styles:
                raise SourceNotFoundError(f"{self.what}.wmts.style: layer {self.wmts.layer!r} "
                                          f"has no style {self.wmts.style!r}; "
                                          f"{_listing(styles, self.wmts.style)}.")
            return self.wmts.style
        default = [k for k, v in styles.items() if v.get("isDefault")]
        return (default or list(styles) or ["default"])[0]

    def _times(self, grid: Grid) -> tuple[str | None, list[tuple[pd.Timestamp | None, str]]]:
        """The Time dimension's identifier and ``(granule time, value sent)`` per tile set."""
        dims = {k.lower(): k for k in self.layer.dimensions}
        key = dims.get("time")
        asked = self.wmts.time
        if key is None:
            if asked is not None:
                raise SourceNotFoundError(f"{self.what}.wmts.time: layer {self.wmts.layer!r} "
                                          "has no Time dimension; remove `time` (and use "
                                          "`time: static`).")
            return None, [(None, "")]
        dim = self.layer.dimensions[key]
        values = [v for v in dim.get("values", []) if v]
        kind = "datetime" if "T" in (values[0] if values else dim.get("default") or "") \
            else "date"
        if asked is None:
            t = _stamp(dim["default"])
            return key, [(t, dim["default"])]
        if asked == "series":
            if not grid.time:
                raise SourceError(f"{self.what}.wmts.time: `series` takes one tile set per "
                                  "grid time cell, and the grid has no time axis.")
            wanted = [pd.Timestamp(t) for t in grid.time]
        else:
            wanted = [_stamp(asked)]
        for t in wanted:
            if not in_time_domain(t, values):
                raise SourceNotFoundError(
                    f"{self.what}.wmts.time: layer {self.wmts.layer!r} has no time "
                    f"{t.strftime(_TIME_FORMAT[kind])}; its times are {values} (default "
                    f"{dim.get('default')}).")
        return key, [(t, t.strftime(_TIME_FORMAT[kind])) for t in wanted]

    def _request(self, caps: Any) -> tuple[str | None, str | None]:
        """The REST template or the KVP GetTile base URL (one of them)."""
        rest = [r["template"] for r in self.layer.resourceURLs
                if r.get("resourceType") == "tile" and r.get("template")]
        kvp = None
        for op in getattr(caps, "operations", []):
            if getattr(op, "name", None) == "GetTile":
                kvp = next((m["url"] for m in op.methods if m.get("type") == "Get"), None)
        encoding = self.wmts.encoding or ("rest" if rest else "kvp")
        if encoding == "rest" and rest:
            template = rest[0]
            known = {"tilematrixset", "tilematrix", "tilerow", "tilecol", "style",
                     *(k.lower() for k in self.layer.dimensions)}
            unknown = [f for f in re.findall(r"\{([^{}]+)\}", template) if f.lower() not in known]
            if unknown:
                raise SourceError(f"{self.what}: the ResourceURL template {template} has "
                                  f"fields {unknown} that no dimension of layer "
                                  f"{self.wmts.layer!r} fills.")
            return template, None
        if encoding == "kvp" and kvp:
            return None, kvp
        raise SourceError(f"{self.what}.wmts.encoding: layer {self.wmts.layer!r} has no "
                          f"{encoding.upper()} GetTile form (REST templates: {len(rest)}, KVP "
                          f"GetTile URL: {kvp or 'none'}); use the other encoding.")

    def tile_url(self, row: int, col: int, time: str) -> str:
        """The GetTile URL of one tile."""
        values = {"tilematrixset": self.set_id, "tilematrix": self.matrix.identifier,
                  "tilerow": str(row), "tilecol": str(col), "style": self.style}
        if self.time_key is not None:
            values[self.time_key.lower()] = time
        if self.template is not None:
            return re.sub(r"\{([^{}]+)\}", lambda m: values[m.group(1).lower()], self.template)
        assert self.kvp is not None
        params = [("SERVICE", "WMTS"), ("REQUEST", "GetTile"), ("VERSION", "1.0.0"),
                  ("LAYER", self.wmts.layer), ("STYLE", self.style),
                  ("TILEMATRIXSET", self.set_id), ("TILEMATRIX", self.matrix.identifier),
                  ("TILEROW", str(row)), ("TILECOL", str(col)),
                  ("FORMAT", (self.layer.formats or ["image/png"])[0])]
        if self.time_key is not None:
            params.append((self.time_key.upper(), time))
        sep = "" if self.kvp.endswith(("?", "&")) else "&" if "?" in self.kvp else "?"
        return f"{self.kvp}{sep}{urlencode(params)}"

    def extent(self) -> tuple[float, float, float, float]:
        """Where the layer has data, CRS units: the globe (and its WGS 84 box) if geographic."""
        m = self.matrix
        px = pixel_size(m.scaledenominator, self.crs)
        left, top = _corner(m, self.crs)
        box = (left, top - px * m.tileheight * m.matrixheight,
               left + px * m.tilewidth * m.matrixwidth, top)
        if self.crs.is_geographic:
            wgs = getattr(self.layer, "boundingBoxWGS84", None) or (-180, -90, 180, 90)
            box = (max(box[0], wgs[0], -180), max(box[1], wgs[1], -90),
                   min(box[2], wgs[2], 180), min(box[3], wgs[3], 90))
        return box


def _span(lo: float, hi: float, origin: float, step: float, n: int,
          limits: tuple[int | None, int | None]) -> range:
    """Indices of the tiles of size ``step`` from ``origin`` that ``[lo, hi]`` touches."""
    first = max(math.floor((lo - origin) / step + _EPS), 0, limits[0] or 0)
    last = min(math.ceil((hi - origin) / step - _EPS) - 1, n - 1,
               n - 1 if limits[1] is None else limits[1])
    return range(first, last + 1)


def _decode(path: str, mode: str) -> np.ndarray:
    """A tile's pixels ``(height, width, bands)``, uint8, in ``mode``."""
    with Image.open(path) as im:
        if im.mode != mode:
            im = im.convert(mode)
        arr = np.asarray(im, dtype="uint8")
    return arr if arr.ndim == 3 else arr[:, :, None]


class Wmts:
    """The WMTS tile service (:data:`esdc.sources.registry.SERVICES` ``"wmts"``)."""

    def index_url(self, spec: SourceSpec, base_dir: Path | None) -> str:
        """The capabilities document's URL (or local path) of a ``format: wmts`` source.

        Parameters
        ----------
        spec : SourceSpec
            The source (with ``wmts``).
        base_dir : pathlib.Path, optional
            Unused: a relative local path is resolved by the caller.

        Returns
        -------
        str
            :func:`capabilities_url` of ``wmts.capabilities``.
        """
        assert spec.wmts is not None
        return capabilities_url(spec.wmts.capabilities)

    def list_tiles(self, spec: SourceSpec, grid: Grid, index: Path) -> list[Granule]:
        """The tiles of the layer that intersect the grid, one granule each.

        Parameters
        ----------
        spec : SourceSpec
            The source (with ``wmts``).
        grid : Grid
            The grid: its bounding box (with a margin of one tile pixel), cell size
            (the default zoom) and time cells (``time: series``).
        index : pathlib.Path
            The fetched capabilities document.

        Returns
        -------
        list of Granule
            By time, then row, then column; each with its :class:`TilePlace` and, for a
            layer with a Time dimension, the time asked for.

        Raises
        ------
        SourceNotFoundError
            If the document lacks the layer, tile matrix set, zoom, style or time asked
            for (the message lists what exists).
        SourceError
            If the document is not WMTS capabilities, the layer has no usable GetTile
            form, the grid lies outside the layer, or the tiles exceed
            :data:`esdc.recipe.MAX_GRANULES`.
        """
        assert spec.wmts is not None
        url = capabilities_url(spec.wmts.capabilities)
        plan = _Plan(spec, grid, _parse(index, f"sources.{spec.name}"), url)
        m = plan.matrix
        crs = plan.crs
        px = pixel_size(m.scaledenominator, crs)
        left, top = _corner(m, crs)
        w, s, e, n = plan.grid_box(grid)
        ew, es, ee, en = plan.extent()
        w, s, e, n = max(w - px, ew), max(s - px, es), min(e + px, ee), min(n + px, en)
        if e <= w or n <= s:
            raise SourceError(f"{plan.what}: grid.bbox {list(grid.bbox)} lies outside layer "
                              f"{spec.wmts.layer!r} ({[round(v, 6) for v in (ew, es, ee, en)]}"
                              f" in {crs.to_string()}); move the bbox onto the layer.")
        lim = plan.limits
        cols = _span(w, e, left, px * m.tilewidth, m.matrixwidth,
                     (lim.mintilecol, lim.maxtilecol) if lim else (None, None))
        rows = _span(-n, -s, -top, px * m.tileheight, m.matrixheight,
                     (lim.mintilerow, lim.maxtilerow) if lim else (None, None))
        count = len(rows) * len(cols) * len(plan.times)
        if count > MAX_GRANULES:
            raise SourceError(f"{plan.what}: {count:,} tiles at TileMatrix {m.identifier!r}; "
                              f"at most {MAX_GRANULES:,} per source. Choose a coarser "
                              "`wmts.zoom` or a smaller grid.")
        if not count:
            raise SourceError(f"{plan.what}: no tile of TileMatrix {m.identifier!r} covers "
                              f"grid.bbox {list(grid.bbox)} (its TileMatrixSetLimits leave "
                              "none); move the bbox onto the layer.")
        place = {"matrix": f"{plan.set_id}/{m.identifier}", "crs": crs.to_string(),
                 "left": left, "top": top, "pixel": (px, px),
                 "size": (m.tileheight, m.tilewidth), "extent": (ew, es, ee, en)}
        return [Granule(plan.tile_url(r, c, value), t,
                        tile=TilePlace(row=r, col=c, **place))  # type: ignore[arg-type]
                for t, value in plan.times for r in rows for c in cols]

    def open_tiles(self, spec: SourceSpec, granules: Sequence[Granule],
                   paths: Sequence[str | Path | None]) -> list[Geolocated]:
        """The fetched tiles as one lazy mosaic, cropped to the layer's valid area.

        Parameters
        ----------
        spec : SourceSpec
            The source (with ``wmts``; ``bands`` names the image bands).
        granules : sequence of Granule
            From :meth:`list_tiles`, after the capabilities document (which is skipped).
        paths : sequence of str, pathlib.Path or None
            The fetched file of each granule; ``None`` for a tile skipped
            (``wmts.missing: skip``), whose pixels are NaN.

        Returns
        -------
        list of Geolocated
            One: a variable per band, dims ``(lat, lon)`` (``(y, x)`` for a projected
            tile matrix set), with ``time`` first for ``time: series``; uint8 values
            (float32 with NaN where a tile was skipped); one Dask chunk per tile.

        Raises
        ------
        SourceNotFoundError
            If every tile was skipped.
        SourceError
            If a tile is not an image Pillow can read, or not of its matrix's tile size,
            or the band names do not fit, or a variable's ``source`` is not a band.
        """
        what = f"sources.{spec.name}"
        tiles = [(g, p) for g, p in zip(granules, paths, strict=True) if g.tile is not None]
        have = [(g, Path(p)) for g, p in tiles if p is not None]
        if not have:
            raise SourceNotFoundError(f"{what}: every tile is missing upstream; nothing to "
                                      "build from.")
        mode = self._mode(spec, have, what)
        names = list(spec.bands or [f"band_{i + 1}" for i in range(len(mode))])
        if len(names) != len(mode):
            raise SourceError(f"{what}: the tiles have {len(mode)} bands ({mode}) but "
                              f"`bands` names {len(names)}.")
        first = have[0][0].tile
        assert first is not None
        th, tw = first.size
        r0 = min(g.tile.row for g, _ in tiles)  # type: ignore[union-attr]
        c0 = min(g.tile.col for g, _ in tiles)  # type: ignore[union-attr]
        nr = max(g.tile.row for g, _ in tiles) - r0 + 1  # type: ignore[union-attr]
        nc = max(g.tile.col for g, _ in tiles) - c0 + 1  # type: ignore[union-attr]
        skipped = len(have) < len(tiles)
        dtype = np.dtype("float32") if skipped else np.dtype("uint8")
        times = list(dict.fromkeys(g.time for g, _ in tiles))
        blank = da.full((th, tw, len(mode)), np.nan, dtype="float32", chunks=(th, tw, -1))
        grids = {t: [[blank] * nc for _ in range(nr)] for t in times}
        for g, p in tiles:
            tile = g.tile
            assert tile is not None
            if p is None:
                continue
            _check_tile(g, Path(p), (tw, th), what)
            arr = da.from_delayed(dask.delayed(_decode, pure=True)(str(p), mode),
                                  shape=(th, tw, len(mode)), dtype="uint8")
            grids[g.time][tile.row - r0][tile.col - c0] = arr.astype(dtype)
        mosaics = [da.concatenate([da.concatenate(row, axis=1) for row in grids[t]], axis=0)
                   for t in times]
        (west, south, east, north), (dx, dy) = first.extent, first.pixel
        x = first.left + dx * (c0 * tw + np.arange(nc * tw) + 0.5)
        y = first.top - dy * (r0 * th + np.arange(nr * th) + 0.5)
        xs = np.flatnonzero((x > west) & (x < east))
        ys = np.flatnonzero((y > south) & (y < north))
        if not xs.size or not ys.size:
            raise SourceError(f"{what}: the tiles fetched lie outside the layer's area.")
        xsl, ysl = slice(xs[0], xs[-1] + 1), slice(ys[0], ys[-1] + 1)
        crs = pyproj.CRS.from_user_input(first.crs)
        dims = SPATIAL_DIMS[0] if crs.is_geographic else SPATIAL_DIMS[1]
        series = spec.time == "series"
        stack = da.stack(mosaics) if series else mosaics[0][None]
        stack = stack[:, ysl, xsl]
        lead = (TIME_DIM,) if series else ()
        data = {n: (lead + dims, stack[..., i] if series else stack[0, ..., i])
                for i, n in enumerate(names)}
        coords: dict[str, Any] = {dims[0]: y[ysl], dims[1]: x[xsl]}
        if series:
            coords[TIME_DIM] = np.array([np.datetime64(t, "ns") for t in times])
        geo = normalize(xr.Dataset(data, coords=coords), crs, have[0][1], what)
        missing = [v.source for v in spec.variables if v.source not in geo.data.data_vars]
        if missing:
            raise SourceError(f"{what}: variable(s) {missing} are not bands of layer "
                              f"{spec.wmts.layer if spec.wmts else ''!r}; it has {names} "
                              "(name them with `bands`).")
        return [geo]

    @staticmethod
    def _mode(spec: SourceSpec, have: list[tuple[Granule, Path]], what: str) -> str:
        """The 8-bit mode tiles are read in: from ``bands``, else the first tile's."""
        if spec.bands:
            if len(spec.bands) not in _MODES:
                raise SourceError(f"{what}: `bands` names {len(spec.bands)} bands; WMTS tiles "
                                  "have 1 to 4 (grey, grey+alpha, RGB, RGBA).")
            return _MODES[len(spec.bands)]
        g, p = have[0]
        _check_tile(g, p, None, what)
        with Image.open(p) as im:
            if im.mode == "P":
                return "RGBA" if "transparency" in im.info else "RGB"
            return _AS_8BIT.get(im.mode, "RGB")


def _check_tile(granule: Granule, path: Path, size: tuple[int, int] | None, what: str) -> None:
    """Refuse a tile that is not an image, or not of its matrix's size (its header only)."""
    try:
        with Image.open(path) as im:
            got = im.size
    except Exception as exc:  # noqa: BLE001 - any Pillow failure is a bad tile
        head = path.read_bytes()[:48]
        raise SourceError(f"{what}: tile {granule.url} is not an image Pillow can read "
                          f"({type(exc).__name__}); it begins {head!r}. The service answered "
                          "something else (an error document?) for this tile.") from None
    if size is not None and got != size:
        raise SourceError(f"{what}: tile {granule.url} is {got[0]} x {got[1]} px; its tile "
                          f"matrix says {size[0]} x {size[1]}.")


#: The service object the registry names.
WMTS = Wmts()


def open_wmts(spec: SourceSpec, path: Path) -> Geolocated:
    """The reader entry of ``format: wmts``: a tile service is not one file.

    A WMTS source has a ``wmts`` block (never ``path`` or ``sample``, the recipe schema
    says so); the build lists, fetches and mosaics its tiles through :data:`WMTS`
    (:data:`esdc.sources.registry.SERVICES`).

    Raises
    ------
    SourceError
        Always, naming the file.
    """
    raise SourceError(f"sources.{spec.name}: format 'wmts' reads a tile service's layer "
                      f"(a `wmts` block), not the file {path}; use format image for one "
                      "image with a `georeference`.")
