"""One scale of a search: an embedding variable, its FAISS index and its tiles' geometry.

A cube holds embeddings of several tile sizes (*scales*, cells per tile side:
``embedding_t8``, ``embedding_t16``, ``embedding_t32``; :mod:`esdc.embed`), each with
its own index beside the cube (:func:`esdc.search.index.build_indexes`). A
:class:`ScaleIndex` is what a :class:`esdc.search.query.SearchEngine` holds of one of
them; a multi-scale query searches each scale asked with the query vector centred on
that scale's mean and L2-normalised (the index's space), and merges the answers by
cosine distance. :func:`parse_scales` reads the ``scales`` a query asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from esdc.conventions import (
    ATTR_TILE_DIMS,
    ATTR_TILE_SIZE,
    SPATIAL_DIMS,
    TIME_DIM,
    coordinate_decimals,
)
from esdc.errors import SearchIndexError
from esdc.grid import parse_bbox
from esdc.search.index import load_index, vectors_sha256

__all__ = ["Neighbour", "ScaleIndex", "parse_scales", "parse_time_range"]


def parse_time_range(start: str | None, end: str | None) -> tuple[str | None,
                                                                   str | None] | None:
    """Check a time filter: ``start``/``end`` are dates (either may be open) and ordered.

    Parameters
    ----------
    start, end : str or None
        Dates (ISO 8601, e.g. ``2020-03``; any string :class:`pandas.Timestamp` reads),
        inclusive; None leaves that end open.

    Returns
    -------
    tuple of str or None
        ``(start, end)``, or None when both are None (no filter).

    Raises
    ------
    SearchIndexError
        If one is not a date or ``start`` is after ``end``.
    """
    if start is None and end is None:
        return None
    stamps = []
    for name, value in (("start", start), ("end", end)):
        if value is None:
            stamps.append(None)
            continue
        try:
            stamp = pd.Timestamp(value)
        except (ValueError, TypeError, OverflowError):
            stamp = pd.NaT
        if stamp is pd.NaT:
            raise SearchIndexError(f"{name} {value!r} is not a date (e.g. 2020-03).")
        stamps.append(stamp)
    if stamps[0] is not None and stamps[1] is not None and stamps[0] > stamps[1]:
        raise SearchIndexError(f"start {start} is after end {end}.")
    return (start, end)


def parse_scales(scales: Any) -> list[int] | str | None:
    """The scales a query asks for: ``None``, ``"all"`` or tile sizes (cells).

    Parameters
    ----------
    scales : None, str or sequence of int
        ``"all"``, a comma list such as ``"8,16"``, or integers; None (or ``""``):
        the query tile's scale only.

    Returns
    -------
    list of int, "all" or None
        Sorted distinct tile sizes, ``"all"``, or None.

    Raises
    ------
    SearchIndexError
        If a value is not a positive whole number (the form expected is named).
    """
    if scales is None or (isinstance(scales, str) and not scales.strip()):
        return None
    if isinstance(scales, str) and scales.strip().lower() == "all":
        return "all"
    parts = scales.split(",") if isinstance(scales, str) else list(scales)
    try:
        out = sorted({int(str(p).strip()) for p in parts})
    except ValueError:
        out = []
    if not out or out[0] < 1:
        raise SearchIndexError(f"scales={scales!r} is not 'all' or a comma list of tile "
                               "sizes in cells (e.g. 8,16).")
    return out


def _rounded(c: np.ndarray) -> np.ndarray:
    """Coordinates rounded to :func:`esdc.conventions.coordinate_decimals` of their step."""
    step = float(np.min(np.abs(np.diff(c)))) if c.size > 1 else 0.0
    return np.round(c, coordinate_decimals(step))


@dataclass(frozen=True)
class Neighbour:
    """One result: tile indices, centre coordinates (grid units), time, cosine distance.

    ``scale`` is the tile size in cells (0: not known); ``bounds`` the tile's
    ``(west, south, east, north)`` in the grid's units (x min, y min, x max, y max).
    """

    tile_y: int
    tile_x: int
    t: int | None
    y: float
    x: float
    time: str | None
    distance: float
    scale: int = 0
    bounds: tuple[float, float, float, float] | None = None

    def to_json(self, names: tuple[str, str]) -> dict[str, Any]:
        """JSON object in the grid's coordinate names (``lat``/``lon`` or ``y``/``x``)."""
        return {names[0]: self.y, names[1]: self.x, "time": self.time,
                "distance": self.distance, "tile_y": self.tile_y, "tile_x": self.tile_x,
                "scale": self.scale,
                "bounds": None if self.bounds is None else list(self.bounds)}


class ScaleIndex:
    """One embedding variable of a cube with its index: the tiles of one scale.

    Parameters
    ----------
    cube : pathlib.Path
        The cube.
    ds : xarray.Dataset
        The cube, opened (at the version indexed).
    variable : str
        Its embedding variable, ``(tile_y, tile_x, [time,] feature)``.

    Attributes
    ----------
    scale : int
        Tile size in cells.
    index, manifest
        The FAISS index and its manifest (:func:`esdc.search.index.load_index`).
    vectors : numpy.ndarray
        ``(tile_y, tile_x, [time,] F)`` float32, the time steps indexed.
    yc, xc : numpy.ndarray
        Tile centres (grid units, rounded to the grid's precision).
    ybounds, xbounds : numpy.ndarray
        ``(n, 2)`` tile edges.
    times : pandas.DatetimeIndex or None
        Time steps indexed (None: static embeddings).

    Raises
    ------
    SearchIndexError
        As :func:`esdc.search.index.load_index`, or if the vectors in the cube are not
        those indexed (``vectors_sha256``).
    """

    def __init__(self, cube: Path, ds: xr.Dataset, variable: str) -> None:
        self.variable = variable
        self.index, self.manifest = load_index(cube, variable, ds)
        emb = ds[variable]
        if TIME_DIM in emb.dims and self.manifest.time_steps:
            emb = emb.isel({TIME_DIM: slice(0, self.manifest.time_steps)})
        self.attrs = dict(emb.attrs)
        self.scale = int(emb.attrs[ATTR_TILE_SIZE])
        self.ydim, self.xdim = str(emb.dims[0]), str(emb.dims[1])
        self.names = tuple(emb.attrs.get(ATTR_TILE_DIMS, SPATIAL_DIMS[0]))
        self.has_time = emb.ndim == 4
        self.yc, self.xc = (_rounded(np.asarray(ds[d].values, dtype=float))
                            for d in (self.ydim, self.xdim))
        self.ybounds = np.asarray(ds[f"{self.ydim}_bounds"].values, dtype=float)
        self.xbounds = np.asarray(ds[f"{self.xdim}_bounds"].values, dtype=float)
        self.times = pd.DatetimeIndex(emb[TIME_DIM].values) if self.has_time else None
        self.shape = tuple(int(n) for n in emb.shape[:-1])
        self.dim = int(emb.shape[-1])
        self.vectors = np.asarray(emb.values, dtype="float32")
        self.centre = np.asarray(self.manifest.centre, dtype="float32")
        if self.manifest.vectors_sha256 and (vectors_sha256(self.vectors)
                                             != self.manifest.vectors_sha256):
            raise SearchIndexError(f"the embeddings {variable!r} in {cube} are not those the "
                                   "index was built from (re-embedded since, or being "
                                   "rewritten); rebuild the index with `esdc index` "
                                   "(esdc.search.build_index).")

    # ------------------------------------------------------------------ geometry
    @staticmethod
    def _locate(bounds: np.ndarray, value: float, what: str) -> int:
        lo, hi = bounds.min(axis=1), bounds.max(axis=1)
        hit = np.flatnonzero((value >= lo) & (value <= hi))
        if hit.size == 0:
            raise SearchIndexError(f"{what} {value} is outside the embedded grid "
                                   f"[{lo.min()}, {hi.max()}].")
        return int(hit[0])

    def time_index(self, time: str | None) -> int | None:
        """Nearest time step of ``time`` (None for static embeddings).

        Raises
        ------
        SearchIndexError
            If the embeddings vary in time and ``time`` is missing or not a date.
        """
        if self.times is None:
            return None
        if time is None:
            raise SearchIndexError("the embeddings vary in time: give time=DATE (e.g. "
                                   "2008-07).")
        try:
            t = pd.Timestamp(time)
        except ValueError:
            raise SearchIndexError(f"time={time!r} is not a date.") from None
        return int(self.times.get_indexer([t], method="nearest")[0])

    def tile_at(self, y: float, x: float, time: str | None = None) -> tuple[int, int, int | None]:
        """``(tile_y, tile_x, t)`` of the tile containing ``(y, x)`` (grid units).

        Raises
        ------
        SearchIndexError
            If the point lies outside the embedded grid or the time is missing.
        """
        return (self._locate(self.ybounds, y, self.names[0]),
                self._locate(self.xbounds, x, self.names[1]), self.time_index(time))

    def vector_of(self, tile_y: int, tile_x: int, t: int | None = None) -> np.ndarray:
        """The tile's embedding ``(F,)`` as stored.

        Raises
        ------
        SearchIndexError
            If the tile has no embedding (too few valid cells).
        """
        v = self.vectors[tile_y, tile_x] if t is None else self.vectors[tile_y, tile_x, t]
        if not np.isfinite(v).all():
            raise SearchIndexError(f"tile ({tile_y}, {tile_x}) has no embedding (too few valid "
                                   "cells).")
        return v

    def flat_id(self, tile_y: int, tile_x: int, t: int | None) -> int:
        """The tile's id in the index (flat C-order index into ``(tile_y, tile_x, [time])``)."""
        return int(np.ravel_multi_index((tile_y, tile_x) if t is None else (tile_y, tile_x, t),
                                        self.shape))

    def tile_of(self, i: int) -> tuple[int, int, int | None]:
        """``(tile_y, tile_x, t)`` of an id of the index."""
        idx = np.unravel_index(int(i), self.shape)
        return int(idx[0]), int(idx[1]), (int(idx[2]) if self.has_time else None)

    def bounds_of(self, tile_y: int, tile_x: int) -> tuple[float, float, float, float]:
        """``(west, south, east, north)`` of a tile in the grid's units (x/y min, max)."""
        yb, xb = self.ybounds[tile_y], self.xbounds[tile_x]
        return (float(xb.min()), float(yb.min()), float(xb.max()), float(yb.max()))

    def describe(self, ty: int, tx: int, t: int | None,
                 bounds: bool = True) -> dict[str, Any]:
        """A tile's centre (the grid's coordinate names), date, indices, scale (and bounds)."""
        out = {self.names[0]: float(self.yc[ty]), self.names[1]: float(self.xc[tx]),
               "time": None if t is None or self.times is None else str(self.times[t].date()),
               "tile_y": ty, "tile_x": tx, "scale": self.scale}
        return out | ({"bounds": list(self.bounds_of(ty, tx))} if bounds else {})

    def allowed(self, bbox: tuple[float, float, float, float] | None,
                time_range: tuple[str | None, str | None] | None) -> np.ndarray | None:
        """Ids of the tiles a filter keeps (None: no filter).

        A tile is kept when its centre lies in ``bbox`` (west, south, east, north; west >
        east crosses the antimeridian) and its time in ``time_range`` (inclusive).

        Raises
        ------
        SearchIndexError
            For a malformed time range (:func:`parse_time_range`).
        GridError
            For a malformed ``bbox``.
        """
        time_range = None if time_range is None else parse_time_range(*time_range)
        if bbox is None and time_range is None:
            return None
        ok_y = np.ones(self.shape[0], bool)
        ok_x = np.ones(self.shape[1], bool)
        box = parse_bbox(bbox)
        if box is not None:
            w, s, e, n = box
            ok_y = (self.yc >= s) & (self.yc <= n)
            ok_x = ((self.xc >= w) & (self.xc <= e)) if w <= e else ((self.xc >= w) | (
                self.xc <= e))  # crosses the antimeridian
        mask = ok_y[:, None] & ok_x[None, :]
        if self.times is not None:
            ok_t = np.ones(len(self.times), bool)
            if time_range is not None:
                lo, hi = time_range
                if lo is not None:
                    ok_t &= self.times >= pd.Timestamp(lo)
                if hi is not None:
                    ok_t &= self.times <= pd.Timestamp(hi)
            mask = mask[:, :, None] & ok_t[None, None, :]
        return np.flatnonzero(mask.ravel()).astype("int64")

    # ------------------------------------------------------------------ search
    def nearest(self, v: np.ndarray, k: int, allowed: np.ndarray | None,
                skip: set[int]) -> list[Neighbour]:
        """The ``k`` tiles of this scale nearest to ``v`` ``(F,)``, ``allowed``, not ``skip``.

        ``v`` is centred on :attr:`centre` and L2-normalised (the index's space).
        """
        import faiss

        params = None if allowed is None else \
            faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
        sims, ids = self.index.search(np.ascontiguousarray(v[None], "float32"),
                                      min(k + len(skip), self.manifest.count), params=params)
        out = []
        for sim, i in zip(sims[0], ids[0], strict=True):
            if i < 0 or int(i) in skip:
                continue
            ty, tx, t = self.tile_of(int(i))
            out.append(Neighbour(ty, tx, t, float(self.yc[ty]), float(self.xc[tx]),
                                 None if t is None or self.times is None
                                 else str(self.times[t].date()), max(0.0, float(1.0 - sim)),
                                 self.scale, self.bounds_of(ty, tx)))
        return out[:k]
