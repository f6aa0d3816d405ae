"""Derived layers: pure functions computing new cube variables on the common grid.

Each function takes the input variables (``xarray.DataArray`` on the grid, dims
``([time,] y, x)``), the :class:`~esdc.grid.Grid` and keyword parameters from the
recipe, and returns a lazy ``DataArray`` with the same spatial dims. Register new
ones with :func:`register`; recipes name them in ``derived[].function``.
"""

from __future__ import annotations

from collections.abc import Callable

import dask.array as da
import numpy as np
import xarray as xr

import esdc.gapfill as gapfill
from esdc.climatology import climatology_statistic
from esdc.errors import RecipeError
from esdc.grid import Grid

__all__ = ["FUNCTIONS", "accumulate", "classify", "climatology", "fill_flags", "fill_gaps",
           "ground_spacing", "minimum_error_threshold", "register", "roughness", "slope"]

DeriveFunction = Callable[..., xr.DataArray]

#: Registered derived-layer functions, by recipe name.
FUNCTIONS: dict[str, DeriveFunction] = {}


def register(name: str) -> Callable[[DeriveFunction], DeriveFunction]:
    """Register ``fn`` under ``name`` for recipes' ``derived[].function``."""

    def deco(fn: DeriveFunction) -> DeriveFunction:
        FUNCTIONS[name] = fn
        return fn

    return deco


@register("accumulate")
def accumulate(inputs: list[xr.DataArray], grid: Grid) -> xr.DataArray:
    """Running sum over time (e.g. accumulated precipitation from hourly amounts).

    Parameters
    ----------
    inputs : list of one xarray.DataArray
        Dims ``(time, y, x)``; an amount per time step (e.g. kg m-2).
    grid : Grid
        The cube's grid (unused; part of the common signature).

    Returns
    -------
    xarray.DataArray
        Dims ``(time, y, x)``: at each step the sum of all steps up to and including
        it; NaN steps count as 0 but a cell that was NaN at every step so far stays NaN.
    """
    (x,) = inputs
    total = x.fillna(0).cumsum("time")
    seen = x.notnull().cumsum("time") > 0
    return total.where(seen).transpose("time", ...)


# ------------------------------------------------------------------ gap filling
def _fill_domain(rest: list[xr.DataArray], domain_values: list[float] | None,
                 what: str) -> xr.DataArray | None:
    """The domain of a fill from the optional domain layer (``rest``) and its values."""
    if len(rest) > 1:
        raise RecipeError(f"derived function {what}: one domain layer may follow the layers "
                          f"it reads; got {len(rest)}.")
    if domain_values is not None and not rest:
        raise RecipeError(f"derived function {what}: params.domain_values needs a domain "
                          "layer as the last input (e.g. land_sea_mask).")
    return gapfill.domain_mask(rest[0], domain_values) if rest else None


@register("fill_gaps")
def fill_gaps(inputs: list[xr.DataArray], grid: Grid, method: str,
              domain_values: list[float] | None = None,
              max_gap: int | None = None) -> xr.DataArray:
    """The layer with its gaps inside a domain filled (:func:`esdc.gapfill.fill_gaps`).

    Pair it with a :func:`fill_flags` layer named ``{var}_filled`` that says which cells
    were observed, filled or left unfilled (recipe example in docs/GAPFILL.md). The
    spatial methods get whole spatial fields: each time step over the full extent is one
    task (``xarray.apply_ufunc`` with the spatial dims as core dims; the time pass of
    ``temporal_linear``/``spatiotemporal`` gets whole series, one spatial chunk at a
    time), so a build holds one time chunk of full fields per task.

    Parameters
    ----------
    inputs : list of 1 or 2 xarray.DataArray
        The layer, dims ``([time,] y, x)`` in its own units; optionally a layer marking
        the domain (``land_sea_mask``), dims ``(y, x)``.
    grid : Grid
        The cube's grid (unused; part of the common signature).
    method : str
        One of :data:`esdc.gapfill.METHODS`.
    domain_values : list of float, optional
        Values of the domain layer inside the domain (``[0]``: the ocean); default: where
        it holds a value. Without a domain layer the domain is the cells observed at
        least once.
    max_gap : int, optional
        Longest run of missing time steps the time methods bridge.

    Returns
    -------
    xarray.DataArray
        Same dims and chunks; lazy (:func:`esdc.gapfill.fill_gaps`).

    Raises
    ------
    RecipeError
        For more than one domain layer, or ``domain_values`` without one.
    GapFillError
        For an unknown method or option, a domain of another shape, a layer without
        time for a time method; (``nearest``, ``spatial_biharmonic``) a step without an
        observed value in the domain, when the cube is written.
    """
    x, *rest = inputs
    options = {} if max_gap is None else {"max_gap": max_gap}
    return gapfill.fill_gaps(x, method, _fill_domain(rest, domain_values, "fill_gaps"),
                             **options)


@register("fill_flags")
def fill_flags(inputs: list[xr.DataArray], grid: Grid,
               domain_values: list[float] | None = None) -> xr.DataArray:
    """Flags of a fill: observed (0), filled (1), unfilled (2) (:func:`esdc.gapfill.fill_flags`).

    Parameters
    ----------
    inputs : list of 2 or 3 xarray.DataArray
        The layer before filling, its :func:`fill_gaps` layer, and the same domain layer
        as there (if any), dims ``([time,] y, x)``.
    grid : Grid
        The cube's grid (unused).
    domain_values : list of float, optional
        As for :func:`fill_gaps`.

    Returns
    -------
    xarray.DataArray
        float32 flags with CF ``flag_values`` ``[0, 1, 2]`` and ``flag_meanings``
        ``observed filled unfilled`` (kept by the build); NaN outside the domain.

    Raises
    ------
    RecipeError
        For fewer than 2 inputs or more than one domain layer.
    """
    if len(inputs) < 2:
        raise RecipeError("derived function fill_flags: inputs are the layer and its filled "
                          "layer (and optionally the domain layer).")
    x, filled, *rest = inputs
    return gapfill.fill_flags(x, filled, _fill_domain(rest, domain_values, "fill_flags"))


# ------------------------------------------------------------------ climatologies
@register("climatology")
def climatology(inputs: list[xr.DataArray], grid: Grid, statistic: str = "mean",
                month: int | None = None) -> xr.DataArray:
    """A static summary of a layer's mean seasonal cycle (:mod:`esdc.climatology`).

    Parameters
    ----------
    inputs : list of one xarray.DataArray
        Dims ``(time, y, x)``, any units (e.g. ``linke_turbidity``, ``sst``).
    grid : Grid
        The cube's grid (unused).
    statistic : str
        One of :data:`esdc.climatology.STATISTICS`: ``month`` (one month of year over
        the years), ``mean``, ``amplitude``, ``harmonic_cos``, ``harmonic_sin``
        (:func:`esdc.climatology.climatology_statistic`).
    month : int, optional
        Month of year 1 .. 12 for ``statistic: month``.

    Returns
    -------
    xarray.DataArray
        Dims ``(y, x)``, lazy, in the input's units; CF ``cell_methods``
        ``time: mean within years time: mean over years`` (kept by the build).

    Raises
    ------
    RecipeError
        For more than one input, an unknown statistic or month, a layer without time or
        one whose time axis misses a month of year.
    """
    if len(inputs) != 1:
        raise RecipeError(f"derived function climatology reads one layer; got {len(inputs)}.")
    return climatology_statistic(inputs[0], statistic, month)


# ------------------------------------------------------------------ terrain (slope, roughness)
def _is_periodic_x(grid: Grid) -> bool:
    """True when the grid is geographic and its columns go once around the body."""
    return grid.is_geographic and abs(grid.shape[1] * grid.resolution[0] - 360.0) < 1e-6 * 360


def _projected_spacing(y: np.ndarray, x: np.ndarray, crs_wkt: str, dx: float,
                       dy: float) -> np.ndarray:
    """Ground spacing ``(2, ny, nx)`` (m) of a block of a projected grid (map scale removed)."""
    import pyproj

    crs = pyproj.CRS.from_wkt(crs_wkt)
    xx, yy = np.broadcast_arrays(x, y)
    lon, lat = pyproj.Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True).transform(
        xx, yy)
    f = pyproj.Proj(crs).get_factors(lon, lat)
    return np.stack([dx / np.asarray(f.parallel_scale), dy / np.asarray(f.meridional_scale)])


def ground_spacing(grid: Grid, chunks: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
                   ) -> tuple[xr.DataArray, xr.DataArray]:
    """Distance on the body's surface between neighbouring cell centres, in metres.

    Geographic grids (degrees) on an ellipsoid of semi-major axis ``a`` and squared
    eccentricity ``e2`` (a sphere of radius ``R`` when ``e2 = 0``, e.g. the Moon's
    ``IAU_2015:30100``, R = 1737.4 km)::

        dx = N(lat) * cos(lat) * dlon,  dy = M(lat) * dlat        (angles in radians)
        N = a / sqrt(1 - e2 sin^2 lat),  M = a (1 - e2) / (1 - e2 sin^2 lat)^(3/2)

    the radii of curvature in the prime vertical and the meridian (Snyder 1987, Map
    Projections - A Working Manual, USGS Prof. Paper 1395, eqs. 4-18 and 4-20), so
    on a sphere ``dx = R cos(lat) dlon`` and ``dy = R dlat``.

    Projected grids: the cell size in CRS units (converted to metres) divided by the
    projection's scale factor at the cell centre, along parallels (``k``) for ``dx``
    and meridians (``h``) for ``dy`` (:meth:`pyproj.Proj.get_factors`). This is exact
    for conformal projections (``h = k``; polar stereographic, Mercator, UTM) and for
    cylindrical ones whose axes follow the graticule (equirectangular).

    Parameters
    ----------
    grid : Grid
        The grid.
    chunks : tuple of 2 tuples of int, optional
        Dask chunks ``(row chunks, column chunks)`` for projected grids, whose
        spacing varies in both directions and is computed lazily per chunk; one
        chunk when omitted.

    Returns
    -------
    tuple of 2 xarray.DataArray
        ``(dx, dy)`` in m: dims ``(ydim,)`` (numpy) on geographic grids, where they
        depend on latitude only; dims ``(ydim, xdim)`` (Dask) on projected grids.
    """
    ydim, xdim = grid.dims
    gdx, gdy = grid.resolution
    crs = grid.pyproj_crs
    if grid.is_geographic:
        a = crs.ellipsoid.semi_major_metre
        b = crs.ellipsoid.semi_minor_metre
        e2 = 1.0 - (b / a) ** 2
        lat = np.deg2rad(grid.y)
        w = 1.0 - e2 * np.sin(lat) ** 2
        dx = a / np.sqrt(w) * np.cos(lat) * np.deg2rad(gdx)
        dy = a * (1.0 - e2) / w**1.5 * np.deg2rad(gdy)
        return xr.DataArray(dx, dims=(ydim,)), xr.DataArray(dy, dims=(ydim,))
    unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    ych, xch = chunks if chunks is not None else ((grid.shape[0],), (grid.shape[1],))
    yy = da.from_array(grid.y, chunks=(ych,))[:, None]
    xx = da.from_array(grid.x, chunks=(xch,))[None, :]
    sp = da.map_blocks(_projected_spacing, yy, xx, crs.to_wkt(), gdx * unit, gdy * unit,
                       new_axis=0, chunks=((2,), ych, xch), dtype="float64")
    return (xr.DataArray(sp[0], dims=(ydim, xdim)), xr.DataArray(sp[1], dims=(ydim, xdim)))


def _horn_slope(z: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Horn (1981) slope in degrees of a block padded by one cell (edges become NaN)."""
    out = np.full(z.shape, np.nan, dtype="float32")
    n, c, s = slice(0, -2), slice(1, -1), slice(2, None)
    # East-west difference in every row, over that row's own spacing; then the
    # Horn weights 1-2-1 over the rows north, centre, south (and vice versa).
    ex = (z[..., :, s] - z[..., :, n]) / (2.0 * dx[..., :, c])
    gx = (ex[..., n, :] + 2.0 * ex[..., c, :] + ex[..., s, :]) / 4.0
    ny_ = (z[..., n, :] - z[..., s, :]) / (2.0 * dy[..., c, :])
    gy = (ny_[..., :, n] + 2.0 * ny_[..., :, c] + ny_[..., :, s]) / 4.0
    out[..., c, c] = np.degrees(np.arctan(np.hypot(gx, gy)))
    return out


def _tri(z: np.ndarray) -> np.ndarray:
    """Riley et al. (1999) ruggedness of a block padded by one cell (edges become NaN)."""
    out = np.full(z.shape, np.nan, dtype="float32")
    h, w = z.shape[-2:]
    centre = z[..., 1:-1, 1:-1]
    total = np.zeros(centre.shape, dtype="float64")
    for i in range(3):
        for j in range(3):
            if i != 1 or j != 1:
                total += (z[..., i:h - 2 + i, j:w - 2 + j] - centre) ** 2
    out[..., 1:-1, 1:-1] = np.sqrt(total)
    return out


def _neighbourhood(fn: Callable[..., np.ndarray], arrays: list[da.Array],
                   grid: Grid) -> da.Array:
    """Apply a 3 x 3 kernel lazily (``dask.array.map_overlap``, halo of one cell).

    Columns wrap around on a global geographic grid; elsewhere the halo beyond the
    grid's edge is NaN, so the outermost cells come out NaN.
    """
    nd = arrays[0].ndim
    depth = {k: (1 if k >= nd - 2 else 0) for k in range(nd)}
    boundary = {k: np.nan for k in range(nd)}
    if _is_periodic_x(grid):
        boundary[nd - 1] = "periodic"
    return da.map_overlap(fn, *arrays, depth=depth, boundary=boundary, trim=True,
                          dtype="float32", meta=np.array((), dtype="float32"))


def _elevation(inputs: list[xr.DataArray], grid: Grid, what: str) -> xr.DataArray:
    (z,) = inputs
    if tuple(z.dims[-2:]) != grid.dims or z.shape[-2:] != grid.shape:
        raise ValueError(f"{what}: the elevation must end in the grid's dims {grid.dims} "
                         f"with shape {grid.shape}; got dims {z.dims}, shape {z.shape}")
    if z.chunks is None:
        z = z.chunk()
    return z.astype("float64")


@register("slope")
def slope(inputs: list[xr.DataArray], grid: Grid) -> xr.DataArray:
    """Surface slope from an elevation model, in degrees (Horn 1981).

    Horn's third-order finite difference over the 3 x 3 neighbourhood::

        a b c
        d e f     dz/dx = ((c + 2f + i) - (a + 2d + g)) / (8 dx)
        g h i     dz/dy = ((a + 2b + c) - (g + 2h + i)) / (8 dy)

        slope = degrees(arctan(sqrt((dz/dx)^2 + (dz/dy)^2)))

    (Horn, B. K. P. (1981), Hill shading and the reflectance map, Proc. IEEE 69(1),
    14-47). ``dx`` and ``dy`` are ground distances in metres from
    :func:`ground_spacing`: on a geographic grid each row's east-west difference is
    divided by that row's own ``dx = R cos(lat) dlon`` (R the body's radius, from
    the grid's CRS), which reduces to Horn's formula when ``dx`` is constant; on a
    projected grid the cell size is corrected by the map scale factor.

    Parameters
    ----------
    inputs : list of one xarray.DataArray
        Elevation in metres, dims ``(..., y, x)`` (``lat, lon`` on geographic grids)
        of shape ``(..., ny, nx)`` = ``grid.shape``; NaN where unknown.
    grid : Grid
        The cube's grid.

    Returns
    -------
    xarray.DataArray
        Slope in degrees (0 flat, 90 vertical), float32, same dims, coordinates and
        chunks; lazy (``dask.array.map_overlap``). NaN where any cell of the 3 x 3
        neighbourhood is NaN, on the outermost rows (the poles of a global grid)
        and on the outermost columns unless the grid goes around the body in
        longitude (then columns wrap).

    Raises
    ------
    ValueError
        If the input's last two dims are not the grid's.
    """
    z = _elevation(inputs, grid, "slope")
    assert z.chunks is not None
    spacing = []
    for d in ground_spacing(grid, (z.chunks[-2], z.chunks[-1])):
        arr = d.data if d.ndim == 2 else da.from_array(d.values[:, None],
                                                       chunks=(z.chunks[-2], 1))
        spacing.append(da.broadcast_to(arr, z.shape, chunks=z.chunks))
    out = _neighbourhood(_horn_slope, [z.data, *spacing], grid)
    return xr.DataArray(out, dims=z.dims, coords=z.coords)


@register("roughness")
def roughness(inputs: list[xr.DataArray], grid: Grid) -> xr.DataArray:
    """Terrain ruggedness index (TRI) of an elevation model, in metres (Riley et al. 1999).

    The square root of the summed squared elevation differences between a cell
    and its eight neighbours::

        TRI = sqrt(sum over the 8 neighbours i of (z_i - z_centre)^2)

    (Riley, S. J., DeGloria, S. D. and Elliot, R. (1999), A terrain ruggedness index
    that quantifies topographic heterogeneity, Intermountain J. Sci. 5(1-4), 23-27).
    TRI is a difference of elevations and needs no cell size, but it measures the
    relief over the 3 x 3 window, whose ground size is that of the grid's cells: on a
    geographic grid ``3 R cos(lat) dlon`` by ``3 R dlat`` (R the body's radius),
    narrower towards the poles; compare values at one resolution and similar latitude
    (:func:`ground_spacing` gives the cell size).

    Parameters
    ----------
    inputs : list of one xarray.DataArray
        Elevation in metres, dims ``(..., y, x)`` (``lat, lon`` on geographic grids)
        of shape ``(..., ny, nx)`` = ``grid.shape``; NaN where unknown.
    grid : Grid
        The cube's grid.

    Returns
    -------
    xarray.DataArray
        TRI in metres (0 on a flat or uniform surface), float32, same dims,
        coordinates and chunks; lazy (``dask.array.map_overlap``). NaN where any cell
        of the neighbourhood is NaN, and on the outermost rows and columns as for
        :func:`slope`.

    Raises
    ------
    ValueError
        If the input's last two dims are not the grid's.
    """
    z = _elevation(inputs, grid, "roughness")
    out = _neighbourhood(_tri, [z.data], grid)
    return xr.DataArray(out, dims=z.dims, coords=z.coords)


# ------------------------------------------------------------------ classes from thresholds
def _digitize(x: np.ndarray, lat: np.ndarray | None, bins: np.ndarray, values: np.ndarray,
              vmin: float, vmax: float, max_lat: float) -> np.ndarray:
    """Class value of every cell of a block (NaN where unknown or outside the valid range)."""
    out = values[np.digitize(np.nan_to_num(x, nan=vmin), bins)].astype("float32")
    bad = ~np.isfinite(x) | (x < vmin) | (x > vmax)
    if lat is not None:
        bad |= np.abs(lat) > max_lat
    out[bad] = np.nan
    return out


@register("classify")
def classify(inputs: list[xr.DataArray], grid: Grid, bins: list[float],
             flag_meanings: list[str], flag_values: list[int] | None = None,
             valid_min: float | None = None, valid_max: float | None = None,
             max_abs_latitude: float | None = None) -> xr.DataArray:
    """Classes from thresholds on one variable (categorical layer with CF flags).

    A cell of value ``v`` gets the ``i``-th class when ``bins[i-1] <= v < bins[i]``
    (``numpy.digitize``; class 0 below ``bins[0]``, the last class at or above
    ``bins[-1]``). For the Moon's ``mare_highland`` layer (recipes/moon.yaml) the one
    threshold on the Clementine 750 nm albedo separates the dark mare basalts from
    the bright anorthositic highlands; it was chosen by
    :func:`minimum_error_threshold` on the real cube's histogram.

    Parameters
    ----------
    inputs : list of one xarray.DataArray
        The variable to classify, dims ``([time,] y, x)``, in its own units.
    grid : Grid
        The cube's grid (``max_abs_latitude`` needs a geographic one).
    bins : list of float
        ``n - 1`` strictly ascending thresholds for ``n`` classes, in the input's units.
    flag_meanings : list of str
        ``n`` class names (CF ``flag_meanings``; words of letters, digits, ``_``).
    flag_values : list of int, optional
        ``n`` distinct class values (CF ``flag_values``); default ``0 .. n-1``.
    valid_min, valid_max : float, optional
        Cells outside ``[valid_min, valid_max]`` are unclassified (NaN), e.g. the
        black gaps of a mosaic.
    max_abs_latitude : float, optional
        Cells poleward of this latitude (degrees) are unclassified (NaN), e.g. where
        grazing sunlight makes an albedo map show shadows rather than albedo.

    Returns
    -------
    xarray.DataArray
        float32 class values, NaN where the input is NaN or excluded; same dims,
        coordinates and chunks; lazy. Attributes ``flag_values`` (list of int) and
        ``flag_meanings`` (space-separated names), which the build keeps.

    Raises
    ------
    RecipeError
        If the parameters are inconsistent (unsorted bins, wrong number of names or
        values, ``max_abs_latitude`` on a projected grid).
    """
    (x,) = inputs
    edges = np.asarray(bins, dtype="float64").ravel()
    n = edges.size + 1
    names = [str(m) for m in flag_meanings]
    values = list(range(n)) if flag_values is None else [int(v) for v in flag_values]
    problems = []
    if edges.size == 0 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        problems.append(f"bins {list(bins)} must be finite, strictly ascending and not empty")
    if len(names) != n or any(not m.isidentifier() for m in names):
        problems.append(f"flag_meanings {names} must be {n} words (one more than the bins)")
    if len(values) != n or len(set(values)) != n:
        problems.append(f"flag_values {values} must be {n} distinct integers")
    if max_abs_latitude is not None and not grid.is_geographic:
        problems.append("max_abs_latitude needs a geographic grid")
    if problems:
        raise RecipeError("derived function classify: " + "; ".join(problems) + ".")
    if x.chunks is None:
        x = x.chunk()
    vmin = -np.inf if valid_min is None else float(valid_min)
    vmax = np.inf if valid_max is None else float(valid_max)
    if tuple(x.dims[-2:]) != grid.dims:
        raise ValueError(f"classify: the input must end in the grid's dims {grid.dims}; got "
                         f"{x.dims}")
    lat = None
    if max_abs_latitude is not None:
        lat = da.broadcast_to(da.from_array(grid.y[:, None], chunks=(x.chunks[-2], 1)),
                              x.shape, chunks=x.chunks)
    max_lat = np.inf if max_abs_latitude is None else float(max_abs_latitude)
    out = da.map_blocks(_digitize, x.data.astype("float64"), lat, edges,
                        np.asarray(values, dtype="float64"), vmin, vmax, max_lat,
                        dtype="float32", meta=np.array((), dtype="float32"))
    return xr.DataArray(out, dims=x.dims, coords=x.coords,
                        attrs={"flag_values": values, "flag_meanings": " ".join(names)})


def minimum_error_threshold(values: np.ndarray, weights: np.ndarray | None = None,
                            bins: int = 100, value_range: tuple[float, float] = (0.0, 1.0),
                            ) -> float:
    """Kittler-Illingworth minimum-error threshold of a two-class (bimodal) histogram.

    The histogram is modelled as a mixture of two Gaussians, one on each side of a
    threshold ``t``; the chosen ``t`` minimises the criterion::

        J(t) = 1 + 2 (P1 ln s1 + P2 ln s2) - 2 (P1 ln P1 + P2 ln P2)

    with ``P1, P2`` the shares of the two sides and ``s1, s2`` their standard
    deviations (Kittler, J. and Illingworth, J. (1986), Minimum error thresholding,
    Pattern Recognition 19(1), 41-47). Unlike Otsu's between-class variance, it
    does not favour classes of equal size, which matters for the Moon's maria (about
    a sixth of the surface).

    Parameters
    ----------
    values : numpy.ndarray
        Values of any shape; NaN are ignored.
    weights : numpy.ndarray, optional
        Same shape: each value's weight (e.g. the cell area, ``cos(lat)``).
    bins : int
        Histogram bins over ``value_range``.
    value_range : tuple of 2 float
        Histogram range.

    Returns
    -------
    float
        The threshold, a bin edge, in the values' units.

    Raises
    ------
    ValueError
        If fewer than two bins hold values.
    """
    v = np.asarray(values, dtype="float64")
    w = np.ones_like(v) if weights is None else np.broadcast_to(weights, v.shape)
    ok = np.isfinite(v)
    h, edges = np.histogram(v[ok], bins=bins, range=value_range, weights=w[ok])
    if np.count_nonzero(h) < 2:
        raise ValueError("minimum_error_threshold needs values in at least two bins")
    p = h / h.sum()
    c = (edges[:-1] + edges[1:]) / 2
    best, t = np.inf, float(edges[1])
    for i in range(1, bins):
        p1, p2 = p[:i].sum(), p[i:].sum()
        if p1 <= 0 or p2 <= 0:
            continue
        m1, m2 = (p[:i] * c[:i]).sum() / p1, (p[i:] * c[i:]).sum() / p2
        s1 = np.sqrt((p[:i] * (c[:i] - m1) ** 2).sum() / p1)
        s2 = np.sqrt((p[i:] * (c[i:] - m2) ** 2).sum() / p2)
        if s1 <= 0 or s2 <= 0:
            continue
        j = 1 + 2 * (p1 * np.log(s1) + p2 * np.log(s2)) - 2 * (p1 * np.log(p1)
                                                              + p2 * np.log(p2))
        if j < best:
            best, t = j, float(edges[i])
    return t
