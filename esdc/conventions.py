"""The cube's conventions, named once: attribute keys, dimension names, CF/ACDD attributes.

A leaf module: it imports nothing of esdc. Every module that reads or writes a cube's
attributes uses these names instead of string literals, so that a renamed key is
renamed everywhere.

Conventions followed: CF 1.10 (https://cfconventions.org/cf-conventions/cf-conventions.html)
for variables, coordinates and ``grid_mapping``; ACDD 1.3
(https://wiki.esipfed.org/Attribute_Convention_for_Data_Discovery_1-3) for the global
discovery attributes; xcube's dataset convention (dims ``time, lat|y, lon|x``).
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = [
    "coordinate_decimals",
    "GRANULE_DIM",
    "GRANULE_TABLE",
    "ATTR_BODY",
    "ATTR_CHECKSUMS",
    "ATTR_COVERAGE",
    "ATTR_DERIVED",
    "ATTR_GRID",
    "ATTR_CONTEXT",
    "ATTR_INPUTS",
    "ATTR_INPUT_SIZE",
    "ATTR_INTEGRITY_GROUP",
    "ATTR_MIN_VALID_FRACTION",
    "ATTR_MODEL",
    "ATTR_MODEL_RUN",
    "ATTR_MODEL_SHA256",
    "ATTR_NORMALISATION",
    "ATTR_OBSERVER",
    "ATTR_RECIPE",
    "ATTR_RECIPE_SHA256",
    "ATTR_RESAMPLING",
    "ATTR_ROLE",
    "ATTR_SOURCE",
    "ATTR_SOURCES",
    "ATTR_STATIC",
    "ATTR_STATISTICS",
    "ATTR_TILE_DIMS",
    "ATTR_TILE_SIZE",
    "ATTR_TIME_PLACEMENT",
    "ATTR_TIME_STEPS",
    "ATTR_VERSIONS",
    "ATTR_WCS_CTYPE",
    "ATTR_XCUBE_DROPPED",
    "CONVENTIONS",
    "LICENSE_KEYS",
    "CRS_VAR",
    "PROVENANCE_ATTRS",
    "SOURCE_PROVENANCE_KEYS",
    "SPATIAL_DIMS",
    "TIME_BNDS",
    "TIME_DIM",
    "acdd_bounds",
    "acdd_time_coverage",
    "fold_license",
    "json_attr",
    "license_of",
    "spatial_dims",
]

# -- global attributes (esdc's provenance) -----------------------------------------------
ATTR_RECIPE = "esdc_recipe"
"""The recipe's YAML text."""
ATTR_RECIPE_SHA256 = "esdc_recipe_sha256"
"""SHA-256 of the recipe's canonical YAML."""
ATTR_SOURCES = "esdc_sources"
#: Group of a cube holding one row per granule of its multi-file sources (1-D arrays).
GRANULE_TABLE = "esdc_granules"
#: The dim of the granule table's columns.
GRANULE_DIM = "granule"
"""JSON list: one provenance record per source (product, licence, file, SHA-256, ...)."""
ATTR_VERSIONS = "esdc_versions"
"""JSON object: library name -> version used for the build."""
ATTR_GRID = "esdc_grid"
"""JSON object: the cube's :class:`esdc.grid.Grid` (``Grid.to_dict``)."""
ATTR_BODY = "esdc_body"
"""The body the cube lies on: ``earth``, ``moon`` or ``sun``."""
ATTR_STATISTICS = "esdc_statistics"
"""JSON object: per-variable statistics used for normalisation (``esdc.ml.stats``)."""
ATTR_CHECKSUMS = "esdc_checksums"
"""Attribute of the integrity group: chunk key -> SHA-256."""
ATTR_INTEGRITY_GROUP = "esdc_integrity"
"""Name of the Zarr group holding the per-chunk checksum manifest."""
ATTR_XCUBE_DROPPED = "esdc_xcube_dropped"
"""Variables left out of the xcube view (``esdc.xcube.to_xcube``)."""

PROVENANCE_ATTRS = (ATTR_RECIPE, ATTR_RECIPE_SHA256, ATTR_SOURCES, ATTR_VERSIONS, ATTR_GRID)
"""Global attributes every cube must carry (checked by ``verify_cube``)."""

# -- variable attributes -------------------------------------------------------------------
ATTR_SOURCE = "esdc_source"
"""Recipe source(s) a variable was read from."""
ATTR_DERIVED = "esdc_derived"
"""``function(inputs)`` of a derived variable."""
ATTR_RESAMPLING = "esdc_resampling"
"""Resampling method a variable was regridded with."""
ATTR_TIME_PLACEMENT = "esdc_time_placement"
"""How a climatology was placed on the time axis."""
ATTR_MIN_VALID_FRACTION = "esdc_min_valid_fraction"
"""Share of a cell's area valid source data must cover (``conservative`` resampling)."""
ATTR_COVERAGE = "esdc_coverage"
"""JSON object: where a layer's source lands on the grid, ``{"bbox": [west, south, east,
north], "pixel": [px, py]}`` (grid CRS units; a source pixel in grid cells), recorded at
build time; ``esdc verify`` looks for holes inside it."""
ATTR_STATIC = "esdc_static"
"""Marks a static layer broadcast along time in a view."""
ATTR_OBSERVER = "esdc_observer"
"""Observer of a helioprojective layer (solar cubes)."""
ATTR_WCS_CTYPE = "esdc_wcs_ctype"
"""FITS WCS ``CTYPE`` pair of a helioprojective grid."""
ATTR_ROLE = "esdc_role"
"""Role of a variable: ``embedding`` for tile embeddings."""
ATTR_TILE_SIZE = "esdc_tile_size"
"""Tile size (cells) of an embedding variable."""
ATTR_TILE_DIMS = "esdc_tile_dims"
"""Tile dims ``[tile_y, tile_x]`` of an embedding variable."""
ATTR_INPUTS = "esdc_inputs"
"""Input variables of an embedding's encoder."""
ATTR_INPUT_SIZE = "esdc_input_size"
"""Cells per side the encoder saw: each tile was area-averaged to it (absent: as is)."""
ATTR_CONTEXT = "esdc_context"
"""Cells of context on every side of a tile that its embedding was made from (absent: 0)."""
ATTR_MODEL = "esdc_model"
"""Encoder that made an embedding."""
ATTR_MODEL_RUN = "esdc_model_run"
"""MLflow run id of that encoder."""
ATTR_MODEL_SHA256 = "esdc_model_sha256"
"""SHA-256 of the encoder's weights."""
ATTR_NORMALISATION = "esdc_normalisation"
"""``{input: {"mean", "scale"}}`` an embedding's encoder inputs were normalised with."""
ATTR_TIME_STEPS = "esdc_time_steps"
"""Time steps of the cube an embedding holds vectors for: the first N (the rest: NaN)."""

# -- dimensions and coordinates --------------------------------------------------------------
TIME_DIM = "time"
TIME_BNDS = "time_bnds"
CRS_VAR = "crs"
"""The CF grid-mapping variable every data variable names in ``grid_mapping``."""
SPATIAL_DIMS = (("lat", "lon"), ("y", "x"))
"""Spatial dims ``(row, column)``: geographic grids, then projected/helioprojective ones."""

CONVENTIONS = "CF-1.10, ACDD-1.3"
"""The global ``Conventions`` attribute."""


def spatial_dims(dims: Any) -> tuple[str, str] | None:
    """The ``(row, column)`` dim names of ``dims`` (e.g. ``ds.dims``), or ``None``.

    Parameters
    ----------
    dims : collection of str
        Dimension names.

    Returns
    -------
    tuple of str or None
        ``("lat", "lon")`` or ``("y", "x")``, whichever ``dims`` holds (in that order of
        preference).
    """
    return next((p for p in SPATIAL_DIMS if all(d in dims for d in p)), None)


def json_attr(attrs: dict[str, Any], key: str, default: Any = None) -> Any:
    """Decode a JSON-valued attribute (``esdc_grid``, ``esdc_sources``, ...).

    Parameters
    ----------
    attrs : dict
        ``ds.attrs`` or ``da.attrs``.
    key : str
        Attribute key (one of this module's ``ATTR_*``).
    default : object
        Returned when the key is missing or its value is empty.

    Returns
    -------
    object
        The decoded value.

    Raises
    ------
    json.JSONDecodeError
        If the attribute is a string that is not JSON (a ``ValueError``).
    """
    value = attrs.get(key)
    if value is None or value == "":
        return default
    return json.loads(value) if isinstance(value, str) else value


def acdd_bounds(west: float, south: float, east: float, north: float) -> dict[str, float]:
    """ACDD ``geospatial_*`` attributes of a geographic bounding box (degrees)."""
    return {"geospatial_lat_min": south, "geospatial_lat_max": north,
            "geospatial_lon_min": west, "geospatial_lon_max": east}


def acdd_time_coverage(start: str, end: str) -> dict[str, str]:
    """ACDD ``time_coverage_start`` / ``time_coverage_end`` (ISO 8601 strings)."""
    return {"time_coverage_start": start, "time_coverage_end": end}


LICENSE_KEYS = ("license", "licence")
"""Both spellings are accepted wherever a licence is given (recipes, the sample registry,
provenance records); ``license`` (ACDD's ``license`` attribute) is the documented one.
Provenance records of sources (``esdc_sources``) keep the key ``licence`` that cubes built
so far carry."""

SOURCE_PROVENANCE_KEYS = ("product", "mission", "instrument", "licence", "citation", "doi",
                          "url")
"""Keys of an ``esdc_sources`` record that say where a source's data come from: a
registered sample's registry entry, or a recipe's ``provenance:`` block of a ``path:``,
``files:`` or ``wmts`` source (all optional there); shown by ``esdc info``, data cards and
the STAC catalog."""


def license_of(record: dict[str, Any]) -> Any:
    """The licence of a provenance record or config, under either spelling (or ``None``)."""
    return next((record[k] for k in LICENSE_KEYS if record.get(k) is not None), None)


def fold_license(record: Any, key: str = "license") -> Any:
    """``record`` with its licence under ``key`` only, whichever spelling it was given in.

    Parameters
    ----------
    record : object
        A mapping (recipe, sample entry); anything else is returned unchanged.
    key : str
        The spelling to keep: ``"license"`` or ``"licence"``.

    Returns
    -------
    object
        A new dict when ``record`` is a mapping, else ``record``.

    Raises
    ------
    ValueError
        If both spellings are given with different values.
    """
    if not isinstance(record, dict):
        return record
    given = {k: record[k] for k in LICENSE_KEYS if k in record}
    if len(set(map(str, given.values()))) > 1:
        raise ValueError(f"both 'license' and 'licence' are given ({given['license']!r} and "
                         f"{given['licence']!r}); give one (either spelling works).")
    if not given:
        return record
    out = {k: v for k, v in record.items() if k not in LICENSE_KEYS}
    out[key] = next(iter(given.values()))
    return out


def coordinate_decimals(step: float) -> int:
    """Decimals that write a coordinate of a grid of cell size ``step`` exactly enough.

    Two more than the step's own first significant decimal (0.25 -> 3, 0.05 -> 4,
    1000 m -> 2), so JSON answers show ``-3.875``, not ``-3.8750000000000036``.

    Parameters
    ----------
    step : float
        Cell size in the coordinate's units; 0 gives 6 decimals.

    Returns
    -------
    int
    """
    return max(0, -math.floor(math.log10(abs(step)))) + 2 if step else 6
