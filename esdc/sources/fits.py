"""Solar images located by a FITS header: FITS files (astropy) and JPEG 2000 (Helioviewer).

Both readers are lazy: the header is read when the source is opened, the pixels
only when a Dask task needs them (``dask.delayed``). The header is interpreted by
sunpy's map sources (``sunpy.map.Map``), which know the quirks of each instrument
(e.g. EIT's ``Solar-X`` axes and observer position, HMI's Carrington observer).

Orientation. A FITS array stores its first row at the *bottom* of the image. The
readers expose the pixels top row first, so that an unrotated image is north-up:
``display = fits[::-1]``. Images rotated by about 180 degrees (HMI ``CROTA2 = 180``,
SOHO rolled) are turned instead (``display = fits[:, ::-1]``, the same as
``fits[::-1]`` rotated by 180 degrees), which makes them north-up too.
:attr:`SolarImage.header` always describes the FITS-ordered array, and
:meth:`SolarImage.to_fits_order` undoes the flip; :mod:`esdc.regrid.wcs` uses both to
reproject with the full WCS (any rotation). :class:`~esdc.solar.SolarImage` and
:func:`~esdc.solar.solar_map` live in :mod:`esdc.solar` (re-exported here). The 1-D
``y``/``x`` coordinates are *nominal*: cell-centre helioprojective coordinates in arcsec
(heliographic degrees for CEA/CAR maps) along the image axes, exact for north-up images
and off by the residual rotation otherwise (``attrs["rotation_deg"]``).
"""

from __future__ import annotations

import math
import struct
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr

from esdc.conventions import SPATIAL_DIMS, TIME_DIM
from esdc.errors import SourceError
from esdc.recipe import FitsSpec, SourceSpec
from esdc.solar import SolarImage, solar_map

__all__ = ["SolarImage", "open_fits", "open_jp2", "read_jp2_header", "solar_map"]

_SKIP_KEYS = {"", "COMMENT", "HISTORY", "KEYCOMMENTS"}
_FRAMES = ("helioprojective", "heliographic_carrington", "heliographic_stonyhurst")


def _to_python(value: Any) -> Any:
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _sanitize(text: str | None) -> Any:
    """A JP2 XML header value as int, float or str (after sunpy's ``_sanative_value``)."""
    if text is None:
        return None
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t.replace("\n", " ")


def _jp2_boxes(blob: bytes) -> list[tuple[bytes, int, int]]:
    """Top-level boxes of a JP2 file: ``(type, payload start, end)`` (ISO/IEC 15444-1 I.4)."""
    out = []
    off = 0
    while off + 8 <= len(blob):
        length, kind = struct.unpack(">I4s", blob[off:off + 8])
        head = 8
        if length == 1:
            length = struct.unpack(">Q", blob[off + 8:off + 16])[0]
            head = 16
        elif length == 0:
            length = len(blob) - off
        if length < head:
            break
        out.append((kind, off + head, off + length))
        off += length
    return out


def read_jp2_header(path: str | Path) -> dict[str, Any]:
    """The FITS header that Helioviewer JPEG 2000 files carry in their XML box.

    Parameters
    ----------
    path : str or path-like
        A ``.jp2`` file.

    Returns
    -------
    dict
        Upper-case keywords to int, float or str values (``HISTORY``/``COMMENT``
        dropped), as sunpy's JP2 reader gives them, without needing glymur.

    Raises
    ------
    SourceError
        If the file has no XML box or the XML cannot be parsed.
    """
    blob = Path(path).read_bytes()
    xml = next((blob[a:b] for kind, a, b in _jp2_boxes(blob) if kind == b"xml "), None)
    if xml is None:
        raise SourceError(f"{path} has no XML box: not a JPEG 2000 file with a FITS header "
                          "(Helioviewer JP2).")
    if b"<!doctype" in xml.lower() or b"<!entity" in xml.lower():
        # A FITS header in XML needs no DTD; entity declarations are how XML bombs
        # (billion laughs) and external entities get in, so they are refused
        # (what defusedxml does), and the parser below never sees one.
        raise SourceError(f"{path}: the XML header declares a DTD or entities; a JPEG 2000 "
                          "FITS header has none, so the file is refused.")
    try:
        root = ET.fromstring(  # nosec B314 - DTDs and entities refused just above
            xml.decode("utf-8", errors="replace").strip("\x00 \n"))
    except ET.ParseError as exc:
        raise SourceError(f"{path}: the XML header cannot be parsed ({exc}).") from None
    header: dict[str, Any] = {}
    for node in root.iter():
        if len(node) == 0 and node.tag.upper() not in _SKIP_KEYS:
            value = _sanitize(node.text)
            if value is not None and value != "":
                header[node.tag.upper()] = value
    return header


def _pick_hdu(hdul: Any, hdu: int | None, path: Path) -> int:
    if hdu is not None:
        if hdu >= len(hdul):
            raise SourceError(f"{path} has {len(hdul)} HDUs; fits.hdu {hdu} does not exist.")
        return hdu
    for i, h in enumerate(hdul):
        if h.is_image and int(h.header.get("NAXIS", 0)) >= 2:
            return i
    raise SourceError(f"{path} holds no 2-D image HDU.")


def _read_fits_header(path: Path, opts: FitsSpec) -> tuple[dict[str, Any], int, tuple[int, int]]:
    from astropy.io import fits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy warns about BLANK on float images
        try:
            with fits.open(path) as hdul:
                hdul.verify("silentfix+ignore")  # e.g. SHARP headers have unparsable cards
                index = _pick_hdu(hdul, opts.hdu, path)
                hdr = hdul[index].header
                shape = (int(hdr["NAXIS2"]), int(hdr["NAXIS1"]))
                header = {k.upper(): _to_python(v) for k, v in hdr.items()
                          if k.upper() not in _SKIP_KEYS}
        except OSError as exc:
            raise SourceError(f"{path} is not a FITS file astropy can read ({exc}).") from None
    return header, index, shape


def _read_fits_pixels(path: str, hdu: int) -> np.ndarray:
    from astropy.io import fits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path, memmap=False) as hdul:
            return np.asarray(hdul[hdu].data, dtype="float32")


def _read_jp2_pixels(path: str, hdu: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.ndim != 2:
        raise SourceError(f"{path}: expected a one-band JPEG 2000 image, got {arr.shape}.")
    return arr[::-1].astype("float32")  # JP2 rows run top-down; FITS bottom-up


def _pixels(reader: str, path: str, hdu: int, flip: str, exposure: float | None) -> np.ndarray:
    fits_order = (_read_fits_pixels if reader == "fits" else _read_jp2_pixels)(path, hdu)
    out = fits_order[::-1] if flip == "rows" else fits_order[:, ::-1]
    if exposure is not None:
        out = out / np.float32(exposure)
    return np.ascontiguousarray(out, dtype="float32")


def _units(unit: Any, per_second: bool) -> str:
    """UDUNITS-style units of the pixels; counts of a CCD are DN."""
    import astropy.units as u

    if unit is None or unit == u.dimensionless_unscaled:
        base = u.DN if per_second else u.dimensionless_unscaled
    elif unit in (u.ct, u.ct / u.pix, u.DN / u.pix):
        base = u.DN
    else:
        base = unit
    out = base / u.s if per_second else base
    parts = [b.to_string() + ("" if p == 1 else f"{p:g}") for b, p in zip(
        out.bases, out.powers, strict=True)]
    return " ".join(parts) or "1"


def _rotation_deg(m: Any) -> float:
    r = np.asarray(m.rotation_matrix, dtype="float64")
    return float(np.degrees(np.arctan2(r[1, 0], r[0, 0])))


def _nominal_coords(m: Any, shape: tuple[int, int], flip: str) -> tuple[np.ndarray, np.ndarray,
                                                                        str]:
    """Cell-centre coordinates of the displayed rows (top first) and columns."""
    ny, nx = shape
    frame = m.coordinate_frame.name
    unit = "arcsec" if frame == "helioprojective" else "deg"
    sx = m.scale.axis1.to_value(f"{unit}/pix")
    sy = m.scale.axis2.to_value(f"{unit}/pix")
    ref = m.reference_coordinate
    if frame == "helioprojective":
        cx, cy = ref.Tx.to_value(unit), ref.Ty.to_value(unit)
    else:
        cx, cy = ref.lon.to_value(unit), ref.lat.to_value(unit)
    px, py = m.reference_pixel.x.value, m.reference_pixel.y.value  # 0-based
    cols, rows = np.arange(nx, dtype="float64"), np.arange(ny, dtype="float64")
    if flip == "rows":
        x = cx + sx * (cols - px)
        y = cy + sy * ((ny - 1 - rows) - py)
    else:
        x = cx - sx * ((nx - 1 - cols) - px)
        y = cy - sy * (rows - py)
    return y, x, unit


def _open(spec: SourceSpec, path: Path, reader: str) -> SolarImage:
    opts = spec.fits or FitsSpec()
    what = f"sources.{spec.name}"
    if reader == "fits":
        header, hdu, shape = _read_fits_header(path, opts)
    else:
        from PIL import Image

        header, hdu = read_jp2_header(path), 0
        try:
            with Image.open(path) as im:
                shape = (im.size[1], im.size[0])
        except Exception as exc:  # noqa: BLE001 - any Pillow failure is a bad source file
            raise SourceError(f"{what}: {path} is not a JPEG 2000 image Pillow can read "
                              f"({exc}).") from None
    header.update(opts.header)
    if "NAXIS1" in header and "NAXIS2" in header and (
            int(header["NAXIS2"]), int(header["NAXIS1"])) != shape:
        raise SourceError(
            f"{what}: the header of {path} describes a {header['NAXIS2']}x{header['NAXIS1']} "
            "image but the "
            f"file holds {shape[0]}x{shape[1]} pixels (a resampled copy whose header was not "
            "updated); correct NAXIS1/2, CDELT1/2 and CRPIX1/2 in `fits.header`."
        )
    for key in ("CTYPE1", "CTYPE2"):
        if key not in header:
            raise SourceError(f"{what}: {path} has no {key}; it is not a solar image with a "
                              "WCS header.")
    try:
        m = solar_map(np.broadcast_to(np.float32(0), shape), header)  # metadata only
        frame = m.coordinate_frame.name
    except Exception as exc:  # noqa: BLE001 - sunpy rejects a header in many ways
        raise SourceError(f"{what}: sunpy cannot interpret the header of {path} ({exc}); "
                          "correct it with `fits.header`.") from None
    if frame not in _FRAMES:
        raise SourceError(f"{what}: {path} is in the {frame} frame; esdc reads solar images "
                          f"in {', '.join(_FRAMES)}.")
    rotation = _rotation_deg(m)
    flip: Literal["rows", "columns"] = "columns" if round(rotation / 180.0) % 2 else "rows"
    exposure = None
    if opts.divide_by_exposure:
        exp = m.exposure_time
        if exp is None or not math.isfinite(exp.to_value("s")) or exp.to_value("s") <= 0:
            raise SourceError(f"{what}: fits.divide_by_exposure is set but {path} has no "
                              "positive EXPTIME.")
        exposure = float(exp.to_value("s"))
    names = spec.bands or ["image"]
    if len(names) != 1:
        raise SourceError(f"{what}: a solar image has one band; `bands` names {len(names)}.")
    y, x, unit = _nominal_coords(m, shape, flip)
    pixels = da.from_delayed(
        dask.delayed(_pixels, pure=True)(reader, str(path), hdu, flip, exposure),
        shape=shape, dtype="float32")
    date = np.datetime64(m.date.utc.isot, "ns")
    attrs = {
        "units": _units(m.unit, exposure is not None),
        "observatory": str(m.observatory), "instrument": str(m.instrument),
        "wavelength": str(m.wavelength) if m.wavelength is not None else "",
        "date_obs": str(m.date.utc.isot), "rotation_deg": rotation, "frame": frame,
    }
    if exposure is not None:
        attrs["exposure_time_s"] = exposure
    if reader == "jp2":
        attrs["units"] = "1"
        attrs["comment"] = "8-bit display scaling of a Helioviewer JPEG 2000 image, not DN"
    ydim, xdim = SPATIAL_DIMS[1]
    dims: tuple[str, ...] = (ydim, xdim)
    data: Any = pixels
    coords: dict[str, Any] = {ydim: (ydim, y, {"units": unit}), xdim: (xdim, x, {"units": unit})}
    if spec.time == "series":
        dims = (TIME_DIM, ydim, xdim)
        data = pixels[None]
        coords[TIME_DIM] = (TIME_DIM, np.array([date], dtype="datetime64[ns]"))
    ds = xr.Dataset({names[0]: (dims, data, attrs)}, coords=coords)
    return SolarImage(ds, None, ydim, xdim, path, header=header, flip=flip, frame=frame,
                      off_disk=opts.off_disk)


def open_fits(spec: SourceSpec, path: Path) -> SolarImage:
    """Open a solar FITS image lazily: the header now, the pixels when computed.

    The image of HDU ``spec.fits.hdu`` (default: the first image HDU; tile-compressed
    images are decompressed by astropy) becomes one variable, named by
    ``spec.bands[0]`` or ``image``, float32 with NaN for blank pixels (``BLANK``),
    divided by ``EXPTIME`` when ``spec.fits.divide_by_exposure`` (units ``DN s-1``).

    Parameters
    ----------
    spec : SourceSpec
        The recipe's source (``format: fits``).
    path : pathlib.Path
        The file.

    Returns
    -------
    SolarImage
        Variable of dims ``(time, y, x)`` (``time`` of length 1: the observation's
        ``DATE-OBS``, UTC; ``(y, x)`` for ``time: static``), shape ``(1, NAXIS2,
        NAXIS1)``, top row first; nominal ``y``/``x`` in arcsec (module docstring).

    Raises
    ------
    SourceError
        If the file is not FITS, has no image or WCS, its header contradicts its
        array, or an exposure normalisation lacks ``EXPTIME``.
    """
    return _open(spec, path, "fits")


def open_jp2(spec: SourceSpec, path: Path) -> SolarImage:
    """Open a Helioviewer JPEG 2000 solar image lazily (Pillow/OpenJPEG; no glymur).

    The FITS header comes from the file's XML box (:func:`read_jp2_header`); the
    8-bit pixels are Helioviewer's display scaling (not DN), decoded when computed.
    Otherwise as :func:`open_fits`.

    Parameters
    ----------
    spec : SourceSpec
        The recipe's source (``format: jp2``).
    path : pathlib.Path
        The file.

    Returns
    -------
    SolarImage
        As :func:`open_fits`.

    Raises
    ------
    SourceError
        If the file is not a JPEG 2000 image with a FITS header, or the header
        contradicts the image.
    """
    return _open(spec, path, "jp2")
