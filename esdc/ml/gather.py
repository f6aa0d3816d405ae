"""One pass from the shuffle pool to a finished batch: a compiled gather kernel.

A batch drawn from :class:`esdc.ml.units.ShufflePool` is copied out of the units' arrays
and then masked, normalised and NaN-filled. In NumPy those are five passes over the
batch (``take``, ``x == x``, subtract, divide, fill), the first from memory that the
pool's random draw left cold. :func:`gather_finish` does them in one pass, patch by
patch, compiled with Numba (``nogil``: the reading threads keep running while the
consumer gathers). Results are bit-identical to NumPy's ``(x - mean) / scale`` in
float32 (no fast-math: IEEE float32 subtraction and division, as NumPy's ufuncs).

Measured on a 2-core AMD EPYC (session 15, batches of 64 patches of 2 x 64 x 64 drawn
from 20 units of 1,500 patches): ``take`` + :func:`esdc.ml.units.finish` 7.8-8.0 us a
patch, this kernel 3.6 us. Numba is imported on the first call in a process
(:func:`kernel`), so importing this module costs nothing.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

__all__ = ["Finish", "applies", "flat", "gather_finish", "gather_flat", "kernel", "takes"]

_SIGNATURE = ("void(float32[:, :, ::1], int64[::1], float32[:, :, ::1], boolean[:, :, ::1], "
              "int64, float32[::1], float32[::1], float32, boolean)")


def _gather_finish(src, rows, x, valid, start, mean, scale, fill, normalize):  # noqa: ANN001, ANN202, PLR0913
    """The kernel's Python source, compiled by :func:`kernel`."""
    channels, cells = src.shape[1], src.shape[2]
    if start < 0 or start + rows.shape[0] > x.shape[0]:
        raise IndexError("gather_finish: the batch rows lie outside the batch")
    for i in range(rows.shape[0]):
        r, o = rows[i], start + i
        if r < 0 or r >= src.shape[0]:
            raise IndexError("gather_finish: a row lies outside the source patches")
        for c in range(channels):
            m, s = mean[c], scale[c]
            a, xo, vo = src[r, c], x[o, c], valid[o, c]
            if normalize:
                for k in range(cells):
                    v = a[k]
                    ok = v == v  # False at NaN
                    vo[k] = ok
                    xo[k] = (v - m) / s if ok else fill
            else:
                for k in range(cells):
                    v = a[k]
                    ok = v == v
                    vo[k] = ok
                    xo[k] = v if ok else fill


_compiled: list[Callable[..., None]] = []
_compiling = threading.Lock()


def kernel() -> Callable[..., None]:
    """The compiled kernel (Numba ``nogil``, cached on disk beside this module).

    Numba is imported and the kernel compiled (about 0.7 s, once per installation) or
    loaded from the cache (about 0.44 s with Numba's import; about 140 MB of memory for
    LLVM) on the first call in a process, not when this module is imported: the CLI
    and the Dask workers of a build, which import the ML modules without streaming
    patches, do not pay for it. Where no cache can be written (a read-only install and
    no writable home or ``NUMBA_CACHE_DIR``), each process compiles it.
    """
    if not _compiled:
        with _compiling:
            if not _compiled:
                import numba  # noqa: PLC0415 - only where batches are made (see above)

                try:
                    jit = numba.njit(_SIGNATURE, nogil=True, cache=True, boundscheck=False)
                    compiled = jit(_gather_finish)
                except RuntimeError:  # no writable cache (read-only install, no home):
                    jit = numba.njit(_SIGNATURE, nogil=True, boundscheck=False)
                    compiled = jit(_gather_finish)  # compiled in each process instead
                _compiled.append(compiled)
    return _compiled[0]


def takes(src: np.ndarray) -> bool:
    """Whether ``src`` can be the kernel's source: ``(N, C, ph, pw)`` C-contiguous float32."""
    return src.dtype == np.float32 and src.ndim == 4 and src.flags.c_contiguous


def applies(src: np.ndarray, x: np.ndarray, valid: np.ndarray) -> bool:
    """Whether :func:`gather_finish` takes these arrays: float32 / bool, C-contiguous, 4-D."""
    return (takes(src) and x.dtype == np.float32 and valid.dtype == np.bool_
            and x.ndim == 4 and valid.shape == x.shape and src.shape[1:] == x.shape[1:]
            and x.flags.c_contiguous and valid.flags.c_contiguous)


def gather_finish(src: np.ndarray, rows: np.ndarray, x: np.ndarray, valid: np.ndarray,
                  start: int, mean: np.ndarray, scale: np.ndarray, fill: float,
                  normalize: bool = True) -> None:
    """Copy patches ``src[rows]`` into ``x[start:start + len(rows)]``, finished.

    Each cell ``v`` becomes ``(v - mean[c]) / scale[c]`` (``v`` itself if ``normalize``
    is False), NaN cells ``fill``, and ``valid`` is written with ``v == v``; the same
    values, bit for bit, as ``numpy.take`` followed by :func:`esdc.ml.units.finish`.

    Parameters
    ----------
    src : numpy.ndarray
        ``(N, C, ph, pw)`` float32, C-contiguous: a unit's patches (raw cube values).
    rows : numpy.ndarray
        ``(k,)`` integer rows of ``src``, each in ``[0, N)``.
    x, valid : numpy.ndarray
        ``(B, C, ph, pw)`` float32 and bool, C-contiguous: the batch; rows ``start`` to
        ``start + k`` are written.
    start : int
        The batch row of ``src[rows[0]]``.
    mean, scale : numpy.ndarray
        ``(C,)`` per channel, in the variables' own units (cast to float32); the batch
        comes out dimensionless.
    fill : float
        The value of NaN cells after normalisation (cast to float32).
    normalize : bool
        False copies the values as they are (NaN cells still filled).

    Raises
    ------
    ValueError
        Where the arrays are not as above (see :func:`applies`).
    IndexError
        Where a row lies outside ``src`` or the batch rows outside ``x``.
    """
    if not applies(src, x, valid):
        raise ValueError("gather_finish takes C-contiguous float32 (N, C, ph, pw) patches "
                         "and a float32 / bool batch of the same patch shape")
    gather_flat(flat(src), np.ascontiguousarray(rows, dtype=np.int64), flat(x), flat(valid),
                start, Finish.of(mean, scale, fill, normalize))


class Finish(NamedTuple):
    """What finishing a batch does: ``(x - mean) / scale`` per channel, NaN -> ``fill``.

    ``mean``, ``scale`` float32 ``(C,)``, ``fill`` float32, ``normalize`` (False: values
    kept as they are, NaN cells still filled).
    """

    mean: np.ndarray
    scale: np.ndarray
    fill: np.float32
    normalize: bool

    @classmethod
    def of(cls, mean: np.ndarray, scale: np.ndarray, fill: float, normalize: bool) -> Finish:
        """The fields cast to the kernel's types."""
        return cls(np.ascontiguousarray(mean, dtype=np.float32).reshape(-1),
                   np.ascontiguousarray(scale, dtype=np.float32).reshape(-1),
                   np.float32(fill), bool(normalize))


def flat(a: np.ndarray) -> np.ndarray:
    """``(N, C, ph, pw)`` C-contiguous -> the ``(N, C, ph * pw)`` view the kernel takes."""
    return a.reshape(*a.shape[:2], -1)


def gather_flat(src: np.ndarray, rows: np.ndarray, x: np.ndarray, valid: np.ndarray,
                start: int, fin: Finish) -> None:
    """:func:`gather_finish` on :func:`flat` views, without its Python checks.

    The shuffle pool's call, once per unit a batch draws from (0.7 us of overhead); the
    kernel still raises ``IndexError`` for rows outside ``src`` or ``x``.
    """
    (_compiled[0] if _compiled else kernel())(src, rows, x, valid, start, fin.mean, fin.scale,
                                              fin.fill, fin.normalize)
