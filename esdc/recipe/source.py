"""A recipe's sources: where the data are, how to read them, which variables to take."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from esdc.conventions import fold_license
from esdc.errors import did_you_mean
from esdc.recipe.files import FilesSpec, WmtsSpec
from esdc.recipe.model import BBox, Identifier, Model, check_crs
from esdc.regrid.methods import DEFAULT_MIN_VALID_FRACTION, Method
from esdc.samples import SAMPLES
from esdc.sources.registry import FORMATS

__all__ = ["FitsSpec", "GeoreferenceSpec", "ProvenanceSpec", "SourceSpec", "VariableSpec"]


class GeoreferenceSpec(Model):
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

    _crs = field_validator("crs")(check_crs)


class VariableSpec(Model):
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


class FitsSpec(Model):
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


class ProvenanceSpec(Model):
    """Where the data of a ``path:``, ``files:`` or ``wmts`` source come from (all optional).

    Recorded in the cube's ``esdc_sources`` next to the file's SHA-256 and shown by
    ``esdc info``, the data card (``esdc card``) and the STAC catalog, as a registered
    sample's registry entry is. ``license`` is accepted for ``licence``.
    """

    product: str | None = None
    """Upstream product name, e.g. ``ETOPO5 5-minute gridded elevation``."""
    mission: str | None = None
    """Mission, platform or programme (or ``model``/``compilation`` for derived data)."""
    instrument: str | None = None
    """Instrument (or the method that made the product)."""
    licence: str | None = None
    """Licence of the data (an SPDX identifier such as ``CC-BY-4.0``, or its terms)."""
    citation: str | None = None
    """How to cite the product."""
    doi: str | None = None
    """DOI of the product, e.g. ``10.7289/V5D798BF`` (``doi:`` or ``https://doi.org/`` in
    front is removed)."""
    url: str | None = None
    """Landing page of the product (``http(s)://`` or ``ftp://``)."""

    @model_validator(mode="before")
    @classmethod
    def _spellings(cls, data: Any) -> Any:
        data = fold_license(data, "licence")
        if isinstance(data, dict) and isinstance(data.get("doi"), str):
            doi = data["doi"].strip()
            for prefix in ("https://doi.org/", "http://doi.org/", "https://dx.doi.org/",
                           "doi:"):
                if doi.lower().startswith(prefix):
                    doi = doi[len(prefix):].strip()
            data = {**data, "doi": doi}
        return data

    @field_validator("doi")
    @classmethod
    def _doi(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"10\.\d{4,9}/\S+", v):
            raise ValueError(f"{v!r} is not a DOI; give it as 10.PREFIX/SUFFIX, e.g. "
                             "10.7289/V5D798BF")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"(https?|ftp)://\S+", v.strip()):
            raise ValueError(f"{v!r} is not a URL; give the product's page as https://...")
        return v if v is None else v.strip()

    def record(self) -> dict[str, str]:
        """The declared fields, for the cube's ``esdc_sources`` (``None`` left out)."""
        return self.model_dump(exclude_none=True)


class SourceSpec(Model):
    """A source: where the file is, how to read it, which variables to take."""

    name: Identifier
    """Name of the source (unique in the recipe; recorded in provenance)."""
    sample: str | None = None
    """Name of a registered sample (``esdc samples list``); fetched and checked by SHA-256."""
    path: str | None = None
    """Path of a local file (relative to the recipe); give ``sha256`` to pin its content."""
    files: FilesSpec | None = None
    """Many files (a pattern, URLs, a glob or a STAC catalog, local or remote) combined along
    time."""
    wmts: WmtsSpec | None = None
    """A layer of a Web Map Tile Service (``format: wmts``): its tiles over the grid."""
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    """Expected SHA-256 (hex) of ``path``; a mismatch stops the build."""
    provenance: ProvenanceSpec | None = None
    """Where the data come from (product, mission, instrument, licence, citation, DOI, URL):
    recorded in the cube and shown by ``esdc info``, data cards and the STAC catalog. A
    ``sample`` has its provenance in the sample registry."""
    format: Literal[FORMATS]  # type: ignore[valid-type]  # the reader registry's names
    """Reader: ``netcdf``, ``hdf5``, ``geotiff``, ``image`` (PNG/JPEG), ``raw`` (headerless
    binary), ``fits``, ``jp2``, ``zarr`` (a local or remote Zarr store, opened lazily).
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

    @field_validator("sample")
    @classmethod
    def _registered(cls, v: str | None) -> str | None:
        if v is not None and v not in SAMPLES:
            raise ValueError(f"{v!r} is not a registered sample{did_you_mean(v, SAMPLES)}; "
                             "`esdc samples list` shows them")
        return v

    @model_validator(mode="after")
    def _check(self) -> SourceSpec:
        given = [k for k in ("sample", "path", "files", "wmts") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `sample` (a registered sample), `path` (a "
                             "file), `files` (a pattern, URLs, a glob or a STAC catalog) or "
                             "`wmts` (a tile service layer)")
        if self.provenance is not None and self.sample is not None:
            raise ValueError("a registered sample's provenance comes from the sample registry "
                             "(`esdc samples list`); `provenance` is for `path`, `files` and "
                             "`wmts` sources: remove it")
        if (self.format == "wmts") != (self.wmts is not None):
            raise ValueError("a `wmts` block goes with `format: wmts` (and `format: wmts` "
                             "needs one)")
        if self.wmts is not None:
            series = self.wmts.time == "series"
            if series != (self.time == "series") or self.time == "climatology_monthly":
                raise ValueError("`wmts.time: series` goes with `time: series` (one tile set "
                                 "per grid time cell); a WMTS source of one time is `time: "
                                 "static`")
            if self.georeference is not None:
                raise ValueError("a WMTS layer's tiles are placed by its tile matrix set; "
                                 "remove `georeference`")
        if self.files is not None:
            if self.sha256 is not None:
                raise ValueError("`sha256` pins one `path`; granules of `files` are checksummed "
                                 "when fetched and listed in the cube's granule table")
            one = self.files.urls is not None and len(self.files.urls) == 1
            if self.time == "climatology_monthly" or (self.time == "static" and not one):
                raise ValueError("`files` combine granules along time: give `time: series` "
                                 "(a static source takes one `path` or one of `files.urls`)")
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

