"""Gap filling: NaN cells inside a domain filled from their neighbours in time and space.

Swath instruments (MODIS, VIIRS) leave diagonal stripes between orbits, clouds leave
holes; a cube's layer then holds NaN where a value should be. :func:`fill_gaps` fills
the NaN cells inside a *domain* (a boolean mask over the spatial dims: the cells that
should hold a value, e.g. the ocean for sea surface temperature) with one of
:data:`METHODS`; cells outside the domain that hold no value stay NaN and observed
values come back unchanged.

=====================  ======================================================================
``nearest``            the value of the nearest observed cell of the same time step (grid
                       index distance; ``scipy.ndimage.distance_transform_edt``): the baseline
``temporal_linear``    linear in time between the cell's previous and next observation
                       (time coordinate spacing); NaN where a gap is not bracketed (a
                       series' ends) or longer than ``max_gap`` steps
``spatial_biharmonic`` biharmonic inpainting of each time step (scikit-image's
                       ``inpaint_biharmonic``; Damelin and Hoang 2018): the smoothest surface
                       through the observed cells around each gap
``spatiotemporal``     a first guess in time (``temporal_linear``, and the nearest
                       observation in time at a series' ends) corrected in space: the
                       residuals (observation minus the same first guess made without that
                       observation) of the step's observed cells are inpainted
                       biharmonically into the gaps and added to the first guess, the
                       anomaly interpolation of optimal-interpolation SST analyses. Where a
                       cell has no first guess, the step is inpainted as
                       ``spatial_biharmonic``; a step without any observation keeps the
                       first guess alone. It fills every domain cell that is observed at
                       least once in the series.
=====================  ======================================================================

Time steps without any observed value inside the domain: ``nearest`` and
``spatial_biharmonic`` raise :class:`~esdc.errors.GapFillError` naming the step (a
spatial method has nothing to fill it from); ``temporal_linear`` and ``spatiotemporal``
fill it from time. A method that cannot fill a cell leaves it NaN: on in-memory data
:func:`fill_gaps` warns (:class:`~esdc.errors.GapFillWarning`) with the count; in a
cube build the ``fill_flags`` layer marks those cells ``unfilled``.

Dask: the spatial methods need whole spatial fields and the temporal ones whole series.
:func:`fill_gaps` runs the time pass with ``time`` as the core dim (the array rechunked
to one chunk along time, spatial chunks kept) and the spatial pass per time step with
the two spatial dims as core dims (rechunked to one chunk over the full extent, time
chunks kept), both through ``xarray.apply_ufunc(..., dask="parallelized")``; nothing is
computed until the result is. A cube build therefore holds one time chunk of full
spatial fields per task in memory.

:func:`esdc.gapfill.evaluate.evaluate_fill` hides real observed cells under MODIS-like
stripes and scores every method against the nearest-neighbour baseline (``esdc
evaluate-fill``); this module does not import it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from esdc.conventions import TIME_DIM, spatial_dims
from esdc.errors import GapFillError, GapFillWarning

__all__ = ["FLAG_MEANINGS", "FLAG_VALUES", "METHODS", "NEEDS_TIME", "OPTIONS", "check_method",
           "domain_mask", "fill_flags", "fill_gaps", "require_spatial_dims", "resolve_domain",
           "step_labels"]

#: Gap-filling methods of :func:`fill_gaps`, the baseline first.
METHODS = ("nearest", "temporal_linear", "spatial_biharmonic", "spatiotemporal")

#: Keyword options each method takes.
OPTIONS: dict[str, tuple[str, ...]] = {
    "nearest": (),
    "temporal_linear": ("max_gap",),
    "spatial_biharmonic": (),
    "spatiotemporal": ("max_gap",),
}
#: Methods that interpolate in time (the data need a ``time`` dim).
NEEDS_TIME = ("temporal_linear", "spatiotemporal")

#: Values and meanings of the :func:`fill_flags` layer (CF ``flag_values``/``flag_meanings``).
FLAG_VALUES = (0, 1, 2)
FLAG_MEANINGS = "observed filled unfilled"


# ------------------------------------------------------------------ arguments
def check_method(method: str, options: dict[str, Any]) -> int | None:
    """Check a method's name and options; return its ``max_gap``.

    Parameters
    ----------
    method : str
        A name of :data:`METHODS`.
    options : dict
        Its keyword options (:data:`OPTIONS`).

    Returns
    -------
    int or None
        ``max_gap`` in time steps (None: any gap).

    Raises
    ------
    GapFillError
        For an unknown method, an option it does not take or a bad ``max_gap``.
    """
    if method not in METHODS:
        raise GapFillError(f"fill_gaps: unknown method {method!r}; use one of {list(METHODS)}.")
    unknown = sorted(set(options) - set(OPTIONS[method]))
    if unknown:
        raise GapFillError(f"fill_gaps: method {method!r} takes no option {unknown}; its "
                           f"options are {list(OPTIONS[method])}.")
    max_gap = options.get("max_gap")
    whole = isinstance(max_gap, int | np.integer) and not isinstance(max_gap, bool)
    if max_gap is not None and (not whole or max_gap < 0):
        raise GapFillError(f"fill_gaps: max_gap={max_gap!r} must be a whole number of time "
                           "steps >= 0 (or None for any gap).")
    return None if max_gap is None else int(max_gap)


def require_spatial_dims(data: xr.DataArray, what: str) -> tuple[str, str]:
    """The data's spatial dims ``(lat, lon)`` or ``(y, x)``.

    Raises
    ------
    GapFillError
        If it has none (``what`` names the caller in the message).
    """
    dims = spatial_dims(data.dims)
    if dims is None:
        raise GapFillError(f"{what}: {data.name or 'the data'} has dims {tuple(data.dims)}; "
                           "it needs the spatial dims (lat, lon) or (y, x).")
    return dims


def domain_mask(layer: xr.DataArray, values: Sequence[float] | None = None) -> xr.DataArray:
    """The domain of a fill from a cube layer: cells whose value is one of ``values``.

    Parameters
    ----------
    layer : xarray.DataArray
        A layer over the spatial dims, e.g. ``land_sea_mask`` (class values); lazy or not.
    values : sequence of float, optional
        The layer's values that mark the domain (``[0]``: the ocean of a land/sea mask);
        when omitted the domain is where the layer holds a value (not NaN).

    Returns
    -------
    xarray.DataArray
        Boolean, same dims and chunks as ``layer``.
    """
    mask = layer.isin(list(values)) if values is not None else layer.notnull()
    return mask.rename(f"{layer.name}_domain" if layer.name else None)


def resolve_domain(data: xr.DataArray, domain: xr.DataArray | None,
                   dims: tuple[str, str]) -> xr.DataArray:
    """The domain of a fill of ``data`` as a boolean DataArray over ``dims``, checked.

    Parameters
    ----------
    data : xarray.DataArray
        The layer, dims ``([time,] y, x)``.
    domain : xarray.DataArray or None
        Boolean over ``dims``; None: the cells observed at least once along ``time``
        (every cell without time).
    dims : tuple of 2 str
        The spatial dims (:func:`require_spatial_dims`).

    Returns
    -------
    xarray.DataArray
        Boolean, dims ``dims``; lazy when ``data`` or ``domain`` is.

    Raises
    ------
    GapFillError
        If ``domain`` is not a DataArray, has other dims or shape, or is not boolean.
    """
    if domain is None:
        if TIME_DIM in data.dims:
            return data.notnull().any(TIME_DIM).transpose(*dims)
        return xr.DataArray(np.ones([data.sizes[d] for d in dims], dtype=bool), dims=dims)
    if not isinstance(domain, xr.DataArray):
        raise GapFillError(f"domain must be a boolean xarray.DataArray over {dims}; got "
                           f"{type(domain).__name__}.")
    want = tuple(data.sizes[d] for d in dims)
    if set(domain.dims) != set(dims) or tuple(domain.sizes[d] for d in dims) != want:
        raise GapFillError(f"domain has dims {tuple(domain.dims)} of shape {domain.shape}; it "
                           f"must be a boolean mask over the data's spatial dims {dims} of "
                           f"shape {want}.")
    if domain.dtype != bool:
        raise GapFillError(f"domain has dtype {domain.dtype}; it must be boolean (True where "
                           "a cell should hold a value, e.g. domain_mask(land_sea_mask, [0])).")
    return domain.transpose(*dims).drop_vars(list(domain.coords), errors="ignore")


def _time_axis(data: xr.DataArray) -> np.ndarray:
    """Time coordinate in days (datetime) or as given, float64; step numbers if none."""
    if TIME_DIM not in data.coords:
        return np.arange(data.sizes[TIME_DIM], dtype="float64")
    t = np.asarray(data[TIME_DIM].values)
    if np.issubdtype(t.dtype, np.datetime64):
        return (t - t[0]) / np.timedelta64(1, "D")
    return t.astype("float64")


def step_labels(data: xr.DataArray) -> list[str]:
    """A label per time step for messages: ``time step 5 (2018-09-14T00:00...)``."""
    if TIME_DIM not in data.dims:
        return ["(no time)"]
    if TIME_DIM in data.coords:
        return [f"{TIME_DIM} step {i} ({v})"
                for i, v in enumerate(np.asarray(data[TIME_DIM].values).astype(str))]
    return [f"{TIME_DIM} step {i}" for i in range(data.sizes[TIME_DIM])]


# ------------------------------------------------------------------ time (last axis)
def _temporal_estimate(x: np.ndarray, t: np.ndarray, *, strict: bool, extend: bool,
                       max_gap: int | None) -> np.ndarray:
    """Linear interpolation in time (last axis) between each cell's neighbouring values.

    ``strict`` leaves each cell's own value out (the estimate an observed cell would
    get if it were missing); ``extend`` keeps the nearest value at a series' ends.
    """
    n = x.shape[-1]
    ok = np.isfinite(x)
    steps = np.arange(n)
    prev = np.maximum.accumulate(np.where(ok, steps, -1), axis=-1)
    nxt = np.flip(np.minimum.accumulate(np.flip(np.where(ok, steps, n), -1), axis=-1), -1)
    if strict:
        edge = np.ones(x.shape[:-1] + (1,), dtype=prev.dtype)
        prev = np.concatenate([-edge, prev[..., :-1]], -1)
        nxt = np.concatenate([nxt[..., 1:], n * edge], -1)
    has_p, has_n = prev >= 0, nxt < n
    p, q = np.clip(prev, 0, n - 1), np.clip(nxt, 0, n - 1)
    xp, xq = np.take_along_axis(x, p, -1), np.take_along_axis(x, q, -1)
    tp, tq = t[p], t[q]
    both = has_p & has_n
    limit = np.inf if max_gap is None else max_gap
    both &= (nxt - prev - 1) <= limit
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(tq > tp, (t - tp) / (tq - tp), 0.0)
    est = np.where(both, xp + w * (xq - xp), np.nan)
    if extend:
        only_p = has_p & ~has_n & (steps - prev <= limit)
        only_n = has_n & ~has_p & (nxt - steps <= limit)
        est = np.where(only_p, xp, np.where(only_n, xq, est))
    return est


def _time_pass(fn: Callable[[np.ndarray], Any], x: xr.DataArray,
               n_out: int) -> tuple[xr.DataArray, ...]:
    """``fn`` over whole series: ``time`` the core dim (one chunk along time when lazy)."""
    if x.chunks is not None:
        x = x.chunk({TIME_DIM: -1})
    res = xr.apply_ufunc(fn, x, input_core_dims=[[TIME_DIM]],
                         output_core_dims=[[TIME_DIM]] * n_out, dask="parallelized",
                         output_dtypes=["float64"] * n_out)
    return res if n_out > 1 else (res,)


# ------------------------------------------------------------------ space (one step)
def _nearest_fill(v: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``v`` with the cells of ``where`` set to the nearest finite cell's value."""
    from scipy import ndimage

    known = np.isfinite(v)
    out = v.copy()
    if known.any() and where.any():
        iy, ix = ndimage.distance_transform_edt(~known, return_distances=False,
                                                return_indices=True)
        out[where] = v[iy[where], ix[where]]
    return out


def _biharmonic(v: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """``v`` with the ``gaps`` cells inpainted biharmonically.

    Other NaN cells (outside the domain) are not filled: they take the nearest finite
    value as a stand-in, so that the kernel of a gap next to them is defined (a zero
    normal gradient at the domain's edge), and are NaN again afterwards.
    """
    from skimage.restoration import inpaint_biharmonic

    if not gaps.any() or not np.isfinite(v).any():
        return v
    other = ~np.isfinite(v) & ~gaps
    work = _nearest_fill(v, other)
    work[gaps] = 0.0
    filled = inpaint_biharmonic(work, gaps, split_into_regions=True)
    out = v.copy()
    out[gaps] = filled[gaps]
    return out


_MAX_LAG = 64  # cells: the longest lag of the residual correlation estimated


def _residual_fill(res: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """Residuals inpainted into ``gaps``, shrunk by their correlation at the gap's distance.

    A gap cell ``d`` cells from the nearest known residual gets ``rho(d)`` times the
    inpainted residual, ``rho`` the residuals' own correlation at lag ``d`` (rows and
    columns pooled, non-centred, made non-increasing; beyond ``_MAX_LAG`` cells the last
    one): the simple-kriging weight of one neighbour. A smooth residual (SST) keeps most
    of its correction far into a gap; a rough one (hourly rain) falls back to the time
    estimate a few cells in.
    """
    from scipy import ndimage

    known = np.isfinite(res)
    dist = ndimage.distance_transform_edt(~known)[gaps]
    lags = int(min(np.ceil(dist.max()), max(res.shape) - 1, _MAX_LAG))
    rho = np.ones(lags + 1)
    for d in range(1, lags + 1):
        a = np.concatenate([res[:, :-d].ravel(), res[:-d, :].ravel()])
        b = np.concatenate([res[:, d:].ravel(), res[d:, :].ravel()])
        ok = np.isfinite(a) & np.isfinite(b)
        den = np.sqrt(np.sum(a[ok] ** 2) * np.sum(b[ok] ** 2))
        rho[d] = np.sum(a[ok] * b[ok]) / den if ok.sum() >= 16 and den > 0 else rho[d - 1]
    rho = np.minimum.accumulate(np.clip(rho, 0.0, 1.0))
    out = np.zeros_like(res)
    out[gaps] = _biharmonic(res, gaps)[gaps] * np.interp(dist, np.arange(lags + 1), rho)
    return out


def _step_fill(method: str, labels: list[str]) -> Callable[..., np.ndarray]:
    """The per-step function of a spatial pass: ``(v, [est, res,] domain, step) -> filled``."""

    def check(v: np.ndarray, dom: np.ndarray, step: int) -> np.ndarray:
        gaps = dom & ~np.isfinite(v)
        if gaps.any() and method != "spatiotemporal" and not np.isfinite(v[dom]).any():
            raise GapFillError(
                f"fill_gaps: {labels[int(step)]} has no observed value inside the domain, so "
                f"method {method!r} has nothing to fill its {int(gaps.sum())} cells from; use "
                "method 'spatiotemporal' or 'temporal_linear', which fill such a step from "
                "the steps before and after it, or leave the step out.")
        return gaps

    def nearest(v: np.ndarray, dom: np.ndarray, step: int) -> np.ndarray:
        gaps = check(v, dom, step)
        return _nearest_fill(v, gaps) if gaps.any() else v

    def biharmonic(v: np.ndarray, dom: np.ndarray, step: int) -> np.ndarray:
        return _biharmonic(v, check(v, dom, step))

    def spatiotemporal(v: np.ndarray, est: np.ndarray, res: np.ndarray, dom: np.ndarray,
                       step: int) -> np.ndarray:
        gaps = check(v, dom, step)
        if not gaps.any():
            return v
        out = v.copy()
        guess = gaps & np.isfinite(est)
        if guess.any() and np.isfinite(res).any():
            out[guess] = est[guess] + _residual_fill(res, guess)[guess]
        elif guess.any():
            out[guess] = est[guess]
        rest = gaps & ~guess
        if rest.any() and np.isfinite(v).any():
            out[rest] = _biharmonic(v, rest)[rest]
        return out

    return {"nearest": nearest, "spatial_biharmonic": biharmonic,
            "spatiotemporal": spatiotemporal}[method]


def _space_pass(fn: Callable[..., np.ndarray], arrays: list[xr.DataArray],
                domain: xr.DataArray, dims: tuple[str, str]) -> xr.DataArray:
    """``fn`` per time step over whole spatial fields (one spatial chunk when lazy)."""
    whole = {dims[0]: -1, dims[1]: -1}
    args = [a.chunk(whole) if a.chunks is not None else a for a in arrays]
    dom = domain.chunk(whole) if domain.chunks is not None else domain
    first = arrays[0]
    step = (xr.DataArray(np.arange(first.sizes[TIME_DIM]), dims=TIME_DIM)
            if TIME_DIM in first.dims else xr.DataArray(0))
    core = [list(dims)] * (len(args) + 1) + [[]]
    return xr.apply_ufunc(fn, *args, dom, step, input_core_dims=core,
                          output_core_dims=[list(dims)], vectorize=True,
                          dask="parallelized", output_dtypes=["float64"])


# ------------------------------------------------------------------ the public functions
def fill_gaps(data: xr.DataArray, method: str, domain: xr.DataArray | None = None,
              **options: Any) -> xr.DataArray:
    """Fill the NaN cells of ``data`` inside ``domain`` with one of :data:`METHODS`.

    Parameters
    ----------
    data : xarray.DataArray
        Dims ``([time,] y, x)`` (``lat, lon`` on geographic grids; other dims are looped
        over), in the variable's own units; NaN where a value is missing. Lazy (Dask) or
        in memory; a time method needs the ``time`` dim.
    method : str
        One of :data:`METHODS` (see the module's table).
    domain : xarray.DataArray, optional
        Boolean over the two spatial dims, same shape: True where a cell should hold a
        value (e.g. ``domain_mask(land_sea_mask, [0])`` for the ocean). Default: the cells
        observed at least once along ``time`` (every cell when there is no time).
    **options
        ``max_gap`` (int, ``temporal_linear`` and ``spatiotemporal``): the longest run of
        missing time steps to bridge (default: any).

    Returns
    -------
    xarray.DataArray
        Same dims, coordinates, attributes and chunks, float (``data``'s float dtype,
        else float64): observed cells unchanged, gap cells inside the domain filled, NaN
        outside it and where the method could not fill (see the module's notes); lazy
        when ``data`` is.

    Raises
    ------
    GapFillError
        For an unknown method or option, ``data`` without spatial dims (or without time
        for a time method), a domain of other dims, shape or dtype, and (``nearest``,
        ``spatial_biharmonic``) a time step without an observed value in the domain (on
        lazy data raised when the result is computed).

    Warns
    -----
    GapFillWarning
        On in-memory data, when cells inside the domain stay NaN (e.g.
        ``temporal_linear`` at a series' ends).
    """
    max_gap = check_method(method, options)
    dims = require_spatial_dims(data, "fill_gaps")
    has_time = TIME_DIM in data.dims
    if method in NEEDS_TIME and not has_time:
        raise GapFillError(f"fill_gaps: method {method!r} interpolates in time, but "
                           f"{data.name or 'the data'} has no {TIME_DIM!r} dim {tuple(data.dims)};"
                           " use 'spatial_biharmonic' or 'nearest'.")
    dom = resolve_domain(data, domain, dims)
    x = data if data.dtype.kind == "f" else data.astype("float64")
    labels = step_labels(data)
    if method == "temporal_linear":
        t = _time_axis(data)
        (out,) = _time_pass(lambda a: np.where(np.isfinite(a), a, _temporal_estimate(
            a, t, strict=False, extend=False, max_gap=max_gap)), x, 1)
    elif method == "spatiotemporal":
        t = _time_axis(data)

        def guess(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            est = _temporal_estimate(a, t, strict=True, extend=True, max_gap=max_gap)
            return est, a - est

        est, res = _time_pass(guess, x, 2)
        out = _space_pass(_step_fill(method, labels), [x, est, res], dom, dims)
    else:
        out = _space_pass(_step_fill(method, labels), [x], dom, dims)
    out = out.transpose(*data.dims)
    if data.chunks is not None:
        out = out.chunk(dict(zip(data.dims, data.chunks, strict=True)))
    out = out.where(dom | data.notnull()).astype(x.dtype)
    out = out.assign_coords(data.coords).rename(data.name)
    out.attrs = dict(data.attrs)
    if data.chunks is None:
        left = int((dom & out.isnull()).sum())
        if left:
            warnings.warn(f"fill_gaps: method {method!r} left {left} cell(s) inside the domain "
                          "NaN (no observation to interpolate from: a series' end, a gap "
                          "longer than max_gap, or a cell never observed); 'spatiotemporal' "
                          "fills every cell observed at least once.", GapFillWarning,
                          stacklevel=2)
    return out


def fill_flags(data: xr.DataArray, filled: xr.DataArray,
               domain: xr.DataArray | None = None) -> xr.DataArray:
    """Where a fill came from: observed (0), filled (1) or a domain gap left unfilled (2).

    Parameters
    ----------
    data : xarray.DataArray
        The layer before filling, dims ``([time,] y, x)``.
    filled : xarray.DataArray
        :func:`fill_gaps`'s result for it (same dims).
    domain : xarray.DataArray, optional
        The domain given to :func:`fill_gaps` (boolean over the spatial dims); default
        as there, the cells observed at least once.

    Returns
    -------
    xarray.DataArray
        float32 flags, same dims and chunks, NaN outside the domain where nothing was
        observed; attributes ``flag_values`` ``[0, 1, 2]`` and ``flag_meanings``
        ``"observed filled unfilled"`` (CF flags, kept by the build).

    Raises
    ------
    GapFillError
        If the two layers' dims differ or the domain does not match them.
    """
    dims = require_spatial_dims(data, "fill_flags")
    if tuple(filled.dims) != tuple(data.dims) or filled.shape != data.shape:
        raise GapFillError(f"fill_flags: the filled layer has dims {tuple(filled.dims)} "
                           f"{filled.shape}; the original {tuple(data.dims)} {data.shape}.")
    dom = resolve_domain(data, domain, dims)
    seen = data.notnull()
    flags = xr.where(seen, 0.0, xr.where(filled.notnull(), 1.0, xr.where(dom, 2.0, np.nan)))
    flags = flags.transpose(*data.dims).astype("float32")
    flags.attrs = {"flag_values": list(FLAG_VALUES), "flag_meanings": FLAG_MEANINGS}
    return flags


