"""Reading a work unit's chunks and cutting its patches: the fast data path's first half.

A unit (one band of stored chunk or shard rows, all columns, one time chunk of
:class:`esdc.ml.patches.PatchStream`) is read through buffers reused from unit to unit
(:func:`scratch`). On a local cube chunk (or shard) files are read and decompressed in
the calling thread (:mod:`esdc.storage.chunkfiles`), elsewhere by zarr
(:func:`read_into`). When every patch lies inside one stored chunk, each chunk is
decompressed in place and its patches cut from it while it is hot in the cache
(:func:`cut_chunks`); otherwise the unit is read into one block and cut (:func:`cut`).
Patches come out as contiguous ``(N, C, ph, pw)`` arrays, which the shuffle pool
(:mod:`esdc.ml.units`) draws batches from with one ``numpy.take`` per unit (from the
decoded chunks themselves, a batch's gather was slower: strided windows scattered over
the pool cost the consumer more than the cut's copy costs the reading threads).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype

from esdc.storage.chunkfiles import chunk_reader

__all__ = ["cut", "cut_chunks", "read_into", "scratch"]


def scratch(buffers: MutableMapping[str, np.ndarray], name: str, shape: tuple[int, ...],
            dtype: Any) -> np.ndarray:
    """A C-contiguous ``shape`` array of ``dtype`` over the reusable buffer ``name``.

    Parameters
    ----------
    buffers : dict
        The caller's buffers (grown when a larger array is asked for).
    name : str
        Which buffer.
    shape : tuple of int
        The array's shape.
    dtype : numpy dtype
        Its element type.

    Returns
    -------
    numpy.ndarray
        A view of the buffer: its values are those of the last use (overwrite them).
    """
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    buf = buffers.get(name)
    if buf is None or buf.nbytes < size:
        buf = buffers[name] = np.empty(size, dtype=np.uint8)
    return buf[:size].view(dtype).reshape(shape)


def read_into(array: zarr.Array, selection: tuple[slice, ...], dest: np.ndarray) -> None:
    """Read ``array[selection]`` into ``dest``, decoding each stored chunk straight into it.

    A Zarr v3 array on a local disk whose chunks are plain bytes compressed with Blosc or
    Zstd (what esdc writes), unsharded or sharded, is read in this thread by
    :func:`esdc.storage.chunkfiles.chunk_reader`: each chunk (or shard) file read once,
    each chunk decompressed into a reused buffer and copied into ``dest`` while hot in the
    cache, without zarr's event loop and thread hops. Any other array (remote, Icechunk,
    other codecs) is read by zarr.

    Parameters
    ----------
    array : zarr.Array
        A Zarr array, sharded or not.
    selection : tuple of slice
        One slice per dim of ``array`` (steps of 1).
    dest : numpy.ndarray
        Writable, the selection's shape (it may be a strided view); of another dtype
        than the array's, values are cast.

    Raises
    ------
    esdc.errors.ChunkDecodeError
        When a chunk or a shard index is damaged: from the direct read, or from the
        array's codec pipeline when it is esdc's checked pipeline.
    """
    if dest.dtype != array.dtype:
        dest[...] = array.get_basic_selection(selection)
        return
    reader = chunk_reader(array)
    if reader is not None:
        reader.read(selection, dest)
        return
    out = default_buffer_prototype().nd_buffer.from_numpy_array(dest)
    array.get_basic_selection(selection, out=out)


def cut(block: np.ndarray, ys: np.ndarray, xs: np.ndarray, patch: tuple[int, int],
        out: np.ndarray | None = None, at: np.ndarray | None = None,
        total: int | None = None) -> np.ndarray:
    """Every patch of a unit block, copied once (into ``out`` when given).

    Patches on a regular grid (evenly spaced rows and columns, each row's patches at
    consecutive positions of ``out``, the rows a constant number of positions apart: a
    unit's or a chunk's patches without a split) are copied with one ``numpy.copyto``
    between strided views; otherwise each row of evenly spaced columns with one
    ``copyto``, other rows with one fancy index.

    Parameters
    ----------
    block : numpy.ndarray
        ``(T, C, rows, cols)`` unit block (any strides).
    ys, xs : numpy.ndarray
        ``(n,)`` patch origins in the block (row, column); consecutive patches of one
        row are copied together.
    patch : (int, int)
        ``(ph, pw)``.
    out : numpy.ndarray, optional
        ``(T * total, C, ph, pw)`` C-contiguous array of ``block``'s dtype to write into.
    at, total : numpy.ndarray and int, optional
        The patches' positions among the ``total`` patches of one time step in ``out``
        (default ``0 .. n - 1`` of ``n``): patch ``i`` of step ``t`` goes to row
        ``t * total + at[i]``. Used to cut a unit chunk by chunk.

    Returns
    -------
    numpy.ndarray
        ``(T * total, C, ph, pw)`` C-contiguous, time-major (all patches of ``t = 0``
        first).
    """
    nt, c = block.shape[:2]
    n = len(ys)
    total = n if total is None else total
    at = np.arange(n) if at is None else at
    if out is None:
        out = np.empty((nt * total, c, *patch), dtype=block.dtype)
    win = np.lib.stride_tricks.sliding_window_view(block, patch, axis=(2, 3))
    by_step = out.view()
    by_step.shape = (nt, total, c, *patch)  # a view of out (raises if it would copy)
    grid = _grid(ys, xs, at)
    if grid is not None:  # (T, gy, gx, C, ph, pw) both sides: one copy
        (y0, sy, gy), (x0, sx, gx), (a0, w) = grid
        src = win[:, :, y0:y0 + sy * (gy - 1) + 1:sy, x0:x0 + sx * (gx - 1) + 1:sx]
        s = by_step.strides
        dst = np.lib.stride_tricks.as_strided(by_step[:, a0:], (nt, gy, gx, c, *patch),
                                              (s[0], w * s[1], *s[1:]))
        np.copyto(dst, src.transpose(0, 2, 3, 1, 4, 5))
        return out
    starts = np.flatnonzero(np.r_[True, ys[1:] != ys[:-1]])
    for s0, s1 in zip(starts, [*starts[1:], n], strict=True):
        y, cols, rows = int(ys[s0]), xs[s0:s1], at[s0:s1]
        step = int(cols[1] - cols[0]) if len(cols) > 1 else 1
        if step > 0 and np.all(np.diff(cols) == step) and np.all(np.diff(rows) == 1):
            # (T, C, k, ph, pw) view: k evenly spaced windows of row y, every step at once
            x0, r0 = int(cols[0]), int(rows[0])
            src = win[:, :, y, x0:x0 + step * (len(cols) - 1) + 1:step]
            np.copyto(by_step[:, r0:r0 + len(cols)], src.transpose(0, 2, 1, 3, 4))
        else:
            by_step[:, rows] = win[:, :, y, cols].transpose(0, 2, 1, 3, 4)
    return out


def _grid(ys: np.ndarray, xs: np.ndarray, at: np.ndarray
          ) -> tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int]] | None:
    """``((y0, sy, gy), (x0, sx, gx), (a0, w))`` when the patches are a regular grid, else None.

    Patch ``r * gx + j`` is at ``(y0 + r sy, x0 + j sx)`` and goes to position ``a0 + r w + j``
    (``w >= gx``, steps >= 1).
    """
    n = len(ys)
    if n == 0:
        return None
    gx = int(np.argmax(ys != ys[0])) or n
    if n % gx:
        return None
    gy = n // gx
    yy, xx, aa = ys.reshape(gy, gx), xs.reshape(gy, gx), at.reshape(gy, gx)
    sy = int(yy[1, 0] - yy[0, 0]) if gy > 1 else 1
    sx = int(xx[0, 1] - xx[0, 0]) if gx > 1 else 1
    w = int(aa[1, 0] - aa[0, 0]) if gy > 1 else gx
    first_col = np.arange(gy) * sy + yy[0, 0]
    first_row = np.arange(gx) * sx + xx[0, 0]
    positions = (np.arange(gy) * w)[:, None] + np.arange(gx) + aa[0, 0]
    if (sy < 1 or sx < 1 or w < gx or not np.array_equal(yy, np.broadcast_to(
            first_col[:, None], yy.shape)) or not np.array_equal(
            xx, np.broadcast_to(first_row, xx.shape)) or not np.array_equal(aa, positions)):
        return None
    return (int(yy[0, 0]), sy, gy), (int(xx[0, 0]), sx, gx), (int(aa[0, 0]), w)


def cut_chunks(arrays: list[zarr.Array], times: range | None, r0: int, ys: np.ndarray,
               xs: np.ndarray, patch: tuple[int, int], buffers: MutableMapping[str, np.ndarray],
               out: np.ndarray) -> np.ndarray | None:
    """Cut a unit's patches chunk by chunk, each chunk decompressed in place, if possible.

    When every patch lies inside one stored chunk and the arrays are local chunk (or
    shard) files of one chunk shape (what esdc writes, :func:`esdc.storage.chunkfiles
    .chunk_reader`; a shard file is read once per unit), each chunk of each channel is
    decompressed straight into a
    ``(C, T, cy, cx)`` buffer and its patches are cut from there while it is hot in the
    cache: the unit is never assembled into one block (one copy fewer than
    :func:`read_into` + :func:`cut`).

    Parameters
    ----------
    arrays : list of zarr.Array
        One per channel, ``(time, y, x)`` or static ``(y, x)`` (repeated over time).
    times : range or None
        The unit's time steps, inside one time chunk (None: a static unit of one step).
    r0 : int
        The unit's first row; ``ys`` are relative to it.
    ys, xs : numpy.ndarray
        ``(n,)`` patch origins, sorted by row then column.
    patch : (int, int)
        ``(ph, pw)``.
    buffers : dict
        Reused buffers (:func:`scratch`).
    out : numpy.ndarray
        ``(T * n, C, ph, pw)`` float32, written as :func:`cut` writes it.

    Returns
    -------
    numpy.ndarray or None
        ``out``; None when the fast path does not apply (nothing was written).

    Raises
    ------
    esdc.errors.ChunkDecodeError
        When a chunk file is damaged.
    """
    readers = [chunk_reader(a) for a in arrays]
    if any(r is None for r in readers) or out.dtype != np.float32:
        return None
    if any(a.dtype != np.float32 for a in arrays):
        return None
    grids = {tuple(a.chunks[-2:]) for a in arrays}
    tch = {a.chunks[0] for a in arrays if a.ndim == 3}
    if len(grids) != 1 or len(tch) > 1:
        return None
    (cy, cx), ph, pw = next(iter(grids)), *patch
    yabs = ys + r0
    if np.any(yabs // cy != (yabs + ph - 1) // cy) or np.any(xs // cx != (xs + pw - 1) // cx):
        return None
    nt = 1 if times is None else len(times)
    if times is not None and tch and times.start // next(iter(tch)) != (
            times.stop - 1) // next(iter(tch)):
        return None
    ny, nx = arrays[0].shape[-2:]
    tsel = () if times is None else (slice(times.start, times.stop),)
    block = scratch(buffers, "chunk", (len(arrays), nt, cy, cx), "float32")
    files: dict[Any, Any] = {}  # the unit's shard files, each read once
    key = (yabs // cy) * (-(-nx // cx)) + xs // cx
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(key[order]) != 0, True])
    for b0, b1 in zip(bounds[:-1], bounds[1:], strict=True):
        idx = order[b0:b1]
        by, bx = int(yabs[idx[0]] // cy), int(xs[idx[0]] // cx)
        h, w = min(cy, ny - by * cy), min(cx, nx - bx * cx)
        rows, cols = slice(by * cy, by * cy + h), slice(bx * cx, bx * cx + w)
        for c, (a, reader) in enumerate(zip(arrays, readers, strict=True)):
            assert reader is not None
            if a.ndim == 3:
                reader.read((*tsel, rows, cols), block[c, :, :h, :w], files)
            else:
                reader.read((rows, cols), block[c, 0, :h, :w], files)
                block[c, 1:, :h, :w] = block[c, 0, :h, :w]
        view = block[:, :, :h, :w].transpose(1, 0, 2, 3)
        cut(view, yabs[idx] - by * cy, xs[idx] - bx * cx, patch, out, at=idx, total=len(ys))
    return out
