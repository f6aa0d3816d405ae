"""Scales of the tile embeddings: a tile of any size, area-averaged to the encoder's input.

Multi-scale search (:mod:`esdc.embed`, :mod:`esdc.search`) embeds tiles of 8, 16 and
32 cells with one encoder; each tile is first averaged over areas to the size the
encoder was trained on (:func:`area_mean`), so that vectors of every scale are
comparable.
"""

from __future__ import annotations

import numpy as np

__all__ = ["area_mean"]


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` share of each input cell in each output cell (rows sum to 1)."""
    edges_in, edges_out = np.linspace(0, 1, n_in + 1), np.linspace(0, 1, n_out + 1)
    lo = np.maximum(edges_out[:-1, None], edges_in[None, :-1])
    hi = np.minimum(edges_out[1:, None], edges_in[None, 1:])
    w = np.clip(hi - lo, 0, None)
    return (w / w.sum(axis=1, keepdims=True)).astype("float32")


def area_mean(x: np.ndarray, valid: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Tiles ``(B, C, T, T)`` area-averaged to ``(B, C, size, size)`` over their valid cells.

    Each output cell is the mean of the input cells it covers, weighted by the area
    they share with it (for ``T`` a multiple of ``size``: the block mean of
    ``xarray.DataArray.coarsen``; a smaller ``T`` repeats cells). Invalid cells do not
    count; an output cell without a valid one is 0 and invalid.

    Parameters
    ----------
    x : numpy.ndarray
        ``(B, C, T, T)`` float32 normalised tiles (rows, columns in the cube's order).
    valid : numpy.ndarray
        ``(B, C, T, T)`` bool, True where ``x`` holds data.
    size : int
        Cells per side of the result.

    Returns
    -------
    tuple of numpy.ndarray
        ``(B, C, size, size)`` float32 values and bool validity.
    """
    if x.shape[-1] == size and x.shape[-2] == size:
        return x, valid
    wy, wx = _area_weights(x.shape[-2], size), _area_weights(x.shape[-1], size)
    m = valid.astype("float32")
    total = np.einsum("oi,bcij,pj->bcop", wy, np.where(valid, x, 0).astype("float32") * m, wx)
    weight = np.einsum("oi,bcij,pj->bcop", wy, m, wx)
    ok = weight > 1e-6
    return np.where(ok, total / np.where(ok, weight, 1), 0).astype("float32"), ok
