"""Queries: "tiles like this one", by tile (lat/lon/time), by vector or by image array.

A :class:`SearchEngine` holds everything a query uses (the FAISS indexes, their
manifests and the embedding vectors, all in memory; the cube only for tile pixels) and
never changes after it is made: a rebuilt index is picked up by making a new engine
(the HTTP service swaps engines, :mod:`esdc.search.http`), so one engine's answers
always come from one index generation. Of a cube whose time axis grows (a live
archive) the engine reads the time steps its index covers (the manifest's
``time_steps``): steps appended or embedded since are searched once an index update
covers them.

Multi-scale search: the engine loads every scale (tile size) of the cube that has an
index (:class:`esdc.search.scales.ScaleIndex`). A query tile is taken at one scale
(``scale``, default the finest); ``scales`` (``"all"`` or a list) says which scales
answer: each is searched with the query vector centred and normalised in its own
index's space, and the answers are merged by cosine distance. Marked tiles of a
refinement may be of any scale.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from esdc.conventions import ATTR_INPUTS, ATTR_TILE_DIMS, ATTR_TILE_SIZE, SPATIAL_DIMS
from esdc.errors import SearchIndexError
from esdc.search.feedback import MAX_TILES, NEGATIVE_WEIGHT, FeedbackTile, rocchio
from esdc.search.index import (
    embedding_variable,
    embedding_variables,
    index_dir,
    normalise,
    searched_version,
)
from esdc.search.render import display_pixels, png_bytes
from esdc.search.scales import Neighbour, ScaleIndex, parse_scales, parse_time_range
from esdc.storage import open_cube, resolve

__all__ = ["Neighbour", "SearchEngine", "SearchResult", "parse_scales", "parse_time_range"]


@dataclass(frozen=True)
class SearchResult:
    """A query and its neighbours, nearest first."""

    query: dict[str, Any]
    neighbours: list[Neighbour] = field(default_factory=list)
    names: tuple[str, str] = SPATIAL_DIMS[0]

    def to_json(self) -> dict[str, Any]:
        """``{"query": {...}, "neighbours": [{lat|y, lon|x, time, distance, ...}, ...]}``.

        Each neighbour also gives ``tile_y``, ``tile_x``, ``scale`` and ``bounds``.
        """
        return {"query": self.query, "neighbours": [n.to_json(self.names)
                                                    for n in self.neighbours]}


class SearchEngine:
    """Search a cube's embeddings, of one or several scales, with their FAISS indexes.

    Parameters
    ----------
    cube : str or path-like
        The cube.
    variable : str, optional
        Embedding variable of the default scale (default: the smallest tile size);
        every other scale with an index is loaded too.
    version : str, optional
        Version of a versioned cube (a tag or snapshot id) to search: it must be the
        one the index was built from (the default).

    Attributes
    ----------
    manifest : esdc.search.index.Manifest
        The default scale's index manifest (lineage, ``generation``, checksums).
    identity : str
        ``"GENERATION-SHA16"``: the index generation and the first 16 hex digits of
        the index file's SHA-256 (with several scales: of the SHA-256 of every scale's
        index); names the index that answers (HTTP header ``X-Esdc-Index``).
    version : str or None
        The version (snapshot id) of a versioned cube that is read: the one indexed.
    scales : dict
        Tile size (cells) -> embedding variable, for every embedding of the cube.
    levels : dict
        Tile size -> :class:`~esdc.search.scales.ScaleIndex`, for every scale searchable
        (with an index that loads); ``unavailable`` gives why the others are not.

    Raises
    ------
    CubeNotFoundError
        If there is no cube at ``cube``.
    StorageError
        If ``version`` names nothing, or is given for a cube without versions.
    SearchIndexError
        If the cube has no embeddings or the default scale no index, the index's lineage
        does not match, ``version`` is not the version indexed, the
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
        #: tile size (cells) -> embedding variable, for every embedding of the cube
        self.scales = {int(self.ds[v].attrs[ATTR_TILE_SIZE]): v
                       for v in embedding_variables(self.ds)}
        main = ScaleIndex(self.cube, self.ds, self.variable)
        levels, self.unavailable = {main.scale: main}, {}
        for size, name in self.scales.items():
            if name == self.variable:
                continue
            if not (index_dir(self.cube) / f"{name}.json").exists():
                self.unavailable[size] = "it has no index"
                continue
            try:
                levels[size] = ScaleIndex(self.cube, self.ds, name)
            except SearchIndexError as exc:  # another scale's stale index: not searchable
                self.unavailable[size] = str(exc)
        self.levels: dict[int, ScaleIndex] = dict(sorted(levels.items()))
        self.main = main
        # the default scale, as attributes (one-scale API)
        self.index, self.manifest, self.attrs = main.index, main.manifest, main.attrs
        self.ydim, self.xdim, self.names = main.ydim, main.xdim, main.names
        self.has_time, self.times, self.shape, self.dim = (main.has_time, main.times,
                                                           main.shape, main.dim)
        self.yc, self.xc, self.ybounds, self.xbounds = main.yc, main.xc, main.ybounds, \
            main.xbounds
        self.tile_size = main.scale
        self._vectors = main.vectors
        if len(self.levels) == 1:
            sha = self.manifest.index_sha256[:16]
        else:
            sha = hashlib.sha256(" ".join(f"{s}:{v.manifest.index_sha256}" for s, v in
                                          self.levels.items()).encode()).hexdigest()[:16]
        self.identity = f"{self.manifest.generation}-{sha}"

    # ------------------------------------------------------------------ geometry
    def level(self, scale: int | None = None) -> ScaleIndex:
        """The scale of ``scale`` cells per tile (None: the default scale).

        Raises
        ------
        SearchIndexError
            If the cube holds no embedding of that scale, or it has no usable index (the
            scales held and searchable are named).
        """
        if scale is None:
            return self.main
        if scale in self.levels:
            return self.levels[int(scale)]
        if scale not in self.scales:
            raise SearchIndexError(f"scale={scale} is not embedded in the cube; its scales "
                                   f"(cells per tile) are {sorted(self.scales)}.")
        raise SearchIndexError(
            f"scale={scale} is not the scale searched: {self.variable!r} has tiles of "
            f"{self.tile_size} cells (search variable={self.scales[scale]!r} for {scale} "
            f"once it is indexed, `esdc index {self.cube}`: {self.unavailable.get(scale)}); "
            f"the scales searchable are {sorted(self.levels)}.")

    def targets(self, scales: Any = None, default: Sequence[int] = ()) -> list[ScaleIndex]:
        """The scales a query searches.

        Parameters
        ----------
        scales : None, "all", str or sequence of int
            As :func:`~esdc.search.scales.parse_scales`; None: ``default``.
        default : sequence of int
            Scales searched when ``scales`` is None (empty: the default scale).

        Returns
        -------
        list of ScaleIndex
            Finest first.

        Raises
        ------
        SearchIndexError
            If ``scales`` is malformed or names a scale not held or not indexed (the
            scales held and searchable are named).
        """
        asked = parse_scales(scales)
        if asked == "all":
            return list(self.levels.values())
        sizes = sorted(set(asked if asked is not None else default or [self.tile_size]))
        bad = [s for s in sizes if s not in self.levels]
        if bad:
            raise SearchIndexError(
                f"scales={bad}: the cube holds embeddings of {sorted(self.scales)} cells per "
                f"tile, indexed and searchable: {sorted(self.levels)}"
                + ("" if set(bad) - set(self.scales) else f" (index them: `esdc index "
                                                          f"{self.cube}`)") + ".")
        return [self.levels[s] for s in sizes]

    def tile_at(self, y: float, x: float, time: str | None = None,
                scale: int | None = None) -> tuple[int, int, int | None]:
        """``(tile_y, tile_x, t)`` of the tile containing ``(y, x)`` (lat/lon in degrees).

        Raises
        ------
        SearchIndexError
            If the point lies outside the embedded grid, the time is missing or the
            scale is not searchable.
        """
        return self.level(scale).tile_at(y, x, time)

    def vector_of(self, tile_y: int, tile_x: int, t: int | None = None,
                  scale: int | None = None) -> np.ndarray:
        """The tile's embedding ``(F,)`` (of the default scale, or ``scale``).

        Raises
        ------
        SearchIndexError
            If the tile has no embedding (too few valid cells).
        """
        return self.level(scale).vector_of(tile_y, tile_x, t)

    def _allowed(self, bbox: tuple[float, float, float, float] | None,
                 time_range: tuple[str | None, str | None] | None) -> np.ndarray | None:
        return self.main.allowed(bbox, time_range)

    # ------------------------------------------------------------------ search
    @staticmethod
    def _check_k(k: int, targets: list[ScaleIndex]) -> None:
        count = sum(t.manifest.count for t in targets)
        if not 1 <= k <= count:
            raise SearchIndexError(f"k = {k} must be between 1 and {count} (indexed tiles).")

    def search_vector(self, vector: Any, k: int = 10,
                      bbox: tuple[float, float, float, float] | None = None,
                      time_range: tuple[str | None, str | None] | None = None,
                      query: dict[str, Any] | None = None, *,
                      scales: Any = None) -> SearchResult:
        """The ``k`` tiles nearest to ``vector`` (cosine), optionally filtered.

        Parameters
        ----------
        vector : array-like
            ``(F,)`` embedding (normalised here, in each scale's index space).
        k : int
            Number of neighbours, 1 .. number of indexed tiles (of the scales searched).
        bbox : (west, south, east, north), optional
            Keep tiles whose centre lies inside (grid units; west > east crosses the
            antimeridian); checked by :func:`esdc.grid.parse_bbox`.
        time_range : (start, end), optional
            Keep tiles whose time lies inside (inclusive; either may be None, open);
            checked by :func:`parse_time_range`.
        query : dict, optional
            What the result's ``query`` reports (default ``{"vector": True}``).
        scales : None, "all", str or sequence of int
            Scales searched (:meth:`targets`; default: the default scale), merged by
            distance.

        Returns
        -------
        SearchResult
            Neighbours, nearest first (fewer than ``k`` when the filters leave fewer).

        Raises
        ------
        SearchIndexError
            For a vector of the wrong dimension or not finite, a ``k`` out of range, or
            ``scales`` not held.
        GridError
            For a malformed ``bbox``.
        """
        v = np.asarray(vector, dtype="float32").reshape(-1)
        if v.shape[0] != self.dim:
            raise SearchIndexError(f"query vector has {v.shape[0]} values; the index holds "
                                   f"{self.dim}-dimensional embeddings.")
        if not np.isfinite(v).all():
            raise SearchIndexError("query vector has NaN or infinite values.")
        targets = self.targets(scales)
        self._check_k(k, targets)
        return self._ranked(v[None], None, 0.0, targets, k, bbox, time_range,
                            query or {"vector": True})

    def _ranked(self, pos: np.ndarray, neg: np.ndarray | None, weight: float,
                targets: list[ScaleIndex], k: int,
                bbox: tuple[float, float, float, float] | None,
                time_range: tuple[str | None, str | None] | None, query: dict[str, Any],
                exclude: dict[int, set[int]] | None = None) -> SearchResult:
        """Nearest tiles of ``targets`` to the Rocchio query of raw ``pos``/``neg`` (n, F).

        Each scale is searched in its own index space (centre); answers merge by distance.
        """
        found: list[Neighbour] = []
        for lev in targets:
            p = normalise(pos, lev.centre)
            q = p[0] if neg is None and len(p) == 1 and weight == 0.0 else \
                rocchio(p, None if neg is None else normalise(neg, lev.centre), weight)
            found += lev.nearest(q, k, lev.allowed(bbox, time_range),
                                 (exclude or {}).get(lev.scale, set()))
        found.sort(key=lambda n: n.distance)  # stable: ties keep the finer scale first
        return SearchResult(query, found[:k], self.names)  # type: ignore[arg-type]

    def search_tile(self, y: float, x: float, time: str | None = None, k: int = 10,
                    bbox: tuple[float, float, float, float] | None = None,
                    time_range: tuple[str | None, str | None] | None = None, *,
                    scale: int | None = None, scales: Any = None) -> SearchResult:
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
        scale : int, optional
            The query tile's size in cells (default: the default scale, the finest).
        scales : None, "all", str or sequence of int
            Scales of the neighbours (:meth:`targets`; default: ``scale``); several are
            merged by distance.

        Returns
        -------
        SearchResult
            Its ``query`` names the tile (centre, time, indices, ``scale``, ``bounds``),
            variable, ``k`` and the ``scales`` searched; each neighbour has its
            ``scale`` and ``bounds``.

        Raises
        ------
        SearchIndexError
            If the point is outside the embedded grid, the time is missing or not a date,
            the tile has no embedding, ``k`` is out of range, or ``scale``/``scales``
            are not held (the scales held are named).
        GridError
            For a malformed ``bbox``.
        """
        lev = self.level(scale)
        targets = self.targets(scales, [lev.scale])
        ty, tx, t = lev.tile_at(y, x, time)
        self._check_k(k, targets)
        q = {**lev.describe(ty, tx, t), "variable": lev.variable, "k": k,
             "scales": [s.scale for s in targets]}
        return self._ranked(lev.vector_of(ty, tx, t)[None], None, 0.0, targets, k, bbox,
                            time_range, q)

    def refine(self, positive: Sequence[FeedbackTile | Mapping[str, Any]],
               negative: Sequence[FeedbackTile | Mapping[str, Any]] = (), k: int = 10,
               bbox: tuple[float, float, float, float] | None = None,
               time_range: tuple[str | None, str | None] | None = None,
               negative_weight: float = NEGATIVE_WEIGHT,
               exclude_marked: bool = True, *, scale: int | None = None,
               scales: Any = None) -> SearchResult:
        """A new ranking from marked tiles: relevance feedback (:mod:`esdc.search.feedback`).

        The query is the Rocchio vector of the tiles' embeddings (mean of the positives
        minus ``negative_weight`` times the mean of the negatives, in the index's
        centred, L2-normalised space: each scale searched has its own), searched like
        any query. Marked tiles may be of any scale held.

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
        scale : int, optional
            Scale of the marked tiles that give none (default: the default scale).
        scales : None, "all", str or sequence of int
            Scales of the answer (:meth:`targets`; default: those of the positives).

        Returns
        -------
        SearchResult
            Its ``query`` lists the marked tiles (centre, time, indices, scale, bounds),
            the variable, ``k``, the ``scales`` searched and ``negative_weight``.

        Raises
        ------
        SearchIndexError
            If there is no positive tile or more than ``MAX_TILES`` tiles, a tile lies
            outside the embedded grid, has a scale the cube does not hold or has no
            index for, no embedding, or no time on a cube whose embeddings vary in
            time, the marked tiles cancel out, or ``k`` is out of range.
        GridError
            For a malformed ``bbox``.
        """
        if len(positive) + len(negative) > MAX_TILES:
            raise SearchIndexError(f"{len(positive) + len(negative)} marked tiles: at most "
                                   f"{MAX_TILES} per refinement.")
        marked: dict[str, list[dict[str, Any]]] = {"positive": [], "negative": []}
        vectors: dict[str, list[np.ndarray]] = {"positive": [], "negative": []}
        ids: dict[int, set[int]] = {}
        for role, tiles in (("positive", positive), ("negative", negative)):
            for n, given in enumerate(tiles, 1):
                try:
                    tile = given if isinstance(given, FeedbackTile) else \
                        FeedbackTile.from_mapping(given)
                    lev = self.level(tile.scale if tile.scale is not None else scale)
                    ty, tx, t = lev.tile_at(tile.y, tile.x, tile.time)
                    vectors[role].append(lev.vector_of(ty, tx, t))
                except SearchIndexError as exc:
                    raise SearchIndexError(f"{role} tile {n}: {exc}") from None
                marked[role].append(lev.describe(ty, tx, t, bounds=False))
                ids.setdefault(lev.scale, set()).add(lev.flat_id(ty, tx, t))
        if not vectors["positive"]:
            rocchio(np.zeros((0, self.dim), "float32"))  # raises: no positive tile
        targets = self.targets(scales, sorted({m["scale"] for m in marked["positive"]}))
        self._check_k(k, targets)
        query = {"variable": self.variable, "k": k, **marked,
                 "scales": [s.scale for s in targets],
                 "negative_weight": float(negative_weight)}
        neg = np.stack(vectors["negative"]) if vectors["negative"] else None
        return self._ranked(np.stack(vectors["positive"]), neg, negative_weight, targets,
                            k, bbox, time_range, query, ids if exclude_marked else None)

    def search_image(self, image: np.ndarray, encoder: Any, k: int = 10, **kw: Any) -> \
            SearchResult:
        """Neighbours of an image ``(C, H, W)`` normalised like the cube's inputs.

        The image is embedded with ``encoder``, an :class:`esdc.embed.EncoderBundle` of
        the model the index was built from.

        Parameters
        ----------
        image : numpy.ndarray
            ``(C, H, W)`` float32, channels in the order of the encoder's inputs (for an
            encoder with ``context``, the tile with that many cells around it).
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

    def tile_image(self, tile_y: int, tile_x: int, t: int | None = None,
                   scale: int | None = None) -> np.ndarray:
        """Pixels of a tile for display (:func:`esdc.search.render.display_pixels`).

        Parameters
        ----------
        tile_y, tile_x : int
            The tile's row and column in the embedding grid.
        t : int, optional
            Time step (default 0).
        scale : int, optional
            Tile size in cells (default: the default scale's).

        Returns
        -------
        numpy.ndarray
            RGB ``(T, T, 3)`` in [0, 1] when the cube has Blue Marble channels, else the
            first input variable ``(T, T)`` (``T`` the tile size in cells; rows, columns
            in the cube's order).
        """
        size = int(scale or self.attrs[ATTR_TILE_SIZE])
        ydim, xdim = (str(d) for d in self.attrs.get(ATTR_TILE_DIMS, SPATIAL_DIMS[0]))
        sel = {ydim: slice(tile_y * size, (tile_y + 1) * size),
               xdim: slice(tile_x * size, (tile_x + 1) * size)}
        return display_pixels(self.ds, self.attrs[ATTR_INPUTS], sel, t)

    def tile_png(self, tile_y: int, tile_x: int, t: int | None = None,
                 scale: int | None = None) -> bytes:
        """The tile's pixels (:meth:`tile_image`) as PNG bytes.

        ``scale`` is the tile size in cells (default: the default scale's); tile
        indices are those of that scale's embedding grid.

        Raises
        ------
        SearchIndexError
            If the tile is outside the embedding grid, ``t`` is not a time step, or the
            scale is not searchable.
        """
        lev = self.level(scale)
        nty, ntx = int(lev.shape[0]), int(lev.shape[1])
        if not (0 <= tile_y < nty and 0 <= tile_x < ntx):
            raise SearchIndexError(f"tile ({tile_y}, {tile_x}) is outside the embedding grid "
                                   f"of {nty} x {ntx} tiles.")
        self.check_time_step(t)
        return png_bytes(self.tile_image(tile_y, tile_x, t, lev.scale))

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
            tiles.append(("query", int(q["tile_y"]), int(q["tile_x"]), None,
                          q.get("scale") or self.tile_size))
        tiles += [(f"d={n.distance:.2g}", n.tile_y, n.tile_x, n.t, n.scale or self.tile_size)
                  for n in result.neighbours]
        cols = min(6, len(tiles))
        rows = -(-len(tiles) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.5 * rows), squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for ax, (label, ty, tx, t, size) in zip(axes.ravel(), tiles, strict=False):
            img = self.tile_image(ty, tx, t, size)
            lev = self.level(size)
            ax.imshow(img, cmap=None if img.ndim == 3 else "viridis")
            extra = f" ({size} cells)" if len(self.levels) > 1 else ""
            ax.set_title(f"{label}{extra}\n{lev.yc[ty]:.1f}, {lev.xc[tx]:.1f}", fontsize=8)
        fig.suptitle(f"{self.cube.name}: {self.variable} ({self.names[0]}, {self.names[1]}), "
                     "query then neighbours (cosine distance)", fontsize=9)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def served_manifest(self) -> Any:
        """The default scale's manifest, ``scales`` set to the scales searchable."""
        return replace(self.manifest, scales=sorted(self.levels))

    def describe(self) -> dict[str, Any]:
        """The manifest as a dict (for the HTTP health endpoint), ``scales`` searchable."""
        return asdict(self.served_manifest())
