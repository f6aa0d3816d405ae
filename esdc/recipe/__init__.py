"""Recipes: YAML validated into typed, serialisable models.

A recipe names one common grid, the sources to read and the cube's storage. It is
data, never code: YAML is read with ``yaml.safe_load`` (no object tags) and every
key is checked (unknown keys, wrong types and impossible values are rejected with
the field's path, e.g. ``sources[2].variables[0].resampling``).
``Recipe.from_dict(r.to_dict()) == r`` holds for every valid recipe.

The schema is a package: :mod:`~esdc.recipe.model` (base and field types),
:mod:`~esdc.recipe.grid`, :mod:`~esdc.recipe.source`, :mod:`~esdc.recipe.files` (multi-file
sources), :mod:`~esdc.recipe.spec` (the :class:`Recipe`) and :mod:`~esdc.recipe.parse`.
"""

from esdc.recipe.files import MAX_GRANULES, FilesSpec, GranuleTimeSpec
from esdc.recipe.grid import GridSpec, ObservedTimeSpec, TimeAxisSpec
from esdc.recipe.model import BBox, Identifier, format_errors
from esdc.recipe.parse import load_recipe, parse_recipe
from esdc.recipe.source import (
    FitsSpec,
    GeoreferenceSpec,
    ProvenanceSpec,
    SourceSpec,
    VariableSpec,
)
from esdc.recipe.spec import CompressorSpec, DerivedSpec, OutputSpec, Recipe
from esdc.regrid.methods import METHODS

__all__ = [
    "MAX_GRANULES",
    "RESAMPLING_METHODS",
    "CompressorSpec",
    "DerivedSpec",
    "FilesSpec",
    "FitsSpec",
    "GranuleTimeSpec",
    "GeoreferenceSpec",
    "GridSpec",
    "ObservedTimeSpec",
    "OutputSpec",
    "ProvenanceSpec",
    "Recipe",
    "SourceSpec",
    "TimeAxisSpec",
    "VariableSpec",
    "format_errors",
    "load_recipe",
    "BBox",
    "Identifier",
    "parse_recipe",
]

#: Resampling methods, in the field's words: nearest neighbour, bilinear
#: interpolation, bucket average (area mean when downsampling), bucket mode
#: (most frequent class, for categorical data) and conservative (area-weighted, exact
#: both ways).
RESAMPLING_METHODS = METHODS  # defined once, in esdc.regrid.methods; named here for recipes

