"""Recipes: YAML validated into typed, serialisable models.

A recipe names one common grid, the sources to read and the cube's storage. It is
data, never code: YAML is read with ``yaml.safe_load`` (no object tags) and every
key is checked (unknown keys, wrong types and impossible values are rejected with
the field's path, e.g. ``sources[2].variables[0].resampling``).
``Recipe.from_dict(r.to_dict()) == r`` holds for every valid recipe.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
import pyproj
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from esdc.conventions import fold_license
from esdc.derive import FUNCTIONS
from esdc.errors import GridError, RecipeError
from esdc.grid import BODY_CRS, HELIOPROJECTIVE, Grid
from esdc.regrid.methods import DEFAULT_MIN_VALID_FRACTION, METHODS, Method
from esdc.sources.registry import FORMATS

__all__ = [
    "RESAMPLING_METHODS",
    "CompressorSpec",
    "DerivedSpec",
    "FitsSpec",
    "GeoreferenceSpec",
    "GridSpec",
    "ObservedTimeSpec",
    "OutputSpec",
    "Recipe",
    "SourceSpec",
    "TimeAxisSpec",
    "VariableSpec",
    "format_errors",
    "load_recipe",
    "parse_recipe",
]

#: Resampling methods, in the field's words: nearest neighbour, bilinear
#: interpolation, bucket average (area mean when downsampling), bucket mode
#: (most frequent class, for categorical data) and conservative (area-weighted, exact
#: both ways).
RESAMPLING_METHODS = METHODS  # defined once, in esdc.regrid.methods

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]
BBox = tuple[float, float, float, float]


class _Model(BaseModel):
    # allow_inf_nan=False: no NaN or infinity in any number of a recipe (a NaN
    # scale_factor or valid_min would silently blank a layer; an infinite bbox has no cells).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False,
                              use_attribute_docstrings=True, allow_inf_nan=False)


class TimeAxisSpec(_Model):
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


class ObservedTimeSpec(_Model):
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


def _check_crs(v: str | None) -> str | None:
    if v is not None:
        try:
            pyproj.CRS.from_user_input(v)
        except pyproj.exceptions.CRSError:
            raise ValueError(f"unknown CRS {v!r}; use an authority code such as 'EPSG:4326' "
                             "or 'IAU_2015:30100', a PROJ string or WKT") from None
    return v


class GridSpec(_Model):
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
        return _check_crs(v)

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

    @model_validator(mode="after")
    def _size(self) -> GridSpec:
        w, s, e, n = self.bbox
        dx, dy = (self.resolution, self.resolution) if isinstance(
            self.resolution, float) else self.resolution
        fx, fy = (e - w) / dx, (n - s) / dy
        if not (math.isfinite(fx) and math.isfinite(fy)) or fx * fy > 4_000_000_000:
            raise ValueError(f"grid.resolution {self.resolution} gives about {fy:.3g} x "
                             f"{fx:.3g} cells in grid.bbox {list(self.bbox)}: too large "
                             "(over 2e9 cells)")
        nx, ny = round(fx), round(fy)
        if nx < 1 or ny < 1:
            raise ValueError(f"grid.resolution {self.resolution} gives {ny} x {nx} cells in "
                             f"grid.bbox {list(self.bbox)}; use a resolution smaller than "
                             "the bbox")
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


class GeoreferenceSpec(_Model):
    """Georeference declared for a file that carries none (HDF5 arrays, images, raw).

    ``bbox`` is the outer edge of the file's pixels in ``crs`` units; ``dims`` names
    the file's dimensions in storage order (for images ``[y, x]`` is implied) using
    ``lat``/``lon`` (or ``y``/``x``) for the spatial ones and ``month`` for a
    monthly climatology axis. A file that has coordinates of its own (degrees, or metres
    of a projected CRS) must agree with the declaration: a bbox more than a tenth of a
    pixel off, or a row order the file contradicts, is refused with both values.
    """

    crs: str = "EPSG:4326"
    """CRS of the file's pixels."""
    bbox: BBox
    """Outer edges of the file's pixels ``[west, south, east, north]`` in ``crs`` units."""
    row_order: Literal["north_up", "south_up"] = "north_up"
    """Whether the first row is the northernmost (``north_up``) or southernmost."""
    dims: list[Identifier] | None = None
    """The file's dimension names in storage order (``lat``/``lon``, ``y``/``x``, ``month``)."""

    _crs = field_validator("crs")(_check_crs)


class VariableSpec(_Model):
    """One cube variable taken from a source variable (or image band)."""

    name: Identifier
    """Name of the cube variable."""
    source: str
    """Variable (NetCDF/HDF5 path) or band name in the source file."""
    resampling: Method
    """How the source is put on the grid: ``nearest``, ``bilinear``, ``bucket_average`` (mean of
    the source pixels in each cell; a grid at least as coarse as the source), ``bucket_mode``
    (most frequent class; categorical) or ``conservative`` (area-weighted mean, exact for up- and
    downsampling; for area fractions and fluxes).
    """
    min_valid_fraction: Annotated[float, Field(gt=0, le=1)] = DEFAULT_MIN_VALID_FRACTION
    """``conservative``: share of a cell's area that valid source data must cover, else the cell
    is NaN.
    """
    allow_upsampling: bool = False
    """The source may be more than twice as coarse as the grid (no warning): its cells then repeat
    or interpolate the source's pixels.
    """
    scale_factor: float = 1.0
    """Multiplier applied to the stored values (after fill masking), as CF ``scale_factor``."""
    add_offset: float = 0.0
    """Added after ``scale_factor``, as CF ``add_offset``."""
    fill_value: float | None = None
    """Stored value meaning missing (becomes NaN); the file's own CF ``_FillValue`` is honoured
    too.
    """
    valid_min: float | None = None
    """Physical values below it become NaN."""
    valid_max: float | None = None
    """Physical values above it become NaN."""
    select_values: list[int] | None = None
    """Keep only these stored values (others become NaN), e.g. one class of a mask."""
    units: str
    """CF units of the cube variable (UDUNITS, ``1`` for dimensionless)."""
    standard_name: str | None = None
    """CF standard name."""
    long_name: str | None = None
    """Human-readable name."""
    flag_values: list[int] | None = None
    """Class codes of a categorical variable (CF ``flag_values``)."""
    flag_meanings: list[Identifier] | None = None
    """One identifier per class code (CF ``flag_meanings``)."""
    comment: str | None = None
    """Free text stored as the variable's ``comment``."""
    combine: Literal["error", "first_valid"] = "error"
    """``first_valid`` lets several sources fill one variable (earlier sources win where valid);
    ``error`` refuses repeated names.
    """

    @model_validator(mode="after")
    def _check(self) -> VariableSpec:
        if self.resampling == "bucket_mode":
            if not self.flag_values or not self.flag_meanings:
                raise ValueError("bucket_mode (categorical) needs flag_values and flag_meanings")
        if (self.flag_values is None) != (self.flag_meanings is None):
            raise ValueError("flag_values and flag_meanings go together")
        if self.flag_values and len(self.flag_values) != len(self.flag_meanings or []):
            raise ValueError("flag_values and flag_meanings must have the same length")
        if self.flag_values and len(set(self.flag_values)) != len(self.flag_values):
            raise ValueError("flag_values must be distinct")
        if (self.valid_min is not None and self.valid_max is not None
                and self.valid_min > self.valid_max):
            raise ValueError("valid_min is greater than valid_max")
        if self.scale_factor == 0:
            raise ValueError("scale_factor must not be 0")
        return self


class FitsSpec(_Model):
    """How to read a solar image located by a FITS header (``format: fits`` or ``jp2``).

    Attributes
    ----------
    hdu : int, optional
        FITS HDU index; default the first HDU holding an image (a tile-compressed
        image is usually HDU 1). Not used for JPEG 2000.
    header : dict, optional
        Keywords that replace the file's (keys upper-cased), to correct a header that
        is known to be wrong; say why in a recipe comment.
    divide_by_exposure : bool
        Divide the pixels by the header's ``EXPTIME`` (s): DN become DN s-1.
    off_disk : {"keep", "drop"}
        Helioprojective pixels beyond the solar limb: ``keep`` places them on a sphere
        around the source's observer through the Sun's centre (sunpy
        ``SphericalScreen``, for coronal emission); ``drop`` makes them NaN (only the
        disk is reprojected, e.g. magnetograms).
    """

    hdu: Annotated[int, Field(ge=0)] | None = None
    """FITS HDU index (default: the first holding an image)."""
    header: dict[str, float | int | str] = Field(default_factory=dict)
    """FITS keywords replacing the file's, to fix a known-wrong header."""
    divide_by_exposure: bool = False
    """Divide by ``EXPTIME`` (DN become DN s-1)."""
    off_disk: Literal["keep", "drop"] = "keep"
    """``keep`` or ``drop`` (NaN) pixels beyond the solar limb."""

    @field_validator("header")
    @classmethod
    def _keys(cls, v: dict[str, float | int | str]) -> dict[str, float | int | str]:
        bad = [k for k in v if not k or len(k) > 8 or not all(
            c.isalnum() or c in "-_" for c in k)]
        if bad:
            raise ValueError(f"header keys {bad} are not FITS keywords (1-8 letters, digits, "
                             "'-' or '_')")
        return {k.upper(): val for k, val in v.items()}


class SourceSpec(_Model):
    """A source: where the file is, how to read it, which variables to take."""

    name: Identifier
    """Name of the source (unique in the recipe; recorded in provenance)."""
    sample: str | None = None
    """Name of a registered sample (``esdc samples list``); fetched and checked by SHA-256."""
    path: str | None = None
    """Path of a local file (relative to the recipe); give ``sha256`` to pin its content."""
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    """Expected SHA-256 (hex) of ``path``; a mismatch stops the build."""
    format: Literal[FORMATS]  # type: ignore[valid-type]  # the reader registry's names
    """Reader: ``netcdf``, ``hdf5``, ``geotiff``, ``image`` (PNG/JPEG), ``raw`` (headerless
    binary), ``fits``, ``jp2``.
    """
    time: Literal["static", "series", "climatology_monthly"] = "static"
    """``static`` (no time), ``series`` (dated steps binned into the grid's time cells) or
    ``climatology_monthly`` (12 months, repeated by month of year).
    """
    georeference: GeoreferenceSpec | None = None
    """Georeference of a file that has none (HDF5 arrays, images, raw)."""
    bands: list[Identifier] | None = None
    """Names of an image's bands (e.g. ``[red, green, blue]``), used as ``variables[].source``."""
    dtype: Literal["uint8", "int8", "uint16", "int16", "int32", "float32", "float64"] | None = None
    """Element type of a ``raw`` file (little-endian)."""
    shape: list[PositiveInt] | None = None
    """Array shape of a ``raw`` file in storage order."""
    compression: Literal["none", "gzip"] = "none"
    """``gzip`` when a ``raw`` file is gzip-compressed."""
    fits: FitsSpec | None = None
    """Options of ``fits``/``jp2`` solar images."""
    variables: Annotated[list[VariableSpec], Field(min_length=1)]
    """The cube variables taken from this source (at least one)."""

    @model_validator(mode="after")
    def _check(self) -> SourceSpec:
        if (self.sample is None) == (self.path is None):
            raise ValueError("give exactly one of `sample` (a registered sample) or `path`")
        if self.format in ("image", "raw") and self.georeference is None:
            raise ValueError(f"format {self.format!r} carries no georeference; declare "
                             "`georeference` (crs, bbox, row_order)")
        if self.format == "raw" and (self.dtype is None or self.shape is None):
            raise ValueError("format 'raw' needs `dtype` and `shape`")
        if self.fits is not None and self.format not in ("fits", "jp2"):
            raise ValueError(f"`fits` options apply to formats fits and jp2, not "
                             f"{self.format!r}")
        if self.format in ("fits", "jp2"):
            if self.georeference is not None:
                raise ValueError(f"format {self.format!r} is located by its FITS header (WCS); "
                                 "remove `georeference` (fix a wrong header with "
                                 "`fits.header`)")
            if self.time == "climatology_monthly":
                raise ValueError(f"format {self.format!r} holds one observation; use time "
                                 "static or series")
        if self.time == "climatology_monthly":
            dims = self.georeference.dims if self.georeference else None
            if self.format in ("hdf5", "raw") and (not dims or "month" not in dims):
                raise ValueError("a monthly climatology needs a `month` dim in georeference.dims")
        return self


class DerivedSpec(_Model):
    """A layer computed on the common grid from other cube variables.

    ``function`` names an entry of :data:`esdc.derive.FUNCTIONS` (e.g. ``slope``,
    ``roughness``, ``accumulate``, ``classify``); ``inputs`` are cube variable names;
    ``params`` are the function's keyword arguments.
    """

    name: Identifier
    """Name of the derived cube variable."""
    function: str
    """Function of :data:`esdc.derive.FUNCTIONS` (see the list below)."""
    inputs: Annotated[list[Identifier], Field(min_length=1)]
    """Cube variables the function reads, in its order."""
    params: dict[str, float | int | str | bool | list[float | int | str]] = Field(
        default_factory=dict)
    """Keyword arguments of the function (numbers, strings, booleans or lists of them,
    e.g. ``classify``'s ``bins`` and ``flag_meanings``)."""
    units: str
    """CF units of the result."""
    standard_name: str | None = None
    """CF standard name."""
    long_name: str | None = None
    """Human-readable name."""
    comment: str | None = None
    """Free text stored as the variable's ``comment``."""


class CompressorSpec(_Model):
    """Blosc compressor of the Zarr store (zarr.codecs.BloscCodec)."""

    cname: Literal["zstd", "lz4", "lz4hc", "zlib", "blosclz"] = "zstd"
    """Blosc codec."""
    clevel: Annotated[int, Field(ge=0, le=9)] = 3
    """Compression level 0-9."""
    shuffle: Literal["shuffle", "bitshuffle", "noshuffle"] = "shuffle"
    """Byte or bit shuffle before compression."""


class OutputSpec(_Model):
    """Where and how the cube is stored."""

    path: str | None = None
    """Where the cube is written (default ``cubes/{name}.zarr``); ``--out`` overrides it."""
    chunks: dict[Identifier, PositiveInt] = Field(default_factory=dict)
    """Chunk length per dimension (``time``, ``lat``/``y``, ``lon``/``x``); default chosen for ~1-8
    MB chunks.
    """
    compressor: CompressorSpec = Field(default_factory=CompressorSpec)
    """Blosc compressor of every variable."""
    store: Literal["zarr", "icechunk"] = "zarr"
    """``zarr`` (a Zarr v3 store) or ``icechunk`` (a versioned repository); ``--store``."""


class Recipe(_Model):
    """A validated recipe.

    Attributes
    ----------
    name : str
        Identifier of the cube (default output ``cubes/{name}.zarr``).
    title, summary, license : str
        ACDD global attributes of the cube.
    grid : GridSpec
    sources : list of SourceSpec
    output : OutputSpec
    """

    name: Identifier
    """Identifier of the cube (default output ``cubes/{name}.zarr``)."""
    title: str
    """Title of the cube (ACDD ``title``)."""
    summary: str = ""
    """Abstract of the cube (ACDD ``summary``)."""
    license: str = "see esdc_sources"
    """Licence of the cube (ACDD ``license``; ``licence`` is accepted too); the sources' own
    licences are kept in ``esdc_sources``."""
    grid: GridSpec
    """The common grid every source is resampled onto."""
    sources: Annotated[list[SourceSpec], Field(min_length=1)]
    """The input files and the variables taken from each."""
    derived: list[DerivedSpec] = Field(default_factory=list)
    """Layers computed on the grid from cube variables, in order."""
    output: OutputSpec = Field(default_factory=OutputSpec)
    """Storage of the cube: path, chunks, compressor."""

    @model_validator(mode="before")
    @classmethod
    def _licence(cls, data: Any) -> Any:
        # `license` is the documented spelling (ACDD); `licence` is accepted as well.
        return fold_license(data)

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        names = [s.name for s in self.sources]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"source names must be unique; repeated: {sorted(dup)}")
        variables = [v for s in self.sources for v in s.variables]
        vnames = [v.name for v in variables]
        dup = {v.name for v in variables if vnames.count(v.name) > 1 and v.combine == "error"}
        if dup:
            raise ValueError(f"variable names must be unique; repeated: {sorted(dup)} (to merge "
                             "several sources into one variable give each `combine: "
                             "first_valid`)")
        known = set(vnames)
        for i, d in enumerate(self.derived):
            if d.function not in FUNCTIONS:
                raise ValueError(f"derived[{i}].function: {d.function!r} is unknown; use one of "
                                 f"{sorted(FUNCTIONS)}")
            try:  # params must be the function's keyword arguments (inputs, grid come first)
                inspect.signature(FUNCTIONS[d.function]).bind(None, None, **d.params)
            except TypeError as exc:
                raise ValueError(f"derived[{i}].params: {exc} (function {d.function})") \
                    from None
            missing = [n for n in d.inputs if n not in known]
            if missing:
                raise ValueError(f"derived[{i}].inputs: {missing} are not variables defined "
                                 "before it")
            if d.name in known:
                raise ValueError(f"derived[{i}].name: {d.name!r} is already a variable")
            known.add(d.name)
        for i, s in enumerate(self.sources):
            if s.time != "static" and self.grid.time is None:
                raise ValueError(f"sources[{i}] ({s.name}) has time {s.time!r} but the grid has "
                                 "no time axis; add grid.time")
        bad = set(self.output.chunks) - {"time", "lat", "lon", "y", "x"}
        if bad:
            raise ValueError(f"output.chunks names unknown dims {sorted(bad)}; use time, lat/lon "
                             "or y/x")
        return self

    def to_dict(self) -> dict[str, Any]:
        """A plain-JSON dict; :meth:`from_dict` inverts it."""
        return self.model_dump(mode="json", exclude_none=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        """Validate a dict (as from YAML) into a recipe.

        Raises
        ------
        RecipeError
            Listing every invalid field by its path.
        """
        try:
            return cls.model_validate(d)
        except ValidationError as exc:
            raise RecipeError(format_errors(exc, "recipe")) from None

    def to_yaml(self) -> str:
        """The recipe as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def sha256(self) -> str:
        """SHA-256 of the canonical YAML form (identity of the recipe in provenance)."""
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()


def format_errors(exc: ValidationError, where: str) -> str:
    """One line per invalid field of a pydantic validation error, by its path.

    Used for recipes and training configs (:mod:`esdc.ml.config`).

    Parameters
    ----------
    exc : pydantic.ValidationError
        The error.
    where : str
        What was validated (a file name or ``recipe``), the first words of the message.

    Returns
    -------
    str
        ``"<where> is invalid:"`` then ``"  <field.path>: <message>"`` lines.
    """
    lines = []
    for err in exc.errors():
        loc = ""
        for part in err["loc"]:
            if isinstance(part, int):
                loc += f"[{part}]"
            elif part in RESAMPLING_METHODS or str(part).startswith(("function-", "tagged")):
                continue
            else:
                loc += ("." if loc else "") + str(part)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling; see docs/recipes.md)"
        lines.append(f"  {loc or '(top level)'}: {msg}")
    return f"{where} is invalid:\n" + "\n".join(lines)


def parse_recipe(text: str, where: str = "recipe") -> Recipe:
    """Parse and validate recipe YAML text.

    Parameters
    ----------
    text : str
        YAML text.
    where : str
        Name of the file, used in messages.

    Returns
    -------
    Recipe

    Raises
    ------
    RecipeError
        If the YAML is malformed (with line and column) or the recipe invalid.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        pos = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{where}: malformed YAML{pos}: {problem}.") from None
    except RecursionError:
        raise RecipeError(f"{where}: malformed YAML: nested too deeply.") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: a recipe is a YAML mapping (name:, grid:, sources:), "
                          f"got {type(data).__name__}.")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(format_errors(exc, where)) from None


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file.

    Raises
    ------
    RecipeError
        If the file is missing, unreadable, malformed or invalid.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe file {p} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"recipe file {p} cannot be read: {exc}.") from None
    return parse_recipe(text, str(p))
