"""Plain image reader (JPEG/PNG through Pillow) with a declared georeference."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pyproj
import xarray as xr
from PIL import Image

from esdc.conventions import SPATIAL_DIMS
from esdc.errors import SourceError
from esdc.recipe import SourceSpec
from esdc.sources.base import Geolocated, georeferenced

__all__ = ["open_image"]


def _decode(path: str) -> np.ndarray:
    with Image.open(path) as im:
        arr = np.asarray(im)
    return arr if arr.ndim == 3 else arr[:, :, None]


def open_image(spec: SourceSpec, path: Path) -> Geolocated:
    """Open a JPEG/PNG lazily: the header is read now, the pixels when computed.

    Each band becomes a variable named by ``spec.bands`` (``red, green, blue`` for
    an RGB image) or ``band_1``, … Pixels keep their 8-bit values; scale them in the
    variable spec (e.g. ``scale_factor: 0.00392156862745098`` for reflectance-like 0–1).

    Parameters
    ----------
    spec : SourceSpec
        The recipe's source (``format: image``) with its ``georeference``.
    path : pathlib.Path
        The file.

    Returns
    -------
    Geolocated
        Variables of dims ``(y, x)`` or ``(lat, lon)``, shape ``(height, width)``.

    Raises
    ------
    SourceError
        If the file is not an image Pillow can read, or the band names do not fit.
    """
    try:
        with Image.open(path) as im:
            width, height = im.size
            nb = len(im.getbands())
            dtype = np.dtype("uint16") if im.mode.startswith("I;16") else np.dtype("uint8")
    except Exception as exc:  # noqa: BLE001 - any Pillow failure is a bad source file
        raise SourceError(
            f"sources.{spec.name}: {path} is not an image Pillow can read ({exc})."
        ) from None
    names = spec.bands or [f"band_{i + 1}" for i in range(nb)]
    if len(names) != nb:
        raise SourceError(f"sources.{spec.name}: {path} has {nb} bands but `bands` names "
                          f"{len(names)}.")
    geo = spec.georeference
    assert geo is not None
    geographic, projected = SPATIAL_DIMS
    dims = tuple(geo.dims) if geo.dims else (geographic if pyproj.CRS.from_user_input(
        geo.crs).is_geographic else projected)
    pixels = da.from_delayed(dask.delayed(_decode, pure=True)(str(path)),
                             shape=(height, width, nb), dtype=dtype)
    ds = xr.Dataset({n: (dims, pixels[:, :, i]) for i, n in enumerate(names)})
    return georeferenced(ds, geo, path, f"sources.{spec.name}")
