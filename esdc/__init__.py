"""esdc: Earth System Data Cubes.

Recipes build harmonized, CF-described, provenance-carrying Zarr cubes from real
sources; cubes feed ML; embeddings make them searchable.

The public names: every error of :mod:`esdc.errors`, :class:`Grid`, the recipe loaders,
:func:`open_cube` (a path, URL or storage target; :mod:`esdc.storage`) and the convention
checks.
"""

import esdc.accessor  # noqa: F401  (registers ds.esdc)
from esdc import errors
from esdc.errors import *  # noqa: F403  (the error hierarchy is public, as errors.__all__ says)
from esdc.grid import Grid
from esdc.recipe import Recipe, load_recipe, parse_recipe
from esdc.storage import open_cube
from esdc.verify import assert_cube, verify_cube

__version__ = "0.1.0"

__all__ = [
    *errors.__all__,
    "Grid",
    "Recipe",
    "__version__",
    "assert_cube",
    "load_recipe",
    "open_cube",
    "parse_recipe",
    "verify_cube",
]
