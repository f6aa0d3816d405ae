"""Pixels of a cube for display: what a tile or the overview map shows, and its PNG.

Used by the quicklook mosaics (:meth:`esdc.search.query.SearchEngine.quicklook`), the
tile PNGs of the HTTP API (:mod:`esdc.search.http`) and the overview map of the search
page (:mod:`esdc.search.page`). A cube with the three Blue Marble channels is shown in
RGB; any other cube as the first input variable of its embeddings, in grey levels.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from esdc.conventions import TIME_DIM

__all__ = ["RGB_BANDS", "display_pixels", "png_bytes"]

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
    """Encode pixels as PNG (8 bits, zlib level 1: fast to encode, a little larger).

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
    from PIL import Image

    a = np.asarray(img, dtype="float64")
    if a.ndim == 3:
        u8 = np.round(np.nan_to_num(np.clip(a, 0, 1), nan=0.0) * 255).astype("uint8")
        pil = Image.fromarray(np.ascontiguousarray(u8), mode="RGB")
    else:
        ok = np.isfinite(a)
        lo, hi = (float(a[ok].min()), float(a[ok].max())) if ok.any() else (0.0, 1.0)
        scaled = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        u8 = np.round(np.where(ok, scaled, 0.0) * 255).astype("uint8")
        pil = Image.fromarray(np.ascontiguousarray(u8), mode="L")
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=1)  # fast (zlib level 1); same pixels
    return buf.getvalue()
