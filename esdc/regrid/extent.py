"""Footprints of sources located in a PROJ CRS (regular grids, swaths) against a grid.

:class:`ProjResampler` is what the regular and swath resamplers share: they go onto grids
of a PROJ CRS only, and a source reaches the grid when the bounding boxes meet.
:func:`missed_message` and :func:`partial_message` word the coverage of a source at plan
time, with the source's own extent and the grid's, both ``[west, south, east, north]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyproj
import xarray as xr

from esdc.errors import RegridError
from esdc.grid import Grid
from esdc.regrid.base import Resampler
from esdc.sources.base import Geolocated

__all__ = ["ProjResampler", "box_overlap", "box_text", "covered_box", "crop",
           "footprint_overlaps", "grid_extent", "missed_message", "partial_message",
           "pixel_scale", "rectilinear_lonlats", "same_plane", "shared_transformers",
           "source_extent", "transformed", "transformer"]


def box_overlap(a: Sequence[float], b: Sequence[float], geographic: bool) -> bool:
    """Whether boxes ``a`` and ``b`` (west, south, east, north) intersect.

    In a geographic CRS a box with ``west > east`` crosses the antimeridian (as
    :meth:`pyproj.Transformer.transform_bounds` returns it); it is then taken to span
    every longitude, which can only say "overlap" too often, never too rarely.

    Parameters
    ----------
    a, b : sequence of 4 float
        Boxes in one CRS's units.
    geographic : bool
        Whether that CRS is geographic (degrees).

    Returns
    -------
    bool
    """
    aw, as_, ae, an = a
    bw, bs, be, bn = b
    if geographic and (aw > ae or bw > be):
        aw, ae, bw, be = -np.inf, np.inf, -np.inf, np.inf
    return bool(aw < be and ae > bw and as_ < bn and an > bs)


@functools.lru_cache(maxsize=64)
def transformer(src: pyproj.CRS, dst: pyproj.CRS) -> pyproj.Transformer:
    """``pyproj.Transformer.from_crs(src, dst, always_xy=True)``, made once per pair.

    Making one costs about 9 ms (PROJ searches its database for the operation), and a
    plan asks for the same few pairs for every variable; pyproj's transformers are
    thread-safe (pyproj >= 3.1).

    Raises
    ------
    pyproj.exceptions.ProjError
        When PROJ has no operation between the two.
    """
    return pyproj.Transformer.from_crs(src, dst, always_xy=True)


class _SharedTransformer:
    """Stands in for ``pyproj.Transformer`` in :mod:`pyresample.slicer`.

    ``from_crs`` with ``always_xy=True`` gives :func:`transformer`'s one per pair.
    """

    @staticmethod
    def from_crs(src: Any, dst: Any, always_xy: bool = False, **kwargs: Any) -> pyproj.Transformer:
        if always_xy and not kwargs:
            return transformer(pyproj.CRS.from_user_input(src), pyproj.CRS.from_user_input(dst))
        return pyproj.Transformer.from_crs(src, dst, always_xy=always_xy, **kwargs)


_SHARING = threading.Lock()
_shared_depth = 0


@contextlib.contextmanager
def shared_transformers() -> Iterator[None]:
    """Within it, pyresample's slicers share :func:`transformer`'s transformers.

    :func:`pyresample.resampler.crop_source_area`, asked once per destination block
    (by :func:`pyresample.resampler.resample_blocks` and by
    :func:`esdc.regrid.regular.reached_blocks`), makes two ``Transformer.from_crs`` each
    time (about 7 ms each: 0.32 s of the Earth recipe's 0.6 s plan, for 24 blocks of
    one bilinear variable); the pairs are always the same. The results are the same
    transformations; pyproj's transformers are thread-safe. Re-entrant; the slicer's own
    ``Transformer`` is back when the outermost one ends.

    Yields
    ------
    None
        While inside, ``pyresample.slicer.Transformer`` is the sharing stand-in.
    """
    import pyresample.slicer

    global _shared_depth
    with _SHARING:
        if _shared_depth == 0:
            pyresample.slicer.Transformer = _SharedTransformer  # type: ignore[assignment]
        _shared_depth += 1
    try:
        yield
    finally:
        with _SHARING:
            _shared_depth -= 1
            if _shared_depth == 0:
                pyresample.slicer.Transformer = pyproj.Transformer  # type: ignore[assignment]


def transformed(box: Sequence[float], src: pyproj.CRS,
                dst: pyproj.CRS) -> tuple[float, float, float, float] | None:
    """``box`` in ``src`` as an envelope in ``dst``, or None when it cannot be told.

    Parameters
    ----------
    box : sequence of 4 float
        ``(west, south, east, north)`` in ``src`` units.
    src, dst : pyproj.CRS
        From and to.

    Returns
    -------
    tuple of 4 float or None
        The envelope (21 points per edge), ``None`` if PROJ fails or it is not finite.
    """
    if src == dst:
        return (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
    try:
        out = transformer(src, dst).transform_bounds(*box, densify_pts=21)
    except pyproj.exceptions.ProjError:
        return None
    return out if np.all(np.isfinite(out)) else None


def footprint_overlaps(source: Geolocated, grid: Grid) -> bool:
    """True when the source's footprint intersects the grid's bounding box.

    With different CRSs both boxes are compared in both CRSs: the envelope of a
    source band around a pole (or of a polar grid in degrees) is much larger than
    the area itself, so either comparison alone can report an overlap that is not
    there. Where a transformation is impossible or not finite, that comparison
    counts as an overlap (the resampler decides).

    Parameters
    ----------
    source : Geolocated
        A regular or swath source (with a PROJ CRS).
    grid : Grid
        A grid of a PROJ CRS.

    Returns
    -------
    bool
    """
    assert source.crs is not None
    gcrs = grid.pyproj_crs
    if source.crs.equals(gcrs, ignore_axis_order=True):
        return box_overlap(source.bbox, grid.bbox, False)
    src_in_grid = transformed(source.bbox, source.crs, gcrs)
    if src_in_grid is not None and not box_overlap(src_in_grid, grid.bbox,
                                                    bool(gcrs.is_geographic)):
        return False
    grid_in_src = transformed(grid.bbox, gcrs, source.crs)
    if grid_in_src is not None and not box_overlap(source.bbox, grid_in_src,
                                                    bool(source.crs.is_geographic)):
        return False
    return True


def crop(data: xr.DataArray, source: Geolocated, grid: Grid,
         margin: int) -> tuple[xr.DataArray, Geolocated]:
    """The rows and columns of a regular source within ``margin`` pixels of the grid's box.

    Cutting before decoding and resampling makes a regional cube from a global source
    cost its region only. The source is returned whole where a cut could lose what the
    resampler would use:

    - a swath, or a source without a CRS;
    - a source outside the grid's plane (:func:`same_plane`): across CRSs the grid's
      box is an envelope that can miss what the source holds (a global box in a polar
      stereographic CRS is a sliver along one axis);
    - geographic longitudes beyond [-180, 180] (a 0-360 source): the resamplers wrap
      them around, a cut to the grid's box would drop that half;
    - a source the grid's box misses entirely, or holds whole.

    Parameters
    ----------
    data : xarray.DataArray
        Dims ``(..., source.ydim, source.xdim)``, lazy.
    source : Geolocated
        Its geolocation.
    grid : Grid
        The target.
    margin : int
        Pixels kept beyond the grid's box on every side.

    Returns
    -------
    tuple of (xarray.DataArray, Geolocated)
        The cut variable and its geolocation (lazy slices).
    """
    if source.is_swath or source.crs is None or not same_plane(source, grid):
        return data, source
    x = source.data[source.xdim].values
    y = source.data[source.ydim].values
    if source.crs.is_geographic and (x.size == 0 or x.min() < -180.0 or x.max() > 180.0):
        return data, source
    box = grid.bbox
    if box[0] > box[2]:
        return data, source
    dx, dy = source.resolution
    cols = np.flatnonzero((x >= box[0] - margin * dx) & (x <= box[2] + margin * dx))
    rows = np.flatnonzero((y >= box[1] - margin * dy) & (y <= box[3] + margin * dy))
    if cols.size == 0 or rows.size == 0 or (cols.size == x.size and rows.size == y.size):
        return data, source
    ys, xs = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    sel = {source.ydim: ys, source.xdim: xs}
    return data.isel(sel), dataclasses.replace(
        source, data=source.data.isel(sel),
        ybounds=None if source.ybounds is None else source.ybounds[ys],
        xbounds=None if source.xbounds is None else source.xbounds[xs])


def same_plane(source: Geolocated, grid: Grid) -> bool:
    """Whether the source's coordinates are the grid's: one CRS, or both geographic degrees.

    Two geographic CRSs of one body differ by a datum shift of metres at most, far below a
    cell; their degrees are taken as the same.

    Parameters
    ----------
    source : Geolocated
        An opened source.
    grid : Grid
        The target.

    Returns
    -------
    bool
        ``False`` for a source without PROJ CRS or a helioprojective grid.
    """
    if source.crs is None or grid.is_helioprojective:
        return False
    gcrs = grid.pyproj_crs
    return bool(source.crs.equals(gcrs, ignore_axis_order=True)
                or (source.crs.is_geographic and gcrs.is_geographic))


def covered_box(source: Geolocated, grid: Grid) -> tuple[float, float, float, float] | None:
    """The part of the grid's box the source's footprint covers, in the grid's CRS.

    Parameters
    ----------
    source : Geolocated
        A regular or swath source.
    grid : Grid
        A grid of a PROJ CRS.

    Returns
    -------
    tuple of 4 float or None
        ``(west, south, east, north)``: the intersection of the grid's box with the
        source's envelope (the grid's whole box when that envelope cannot be told, e.g.
        across the antimeridian); ``None`` when they do not meet.
    """
    assert source.crs is not None
    gcrs = grid.pyproj_crs
    env = (source.bbox if source.crs.equals(gcrs, ignore_axis_order=True)
           else transformed(source.bbox, source.crs, gcrs))
    gw, gs, ge, gn = grid.bbox
    if env is None or env[0] > env[2]:
        return float(gw), float(gs), float(ge), float(gn)
    box = (max(gw, env[0]), max(gs, env[1]), min(ge, env[2]), min(gn, env[3]))
    if box[0] >= box[2] or box[1] >= box[3]:
        return None
    return tuple(float(v) for v in box)  # type: ignore[return-value]


def pixel_scale(source: Geolocated, grid: Grid) -> tuple[float, float] | None:
    """Size of one source pixel in grid cells ``(x, y)``, where the source meets the grid.

    The source pixel (:attr:`Geolocated.resolution`: the largest of an unevenly spaced
    grid, the median spacing of a swath) at the centre of :func:`covered_box` is carried
    into the grid's CRS (its four corners through PROJ) and divided by the grid's cell.

    Parameters
    ----------
    source : Geolocated
        A regular or swath source with a PROJ CRS.
    grid : Grid
        A grid of a PROJ CRS.

    Returns
    -------
    tuple of 2 float or None
        Above 1 along an axis: the grid is finer than the source there. ``None`` when the
        source misses the grid or PROJ cannot carry the pixel.
    """
    box = covered_box(source, grid)
    if box is None or source.crs is None:
        return None
    dx, dy = source.resolution
    gdx, gdy = grid.resolution
    if same_plane(source, grid):
        return dx / gdx, dy / gdy
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    try:
        to_src = transformer(grid.pyproj_crs, source.crs)
        sx, sy = to_src.transform(cx, cy)
        xs, ys = to_src.transform([sx - dx / 2, sx + dx / 2, sx - dx / 2, sx + dx / 2],
                                  [sy - dy / 2, sy - dy / 2, sy + dy / 2, sy + dy / 2],
                                  direction="INVERSE")
    except pyproj.exceptions.ProjError:
        return None
    xs, ys = np.asarray(xs), np.asarray(ys)
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        return None
    return float(np.ptp(xs)) / gdx, float(np.ptp(ys)) / gdy


def rectilinear_lonlats(x: np.ndarray, y: np.ndarray, crs_wkt: str) -> tuple[np.ndarray,
                                                                            np.ndarray]:
    """Longitude and latitude of every pixel centre of a rectilinear grid.

    Parameters
    ----------
    x, y : numpy.ndarray
        Column and row centres, shapes ``(nx,)`` and ``(ny,)``, in the CRS's units.
    crs_wkt : str
        The CRS (WKT, so that the call can travel to a Dask worker).

    Returns
    -------
    tuple of numpy.ndarray
        ``(lons, lats)``, each ``(ny, nx)`` float64 degrees of the CRS's geodetic CRS.
    """
    crs = pyproj.CRS.from_wkt(crs_wkt)
    xx, yy = np.meshgrid(np.asarray(x, "float64"), np.asarray(y, "float64"))
    if crs.is_geographic:
        return xx, yy
    tr = pyproj.Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
    lons, lats = tr.transform(xx, yy)
    return np.asarray(lons), np.asarray(lats)


def box_text(box: Sequence[float]) -> str:
    """A box as ``[west, south, east, north]``, each number with 6 significant digits.

    Parameters
    ----------
    box : sequence of 4 float
        ``(west, south, east, north)`` in some CRS's units.

    Returns
    -------
    str
        E.g. ``"[-180, -5, 180, 4.4]"``, ``"[500000, 5000000, 540000, 5040000]"``.
    """
    return "[" + ", ".join(np.format_float_positional(float(v), precision=6, unique=True,
                                                      fractional=False, trim="-")
                           for v in box) + "]"


def source_extent(source: Geolocated) -> str:
    """The source's own extent in words: its outer edges and its CRS.

    Parameters
    ----------
    source : Geolocated
        An opened source.

    Returns
    -------
    str
        ``"[west, south, east, north] = [w, s, e, n] in CRS"`` in the source's CRS units
        (the pixel edges, :attr:`Geolocated.bbox`); a solar image (no PROJ CRS) gives its
        box in the units of its header.
    """
    return f"[west, south, east, north] = {box_text(source.bbox)} in {_crs_text(source.crs)}"


def _crs_text(crs: pyproj.CRS | None) -> str:
    """A CRS in words: its authority code, else its units and name."""
    if crs is None:
        return "the coordinates of its FITS header"
    auth = crs.to_authority(min_confidence=70)
    if auth:
        return ":".join(auth)
    if crs.is_geographic:
        return "geographic degrees"
    unit = crs.axis_info[0].unit_name if crs.axis_info else "units"
    return f"{unit} of {crs.name}"


def grid_extent(grid: Grid) -> str:
    """The grid's box in words: ``grid.bbox [west, south, east, north] (CRS)``.

    Parameters
    ----------
    grid : Grid
        The target.

    Returns
    -------
    str
    """
    return f"grid.bbox {box_text(grid.bbox)} ({grid.crs})"


def missed_message(what: str, source: Geolocated, grid: Grid, layers: Sequence[str]) -> str:
    """Why a source that misses the grid's box is refused (or contributes nothing).

    Parameters
    ----------
    what : str
        The source, for messages (``sources.NAME``).
    source : Geolocated
        The opened source.
    grid : Grid
        The target.
    layers : sequence of str
        The layers that would be NaN everywhere; empty when other sources fill them.

    Returns
    -------
    str
        One paragraph naming the file, its extent and CRS, and the grid's box.
    """
    head = (f"{what}: {source.path} covers {source_extent(source)}, outside "
            f"{grid_extent(grid)}")
    if not layers:
        return f"{head}; it adds nothing to this cube (other sources fill its variables)."
    return (f"{head}: {', '.join(layers)} would be NaN everywhere. Move grid.bbox onto the "
            "data (or check the source's georeference: crs, bbox), or remove the source.")


def partial_message(what: str, source: Geolocated, grid: Grid, covered: Sequence[float],
                    layers: Sequence[str]) -> str | None:
    """A note on a source that covers only part of the grid's box, or None.

    Parameters
    ----------
    what : str
        The source, for messages (``sources.NAME``).
    source : Geolocated
        The opened source.
    grid : Grid
        The target.
    covered : sequence of 4 float
        ``(west, south, east, north)``: the part of the grid's box the source covers, in
        the grid's CRS (:func:`covered_box`).
    layers : sequence of str
        The layers the source fills.

    Returns
    -------
    str or None
        ``None`` when the source covers the whole box (to a thousandth of a cell);
        else one line with the source's extent, the grid's and the share covered.
    """
    gw, gs, ge, gn = grid.bbox
    gdx, gdy = grid.resolution
    cw, cs, ce, cn = covered
    tol_x, tol_y = gdx * 1e-3, gdy * 1e-3
    if (cw <= gw + tol_x and ce >= ge - tol_x and cs <= gs + tol_y and cn >= gn - tol_y):
        return None
    share = (ce - cw) * (cn - cs) / ((ge - gw) * (gn - gs))
    stay = "stays" if len(layers) == 1 else "stay"
    return (f"{what}: {source.path} covers {source_extent(source)}, {100 * share:.3g}% of "
            f"{grid_extent(grid)}; {', '.join(layers)} {stay} NaN outside "
            f"{box_text(covered)}.")


class ProjResampler(Resampler):
    """Base of the resamplers of sources located in a PROJ CRS (regular grids, swaths)."""

    def check(self, source: Geolocated, grid: Grid, method: str) -> None:
        """Refuse a grid without a PROJ CRS (helioprojective).

        Raises
        ------
        RegridError
            If ``grid`` is helioprojective.
        """
        if grid.is_helioprojective:
            raise RegridError(
                f"{source.path.name}: only solar images (format fits or jp2) go onto a "
                "helioprojective grid; this source is located in a PROJ CRS "
                f"({getattr(source.crs, 'name', '?')}).")

    def overlaps(self, source: Geolocated, grid: Grid) -> bool:
        """Whether the bounding boxes meet (:func:`footprint_overlaps`)."""
        return footprint_overlaps(source, grid)

    def scale(self, source: Geolocated, grid: Grid) -> tuple[float, float] | None:
        """Source pixel in grid cells (:func:`pixel_scale`)."""
        return pixel_scale(source, grid)

    def coverage(self, source: Geolocated,
                 grid: Grid) -> tuple[float, float, float, float] | None:
        """The grid's box within the source's envelope (:func:`covered_box`)."""
        return covered_box(source, grid)
