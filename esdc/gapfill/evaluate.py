"""Gap-filling evaluation: real observed cells hidden under moving swath stripes, refilled.

:func:`evaluate_fill` hides the observed cells of every other time step under MODIS-like
inter-swath stripes (:func:`stripes`), fills them with each method of
:func:`esdc.gapfill.fill_gaps` and scores RMSE and bias against the truth, next to the
per-step nearest-neighbour baseline (``esdc evaluate-fill``; the table in docs/GAPFILL.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from esdc.conventions import TIME_DIM
from esdc.errors import GapFillError, GapFillWarning
from esdc.gapfill import (
    METHODS,
    NEEDS_TIME,
    check_method,
    domain_mask,
    fill_gaps,
    require_spatial_dims,
    resolve_domain,
    step_labels,
)

__all__ = ["FillEvaluation", "FillScore", "evaluate_fill", "evaluate_variable", "stripes"]


def stripes(shape: tuple[int, int], phase: float, *, fraction: float = 0.3,
            period: float = 64.0, angle: float = 60.0) -> np.ndarray:
    """MODIS-like inter-swath gaps: parallel diagonal bands over a ``(ny, nx)`` grid.

    Cell ``(i, j)`` is in a band when ``(j sin(a) - i cos(a) + phase) mod period <
    fraction * period``, ``a`` the bands' angle from the grid's rows.

    Parameters
    ----------
    shape : tuple of 2 int
        ``(ny, nx)``.
    phase : float
        Offset of the bands across their direction, in cells (moves them).
    fraction : float
        Share of the grid in bands, in (0, 1).
    period : float
        Distance between band starts, in cells.
    angle : float
        The bands' angle from the rows, in degrees.

    Returns
    -------
    numpy.ndarray
        Boolean ``(ny, nx)``: True inside a band.
    """
    a = np.deg2rad(angle)
    i, j = np.mgrid[0:shape[0], 0:shape[1]]
    s = j * np.sin(a) - i * np.cos(a) + phase
    return np.mod(s, period) < fraction * period


@dataclass(frozen=True)
class FillScore:
    """One method's scores on the hidden cells.

    Attributes
    ----------
    method : str
        The method.
    rmse, bias : float
        Root-mean-square error and mean error (fill minus truth) over the hidden cells
        it filled, in the variable's units; NaN if it filled none or does not apply.
    filled : float
        Share of the hidden cells it filled (0-1).
    rmse_nearest : float
        The nearest-neighbour baseline's RMSE on the same cells.
    gain : float
        ``1 - rmse / rmse_nearest``: 0.2 is 20 % below the baseline's RMSE.
    step_rmse : list of float
        RMSE per hidden time step (NaN where it filled nothing).
    note : str
        Why a method does not apply (e.g. a time method on a static layer), else "".
    """

    method: str
    rmse: float
    bias: float
    filled: float
    rmse_nearest: float
    gain: float
    step_rmse: list[float] = field(default_factory=list)
    note: str = ""


@dataclass(frozen=True)
class FillEvaluation:
    """:func:`evaluate_fill`'s result (``to_dict`` for JSON).

    Attributes
    ----------
    variable, units : str
        The layer and its units.
    steps : list of str
        The time steps whose cells were hidden.
    hidden : int
        Observed cells hidden (and scored), over all those steps.
    hidden_share : float
        Their share of the domain cells observed in those steps.
    scores : list of FillScore
        One per method, in the order asked.
    settings : dict
        ``fraction``, ``period``, ``angle``, ``seed``, ``static``.
    """

    variable: str
    units: str
    steps: list[str]
    hidden: int
    hidden_share: float
    scores: list[FillScore]
    settings: dict[str, Any]

    def best(self) -> FillScore:
        """The method with the largest gain over the baseline (among those that apply)."""
        scored = [s for s in self.scores if np.isfinite(s.gain) and s.method != "nearest"]
        return max(scored, key=lambda s: s.gain) if scored else self.scores[0]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (NaN as None)."""

        def clean(v: Any) -> Any:
            if isinstance(v, float):
                return None if not np.isfinite(v) else v
            if isinstance(v, list):
                return [clean(i) for i in v]
            if isinstance(v, dict):
                return {k: clean(i) for k, i in v.items()}
            return v

        return clean({**asdict(self), "best": self.best().method})


def _crop(data: xr.DataArray, dom: xr.DataArray, dims: tuple[str, str],
          margin: int = 2) -> tuple[xr.DataArray, xr.DataArray]:
    """Both cut to the domain's bounding box plus ``margin`` cells (biharmonic's kernel)."""
    m = np.asarray(dom.values)
    if not m.any():
        raise GapFillError("evaluate_fill: the domain holds no cell.")
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    box = {dims[0]: slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
           dims[1]: slice(max(cols[0] - margin, 0), cols[-1] + margin + 1)}
    return data.isel(box), dom.isel(box)


def evaluate_fill(data: xr.DataArray, methods: Sequence[str] | None = None,
                  domain: xr.DataArray | None = None, *, fraction: float = 0.3,
                  period: float = 64.0, angle: float = 60.0, seed: int = 0,
                  static: bool = False) -> FillEvaluation:
    """Hide observed cells under moving stripes, fill them with each method, score them.

    Every other time step (the 2nd, 4th, ...) loses the observed cells of the domain
    under :func:`stripes` (about ``fraction`` of it; the bands' offset is drawn anew for
    each step from ``seed``); every method fills the hidden copy (the steps in between
    stay whole, as a day between two inter-swath gaps would) and is scored on the hidden
    cells against their true values, next to the per-step nearest-neighbour baseline on
    the same cells. The data are read once, cut to the domain's bounding box.

    Parameters
    ----------
    data : xarray.DataArray
        A layer with dims ``(time, y, x)`` (``lat, lon``), at least 3 time steps; or, with
        ``static=True``, ``(y, x)`` (e.g. a DEM), whose one field is striped and scored by
        the spatial methods.
    methods : sequence of str, optional
        Methods to score (default :data:`METHODS`); ``nearest`` is always computed.
    domain : xarray.DataArray, optional
        As for :func:`fill_gaps` (default: cells observed at least once).
    fraction, period, angle : float
        The stripes (:func:`stripes`): share in bands, period in cells, angle in degrees.
    seed : int
        Seed of the bands' offsets.
    static : bool
        Evaluate a layer without time (spatial methods only).

    Returns
    -------
    FillEvaluation

    Raises
    ------
    GapFillError
        For an unknown method, a layer without time unless ``static=True`` (or with time
        and ``static=True``), fewer than 3 time steps, stripes that hide nothing, or a
        domain that does not match.
    """
    names = list(dict.fromkeys(["nearest", *(methods or METHODS)]))
    for m in names:
        check_method(m, {})
    if not 0 < fraction < 1 or period < 2:
        raise GapFillError(f"evaluate_fill: fraction={fraction} must be in (0, 1) and "
                           f"period={period} at least 2 cells.")
    dims = require_spatial_dims(data, "evaluate_fill")
    name = str(data.name or "the layer")
    has_time = TIME_DIM in data.dims
    if not has_time and not static:
        raise GapFillError(f"evaluate_fill: {name} has no {TIME_DIM!r} dim {tuple(data.dims)}, "
                           "so gaps cannot move between time steps; pass static=True to stripe "
                           "its one field and score the spatial methods.")
    if has_time and static:
        raise GapFillError(f"evaluate_fill: static=True is for a layer without time; {name} "
                           f"has {data.sizes[TIME_DIM]} time steps.")
    if has_time and data.sizes[TIME_DIM] < 3:
        raise GapFillError(f"evaluate_fill: {name} has {data.sizes[TIME_DIM]} time steps; at "
                           "least 3 are needed to hide every other one between whole ones.")
    if set(data.dims) - {*dims, TIME_DIM}:
        raise GapFillError(f"evaluate_fill: {name} has dims {tuple(data.dims)}; only time and "
                           "the two spatial dims are supported.")
    dom = resolve_domain(data, domain, dims).compute()
    data, dom = _crop(data.transpose(*([TIME_DIM] if has_time else []), *dims), dom, dims)
    truth = np.asarray(data.values, dtype="float64")
    cube = truth if has_time else truth[None]
    m = np.asarray(dom.values, dtype=bool)
    rng = np.random.default_rng(seed)
    striped = list(range(1, cube.shape[0], 2)) if has_time else [0]
    hidden = np.zeros(cube.shape, dtype=bool)
    for k in striped:
        band = stripes(m.shape, float(rng.uniform(0, period)), fraction=fraction,
                       period=period, angle=angle)
        hidden[k] = band & m & np.isfinite(cube[k])
    if not hidden.any():
        raise GapFillError(f"evaluate_fill: the stripes hide no observed cell of {name} inside "
                           "the domain; check the domain and period.")
    seen = sum(int((m & np.isfinite(cube[k])).sum()) for k in striped)
    gappy = data.copy(data=np.where(hidden if has_time else hidden[0], np.nan, truth))
    fills: dict[str, np.ndarray | None] = {}
    for meth in names:
        if meth in NEEDS_TIME and not has_time:
            fills[meth] = None
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GapFillWarning)
            f = np.asarray(fill_gaps(gappy, meth, dom).values, dtype="float64")
        fills[meth] = f if has_time else f[None]
    base = fills["nearest"]
    assert base is not None
    scores = [_score(meth, fills[meth], base, cube, hidden, striped) for meth in names]
    labels = step_labels(data)
    return FillEvaluation(
        variable=name, units=str(data.attrs.get("units", "")),
        steps=[labels[k] for k in striped] if has_time else [labels[0]],
        hidden=int(hidden.sum()), hidden_share=float(hidden.sum() / max(seen, 1)),
        scores=scores, settings={"fraction": fraction, "period": period, "angle": angle,
                                 "seed": seed, "static": static})


def _score(method: str, fill: np.ndarray | None, base: np.ndarray, truth: np.ndarray,
           hidden: np.ndarray, striped: list[int]) -> FillScore:
    """Scores of one method's fill on the hidden cells (see :class:`FillScore`)."""
    if fill is None:
        return FillScore(method, np.nan, np.nan, 0.0, np.nan, np.nan,
                         [np.nan] * len(striped), note="needs time")
    err = fill - truth
    ok = hidden & np.isfinite(fill)
    if not ok.any():
        return FillScore(method, np.nan, np.nan, 0.0, np.nan, np.nan, [np.nan] * len(striped))
    rmse = float(np.sqrt(np.mean(err[ok] ** 2)))
    ref = float(np.sqrt(np.mean((base - truth)[ok] ** 2)))
    steps = [float(np.sqrt(np.mean(err[k][ok[k]] ** 2))) if ok[k].any() else np.nan
             for k in striped]
    return FillScore(method, rmse, float(np.mean(err[ok])), float(ok.sum() / hidden.sum()),
                     ref, 1.0 - rmse / ref if ref > 0 else np.nan, steps)


def evaluate_variable(dataset: xr.Dataset, variable: str, methods: Sequence[str] | None = None,
                      domain_variable: str | None = None,
                      domain_values: Sequence[float] | None = None,
                      **settings: Any) -> FillEvaluation:
    """:func:`evaluate_fill` on a cube's variable, the domain from another variable.

    Parameters
    ----------
    dataset : xarray.Dataset
        The cube (``esdc.storage.open_cube``).
    variable : str
        The layer to evaluate.
    methods : sequence of str, optional
        As for :func:`evaluate_fill`.
    domain_variable : str, optional
        A layer marking the domain (with ``domain_values``; see :func:`domain_mask`);
        default: the cells of ``variable`` observed at least once.
    domain_values : sequence of float, optional
        Values of ``domain_variable`` inside the domain (e.g. ``[0]`` for the ocean of
        ``land_sea_mask``).
    **settings
        ``fraction``, ``period``, ``angle``, ``seed``, ``static`` of :func:`evaluate_fill`.

    Returns
    -------
    FillEvaluation

    Raises
    ------
    GapFillError
        If a variable is not in the cube, and as :func:`evaluate_fill`.
    """
    names = [str(v) for v in dataset.data_vars]
    for v in (variable, domain_variable):
        if v is not None and v not in dataset.data_vars:
            what = repr(v) if v == variable else f"domain_variable={v!r}"
            raise GapFillError(f"{what} is not a variable of the cube; its variables are "
                               f"{names}.")
    if domain_values is not None and domain_variable is None:
        raise GapFillError(f"domain_values={list(domain_values)} needs domain_variable=NAME, "
                           "the layer they are values of.")
    domain = (domain_mask(dataset[domain_variable], domain_values)
              if domain_variable is not None else None)
    return evaluate_fill(dataset[variable], methods, domain, **settings)
