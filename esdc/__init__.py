"""esdc: Earth System Data Cubes.

Recipes build harmonized, CF-described, provenance-carrying Zarr cubes from real
sources; cubes feed ML; embeddings make them searchable.
"""

import esdc.accessor  # noqa: F401  (registers ds.esdc)
from esdc.errors import (
    ChecksumError,
    CubeExistsError,
    EsdcError,
    EsdcWarning,
    GridError,
    OutputPathError,
    RecipeError,
    RegridError,
    SourceError,
    SourceNotFoundError,
)
from esdc.grid import Grid
from esdc.recipe import Recipe, load_recipe, parse_recipe
from esdc.store import open_cube
from esdc.verify import assert_cube, verify_cube

__version__ = "0.1.0"

__all__ = [
    "ChecksumError",
    "CubeExistsError",
    "EsdcError",
    "EsdcWarning",
    "Grid",
    "GridError",
    "OutputPathError",
    "Recipe",
    "RecipeError",
    "RegridError",
    "SourceError",
    "SourceNotFoundError",
    "__version__",
    "assert_cube",
    "load_recipe",
    "open_cube",
    "parse_recipe",
    "verify_cube",
]

