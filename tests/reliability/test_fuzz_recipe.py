"""Property-based fuzzing of recipe parsing (hypothesis).

Recipes are data a user (or anyone who can hand a user a file) controls, so parsing
must never fail in any other way than :class:`esdc.errors.EsdcError`: arbitrary text,
the real recipes of ``recipes/*.yaml`` with characters edited, and their parsed dicts
with values replaced, keys deleted or added, lists emptied, numbers pushed to
extremes (NaN, infinities, 1e308, 5e-324, 2**64) are fed to ``parse_recipe`` and
``Recipe.from_dict``. A valid outcome must round-trip: ``from_dict(to_dict())`` and
``parse_recipe(to_yaml())`` give the same recipe with the same SHA-256.

Bounded: a few hundred examples in all, ``deadline=None`` (pyproj's first CRS look-ups
are slow), well under 30 s on 2 busy cores. ``derandomize=True`` keeps CI
reproducible; run with ``--hypothesis-seed`` and without it locally to explore more.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esdc.errors import EsdcError
from esdc.recipe import Recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPE_FILES = sorted((ROOT / "recipes").glob("*.yaml"))
TEXTS = {p.name: p.read_text(encoding="utf-8") for p in RECIPE_FILES}
DICTS = {name: yaml.safe_load(text) for name, text in TEXTS.items()}

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: Numbers and strings that break naive code: NaN, infinities, overflow, subnormals,
#: huge integers, empty and odd strings, path traversal, YAML/Python-looking text.
EXTREMES = st.sampled_from([
    None, True, False, 0, -1, 1, 2**31, 2**63, 2**64, 10**30, -(10**30),
    0.0, -0.0, 1e-300, 5e-324, 1e308, -1e308, math.nan, math.inf, -math.inf,
    "", " ", "nan", "inf", "-1", "1e999", "../../etc/passwd", "EPSG:999999", "EPSG:4326",
    "+proj=notaprojection", "helioprojective", "2006-13-45", "0001-01-01", "9999-12-31",
    "s", "ns", "-1D", "MS", "\x00", "\u202e", "A" * 10_000, "!!python/object:os.system",
    "__import__('os').system('id')", [], {}, [[]], [None], {"": None},
])
JSONISH = st.recursive(
    EXTREMES | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(
        max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=10,
)


def parse_outcome(fn: Any, arg: Any) -> Recipe | None:
    """``fn(arg)``: a Recipe, or None for an EsdcError; any other exception fails the test."""
    try:
        result = fn(arg)
    except EsdcError as exc:
        assert str(exc).strip(), "an error message says something"
        return None
    assert isinstance(result, Recipe)
    return result


def assert_round_trip(recipe: Recipe) -> None:
    again = Recipe.from_dict(recipe.to_dict())
    assert again == recipe
    assert again.sha256() == recipe.sha256()
    reparsed = parse_recipe(recipe.to_yaml())
    assert reparsed == recipe and reparsed.to_dict() == recipe.to_dict()


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys/indices) into a nested dict/list, the root included."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, (*prefix, i))
    return out


def at(node: Any, path: tuple) -> Any:
    for part in path:
        node = node[part]
    return node


@st.composite
def mutated_recipe(draw: st.DrawFn) -> dict[str, Any]:
    """A real recipe's dict after 1-4 random mutations."""
    name = draw(st.sampled_from(sorted(DICTS)))
    d = copy.deepcopy(DICTS[name])
    for _ in range(draw(st.integers(1, 4))):
        all_paths = [p for p in paths(d) if p]
        if not all_paths:
            break
        path = draw(st.sampled_from(all_paths))
        parent, key = at(d, path[:-1]), path[-1]
        kind = draw(st.sampled_from(["replace", "delete", "add_key", "duplicate", "empty",
                                     "number"]))
        if kind == "replace":
            parent[key] = draw(JSONISH)
        elif kind == "delete":
            del parent[key]
        elif kind == "add_key" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = draw(JSONISH)
        elif kind == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
        elif kind == "empty":
            value = parent[key]
            parent[key] = type(value)() if isinstance(value, (list, dict, str)) else None
        elif kind == "number":
            value = parent[key]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                parent[key] = draw(st.sampled_from([0, -value, value * 1e300, value * 1e-300,
                                                    math.nan, math.inf, 2**64]))
            else:
                parent[key] = draw(EXTREMES)
    return d


@st.composite
def edited_text(draw: st.DrawFn) -> str:
    """A real recipe's YAML text with 1-8 characters inserted, deleted or replaced."""
    text = draw(st.sampled_from(sorted(TEXTS)))
    text = TEXTS[text]
    alphabet = st.sampled_from(list(":-[]{}&*!|>#'\"\n\t ,.0123456789eE%@`") + ["\x00", "\u00e9"])
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        ch = draw(alphabet)
        if op == "insert":
            text = text[:i] + ch + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + 1:]
        else:
            text = text[:i] + ch + text[i + 1:]
    return text


# --------------------------------------------------------------------------- baselines
@pytest.mark.parametrize("name", sorted(TEXTS))
def test_real_recipes_parse_and_round_trip(name: str) -> None:
    recipe = parse_recipe(TEXTS[name], name)
    assert_round_trip(recipe)
    assert Recipe.from_dict(DICTS[name]) == recipe


# --------------------------------------------------------------------------- fuzzing
@FUZZ
@given(text=st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    recipe = parse_outcome(lambda t: parse_recipe(t, "fuzz.yaml"), text)
    if recipe is not None:
        assert_round_trip(recipe)


@FUZZ
@given(text=edited_text())
def test_edited_recipe_text(text: str) -> None:
    recipe = parse_outcome(lambda t: parse_recipe(t, "fuzz.yaml"), text)
    if recipe is not None:
        assert_round_trip(recipe)


@settings(FUZZ, max_examples=150)
@given(d=mutated_recipe())
def test_mutated_recipe_dict(d: dict[str, Any]) -> None:
    recipe = parse_outcome(Recipe.from_dict, d)
    if recipe is not None:
        assert_round_trip(recipe)
    # The same dict as YAML text goes through the file path of the parser.
    try:
        text = yaml.safe_dump(d, allow_unicode=True)
    except yaml.YAMLError:
        return  # not representable as YAML (e.g. a lone surrogate): nothing to parse
    again = parse_outcome(lambda t: parse_recipe(t, "fuzz.yaml"), text)
    assert (again is None) == (recipe is None)
    if recipe is not None:
        assert again == recipe


@FUZZ
@given(value=JSONISH)
def test_any_value_as_recipe(value: Any) -> None:
    parse_outcome(Recipe.from_dict, value)
    try:
        text = yaml.safe_dump(value, allow_unicode=True)
    except yaml.YAMLError:
        return
    parse_outcome(lambda t: parse_recipe(t, "fuzz.yaml"), text)
