"""The ``wcs`` resampler: solar images onto one Sun-centred, north-up helioprojective grid.

Each image is one observation, reprojected on its own at its own time
(``per_observation``): a time series of images is placed on the grid's time axis after
resampling. Geometry and observer are in :mod:`esdc.solar`.

The target is a :class:`~esdc.grid.Grid` with ``crs="helioprojective"``: the
helioprojective-cartesian frame (Thompson 2006, A&A 449, 791) in the gnomonic
(``HPLN-TAN``/``HPLT-TAN``) projection centred on the Sun, solar north up, cells
of fixed arcsec. Observer distance is normalised by *reprojection*, not by
scaling: every image is reprojected to an observer at 1 AU (:data:`~esdc.grid.AU_M`)
on the Sun-Earth line (heliographic Stonyhurst longitude 0, latitude
``B0(t)``) at the image's own observation time, so the solar disk (radius
``RSUN_REF`` = 696 Mm, as in SDO's pipelines) always subtends 959.64 arcsec.
This also removes the spacecraft's roll (``CROTA2``), its offset from the
Sun-Earth line and its distance (SDO ~0.99 AU, SOHO ~0.98 AU).

Methods (the recipe's ``resampling``), each one ``dask.delayed`` task per image,
run with sunpy coordinates and the ``reproject`` package:

``nearest``, ``bilinear``
    ``reproject.reproject_interp`` (order ``nearest-neighbor`` / ``bilinear``).
``bucket_average``
    anti-aliased area average: the image is first averaged in blocks of ``f x f``
    pixels (NaN skipped; ``f`` the largest integer not above the ratio of the grid
    cell to the source pixel, both seen from 1 AU), then resampled with
    ``reproject.reproject_adaptive`` (DeForest 2004, Sol. Phys. 219, 3; Gaussian
    kernel, values not flux-scaled). Up-sampling gives a smooth interpolation.
``bucket_mode``
    categorical: each cell takes the most frequent class among the source pixel
    centres (on the solar surface, visible from the target observer) that fall in
    it; cells without any are NaN.

Pixels beyond the limb of a helioprojective image are kept (``off_disk: keep``)
on a sphere around the source's observer through the Sun's centre (sunpy
``SphericalScreen``), or dropped (``off_disk: drop``). On-disk pixels are placed
on the solar surface.
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from esdc.errors import RegridError
from esdc.grid import AU_M, RSUN_REF_M, Grid
from esdc.regrid.base import Resampler, on_grid
from esdc.regrid.methods import check_method
from esdc.solar import ARCSEC_PER_RAD, SolarImage, observer, on_disk, solar_map, target_header
from esdc.sources.base import Geolocated

__all__ = ["WcsResampler", "overlaps", "reproject"]

# sunpy keeps its screen assumption in class state: reprojections in one process are
# serialised so that a screen set for one image never applies to another.
_LOCK = threading.Lock()


def _check_pair(source: Any, grid: Grid) -> None:
    if not isinstance(source, SolarImage):
        raise RegridError(f"{source.path.name}: only solar images (format fits or jp2) go onto "
                          "a helioprojective grid.")
    if not grid.is_helioprojective:
        raise RegridError(f"{source.path.name}: a solar image is reprojected onto a "
                          f"helioprojective grid (grid.crs: helioprojective), not {grid.crs!r}.")


def _source_arcsec(m: Any) -> float:
    """Size of one source pixel seen from 1 AU, arcsec (along the first axis)."""
    if m.coordinate_frame.name == "helioprojective":
        scale = m.scale.axis1.to_value("arcsec/pix")
        return float(scale * m.dsun.to_value("m") / AU_M)
    scale = m.scale.axis1.to_value("deg/pix")
    return float(math.radians(scale) * RSUN_REF_M / AU_M * ARCSEC_PER_RAD)


def _prebin(arr: np.ndarray, header: dict[str, Any], f: int) -> tuple[np.ndarray, dict[str, Any]]:
    """NaN-mean of ``f x f`` blocks and the header of the binned array (FITS order)."""
    ny, nx = (arr.shape[0] // f) * f, (arr.shape[1] // f) * f
    blocks = arr[:ny, :nx].reshape(ny // f, f, nx // f, f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        out = np.nanmean(blocks, axis=(1, 3))
    hdr = dict(header)
    hdr["NAXIS1"], hdr["NAXIS2"] = out.shape[1], out.shape[0]
    for i in (1, 2):
        if f"CDELT{i}" in hdr:
            hdr[f"CDELT{i}"] = float(hdr[f"CDELT{i}"]) * f
        hdr[f"CRPIX{i}"] = (float(hdr.get(f"CRPIX{i}", 0.0)) + (f - 1) / 2.0) / f
        for j in (1, 2):
            if f"CD{i}_{j}" in hdr:
                hdr[f"CD{i}_{j}"] = float(hdr[f"CD{i}_{j}"]) * f
    for key in ("SOLAR_R", "R_SUN"):  # radii given in pixels
        if isinstance(hdr.get(key), int | float):
            hdr[key] = float(hdr[key]) / f
    return out, hdr


def _bucket_mode(arr: np.ndarray, m: Any, twcs: Any, frame: Any, shape: tuple[int, int],
                 cats: np.ndarray) -> np.ndarray:
    ny, nx = shape
    votes = np.zeros((cats.size, ny * nx), dtype=np.int64)
    rows_per_block = max(1, 2_000_000 // max(1, arr.shape[1]))
    for r0 in range(0, arr.shape[0], rows_per_block):
        vals = arr[r0:r0 + rows_per_block]
        jj, ii = np.nonzero(np.isin(vals, cats))
        if ii.size == 0:
            continue
        world = m.wcs.pixel_to_world(ii, jj + r0)
        hpc = world.transform_to(frame)
        px, py = twcs.world_to_pixel(hpc)
        visible = np.asarray(hpc.is_visible()) & np.isfinite(px) & np.isfinite(py)
        ix, iy = np.rint(px).astype(np.int64, copy=False), np.rint(py).astype(np.int64,
                                                                             copy=False)
        ok = visible & (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        cls = vals[jj[ok], ii[ok]]
        flat = iy[ok] * nx + ix[ok]
        for k, c in enumerate(cats):
            votes[k] += np.bincount(flat[cls == c], minlength=ny * nx)
    out = cats[np.argmax(votes, axis=0)].astype("float64")
    out[votes.sum(axis=0) == 0] = np.nan
    return out.reshape(ny, nx)


def _reproject_frame(display: np.ndarray, header: dict[str, Any], flip: str, frame: str,
                     off_disk: str, grid: Grid, method: str,
                     flag_values: tuple[float, ...] | None) -> np.ndarray:
    """Reproject one image (displayed order) onto ``grid``; rows north first, float32."""
    import astropy.units as u
    from astropy.wcs import WCS
    from reproject import reproject_adaptive, reproject_interp
    from sunpy.coordinates import Helioprojective, SphericalScreen

    arr = np.asarray(display[::-1] if flip == "rows" else display[:, ::-1], dtype="float64")
    m = solar_map(arr, header)
    obstime = m.reference_date
    twcs = WCS(target_header(grid, obstime))
    shape = grid.shape
    helioprojective = frame == "helioprojective"
    screen: Any = (SphericalScreen(m.observer_coordinate, only_off_disk=True)
                   if helioprojective and off_disk == "keep" else contextlib.nullcontext())
    with _LOCK, screen, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method in ("nearest", "bilinear"):
            order = "nearest-neighbor" if method == "nearest" else "bilinear"
            out = reproject_interp((arr, m.wcs), twcs, shape_out=shape, order=order,
                                   return_footprint=False)
        elif method == "bucket_average":
            f = max(1, int(math.floor(grid.resolution[0] / _source_arcsec(m) + 1e-9)))
            if f > 1:
                arr, hdr = _prebin(arr, header, f)
                m = solar_map(arr, hdr)
            out = reproject_adaptive((arr, m.wcs), twcs, shape_out=shape,
                                     return_footprint=False, conserve_flux=False,
                                     kernel="gaussian", boundary_mode="strict",
                                     bad_value_mode="ignore")
        else:
            target = Helioprojective(observer=observer(obstime), obstime=obstime,
                                     rsun=RSUN_REF_M * u.m)
            cats = np.asarray(flag_values, dtype="float64")
            out = _bucket_mode(arr, m, twcs, target, shape, cats)
    out = np.asarray(out, dtype="float64")
    if helioprojective and off_disk == "drop":
        out[~on_disk(grid)] = np.nan
    return np.ascontiguousarray(out[::-1], dtype="float32")


def reproject(data: xr.DataArray, source: SolarImage, grid: Grid, method: str, *,
              flag_values: Sequence[int] | None = None) -> xr.DataArray:
    """Reproject a solar image onto a helioprojective grid, lazily.

    Parameters
    ----------
    data : xarray.DataArray
        Dims ``(..., y, x)`` as the reader exposes them (top row first), float with
        NaN for missing pixels, Dask-backed; usually ``(time=1, y, x)``.
    source : SolarImage
        The opened image: its header (WCS, observer, date) and orientation.
    grid : Grid
        The target, ``crs="helioprojective"``.
    method : {"nearest", "bilinear", "bucket_average", "bucket_mode"}
        Resampling (module docstring).
    flag_values : sequence of int, optional
        The classes, required for ``bucket_mode``.

    Returns
    -------
    xarray.DataArray
        float32, dims ``(..., y, x)``, shape ``(..., ny, nx)``, rows north first,
        with the grid's ``y``/``x`` (arcsec) and the leading coordinates of
        ``data``; one ``dask.delayed`` task per image, nothing computed. Class
        codes of ``bucket_mode`` are float32 with NaN where no pixel voted.

    Raises
    ------
    RegridError
        If the grid is not helioprojective, the method is unknown or ``conservative``,
        or ``bucket_mode`` lacks ``flag_values``.
    """
    WcsResampler().check(source, grid, method)
    check_method(method, flag_values)
    if tuple(data.dims[-2:]) != (source.ydim, source.xdim):
        raise RegridError(f"data dims {data.dims} must end in ({source.ydim}, {source.xdim}).")
    return on_grid(_frames(data, source, grid, method, flag_values), data, source, grid)


def _frames(data: xr.DataArray, source: SolarImage, grid: Grid, method: str,
            flag_values: Sequence[int] | None) -> da.Array:
    """One ``dask.delayed`` reprojection per image, stacked: shape ``(..., ny, nx)``."""
    lead = data.shape[:-2]
    flat = data.data.reshape((-1, *data.shape[-2:]))
    fv = tuple(float(v) for v in flag_values) if flag_values else None
    frames = [
        da.from_delayed(
            dask.delayed(_reproject_frame, pure=True)(
                flat[k], dict(source.header), source.flip, source.frame, source.off_disk,
                grid, method, fv),
            shape=grid.shape, dtype="float32")
        for k in range(flat.shape[0])
    ]
    return da.stack(frames).reshape((*lead, *grid.shape))


def overlaps(source: SolarImage, grid: Grid) -> bool:
    """True when some of the image falls on the grid (computes no pixel).

    A 9 x 9 lattice of the image's pixel positions is carried to the grid's frame
    at the image's time (off-limb positions on sunpy's spherical screen); the image
    overlaps when one of them lands within the grid.

    Parameters
    ----------
    source : SolarImage
        The opened image (its header is used, not its pixels).
    grid : Grid
        A helioprojective grid.

    Returns
    -------
    bool

    Raises
    ------
    RegridError
        If the source is not a solar image or the grid not helioprojective.
    """
    import astropy.units as u
    from astropy.wcs import WCS
    from sunpy.coordinates import Helioprojective, SphericalScreen

    _check_pair(source, grid)
    ny, nx = (int(source.header["NAXIS2"]), int(source.header["NAXIS1"]))
    m = solar_map(np.broadcast_to(np.float32(0), (ny, nx)), source.header)
    obstime = m.reference_date
    twcs = WCS(target_header(grid, obstime))
    target = Helioprojective(observer=observer(obstime), obstime=obstime, rsun=RSUN_REF_M * u.m)
    jj, ii = np.meshgrid(np.linspace(0, ny - 1, 9), np.linspace(0, nx - 1, 9), indexing="ij")
    screen: Any = (SphericalScreen(m.observer_coordinate) if source.frame == "helioprojective"
                   else contextlib.nullcontext())
    with _LOCK, screen, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        px, py = twcs.world_to_pixel(m.wcs.pixel_to_world(ii.ravel(), jj.ravel())
                                     .transform_to(target))
    gy, gx = grid.shape
    inside = (px > -0.5) & (px < gx - 0.5) & (py > -0.5) & (py < gy - 0.5)
    return bool(np.any(inside & np.isfinite(px) & np.isfinite(py)))


class WcsResampler(Resampler):
    """Solar images located by a FITS WCS, onto a helioprojective grid (module docstring)."""

    location = "wcs"
    per_observation = True

    def check(self, source: Geolocated, grid: Grid, method: str) -> None:
        """Refuse anything but a solar image onto a helioprojective grid.

        Raises
        ------
        RegridError
            If the source is not a :class:`~esdc.solar.SolarImage`, the grid is not
            helioprojective, or the method is ``conservative`` (``bucket_average`` is
            this resampler's area average).
        """
        _check_pair(source, grid)
        if method == "conservative":
            raise RegridError(
                f"{source.path.name}: conservative resampling is for grids of a PROJ CRS; "
                "a solar image's area average is bucket_average (anti-aliased, "
                "reproject_adaptive), or use bilinear or nearest.")

    def overlaps(self, source: Geolocated, grid: Grid) -> bool:
        """Whether some of the image lands on the grid (:func:`overlaps`)."""
        assert isinstance(source, SolarImage)
        return overlaps(source, grid)

    def resample(self, data: xr.DataArray, source: Geolocated, grid: Grid, method: str, *,
                 flag_values: Sequence[int] | None, fast_path: bool,
                 min_valid_fraction: float) -> Any:
        """One reprojection task per image; ``fast_path`` and ``min_valid_fraction`` do not apply.

        See :meth:`esdc.regrid.base.Resampler.resample`.
        """
        assert isinstance(source, SolarImage)
        return _frames(data, source, grid, method, flag_values)
