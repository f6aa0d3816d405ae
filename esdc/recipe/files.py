"""Multi-file sources: a file pattern, a list of URLs or a glob (``sources[].files``).

Validating a ``files:`` entry reads no granule and sends no request: the pattern is
parsed (:mod:`esdc.sources.pattern`) and the number of granules it expands to is
counted from the time range and the value lists, so a pattern over 10^7 granules is
refused before anything is fetched.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import Field, PositiveInt, field_validator, model_validator

from esdc.recipe.model import Identifier, Model
from esdc.sources.pattern import parse_pattern

__all__ = ["MAX_GRANULES", "FilesSpec", "GranuleTimeSpec", "StacSpec", "WmtsSpec", "count_times"]

#: Most granules one source may expand to (a recipe over more is refused before any
#: request; split the archive into several recipes or a coarser time range).
MAX_GRANULES = 1_000_000


def count_times(start: str, end: str, freq: str) -> int:
    """Number of labels ``pandas.date_range(start, end, freq=freq)`` has, without making it.

    Parameters
    ----------
    start, end : str
        ISO 8601 dates or date-times.
    freq : str
        pandas offset alias (``D``, ``h``, ``MS``).

    Returns
    -------
    int
        The exact count when under 2 million labels, else an estimate (from the first
        step's length).

    Raises
    ------
    ValueError
        If the dates or the frequency cannot be read.
    """
    a, b = pd.Timestamp(start), pd.Timestamp(end)
    if pd.isna(a) or pd.isna(b):
        raise ValueError("start and end must be dates such as 2006-04-01")
    step = (a + pd.tseries.frequencies.to_offset(freq)) - a
    if step <= pd.Timedelta(0):
        raise ValueError(f"freq {freq!r} does not move forward")
    estimate = (b - a) / step
    if estimate > 2_000_000:  # both ends included: the labels a, a + step, ..., <= b
        return math.floor(estimate) + 1
    return len(pd.date_range(a, b, freq=freq))


class GranuleTimeSpec(Model):
    """The times a pattern's ``{time:...}`` field expands over: ``start`` to ``end``."""

    start: str
    """First granule time (ISO 8601, e.g. ``2006-04-01``)."""
    end: str
    """Last granule time, included when it falls on ``freq``."""
    freq: str = "D"
    """pandas offset alias between granules (``D`` daily, ``h`` hourly, ``MS`` monthly)."""

    @model_validator(mode="after")
    def _check(self) -> GranuleTimeSpec:
        try:
            n = count_times(self.start, self.end, self.freq)
        except (ValueError, TypeError, OverflowError) as exc:
            raise ValueError(f"cannot make granule times from {self.start!r} to {self.end!r} "
                             f"every {self.freq!r}: {exc}") from None
        if n == 0:
            raise ValueError(f"granule times from {self.start} to {self.end} are empty")
        return self

    def count(self) -> int:
        """Number of granule times (estimated beyond 2 million)."""
        return count_times(self.start, self.end, self.freq)

    def index(self) -> pd.DatetimeIndex:
        """The granule times."""
        return pd.date_range(self.start, self.end, freq=self.freq)


#: STAC API query operators (the ``query`` extension) that a static catalog is filtered by too.
STAC_OPERATORS = ("eq", "neq", "lt", "lte", "gt", "gte", "in")


class StacSpec(Model):
    """Granules found in a STAC catalog: the ``asset`` of every item over the grid.

    The grid's bounding box (in longitude/latitude) and time span are the search's
    ``bbox`` and ``datetime``; each item found is one granule, placed at its
    ``datetime`` (or ``start_datetime``), in time order.
    """

    catalog: str
    """A STAC API's root URL (searched with pystac-client), or a static catalog: the path
    or URL of its ``catalog.json`` / ``collection.json`` (read with pystac)."""
    collection: str | None = None
    """The collection searched (default: every item of the catalog)."""
    asset: str
    """The key of the asset that is the granule (e.g. ``data``, ``B04``)."""
    query: dict[str, Any] = Field(default_factory=dict)
    """Item property filters in the STAC API ``query`` extension's form, e.g.
    ``{"eo:cloud_cover": {"lt": 20}}`` or ``{"platform": {"eq": "sentinel-2a"}}``
    (a plain value means ``eq``); applied by the API, or by esdc to a static catalog."""

    @field_validator("query")
    @classmethod
    def _query(cls, v: dict[str, Any]) -> dict[str, Any]:
        for prop, cond in v.items():
            if isinstance(cond, dict):
                bad = sorted(set(cond) - set(STAC_OPERATORS))
                if bad or not cond:
                    raise ValueError(f"query.{prop}: operators {bad or '{}'} are not STAC query "
                                     f"operators; use {', '.join(STAC_OPERATORS)}")
        return v


class WmtsSpec(Model):
    """A layer of an OGC Web Map Tile Service (``format: wmts``), e.g. NASA GIBS.

    Only the tiles that intersect the grid's bounding box are fetched (through the
    granule fetch layer: parallel, retries, cache, one granule-table row per tile), then
    mosaicked with their georeference and regridded like any source. Tiles are rendered
    imagery (8-bit colours), not the values they picture.
    """

    capabilities: str
    """The service's URL (``https://gibs.earthdata.nasa.gov/wmts/epsg4326/best/wmts.cgi``;
    ``?SERVICE=WMTS&REQUEST=GetCapabilities`` is added), the URL of its
    ``WMTSCapabilities.xml``, or a local capabilities file."""
    layer: str
    """The layer's identifier (``ows:Identifier``), e.g. ``BlueMarble_NextGeneration``."""
    tile_matrix_set: str | None = None
    """The tile matrix set (default: the layer's first ``TileMatrixSetLink``)."""
    zoom: str | int | None = None
    """The ``TileMatrix`` identifier (GIBS: ``0`` coarsest, ``1``, ...); default the
    coarsest matrix whose pixels are at least as fine as the grid's cells."""
    time: str | None = None
    """``YYYY-MM-DD`` (or an ISO 8601 date-time) for one tile set at that time, ``series``
    for one tile set per grid time cell (at the cell's start; the source's ``time`` must
    be ``series``); default the layer's default time, if it has a Time dimension."""
    style: str | None = None
    """The layer's style (default: its default style)."""
    encoding: Literal["rest", "kvp"] | None = None
    """GetTile requests as REST URLs (the layer's ``ResourceURL`` template) or KVP
    (``?SERVICE=WMTS&REQUEST=GetTile&...``); default REST when the layer has a template."""
    missing: Literal["error", "skip"] = "error"
    """A tile missing upstream stops the build (``error``) or is left empty (NaN) and
    recorded in the granule table (``skip``)."""
    concurrency: Annotated[PositiveInt, Field(le=256)] = 8
    """Most tiles fetched at once."""

    @field_validator("zoom")
    @classmethod
    def _zoom(cls, v: str | int | None) -> str | None:
        return None if v is None else str(v)

    @field_validator("time")
    @classmethod
    def _time(cls, v: str | None) -> str | None:
        if v is not None and v != "series":
            try:
                bad = pd.isna(pd.Timestamp(v))
            except (ValueError, TypeError):
                bad = True
            if bad:
                raise ValueError(f"time {v!r} is neither `series` nor a date such as "
                                 "2004-08-01")
        return v


class FilesSpec(Model):
    """Many files of one source: a ``pattern``, ``urls``, a ``glob`` or a ``stac`` catalog.

    Granules combine along time as if one file held them all (a file may hold several
    time steps; a file without a time axis is placed at its pattern time). Paths and
    URLs (``https://``, ``s3://``, any fsspec protocol) are fetched into the content
    cache with checksums, in parallel, before the build; ``format: zarr`` stores are
    opened where they are.
    """

    pattern: str | None = None
    """Path or URL with ``{time:STRFTIME}`` and ``{name}`` fields, e.g.
    ``https://host/sst/{time:%Y}/sst_{time:%Y%m%d}.nc``."""
    urls: Annotated[list[str], Field(min_length=1)] | None = None
    """Explicit list of paths or URLs, in time order."""
    glob: str | None = None
    """A local or fsspec glob (``data/*.nc``, ``s3://bucket/sst/*.nc``), sorted by name."""
    stac: StacSpec | None = None
    """The items of a STAC catalog or API over the grid (one asset of each is a granule)."""
    time: GranuleTimeSpec | None = None
    """Times the pattern's ``{time:...}`` field expands over; default the grid's time cells."""
    values: dict[Identifier, Annotated[list[str | int], Field(min_length=1)]] = Field(
        default_factory=dict)
    """Values of the pattern's other fields; each value is its own source variable
    (``variables[].source`` names it, e.g. ``"171"`` for ``{channel}``)."""
    variable: str = "image"
    """With ``values``: the variable (or band) each granule holds, renamed to its value
    combination; ``image`` for a solar image, ``band_1`` for a one-band GeoTIFF, else the
    NetCDF/HDF5 variable name."""
    missing: Literal["error", "skip"] = "error"
    """A granule missing upstream stops the build (``error``) or is skipped and recorded in
    the granule table (``skip``)."""
    concurrency: Annotated[PositiveInt, Field(le=256)] = 8
    """Most granules fetched at once."""
    storage_options: dict[str, Any] = Field(default_factory=dict)
    """fsspec options of the URLs (e.g. ``{anon: true}`` for a public S3 bucket)."""

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is not None:
            parse_pattern(v)  # ValueError names the bad field
        return v

    @model_validator(mode="after")
    def _check(self) -> FilesSpec:
        given = [k for k in ("pattern", "urls", "glob", "stac") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `pattern`, `urls`, `glob` or `stac`"
                             + (f" (got {', '.join(given)})" if given else ""))
        fields = parse_pattern(self.pattern).value_fields if self.pattern else ()
        has_time = bool(self.pattern) and parse_pattern(self.pattern).has_time
        if self.time is not None and not has_time:
            raise ValueError("`time` expands a pattern's {time:...} field; this source has "
                             "none")
        if set(self.values) != set(fields):
            raise ValueError(f"`values` must give a list for each pattern field other than "
                             f"time: fields {list(fields)}, values {sorted(self.values)}")
        if self.time is not None:
            self.check_count(self.time.count())
        return self

    def value_count(self) -> int:
        """Number of value combinations (1 without value fields)."""
        return math.prod(len(v) for v in self.values.values()) if self.values else 1

    def check_count(self, n_times: int) -> int:
        """The number of granules for ``n_times`` granule times, checked.

        Raises
        ------
        ValueError
            If it is over :data:`MAX_GRANULES` (the message gives the count).
        """
        n = n_times * self.value_count()
        if n > MAX_GRANULES:
            raise ValueError(f"the pattern expands to {n:,} granules; at most {MAX_GRANULES:,} "
                             "per source. Narrow files.time (or the grid's time axis) or "
                             "split the archive into several recipes.")
        return n
