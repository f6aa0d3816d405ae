"""Pixels of a cube for display: what a tile or the overview map shows, and its PNG.

Used by the quicklook mosaics (:meth:`esdc.search.query.SearchEngine.quicklook`), the
tile PNGs of the HTTP API (:mod:`esdc.search.http`) and the overview map of the search
page (:mod:`esdc.search.page`). A cube with the three Blue Marble channels is shown in
RGB; any other cube as the first input variable of its embeddings, in grey levels.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from esdc.conventions import TIME_DIM

__all__ = ["RGB_BANDS", "display_pixels", "encode_png", "png_bytes"]

#: The Blue Marble channels shown as RGB when a cube has all three.
RGB_BANDS = ("bmng_red", "bmng_green", "bmng_blue")


def display_pixels(ds: xr.Dataset, inputs: Sequence[str], sel: Mapping[str, slice],
                   t: int | None = None) -> np.ndarray:
    """The cells ``sel`` of a cube as an image.

    Parameters
    ----------
    ds : xarray.Dataset
        The cube.
    inputs : sequence of str
        Input variables of the embedding (``esdc_inputs``); the first is shown when the
        cube lacks one of :data:`RGB_BANDS`.
    sel : mapping of str to slice
        Positional selection ``{row dim: slice, column dim: slice}`` (in that order:
        the image's axes).
    t : int, optional
        Time step of time-varying variables (default 0).

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` float32 RGB clipped to [0, 1] when the cube has the Blue Marble
        channels, else ``(H, W)`` float32 values of ``inputs[0]`` in its units (NaN:
        missing).
    """
    dims = list(sel)

    def read(name: str) -> np.ndarray:
        da = ds[name].isel(dict(sel))
        if TIME_DIM in da.dims:
            da = da.isel({TIME_DIM: t or 0})
        return np.asarray(da.transpose(*dims).values, dtype="float32")

    if all(v in ds for v in RGB_BANDS):
        return np.clip(np.stack([read(v) for v in RGB_BANDS], -1), 0, 1)
    return read(str(inputs[0]))


def png_bytes(img: Any) -> bytes:
    """Encode pixels as PNG (8 bits, :func:`encode_png`).

    Parameters
    ----------
    img : array-like
        ``(H, W, 3)`` RGB in [0, 1], or ``(H, W)`` values of any range (scaled to the
        image's minimum .. maximum, grey levels). NaN cells are black.

    Returns
    -------
    bytes
        The PNG file.
    """
    a = np.asarray(img, dtype="float64")
    if a.ndim == 3:
        u8 = np.round(np.nan_to_num(np.clip(a, 0, 1), nan=0.0) * 255).astype("uint8")
    else:
        ok = np.isfinite(a)
        lo, hi = (float(a[ok].min()), float(a[ok].max())) if ok.any() else (0.0, 1.0)
        scaled = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        u8 = np.round(np.where(ok, scaled, 0.0) * 255).astype("uint8")
    return encode_png(u8)


try:  # zlib-ng (the ``search`` extra): the same zlib streams, about 3x faster at level 1
    from zlib_ng import zlib_ng as _deflate
except ImportError:  # pragma: no cover - core install without the search extra
    _deflate = zlib

#: PNG colour type of 1, 3 and 4 samples a pixel: grey, RGB, RGBA (PNG spec, 11.2.2).
_COLOUR_TYPE = {1: 0, 3: 2, 4: 6}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk: length, type, data, CRC-32 of type and data (PNG spec, 5.3)."""
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def encode_png(pixels: np.ndarray, level: int = 1) -> bytes:
    """Encode 8-bit pixels as a PNG file, fast: every row "Up"-filtered, zlib ``level``.

    A map tile is served once per view, so encoding speed matters more than the last
    byte: the "Up" filter (each byte minus the byte above it, PNG spec 9.2, filter type
    2) turns the repeated rows of a zoomed-in tile and the smooth rows of imagery into
    runs of zeros that zlib's fastest level compresses well. Deflate is zlib-ng's when
    installed (the ``search`` extra: the same format, about 3x faster), else zlib's.
    Measured on the 842 distinct tiles of ``bench_search.py --map-tiles`` (2 cores,
    2026-12-06): 0.48 ms of CPU a tile against 2.45 ms for Pillow's ``compress_level=1``
    (which tries all five filters on every row), files 27 % larger (45 KB against 35 KB).
    Images are PNG 1.2 (W3C, https://www.w3.org/TR/png/): IHDR, one IDAT, IEND; any PNG
    reader (Pillow, browsers) decodes them to the same pixels.

    Parameters
    ----------
    pixels : numpy.ndarray
        ``(H, W)`` grey, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA, uint8. RGBA without a
        transparent pixel is written as RGB (a quarter less to compress).
    level : int
        zlib compression level, 0 (stored) .. 9.

    Returns
    -------
    bytes
        The PNG file.

    Raises
    ------
    ValueError
        If ``pixels`` is not uint8 of one of those shapes.
    """
    a = np.asarray(pixels)
    if a.ndim == 2:
        a = a[..., None]
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] not in _COLOUR_TYPE or 0 in a.shape:
        raise ValueError(f"encode_png: expected uint8 (H, W), (H, W, 3) or (H, W, 4) pixels, "
                         f"got {a.dtype} {a.shape}")
    h, w, c = a.shape
    keep = 3 if c == 4 and (a[..., 3] == 255).all() else c  # opaque RGBA: RGB
    a = np.ascontiguousarray(a)
    up = np.empty_like(a)  # filter type Up; the row above the first is zeros
    up[0] = a[0]
    np.subtract(a[1:], a[:-1], out=up[1:])  # modulo 256, as the spec says
    rows = np.empty((h, w * keep + 1), dtype=np.uint8)
    rows[:, 0] = 2
    samples = rows[:, 1:].reshape(h, w, keep)  # a view of the rows after their filter byte
    for k in range(keep):  # channel by channel: long strided loops, not 3-byte ones
        samples[..., k] = up[..., k]
    header = struct.pack(">IIBBBBB", w, h, 8, _COLOUR_TYPE[keep], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", _deflate.compress(rows.data, level)) + _png_chunk(b"IEND", b""))
