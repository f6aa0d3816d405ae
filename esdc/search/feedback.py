r"""Relevance feedback: "more like these, not like those" (Rocchio on the embeddings).

A user marks tiles of a result as relevant (*positive*) or not (*negative*); the
query becomes the Rocchio vector (Rocchio 1971, in *The SMART Retrieval System*,
ch. 14; Manning, Raghavan and Schütze 2008, *Introduction to Information
Retrieval*, §9.1.1) of the marked tiles' centred, L2-normalised embeddings
(:func:`esdc.search.index.normalise`):

.. math::

    q = \frac{1}{|P|}\sum_{p \in P} v_p \;-\; \gamma \frac{1}{|N|}\sum_{n \in N} v_n,
    \qquad \hat q = q / \lVert q \rVert

(the second term only when there are negatives), and the index is searched with
:math:`\hat q` by cosine similarity like any query. The first query tile is one of the
positives; :math:`\gamma` is :data:`NEGATIVE_WEIGHT` unless given. The textbook ratio
of the negative to the positive weight is 0.2 (0.15 / 0.75); on esdc's Earth cubes
precision grows with :math:`\gamma` up to 0.75 and collapses at 1, where a negative as
near as the positives cancels them (docs/SEARCH.md): 0.5 keeps a margin.
Marked tiles are left out of the new ranking by default, so every answer shows tiles
not yet judged. Marked tiles may be of several scales (tile sizes): each scale searched
forms the query from their vectors centred and normalised in its own index's space.
:meth:`esdc.search.query.SearchEngine.refine` runs it on an index;
:func:`esdc.search.evaluate.evaluate_refinement` measures it with simulated clicks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from esdc.conventions import SPATIAL_DIMS
from esdc.errors import SearchIndexError

__all__ = ["MAX_TILES", "NEGATIVE_WEIGHT", "FeedbackTile", "rocchio"]

#: Weight of the negatives' mean against the positives' mean (measured: docs/SEARCH.md).
NEGATIVE_WEIGHT = 0.5
#: Most tiles one refinement may mark (positives and negatives together).
MAX_TILES = 1000


@dataclass(frozen=True)
class FeedbackTile:
    """A marked tile: a point in it, its scale and its time.

    Attributes
    ----------
    y, x : float
        A point inside the tile, in the grid's coordinates (``lat``/``lon`` in degrees
        for geographic grids, else ``y``/``x`` in the grid's units).
    scale : int or None
        Tile size in cells, any scale the cube holds and has indexed (None: the query's
        scale, by default the finest; :meth:`esdc.search.query.SearchEngine.refine`).
    time : str or None
        Date of the tile (nearest time step); needed when the embeddings vary in time.
    """

    y: float
    x: float
    scale: int | None = None
    time: str | None = None

    @classmethod
    def parse(cls, text: str, time: str | None = None) -> FeedbackTile:
        """A tile from ``"Y,X[,SCALE]"`` (``"LAT,LON[,SCALE]"``), e.g. ``"-4,-62,8"``.

        Parameters
        ----------
        text : str
            Two numbers and, optionally, an integer scale (cells per tile side).
        time : str, optional
            The tile's date.

        Returns
        -------
        FeedbackTile

        Raises
        ------
        SearchIndexError
            If ``text`` is not of that form or a number is not finite.
        """
        parts = [p.strip() for p in str(text).split(",")]
        usage = f"tile {text!r} is not LAT,LON or LAT,LON,SCALE (e.g. -4,-62 or -4,-62,8)."
        if len(parts) not in (2, 3):
            raise SearchIndexError(usage)
        try:
            y, x = float(parts[0]), float(parts[1])
            scale = int(parts[2]) if len(parts) == 3 else None
        except ValueError:
            raise SearchIndexError(usage) from None
        return cls(y, x, scale, time).checked()

    @classmethod
    def from_mapping(cls, tile: Mapping[str, Any]) -> FeedbackTile:
        """A tile from ``{"lat", "lon", "scale", "time"}`` (or ``y``/``x`` for ``lat``/``lon``).

        Parameters
        ----------
        tile : mapping
            ``lat``/``lon`` (or ``y``/``x``; grid units), and optionally ``scale``
            (cells per tile side) and ``time`` (a date); missing keys and None are absent.

        Returns
        -------
        FeedbackTile

        Raises
        ------
        SearchIndexError
            If the point is missing, given twice, not a number or not finite, or the
            scale is below 1.
        """
        point = []
        for named, plain in zip(*SPATIAL_DIMS, strict=True):  # lat|y, lon|x
            a, b = tile.get(named), tile.get(plain)
            if a is not None and b is not None and a != b:
                raise SearchIndexError(f"give {named} or {plain} of a tile, not both.")
            value = a if a is not None else b
            if value is None:
                given = {k: v for k, v in tile.items() if v is not None}
                raise SearchIndexError(f"a tile needs {named} (or {plain}); got {given}.")
            try:
                point.append(float(value))
            except (TypeError, ValueError):
                raise SearchIndexError(f"{named} {value!r} of a tile is not a number.") \
                    from None
        scale = tile.get("scale")
        try:
            scale = None if scale is None else int(scale)
        except (TypeError, ValueError):
            raise SearchIndexError(f"scale {scale!r} of a tile is not a whole number of "
                                   "cells.") from None
        return cls(point[0], point[1], scale, tile.get("time")).checked()

    def checked(self) -> FeedbackTile:
        """The tile itself, after checking its numbers (finite point, positive scale).

        Raises
        ------
        SearchIndexError
            If the point is not finite or the scale is below 1.
        """
        if not (np.isfinite(self.y) and np.isfinite(self.x)):
            raise SearchIndexError(f"tile ({self.y}, {self.x}) is not a finite point.")
        if self.scale is not None and self.scale < 1:
            raise SearchIndexError(f"scale={self.scale} of a tile must be at least 1 (cells "
                                   "per tile side).")
        return self


def rocchio(positive: np.ndarray, negative: np.ndarray | None = None,
            negative_weight: float = NEGATIVE_WEIGHT) -> np.ndarray:
    r"""The Rocchio query of marked tiles: mean of positives minus ``γ`` x mean of negatives.

    Parameters
    ----------
    positive : numpy.ndarray
        ``(P, F)`` centred, L2-normalised embeddings of the relevant tiles, ``P >= 1``.
    negative : numpy.ndarray, optional
        ``(N, F)`` the same for the tiles marked not relevant (``N`` may be 0).
    negative_weight : float
        :math:`\gamma \ge 0` (default :data:`NEGATIVE_WEIGHT`).

    Returns
    -------
    numpy.ndarray
        ``(F,)`` float32 of unit length: the query, searched by cosine similarity.

    Raises
    ------
    SearchIndexError
        If there is no positive, the weight is negative or not finite, the shapes do
        not match, or the query is the zero vector (negatives cancel the positives).
    """
    pos = np.asarray(positive, dtype="float64")
    if pos.ndim != 2 or pos.shape[0] == 0:
        raise SearchIndexError("refinement needs at least one positive tile (positive=[...]); "
                               "the query tile itself is usually one.")
    if not (np.isfinite(negative_weight) and negative_weight >= 0):
        raise SearchIndexError(f"negative_weight={negative_weight} must be a number >= 0.")
    q = pos.mean(axis=0)
    if negative is not None and len(negative):
        neg = np.asarray(negative, dtype="float64")
        if neg.ndim != 2 or neg.shape[1] != pos.shape[1]:
            raise SearchIndexError(f"negative vectors of shape {neg.shape} do not match the "
                                   f"positives' {pos.shape}.")
        q = q - negative_weight * neg.mean(axis=0)
    norm = float(np.linalg.norm(q))
    if not norm > 1e-12:
        raise SearchIndexError("the marked tiles cancel out (the positives' mean is the "
                               "negatives'): mark other tiles.")
    return (q / norm).astype("float32")
