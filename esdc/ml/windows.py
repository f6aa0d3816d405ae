"""Tiles with their context: each search tile read with a margin of neighbouring cells.

A search tile of ``T x T`` cells may be embedded from a larger *context window* centred
on it: the tile plus ``margin`` cells on every side, ``(T + 2 margin)`` cells per side.
The window is what the encoder sees (:func:`esdc.embed.compute_embeddings`) and what the
raw-pixel PCA baseline reads (:func:`esdc.search.evaluate.evaluate_search`), so both
compare on the same pixels; tiles, labels and queries stay the ``T``-cell tiles, and
whether a tile gets a vector is decided by its own cells only.

Windows of tiles at the grid's edge reach beyond it: the missing cells are mirrored
from the grid (``numpy.pad`` ``mode="reflect"``, the edge cell not repeated), so an
edge tile's context is its own surroundings, not a constant. Invalid (NaN) cells
hold 0 after normalisation (the variable's mean), as :class:`esdc.ml.patches.PatchStream`
fills them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from esdc.errors import TrainConfigError
from esdc.ml.patches import PatchStream

__all__ = ["TileWindows", "tile_windows"]


class TileWindows(NamedTuple):
    """A batch of tiles, each with its context window.

    Attributes
    ----------
    x : numpy.ndarray
        ``(B, C, W, W)`` float32 normalised windows, ``W = T + 2 * margin`` (the tile
        in the centre), invalid cells 0.
    valid : numpy.ndarray
        ``(B, C, W, W)`` bool, False where the cube is NaN (mirrored cells as their
        source).
    index : numpy.ndarray
        ``(B, 3)`` int64 rows ``(t, y, x)``: time index (-1 if static) and the row and
        column of the *tile's* upper-left cell in the cube.
    tile_valid : numpy.ndarray
        ``(B,)`` float64 fraction of the tile's own cells (all channels) that are valid.
    """

    x: np.ndarray
    valid: np.ndarray
    index: np.ndarray
    tile_valid: np.ndarray


def _normalised(x: np.ndarray, valid: np.ndarray, mean: np.ndarray | None,
                scale: np.ndarray | None) -> np.ndarray:
    """``(x - mean) / scale`` per channel (axis 1) in float32, invalid cells 0."""
    if mean is not None and scale is not None:
        x = x - mean[None, :, None, None]  # as PatchStream normalises, in float32
        x /= scale[None, :, None, None]
    x[~valid] = 0.0
    return x


def _fields(stream: PatchStream, tile: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(t, x (C, ny, nx), valid)`` of every time step (t = -1 if static), tiles only.

    ``ny, nx`` are the rows and columns covered by whole tiles; one time step is held
    in memory at a time.
    """
    steps = range(*(stream.time_steps or (0, stream.nt))) if stream.has_time else [None]
    c = len(stream.variables)
    nty, ntx = stream.ny // tile, stream.nx // tile
    for t in steps:
        one = stream if t is None else stream.subshard(0, 1, time_steps=(t, t + 1))
        x = np.zeros((c, nty * tile, ntx * tile), "float32")
        valid = np.zeros(x.shape, bool)
        for b in one.batches(256):
            for (_, y, xx), px, pv in zip(b.index, b.x, b.valid, strict=True):
                if y + tile <= x.shape[1] and xx + tile <= x.shape[2]:
                    x[:, y:y + tile, xx:xx + tile] = px
                    valid[:, y:y + tile, xx:xx + tile] = pv
        yield -1 if t is None else t, x, valid


def tile_windows(stream: PatchStream, tile: int, margin: int = 0, batch_size: int = 256,
                 mean: np.ndarray | None = None,
                 scale: np.ndarray | None = None) -> Iterator[TileWindows]:
    """Every whole ``tile x tile`` tile of a stream, with ``margin`` cells of context.

    Parameters
    ----------
    stream : PatchStream
        A stream of the cube's inputs with ``patch=(tile, tile)``, no overlap, no
        shuffle (its ``time_steps`` are the steps read).
    tile : int
        Tile size ``T`` in cells.
    margin : int
        Cells of context on every side, ``>= 0``; 0 gives the tiles themselves, as the
        stream reads them.
    batch_size : int
        Tiles per batch.
    mean, scale : numpy.ndarray, optional
        ``(C,)`` per-input normalisation applied here, for a stream with
        ``normalize=False``; omit both for a stream that normalises itself.

    Yields
    ------
    TileWindows
        Batches of windows ``(B, C, T + 2 margin, T + 2 margin)``, in the stream's order
        for ``margin == 0``, else time step by time step in row-major tile order.

    Raises
    ------
    TrainConfigError
        If ``margin`` is negative, the stream's patch is not the tile, or the window
        is larger than twice the grid (the mirror cannot fill it).
    """
    if margin < 0:
        raise TrainConfigError(f"context margin={margin} must be >= 0 cells.")
    if tuple(stream.patch) != (tile, tile) or any(stream.overlap):
        raise TrainConfigError(f"tile_windows needs a stream of non-overlapping {tile}-cell "
                               f"patches, not patch={list(stream.patch)} "
                               f"overlap={list(stream.overlap)}.")
    if margin == 0:
        for b in stream.batches(batch_size):
            valid = b.valid
            yield TileWindows(_normalised(b.x, valid, mean, scale), valid, b.index,
                              valid.mean(axis=(1, 2, 3)))
        return
    nty, ntx = stream.ny // tile, stream.nx // tile
    if margin >= min(nty, ntx) * tile:
        raise TrainConfigError(f"context margin={margin} cells is too large for a grid of "
                               f"{nty * tile} x {ntx * tile} cells in whole tiles.")
    w = tile + 2 * margin
    iy, ix = (a.ravel() for a in np.meshgrid(np.arange(nty), np.arange(ntx), indexing="ij"))
    for t, x, valid in _fields(stream, tile):
        pad = ((0, 0), (margin, margin), (margin, margin))
        xp, vp = np.pad(x, pad, mode="reflect"), np.pad(valid, pad, mode="reflect")
        own = valid.reshape(len(x), nty, tile, ntx, tile).mean(axis=(0, 2, 4)).ravel()
        for s in range(0, len(iy), batch_size):
            ys, xs = iy[s:s + batch_size] * tile, ix[s:s + batch_size] * tile
            rows = (ys[:, None] + np.arange(w))[:, :, None]  # (B, W, 1)
            cols = (xs[:, None] + np.arange(w))[:, None, :]  # (B, 1, W)
            bx = np.ascontiguousarray(xp[:, rows, cols].transpose(1, 0, 2, 3))
            bv = np.ascontiguousarray(vp[:, rows, cols].transpose(1, 0, 2, 3))
            index = np.stack([np.full(len(ys), t), ys, xs], axis=1).astype("int64")
            yield TileWindows(_normalised(bx, bv, mean, scale), bv, index,
                              own[s:s + batch_size].astype("float64"))
