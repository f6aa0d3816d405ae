"""The recipe: grid, sources, derived layers and the cube's storage."""

from __future__ import annotations

import hashlib
import inspect
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, PositiveInt, ValidationError, model_validator

from esdc.conventions import fold_license
from esdc.derive import FUNCTIONS
from esdc.errors import RecipeError
from esdc.recipe.files import count_times
from esdc.recipe.grid import GridSpec, TimeAxisSpec
from esdc.recipe.model import Identifier, Model, format_errors
from esdc.recipe.source import SourceSpec
from esdc.sources.pattern import parse_pattern

__all__ = ["CompressorSpec", "DerivedSpec", "OutputSpec", "Recipe"]


class DerivedSpec(Model):
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


class CompressorSpec(Model):
    """Blosc compressor of the Zarr store (zarr.codecs.BloscCodec)."""

    cname: Literal["zstd", "lz4", "lz4hc", "zlib", "blosclz"] = "zstd"
    """Blosc codec."""
    clevel: Annotated[int, Field(ge=0, le=9)] = 3
    """Compression level 0-9."""
    shuffle: Literal["shuffle", "bitshuffle", "noshuffle"] = "shuffle"
    """Byte or bit shuffle before compression."""


class OutputSpec(Model):
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
    shards: dict[Identifier, PositiveInt] = Field(default_factory=dict)
    """Shard length per dimension, a whole multiple of its ``chunks`` length: Zarr v3
    sharding stores many chunks in one file (one object), e.g. ``{time: 12, lat: 1024,
    lon: 1024}`` with chunks of ``{time: 12, lat: 256, lon: 256}`` writes 16 chunks per
    file. A dim not named holds one chunk per shard. Default: no sharding."""

    @model_validator(mode="after")
    def _check_shards(self) -> OutputSpec:
        for dim, n in self.shards.items():
            if dim not in self.chunks:
                raise ValueError(f"shards.{dim}: give chunks.{dim} too; a shard holds whole "
                                 "chunks")
            if n % self.chunks[dim]:
                c = self.chunks[dim]
                raise ValueError(f"shards.{dim} = {n} is not a whole multiple of chunks.{dim} = "
                                 f"{c}; use {c}, {2 * c}, {4 * c}, ...")
        return self


class Recipe(Model):
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
            self._check_files(i, s)
            if s.time != "static" and self.grid.time is None:
                raise ValueError(f"sources[{i}] ({s.name}) has time {s.time!r} but the grid has "
                                 "no time axis; add grid.time")
        bad = set(self.output.chunks) - {"time", "lat", "lon", "y", "x"}
        if bad:
            raise ValueError(f"output.chunks names unknown dims {sorted(bad)}; use time, lat/lon "
                             "or y/x")
        return self

    def _check_files(self, i: int, s: SourceSpec) -> None:
        """A pattern's time field without ``files.time`` expands over the grid's time cells."""
        if s.files is None or s.files.pattern is None or s.files.time is not None:
            return
        if not parse_pattern(s.files.pattern).has_time:
            return
        if not isinstance(self.grid.time, TimeAxisSpec):
            raise ValueError(f"sources[{i}].files: the pattern's {{time:...}} field needs "
                             "`files.time: {start, end, freq}` (the grid has no regular time "
                             "axis to take the granule times from)")
        s.files.check_count(count_times(self.grid.time.start, self.grid.time.end,
                                        self.grid.time.freq))

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
            raise RecipeError(format_errors(exc, "recipe", cls)) from None

    def to_yaml(self) -> str:
        """The recipe as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def sha256(self) -> str:
        """SHA-256 of the canonical YAML form (identity of the recipe in provenance)."""
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()

