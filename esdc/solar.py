"""The Sun: solar images located by a FITS WCS, the grid's observer, the solar disk.

Solar cubes use a :class:`~esdc.grid.Grid` with ``crs="helioprojective"``: the
helioprojective-cartesian frame (Thompson 2006, A&A 449, 791) in the gnomonic
(``HPLN-TAN``/``HPLT-TAN``) projection centred on the Sun, solar north up, cells
of fixed arcsec. Observer distance is normalised by *reprojection*, not by
scaling: every image is reprojected (:mod:`esdc.regrid.wcs`) to an observer at 1 AU
(:data:`~esdc.grid.AU_M`) on the Sun-Earth line (heliographic Stonyhurst longitude 0,
latitude ``B0(t)``) at the image's own observation time (:func:`observer`,
:func:`target_header`), so the solar disk (radius ``RSUN_REF`` = 696 Mm, as in SDO's
pipelines) always subtends 959.64 arcsec (:func:`rsun_pixels`). This also removes the
spacecraft's roll (``CROTA2``), its offset from the Sun-Earth line and its distance (SDO
~0.99 AU, SOHO ~0.98 AU).

A solar image is a :class:`SolarImage`: a :class:`~esdc.sources.base.Geolocated` whose
pixels are located by its FITS header (``location == "wcs"``), read by
:mod:`esdc.sources.fits`. sunpy and astropy are imported inside the functions that need
them (``pip install 'esdc[solar]'``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from esdc.errors import RegridError, SourceError
from esdc.grid import AU_M, RSUN_REF_M, Grid
from esdc.sources.base import Geolocated

__all__ = ["ARCSEC_PER_RAD", "SolarImage", "fit_limb", "observer", "on_disk", "rsun_pixels",
           "solar_map", "target_header"]

#: Arcseconds per radian.
ARCSEC_PER_RAD = 180.0 / math.pi * 3600.0


def _need_sunpy() -> Any:
    try:
        import sunpy.map
    except ImportError:  # pragma: no cover - the solar/test extras install it
        raise SourceError("solar images need sunpy, astropy and reproject: "
                          "pip install 'esdc[solar]'.") from None
    return sunpy.map


@dataclass(frozen=True)
class SolarImage(Geolocated):
    """A solar image located by its FITS header (WCS) rather than by a PROJ CRS.

    Its :attr:`location` is ``"wcs"`` and its ``crs`` ``None``: neither the
    helioprojective frame nor the observer's geometry can be written as a PROJ CRS.
    The data variables have dims ``(time, y, x)`` (``(y, x)`` for a static source), top
    row first. Read by :mod:`esdc.sources.fits`, reprojected by :mod:`esdc.regrid.wcs`.

    Attributes
    ----------
    header : dict
        The effective FITS header (the file's, with the recipe's ``fits.header``
        corrections), describing the array in FITS order (row 0 at the bottom).
    flip : {"rows", "columns"}
        How the exposed pixels relate to the FITS array: ``display = fits[::-1]``
        (rows) or ``display = fits[:, ::-1]`` (columns, images rotated ~180 degrees).
    frame : str
        sunpy's name of the image's coordinate frame (``helioprojective``,
        ``heliographic_carrington``, ``heliographic_stonyhurst``).
    off_disk : {"keep", "drop"}
        What reprojection does with pixels beyond the limb (see
        :class:`esdc.recipe.FitsSpec`).
    """

    header: dict[str, Any] = field(default_factory=dict)
    flip: Literal["rows", "columns"] = "rows"
    frame: str = "helioprojective"
    off_disk: Literal["keep", "drop"] = "keep"

    @property
    def location(self) -> str:
        """``"wcs"``: the pixels are located by the FITS header's world coordinates."""
        return "wcs"

    @property
    def body(self) -> str:
        """``"sun"``."""
        return "sun"

    def area_definition(self) -> Any:
        """Not available: a solar image has no PROJ CRS.

        Raises
        ------
        SourceError
            Always; :func:`esdc.regrid.wcs.reproject` regrids solar images with their WCS.
        """
        raise SourceError(
            f"{self.path.name} is located by a {self.frame} WCS, which pyresample cannot "
            "represent; esdc.regrid.wcs.reproject regrids it (sunpy/reproject)."
        )

    def to_fits_order(self, display: Any) -> Any:
        """Undo the reader's flip of the last two axes (NumPy or Dask arrays).

        Parameters
        ----------
        display : array, shape ``(..., ny, nx)``
            Pixels as exposed (top row first).

        Returns
        -------
        array, shape ``(..., ny, nx)``
            The same pixels in FITS order, as :attr:`header` describes them.
        """
        return display[..., ::-1, :] if self.flip == "rows" else display[..., :, ::-1]


def solar_map(data: Any, header: Mapping[str, Any]) -> Any:
    """A ``sunpy.map.Map`` of FITS-ordered ``data`` and ``header``, warnings silenced.

    Parameters
    ----------
    data : numpy.ndarray, shape ``(ny, nx)``
        Pixels in FITS order (row 0 at the bottom).
    header : mapping
        FITS keywords.

    Returns
    -------
    sunpy.map.GenericMap
        The instrument's map source (``AIAMap``, ``HMIMap``, ``EITMap``, ...).
    """
    smap = _need_sunpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return smap.Map(data, dict(header))


def rsun_pixels(grid: Grid) -> float:
    """Radius of the solar disk on a helioprojective grid, in cells (along x).

    Parameters
    ----------
    grid : Grid
        A helioprojective grid.

    Returns
    -------
    float
        ``arcsin(RSUN_REF / 1 AU)`` = 959.64 arcsec divided by the cell width
        (arcsec): 199.93 for 4.8 arcsec cells.
    """
    return math.degrees(math.asin(RSUN_REF_M / AU_M)) * 3600.0 / grid.resolution[0]


def observer(obstime: Any) -> Any:
    """The grid's observer at ``obstime``: 1 AU from the Sun on the Sun-Earth line.

    Parameters
    ----------
    obstime : astropy.time.Time or datetime-like
        Observation time.

    Returns
    -------
    astropy.coordinates.SkyCoord
        Heliographic Stonyhurst longitude 0 deg, latitude ``B0(obstime)`` (the
        Earth's), radius 1 AU.
    """
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.time import Time
    from sunpy.coordinates import HeliographicStonyhurst, sun

    t = Time(obstime)
    return SkyCoord(0 * u.deg, sun.B0(t), AU_M * u.m, frame=HeliographicStonyhurst, obstime=t)


def target_header(grid: Grid, obstime: Any) -> dict[str, Any]:
    """FITS WCS header of a helioprojective grid seen at ``obstime``.

    The array it describes is in FITS order (row 0 the *southernmost*); the grid's
    own rows run north first.

    Parameters
    ----------
    grid : Grid
        A helioprojective grid (``crs="helioprojective"``).
    obstime : astropy.time.Time or datetime-like
        Observation time (sets the observer's latitude ``B0``).

    Returns
    -------
    dict
        ``HPLN-TAN``/``HPLT-TAN`` axes in arcsec, ``CRVAL = (0, 0)`` at the Sun's
        centre, and the observer (``HGLN_OBS``, ``HGLT_OBS``, ``DSUN_OBS``,
        ``RSUN_REF``).

    Raises
    ------
    RegridError
        If the grid is not helioprojective.
    """
    if not grid.is_helioprojective:
        raise RegridError(f"grid crs {grid.crs!r} is not helioprojective.")
    from astropy.time import Time

    t = Time(obstime)
    obs = observer(t)
    west, south, _, _ = grid.bbox
    dx, dy = grid.resolution
    ny, nx = grid.shape
    return {
        "NAXIS": 2, "NAXIS1": nx, "NAXIS2": ny,
        "CTYPE1": "HPLN-TAN", "CTYPE2": "HPLT-TAN", "CUNIT1": "arcsec", "CUNIT2": "arcsec",
        "CDELT1": dx, "CDELT2": dy, "CRPIX1": 0.5 - west / dx, "CRPIX2": 0.5 - south / dy,
        "CRVAL1": 0.0, "CRVAL2": 0.0, "DATE-OBS": t.utc.isot, "MJD-OBS": float(t.utc.mjd),
        "HGLN_OBS": 0.0, "HGLT_OBS": float(obs.lat.to_value("deg")), "DSUN_OBS": AU_M,
        "RSUN_REF": RSUN_REF_M,
    }


def on_disk(grid: Grid) -> np.ndarray:
    """Cells of a helioprojective grid whose line of sight meets the Sun.

    Parameters
    ----------
    grid : Grid
        A helioprojective grid.

    Returns
    -------
    numpy.ndarray
        bool, shape ``(ny, nx)``, in FITS order (row 0 the southernmost).
    """
    wx = grid.bbox[0] + grid.resolution[0] * (np.arange(grid.shape[1]) + 0.5)
    wy = grid.bbox[1] + grid.resolution[1] * (np.arange(grid.shape[0]) + 0.5)
    rho = np.arctan(np.hypot(wx[None, :], wy[:, None]) / ARCSEC_PER_RAD)
    return rho < math.asin(RSUN_REF_M / AU_M)


def fit_limb(image: np.ndarray, guess: tuple[float, float, float] | None = None, *,
             edge: str = "drop", n_rays: int = 180, window: float = 0.15,
             iterations: int = 20) -> tuple[float, float, float]:
    """Fit a circle to the solar limb of one image.

    Along ``n_rays`` rays from the current centre, the limb is taken where the
    radial profile (sampled every 0.25 pixel within ``(1 +- window) r``) drops
    fastest, or peaks; a least-squares circle (Kasa 1976) through those points, with
    3-sigma (MAD) rejection of outlying rays, gives the new centre and radius.

    Parameters
    ----------
    image : numpy.ndarray, shape ``(ny, nx)``
        One frame; NaN for missing pixels.
    guess : (float, float, float), optional
        Initial ``(x0, y0, r)`` in pixels; default: centroid and equivalent radius of
        the pixels above the mid-level of the 2nd-98th percentiles.
    edge : {"drop", "peak", "finite"}
        ``drop``: steepest decline of the intensity (photospheric continuum, limb
        darkened); ``peak``: maximum (EUV limb brightening); ``finite``: the edge of
        the finite pixels (magnetograms, NaN off the disk).
    n_rays, window, iterations : int, float, int
        Number of rays, half-width of the radial search (fraction of ``r``) and the
        most refinements (they stop when the circle moves by less than 0.01 pixel).

    Returns
    -------
    (float, float, float)
        ``(x0, y0, r)``: centre column, centre row (0-based, in the array's own
        row order) and radius, in pixels.

    Raises
    ------
    ValueError
        If ``edge`` is unknown or fewer than 8 rays find a limb.
    """
    from scipy import ndimage

    if edge not in ("drop", "peak", "finite"):
        raise ValueError(f"edge {edge!r} is not one of drop, peak, finite.")
    img = np.asarray(image, dtype="float64")
    finite = np.isfinite(img)
    if edge == "finite":
        work = finite.astype("float64")
    else:
        work = np.where(finite, img, np.nanmin(img) if finite.any() else 0.0)
    if guess is None:
        lo, hi = np.percentile(work, [2, 98])
        mask = work > 0.5 * (lo + hi)
        labels, n = ndimage.label(mask)
        if n > 1:
            sizes = ndimage.sum(mask, labels, range(1, n + 1))
            mask = labels == 1 + int(np.argmax(sizes))
        yy, xx = np.nonzero(mask)
        xc, yc, r = float(xx.mean()), float(yy.mean()), float(np.sqrt(mask.sum() / np.pi))
    else:
        xc, yc, r = (float(v) for v in guess)
    if edge != "finite":
        work = ndimage.gaussian_filter(work, max(0.5, 0.01 * r))
    theta = np.linspace(0.0, 2.0 * np.pi, n_rays, endpoint=False)
    for _ in range(iterations):
        rr = np.arange((1 - window) * r, (1 + window) * r, 0.25)
        ys = yc + np.sin(theta)[:, None] * rr[None, :]
        xs = xc + np.cos(theta)[:, None] * rr[None, :]
        prof = ndimage.map_coordinates(work, [ys, xs], order=1, cval=np.nan)
        score = prof if edge == "peak" else -np.gradient(prof, axis=1)
        good = np.isfinite(score).all(axis=1)
        k = np.argmax(np.where(np.isfinite(score), score, -np.inf), axis=1)
        px = xs[np.arange(n_rays), k][good]
        py = ys[np.arange(n_rays), k][good]
        keep = np.ones(px.size, dtype=bool)
        for _ in range(3):
            if keep.sum() < 8:
                raise ValueError("fewer than 8 rays found a limb; give a better guess.")
            a = np.c_[2 * px[keep], 2 * py[keep], np.ones(keep.sum())]
            b = px[keep] ** 2 + py[keep] ** 2
            (cx, cy, c), *_ = np.linalg.lstsq(a, b, rcond=None)
            rad = float(np.sqrt(c + cx ** 2 + cy ** 2))
            res = np.hypot(px - cx, py - cy) - rad
            mad = float(np.median(np.abs(res[keep] - np.median(res[keep]))))
            keep = np.abs(res) < max(3 * 1.4826 * mad, 0.5)
        moved = max(math.hypot(cx - xc, cy - yc), abs(rad - r))
        xc, yc, r = float(cx), float(cy), rad
        if moved < 0.01:
            break
    return xc, yc, r
