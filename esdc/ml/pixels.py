"""Pixels of patch batches as rows: the table a scikit-learn fitter trains on.

:func:`valid_pixels` draws them from a :class:`esdc.ml.patches.PatchStream` with one
target; :func:`batch_pixels` turns one batch into rows.
"""

from __future__ import annotations

import numpy as np

from esdc.errors import TrainConfigError
from esdc.ml.patches import Batch, PatchStream

__all__ = ["batch_pixels", "valid_pixels"]


def batch_pixels(b: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels of a batch with one target, as rows.

    Parameters
    ----------
    b : Batch
        ``x`` ``(B, C, ph, pw)``, ``valid`` like it, ``target`` ``(B, 1, ph, pw)``.

    Returns
    -------
    x : numpy.ndarray
        ``(B * ph * pw, C)`` float32 input values, patch by patch in row-major order.
    y : numpy.ndarray
        ``(B * ph * pw,)`` float32 target values.
    keep : numpy.ndarray
        ``(B * ph * pw,)`` bool: every channel valid and the target finite.
    """
    c = b.x.shape[1]
    x = b.x.transpose(0, 2, 3, 1).reshape(-1, c)
    valid = b.valid.transpose(0, 2, 3, 1).reshape(-1, c).all(axis=1)
    y = b.target[:, 0].reshape(-1)  # type: ignore[index]
    return x, y, valid & np.isfinite(y)


def valid_pixels(stream: PatchStream, limit: int, seed: int,
                 coords: bool = False) -> tuple[np.ndarray, ...]:
    """The valid pixels of a stream with one target, at most ``limit`` (uniform sample).

    Parameters
    ----------
    stream : PatchStream
        Inputs and one target (usually one spatial split).
    limit : int
        Most pixels returned; a larger set is sampled without replacement.
    seed : int
        Seed of that sample.
    coords : bool
        Also return each pixel's grid row and column.

    Returns
    -------
    tuple of numpy.ndarray
        ``X (N, C)`` float32 (normalised like the stream), ``y (N,)`` float32; with
        ``coords``, also ``rows (N,)`` and ``cols (N,)`` int64 grid indices.

    Raises
    ------
    TrainConfigError
        If the stream has no valid pixel (check the variables or the split settings).
    """
    xs, ys, rs, cs = [], [], [], []
    for b in stream.batches(256):
        x, y, keep = batch_pixels(b)
        xs.append(x[keep])
        ys.append(y[keep])
        if coords:
            n, _, ph, pw = b.x.shape
            r = b.index[:, 1, None, None] + np.arange(ph)[None, :, None]
            c = b.index[:, 2, None, None] + np.arange(pw)[None, None, :]
            rs.append(np.broadcast_to(r, (n, ph, pw)).reshape(-1)[keep])
            cs.append(np.broadcast_to(c, (n, ph, pw)).reshape(-1)[keep])
    if not xs or sum(len(a) for a in ys) == 0:
        raise TrainConfigError("no valid pixels in this split of the cube; check the "
                               "variables or the split settings.")
    out = [np.concatenate(xs), np.concatenate(ys)]
    if coords:
        out += [np.concatenate(rs).astype(np.int64), np.concatenate(cs).astype(np.int64)]
    if len(out[1]) > limit:
        pick = np.random.default_rng(seed).choice(len(out[1]), limit, replace=False)
        out = [a[pick] for a in out]
    return tuple(out)
