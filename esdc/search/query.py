"""Queries: "tiles like this one", by tile (lat/lon/time), by vector or by image array.

A :class:`SearchEngine` holds everything a query uses (the FAISS index, its manifest
and the embedding vectors, all in memory; the cube only for tile pixels) and never
changes after it is made: a rebuilt index is picked up by making a new engine (the
HTTP service swaps engines, :mod:`esdc.search.http`), so one engine's answers always
come from one index generation. Of a cube whose time axis grows (a live archive) the
engine reads the time steps its index covers (the manifest's ``time_steps``): steps
appended or embedded since are searched once an index update covers them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from esdc.conventions import (
    ATTR_INPUTS,
    ATTR_TILE_DIMS,
    ATTR_TILE_SIZE,
    SPATIAL_DIMS,
    TIME_DIM,
    coordinate_decimals,
)
from esdc.errors import SearchIndexError
from esdc.grid import parse_bbox
from esdc.search.feedback import MAX_TILES, NEGATIVE_WEIGHT, FeedbackTile, rocchio
from esdc.search.index import (
    embedding_variable,
    embedding_variables,
    load_index,
    normalise,
    searched_version,
    vectors_sha256,
)
from esdc.search.render import display_pixels, png_bytes
from esdc.storage import open_cube, resolve

__all__ = ["Neighbour", "SearchEngine", "SearchResult", "parse_time_range"]


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


def _rounded(c: np.ndarray) -> np.ndarray:
    """Coordinates rounded to :func:`esdc.conventions.coordinate_decimals` of their step."""
    step = float(np.min(np.abs(np.diff(c)))) if c.size > 1 else 0.0
    return np.round(c, coordinate_decimals(step))


@dataclass(frozen=True)
class Neighbour:
    """One result: tile indices, centre coordinates (grid units), time, cosine distance."""

    tile_y: int
    tile_x: int
    t: int | None
    y: float
    x: float
    time: str | None
    distance: float

    def to_json(self, names: tuple[str, str]) -> dict[str, Any]:
        """JSON object in the grid's coordinate names (``lat``/``lon`` or ``y``/``x``)."""
        return {names[0]: self.y, names[1]: self.x, "time": self.time,
                "distance": self.distance, "tile_y": self.tile_y, "tile_x": self.tile_x}


@dataclass(frozen=True)
class SearchResult:
    """A query and its neighbours, nearest first."""

    query: dict[str, Any]
    neighbours: list[Neighbour] = field(default_factory=list)
    names: tuple[str, str] = SPATIAL_DIMS[0]

    def to_json(self) -> dict[str, Any]:
        """``{"query": {...}, "neighbours": [{lat|y, lon|x, time, distance}, ...]}``."""
        return {"query": self.query, "neighbours": [n.to_json(self.names)
                                                    for n in self.neighbours]}


class SearchEngine:
    """Search one embedding variable of a cube with its FAISS index.

    Parameters
    ----------
    cube : str or path-like
        The cube.
    variable : str, optional
        Embedding variable (default: the smallest tile size).
    version : str, optional
        Version of a versioned cube (a tag or snapshot id) to search: it must be the
        one the index was built from (the default).

    Attributes
    ----------
    manifest : esdc.search.index.Manifest
        The index's manifest (lineage, ``generation``, checksums).
    identity : str
        ``"GENERATION-SHA16"``: the index generation and the first 16 hex digits of
        the index file's SHA-256; names the index that answers (HTTP header
        ``X-Esdc-Index``).
    version : str or None
        The version (snapshot id) of a versioned cube that is read: the one indexed.

    Raises
    ------
    CubeNotFoundError
        If there is no cube at ``cube``.
    StorageError
        If ``version`` names nothing, or is given for a cube without versions.
    SearchIndexError
        If the cube has no embeddings or index, the index's lineage does not match,
        ``version`` is not the version indexed, the
        version indexed is not in the history of a versioned cube's newest version, or
        the vectors in the cube are not those that were indexed (``vectors_sha256``
        of the manifest: re-embedded, or being rewritten, since the index was built).
    """

    def __init__(self, cube: str | Path, variable: str | None = None,
                 version: str | None = None) -> None:
        self.cube = Path(cube)
        self.ds = open_cube(self.cube)
        self.variable = embedding_variable(self.ds, variable)
        # a versioned cube is read at the version indexed: later commits do not change it
        self.version = searched_version(self.cube, self.variable, version)
        if self.version is not None:
            target = resolve(self.cube)
            if not target.is_ancestor(self.version):
                raise SearchIndexError(
                    f"the index of {self.variable!r} was built from version {self.version} of "
                    f"{self.cube}, which is not in the history of its newest version "
                    f"{target.current_version()}; rebuild it with `esdc index {self.cube}`.")
            self.ds = target.open(version=self.version)
        self.index, self.manifest = load_index(self.cube, self.variable, self.ds)
        if TIME_DIM in self.ds[self.variable].dims and self.manifest.time_steps:
            # the steps indexed: those appended since are not searched until indexed
            self.ds = self.ds.isel({TIME_DIM: slice(0, self.manifest.time_steps)})
        emb = self.ds[self.variable]
        self.attrs = dict(emb.attrs)
        self.ydim, self.xdim = str(emb.dims[0]), str(emb.dims[1])
        self.names = tuple(emb.attrs.get(ATTR_TILE_DIMS, SPATIAL_DIMS[0]))
        self.has_time = emb.ndim == 4
        # tile centres rounded to the grid's precision (JSON shows -3.875, not -3.87500...36)
        self.yc, self.xc = (_rounded(np.asarray(self.ds[d].values, dtype=float))
                            for d in (self.ydim, self.xdim))
        self.ybounds = np.asarray(self.ds[f"{self.ydim}_bounds"].values, dtype=float)
        self.xbounds = np.asarray(self.ds[f"{self.xdim}_bounds"].values, dtype=float)
        self.times = pd.DatetimeIndex(self.ds[TIME_DIM].values) if self.has_time else None
        self.shape = emb.shape[:-1]
        self.dim = int(emb.shape[-1])
        self.tile_size = int(emb.attrs[ATTR_TILE_SIZE])
        #: tile size (cells) -> embedding variable, for every embedding of the cube
        self.scales = {int(self.ds[v].attrs[ATTR_TILE_SIZE]): v
                       for v in embedding_variables(self.ds)}
        self._vectors = np.asarray(emb.values, dtype="float32")
        if self.manifest.vectors_sha256 and (vectors_sha256(self._vectors)
                                             != self.manifest.vectors_sha256):
            raise SearchIndexError(f"the embeddings {self.variable!r} in {self.cube} are not "
                                   "those the index was built from (re-embedded since, or "
                                   "being rewritten); rebuild the index with `esdc index` "
                                   "(esdc.search.build_index).")
        self.identity = f"{self.manifest.generation}-{self.manifest.index_sha256[:16]}"

    # ------------------------------------------------------------------ geometry
    def _locate(self, bounds: np.ndarray, value: float, what: str) -> int:
        lo, hi = bounds.min(axis=1), bounds.max(axis=1)
        hit = np.flatnonzero((value >= lo) & (value <= hi))
        if hit.size == 0:
            raise SearchIndexError(f"{what} {value} is outside the embedded grid "
                                   f"[{lo.min()}, {hi.max()}].")
        return int(hit[0])

    def _time_index(self, time: str | None) -> int | None:
        if self.times is None:
            return None
        if time is None:
            raise SearchIndexError("the embeddings vary in time: give time=DATE (e.g. "
                                   "2008-07).")
        try:
            t = pd.Timestamp(time)
        except ValueError:
            raise SearchIndexError(f"time={time!r} is not a date.") from None
        i = int(self.times.get_indexer([t], method="nearest")[0])
        return i

    def tile_at(self, y: float, x: float, time: str | None = None) -> tuple[int, int, int | None]:
        """``(tile_y, tile_x, t)`` of the tile containing ``(y, x)`` (lat/lon in degrees).

        Raises
        ------
        SearchIndexError
            If the point lies outside the embedded grid or the time is missing.
        """
        return (self._locate(self.ybounds, y, self.names[0]),
                self._locate(self.xbounds, x, self.names[1]), self._time_index(time))

    def vector_of(self, tile_y: int, tile_x: int, t: int | None = None) -> np.ndarray:
        """The tile's embedding ``(F,)``.

        Raises
        ------
        SearchIndexError
            If the tile has no embedding (too few valid cells).
        """
        v = self._vectors[tile_y, tile_x] if t is None else self._vectors[tile_y, tile_x, t]
        if not np.isfinite(v).all():
            raise SearchIndexError(f"tile ({tile_y}, {tile_x}) has no embedding (too few valid "
                                   "cells).")
        return v

    def _id_to_tile(self, i: int) -> tuple[int, int, int | None]:
        idx = np.unravel_index(int(i), self.shape)
        return int(idx[0]), int(idx[1]), (int(idx[2]) if self.has_time else None)

    def _allowed(self, bbox: tuple[float, float, float, float] | None,
                 time_range: tuple[str | None, str | None] | None) -> np.ndarray | None:
        time_range = None if time_range is None else parse_time_range(*time_range)
        if bbox is None and time_range is None:
            return None
        ny, nx = self.shape[0], self.shape[1]
        ok_y = np.ones(ny, bool)
        ok_x = np.ones(nx, bool)
        box = parse_bbox(bbox)
        if box is not None:
            w, s, e, n = box
            ok_y = (self.yc >= s) & (self.yc <= n)
            ok_x = ((self.xc >= w) & (self.xc <= e)) if w <= e else ((self.xc >= w) | (
                self.xc <= e))  # crosses the antimeridian
        mask = ok_y[:, None] & ok_x[None, :]
        if self.has_time:
            assert self.times is not None
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
    def search_vector(self, vector: Any, k: int = 10,
                      bbox: tuple[float, float, float, float] | None = None,
                      time_range: tuple[str | None, str | None] | None = None,
                      query: dict[str, Any] | None = None) -> SearchResult:
        """The ``k`` tiles nearest to ``vector`` (cosine), optionally filtered.

        Parameters
        ----------
        vector : array-like
            ``(F,)`` embedding (normalised here).
        k : int
            Number of neighbours, 1 .. number of indexed tiles.
        bbox : (west, south, east, north), optional
            Keep tiles whose centre lies inside (grid units; west > east crosses the
            antimeridian); checked by :func:`esdc.grid.parse_bbox`.
        time_range : (start, end), optional
            Keep tiles whose time lies inside (inclusive; either may be None, open);
            checked by :func:`parse_time_range`.
        query : dict, optional
            What the result's ``query`` reports (default ``{"vector": True}``).

        Returns
        -------
        SearchResult
            Neighbours, nearest first (fewer than ``k`` when the filters leave fewer).

        Raises
        ------
        SearchIndexError
            For a vector of the wrong dimension or not finite, or a ``k`` out of range.
        GridError
            For a malformed ``bbox``.
        """
        v = np.asarray(vector, dtype="float32").reshape(-1)
        if v.shape[0] != self.dim:
            raise SearchIndexError(f"query vector has {v.shape[0]} values; the index holds "
                                   f"{self.dim}-dimensional embeddings.")
        if not np.isfinite(v).all():
            raise SearchIndexError("query vector has NaN or infinite values.")
        if not 1 <= k <= self.manifest.count:
            raise SearchIndexError(f"k = {k} must be between 1 and {self.manifest.count} "
                                   "(indexed tiles).")
        v = normalise(v[None], np.asarray(self.manifest.centre, dtype="float32"))[0]
        return self._nearest(v, k, bbox, time_range, query or {"vector": True})

    def _nearest(self, v: np.ndarray, k: int, bbox: tuple[float, float, float, float] | None,
                 time_range: tuple[str | None, str | None] | None, query: dict[str, Any],
                 exclude: np.ndarray | None = None) -> SearchResult:
        """The ``k`` tiles nearest to a centred, normalised ``v`` ``(F,)``, not in ``exclude``."""
        import faiss

        allowed = self._allowed(bbox, time_range)
        params = None
        if allowed is not None:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
        skip = set() if exclude is None else {int(i) for i in exclude}
        sims, ids = self.index.search(v[None], min(k + len(skip), self.manifest.count),
                                      params=params)
        out = []
        for sim, i in zip(sims[0], ids[0], strict=True):
            if i < 0 or int(i) in skip:
                continue
            ty, tx, t = self._id_to_tile(int(i))
            out.append(Neighbour(ty, tx, t, float(self.yc[ty]), float(self.xc[tx]),
                                 None if t is None or self.times is None
                                 else str(self.times[t].date()), max(0.0, float(1.0 - sim))))
        return SearchResult(query, out[:k], self.names)  # type: ignore[arg-type]

    def search_tile(self, y: float, x: float, time: str | None = None, k: int = 10,
                    bbox: tuple[float, float, float, float] | None = None,
                    time_range: tuple[str | None, str | None] | None = None) -> SearchResult:
        """Neighbours of the tile containing ``(y, x)`` (and ``time``).

        The tile itself comes first in an exact index (distance 0).

        Parameters
        ----------
        y, x : float
            The point, in the grid's coordinates (``lat``/``lon`` in degrees for
            geographic grids, else ``y``/``x`` in the grid's units).
        time : str, optional
            Date of the query tile (nearest time step); required when the embeddings
            vary in time.
        k, bbox, time_range
            As :meth:`search_vector`.

        Returns
        -------
        SearchResult
            Its ``query`` names the tile (centre, time, indices), variable and ``k``.

        Raises
        ------
        SearchIndexError
            If the point is outside the embedded grid, the time is missing or not a date,
            the tile has no embedding, or ``k`` is out of range.
        GridError
            For a malformed ``bbox``.
        """
        ty, tx, t = self.tile_at(y, x, time)
        q = {**self._describe(ty, tx, t), "variable": self.variable, "k": k}
        return self.search_vector(self.vector_of(ty, tx, t), k, bbox, time_range, q)

    def refine(self, positive: Sequence[FeedbackTile | Mapping[str, Any]],
               negative: Sequence[FeedbackTile | Mapping[str, Any]] = (), k: int = 10,
               bbox: tuple[float, float, float, float] | None = None,
               time_range: tuple[str | None, str | None] | None = None,
               negative_weight: float = NEGATIVE_WEIGHT,
               exclude_marked: bool = True) -> SearchResult:
        """A new ranking from marked tiles: relevance feedback (:mod:`esdc.search.feedback`).

        The query is the Rocchio vector of the tiles' embeddings (mean of the positives
        minus ``negative_weight`` times the mean of the negatives, in the index's
        centred, L2-normalised space), searched like any query.

        Parameters
        ----------
        positive : sequence of FeedbackTile or mapping
            Tiles like those wanted (at least one; usually the first query tile is
            one). A mapping is ``{"lat", "lon", "scale", "time"}`` (``y``/``x`` for
            ``lat``/``lon``; ``scale``, the tile size in cells, and ``time`` optional).
        negative : sequence of FeedbackTile or mapping
            Tiles not wanted (may be empty).
        k, bbox, time_range
            As :meth:`search_vector`.
        negative_weight : float
            Weight of the negatives' mean (>= 0).
        exclude_marked : bool
            Leave the marked tiles out of the answer (default), so that it holds only
            tiles not yet judged.

        Returns
        -------
        SearchResult
            Its ``query`` lists the marked tiles (centre, time, indices, scale), the
            variable, ``k`` and ``negative_weight``.

        Raises
        ------
        SearchIndexError
            If there is no positive tile or more than ``MAX_TILES`` tiles, a tile lies
            outside the embedded grid, has a scale other than the one searched
            (``tile_size``), no embedding, or no time on a cube whose embeddings vary in
            time, the marked tiles cancel out, or ``k`` is out of range.
        GridError
            For a malformed ``bbox``.
        """
        if len(positive) + len(negative) > MAX_TILES:
            raise SearchIndexError(f"{len(positive) + len(negative)} marked tiles: at most "
                                   f"{MAX_TILES} per refinement.")
        if not 1 <= k <= self.manifest.count:
            raise SearchIndexError(f"k = {k} must be between 1 and {self.manifest.count} "
                                   "(indexed tiles).")
        centre = np.asarray(self.manifest.centre, dtype="float32")
        marked: dict[str, list[dict[str, Any]]] = {"positive": [], "negative": []}
        vectors: dict[str, list[np.ndarray]] = {"positive": [], "negative": []}
        ids = []
        for role, tiles in (("positive", positive), ("negative", negative)):
            for n, given in enumerate(tiles, 1):
                try:
                    tile = given if isinstance(given, FeedbackTile) else \
                        FeedbackTile.from_mapping(given)
                    ty, tx, t, info = self._marked_tile(tile)
                    vectors[role].append(self.vector_of(ty, tx, t))
                except SearchIndexError as exc:
                    raise SearchIndexError(f"{role} tile {n}: {exc}") from None
                marked[role].append(info)
                ids.append(np.ravel_multi_index((ty, tx) if t is None else (ty, tx, t),
                                                self.shape))
        pos = normalise(np.stack(vectors["positive"]), centre) if vectors["positive"] \
            else np.zeros((0, self.dim), "float32")
        neg = normalise(np.stack(vectors["negative"]), centre) if vectors["negative"] else None
        q = rocchio(pos, neg, negative_weight)
        query = {"variable": self.variable, "k": k, **marked,
                 "negative_weight": float(negative_weight)}
        return self._nearest(q, k, bbox, time_range, query,
                             np.asarray(ids, "int64") if exclude_marked else None)

    def _marked_tile(self, tile: FeedbackTile) -> tuple[int, int, int | None, dict[str, Any]]:
        """Indices of a marked tile and its description (centre, time, indices, scale)."""
        if tile.scale is not None and tile.scale != self.tile_size:
            if tile.scale not in self.scales:
                raise SearchIndexError(f"scale={tile.scale} is not embedded in the cube; its "
                                       f"scales (cells per tile) are {sorted(self.scales)}.")
            raise SearchIndexError(f"scale={tile.scale} is not the scale searched: "
                                   f"{self.variable!r} has tiles of {self.tile_size} cells "
                                   f"(search variable={self.scales[tile.scale]!r} for "
                                   f"{tile.scale}).")
        ty, tx, t = self.tile_at(tile.y, tile.x, tile.time)
        return ty, tx, t, {**self._describe(ty, tx, t), "scale": self.tile_size}

    def _describe(self, ty: int, tx: int, t: int | None) -> dict[str, Any]:
        """A tile's centre (the grid's coordinate names), date and indices."""
        return {self.names[0]: float(self.yc[ty]), self.names[1]: float(self.xc[tx]),
                "time": None if t is None or self.times is None else str(self.times[t].date()),
                "tile_y": ty, "tile_x": tx}

    def search_image(self, image: np.ndarray, encoder: Any, k: int = 10, **kw: Any) -> \
            SearchResult:
        """Neighbours of an image ``(C, H, W)`` normalised like the cube's inputs.

        The image is embedded with ``encoder``, an :class:`esdc.embed.EncoderBundle` of
        the model the index was built from.

        Parameters
        ----------
        image : numpy.ndarray
            ``(C, H, W)`` float32, channels in the order of the encoder's inputs.
        encoder : esdc.embed.EncoderBundle
            The encoder (its ``sha256`` must be the manifest's ``model_sha256``).
        k : int
            Number of neighbours.
        **kw
            ``bbox``, ``time_range`` (:meth:`search_vector`).

        Returns
        -------
        SearchResult

        Raises
        ------
        SearchIndexError
            If the encoder is not the model the index was built from, or as
            :meth:`search_vector`.
        """
        if encoder.sha256 != self.manifest.model_sha256:
            raise SearchIndexError("the encoder is not the model the index was built from.")
        vec = encoder.encode(np.asarray(image, dtype="float32")[None])[0]
        return self.search_vector(vec, k, query={"image": list(np.shape(image))}, **kw)

    def tile_image(self, tile_y: int, tile_x: int, t: int | None = None) -> np.ndarray:
        """Pixels of a tile for display (:func:`esdc.search.render.display_pixels`).

        Parameters
        ----------
        tile_y, tile_x : int
            The tile's row and column in the embedding grid.
        t : int, optional
            Time step (default 0).

        Returns
        -------
        numpy.ndarray
            RGB ``(T, T, 3)`` in [0, 1] when the cube has Blue Marble channels, else the
            first input variable ``(T, T)`` (``T`` the tile size in cells; rows, columns
            in the cube's order).
        """
        size = int(self.attrs[ATTR_TILE_SIZE])
        ydim, xdim = (str(d) for d in self.attrs.get(ATTR_TILE_DIMS, SPATIAL_DIMS[0]))
        sel = {ydim: slice(tile_y * size, (tile_y + 1) * size),
               xdim: slice(tile_x * size, (tile_x + 1) * size)}
        return display_pixels(self.ds, self.attrs[ATTR_INPUTS], sel, t)

    def tile_png(self, tile_y: int, tile_x: int, t: int | None = None) -> bytes:
        """The tile's pixels (:meth:`tile_image`) as PNG bytes.

        Raises
        ------
        SearchIndexError
            If the tile is outside the embedding grid or ``t`` is not a time step.
        """
        nty, ntx = int(self.shape[0]), int(self.shape[1])
        if not (0 <= tile_y < nty and 0 <= tile_x < ntx):
            raise SearchIndexError(f"tile ({tile_y}, {tile_x}) is outside the embedding grid "
                                   f"of {nty} x {ntx} tiles.")
        self.check_time_step(t)
        return png_bytes(self.tile_image(tile_y, tile_x, t))

    def check_time_step(self, t: int | None) -> None:
        """Check that ``t`` (None: the first) is a time step of the cube.

        Raises
        ------
        SearchIndexError
            If it is not.
        """
        nt = 1 if self.times is None else len(self.times)
        if t is not None and not 0 <= t < nt:
            raise SearchIndexError(f"t = {t} is outside the {nt} time step(s) of the cube.")

    def quicklook(self, result: SearchResult, path: str | Path) -> Path:
        """Write a PNG mosaic: the query tile, then its neighbours with location and distance.

        Parameters
        ----------
        result : SearchResult
            A result of this engine.
        path : str or path-like
            The PNG file (its folder must exist).

        Returns
        -------
        pathlib.Path
            ``path``.
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        q = result.query
        tiles = []
        if "tile_y" in q:
            tiles.append(("query", int(q["tile_y"]), int(q["tile_x"]), None))
        tiles += [(f"d={n.distance:.2g}", n.tile_y, n.tile_x, n.t) for n in result.neighbours]
        cols = min(6, len(tiles))
        rows = -(-len(tiles) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.5 * rows), squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for ax, (label, ty, tx, t) in zip(axes.ravel(), tiles, strict=False):
            img = self.tile_image(ty, tx, t)
            ax.imshow(img, cmap=None if img.ndim == 3 else "viridis")
            ax.set_title(f"{label}\n{self.yc[ty]:.1f}, {self.xc[tx]:.1f}", fontsize=8)
        fig.suptitle(f"{self.cube.name}: {self.variable} ({self.names[0]}, {self.names[1]}), "
                     "query then neighbours (cosine distance)", fontsize=9)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def describe(self) -> dict[str, Any]:
        """The manifest as a dict (for the HTTP health endpoint)."""
        return asdict(self.manifest)
