"""Reading recipe YAML: validation errors listed by field path."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from esdc.errors import RecipeError
from esdc.recipe.model import format_errors
from esdc.recipe.spec import Recipe

__all__ = ["load_recipe", "parse_recipe"]


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
        raise RecipeError(format_errors(exc, where, Recipe)) from None


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
