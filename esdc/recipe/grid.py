"""The grid of a recipe: body, CRS, bounding box, resolution and time axis."""

from __future__ import annotations

import math
from typing import Any, Literal

import pandas as pd
import pyproj
from pydantic import PositiveFloat, field_validator, model_validator

from esdc.errors import GridError
from esdc.grid import BODY_CRS, HELIOPROJECTIVE, Grid
from esdc.recipe.model import BBox, Model, check_crs

__all__ = ["GridSpec", "ObservedTimeSpec", "TimeAxisSpec"]


class TimeAxisSpec(Model):
    """The cube's time axis: labels from ``start`` to ``end`` every ``freq``.

    ``freq`` is a pandas offset alias (``MS`` month start, ``D`` day, ``h`` hour).
    Each label starts a half-open time cell that ends at the next label.
    """

    start: str
    """First time label (ISO 8601 date or date-time, e.g. ``2006-04-01``)."""
    end: str
    """Last time label, included when it falls on ``freq``."""
    freq: str = "MS"
    """pandas offset alias between labels (``MS`` month start, ``D``, ``h``)."""

    @model_validator(mode="after")
    def _check(self) -> TimeAxisSpec:
        try:
            # Estimate the length before making the axis: a second-by-second axis over
            # centuries would allocate hundreds of GB.
            a, b = pd.Timestamp(self.start), pd.Timestamp(self.end)
            if pd.isna(a) or pd.isna(b):
                raise ValueError("start and end must be dates such as 2006-04-01")
            step = (a + pd.tseries.frequencies.to_offset(self.freq)) - a
            steps = (b - a) / step if step > pd.Timedelta(0) else 0.0
            idx = self.index() if steps <= 2_000_000 else None
        except (ValueError, TypeError, OverflowError) as exc:
            raise ValueError(f"cannot make a time axis from {self.start!r} to {self.end!r} "
                             f"every {self.freq!r}: {exc}") from None
        if idx is None:
            raise ValueError(f"time axis from {self.start} to {self.end} every {self.freq} "
                             f"has about {steps:.3g} steps; at most 1,000,000 allowed")
        if len(idx) == 0:
            raise ValueError(f"time axis from {self.start} to {self.end} is empty")
        if len(idx) > 1_000_000:
            raise ValueError(f"time axis has {len(idx)} steps; at most 1,000,000 allowed")
        return self

    def index(self) -> pd.DatetimeIndex:
        """The time labels, then the end of the last cell, as a DatetimeIndex."""
        return pd.date_range(self.start, self.end, freq=self.freq)


class ObservedTimeSpec(Model):
    """A sparse time axis made of the sources' own observation times.

    Every time step of a ``series`` source (for a solar image its ``DATE-OBS``) falls
    in the cell ``[floor(t, cell), floor(t, cell) + cell)``, cells aligned on
    1970-01-01T00:00. The axis holds, in increasing order, the cells that hold at
    least one observation: channels observed in one cell share a time step, and a
    channel without an observation in a cell is missing there. ``cell`` is a pandas
    timedelta string; ``6min`` is the cadence of SDOML (Galvez et al. 2019, ApJS 242, 7).
    """

    observed: Literal[True]
    """Must be ``true``: the axis is made of the sources' observation times."""
    cell: str = "6min"
    """Width of a time cell, a pandas timedelta string (``6min``, ``1h``)."""

    @field_validator("cell")
    @classmethod
    def _cell(cls, v: str) -> str:
        try:
            ok = pd.Timedelta(v) > pd.Timedelta(0)
        except (ValueError, TypeError):
            ok = False
        if not ok:
            raise ValueError(f"cell {v!r} is not a positive duration such as '6min', '1h' or "
                             "'1D'")
        return v

    def index(self, times: Any) -> pd.DatetimeIndex:
        """Start of every cell holding one of ``times`` (datetime-likes), increasing."""
        t = pd.DatetimeIndex(pd.to_datetime(list(times)))
        return pd.DatetimeIndex(sorted(set(t.floor(pd.Timedelta(self.cell)))))


class GridSpec(Model):
    """The common grid: body, CRS, bounding box (outer edges), resolution, time axis."""

    body: Literal["earth", "moon", "sun"]
    """Planetary body of the grid; sources of another body are refused."""
    crs: str | None = None
    """CRS of the grid (authority code, PROJ string or WKT; ``helioprojective`` for the Sun);
    default the body's geographic CRS (EPSG:4326, IAU_2015:30100).
    """
    bbox: BBox
    """Outer edges ``[west, south, east, north]`` in CRS units (degrees, metres or arcsec)."""
    resolution: PositiveFloat | tuple[PositiveFloat, PositiveFloat]
    """Cell size in CRS units, one number or ``[dx, dy]``."""
    time: TimeAxisSpec | ObservedTimeSpec | None = None
    """Time axis: ``{start, end, freq}``, ``{observed: true, cell}``, or absent for a static cube.
    """

    @field_validator("crs")
    @classmethod
    def _crs(cls, v: str | None) -> str | None:
        if v is not None and v.strip().lower() == HELIOPROJECTIVE:
            return v
        return check_crs(v)

    @field_validator("bbox")
    @classmethod
    def _bbox(cls, v: BBox) -> BBox:
        w, s, e, n = v
        if not all(math.isfinite(c) for c in v):
            raise ValueError(f"bbox {list(v)} must be four finite numbers [west, south, east, "
                             "north]")
        if not (e > w and n > s):
            raise ValueError(f"bbox {list(v)} is empty: give [west, south, east, north] with "
                             "east > west and north > south")
        return v

    def _unit(self) -> str | None:
        """Unit of the CRS's coordinates (``degrees`` on a geographic CRS), if known."""
        crs = self.crs or BODY_CRS.get(self.body)
        if crs is None:
            return None
        if crs.strip().lower() == HELIOPROJECTIVE:
            return "arcsec"
        try:
            proj = pyproj.CRS.from_user_input(crs)
        except pyproj.exceptions.CRSError:
            return None
        if proj.is_geographic:
            return "degrees"
        unit = proj.axis_info[0].unit_name if proj.axis_info else None
        return {"metre": "metres"}.get(unit or "", unit)

    @model_validator(mode="after")
    def _size(self) -> GridSpec:
        w, s, e, n = self.bbox
        dx, dy = (self.resolution, self.resolution) if isinstance(
            self.resolution, float) else self.resolution
        unit = self._unit()
        if unit == "degrees" and (s < -90 or n > 90):
            swapped = all(-90 <= v <= 90 for v in (w, e)) and all(-180 <= v <= 180
                                                                for v in (s, n))
            hint = (f"; it looks like latitude first ([south, west, north, east]): give "
                    f"[{s:g}, {w:g}, {n:g}, {e:g}]") if swapped else ""
            raise ValueError(f"grid.bbox {list(self.bbox)} is [west, south, east, north] in "
                             f"degrees, and its latitudes (south {s:g}, north {n:g}) are not "
                             f"within -90..90{hint}")
        fx, fy = (e - w) / dx, (n - s) / dy
        if not (math.isfinite(fx) and math.isfinite(fy)) or fx * fy > 4_000_000_000:
            raise ValueError(f"grid.resolution {self.resolution} gives about {fy:.3g} x "
                             f"{fx:.3g} cells in grid.bbox {list(self.bbox)}: too large "
                             "(over 2e9 cells)")
        nx, ny = round(fx), round(fy)
        if nx < 1 or ny < 1:
            metres = (f"; {max(dx, dy):g} looks like metres: {max(dx, dy):g} m is about "
                      f"{max(dx, dy) / 111_320:.3g} degrees at the equator"
                      if unit == "degrees" and max(dx, dy) > 180 else "")
            raise ValueError(f"grid.resolution {self.resolution} gives {ny} x {nx} cells in "
                             f"grid.bbox {list(self.bbox)}; the resolution is in the CRS's "
                             f"units ({unit or 'unknown'}): use one smaller than the "
                             f"bbox{metres}")
        if nx * ny > 2_000_000_000:
            raise ValueError(f"grid of {ny} x {nx} cells is too large (over 2e9 cells)")
        if self.crs is None and self.body not in BODY_CRS:
            raise ValueError(f"body {self.body!r} has no default CRS; give grid.crs "
                             f"({HELIOPROJECTIVE!r} for the Sun)")
        if (self.crs or "").strip().lower() == HELIOPROJECTIVE and self.body != "sun":
            raise ValueError(f"crs {HELIOPROJECTIVE!r} is a frame of the Sun; use a CRS of "
                             f"{self.body!r}")
        return self

    def to_grid(self, observed: Any = None) -> Grid:
        """The :class:`~esdc.grid.Grid` this spec describes.

        Parameters
        ----------
        observed : sequence of datetime-like, optional
            The sources' observation times; needed (and only used) when ``time`` is
            an :class:`ObservedTimeSpec`.

        Raises
        ------
        GridError
            If ``time`` is observed and no observation time is given.
        """
        crs = self.crs or BODY_CRS[self.body]
        time = bounds = None
        if isinstance(self.time, ObservedTimeSpec):
            if observed is None or len(observed) == 0:
                raise GridError("grid.time: `observed: true` makes the time axis from the "
                                "observation times of the `time: series` sources, and none "
                                "gave any; add a series source or give start/end/freq.")
            starts = self.time.index(observed)
            cell = pd.Timedelta(self.time.cell)
            time = [t.to_datetime64() for t in starts]
            bounds = tuple((a.to_datetime64().astype("datetime64[ns]"),
                            (a + cell).to_datetime64().astype("datetime64[ns]")) for a in starts)
        elif self.time is not None:
            idx = self.time.index()
            nxt = pd.date_range(idx[-1], periods=2, freq=self.time.freq)[-1]
            edges = [*idx, nxt]
            time = [t.to_datetime64() for t in idx]
            bounds = tuple(
                (a.to_datetime64().astype("datetime64[ns]"), b.to_datetime64().astype(
                    "datetime64[ns]")) for a, b in zip(edges[:-1], edges[1:], strict=True)
            )
        return Grid.from_bbox(self.body, crs, self.bbox, self.resolution, time, bounds)

