"""The recipe and training-config reference, generated from their pydantic schemas.

``docs/RECIPE_REFERENCE.md`` is the output of :func:`render` (``esdc reference`` or
``python -m esdc.reference``); a test keeps the committed file equal to it, so the
reference cannot drift from the code. Field descriptions are the attribute docstrings
of :mod:`esdc.recipe` (pydantic ``use_attribute_docstrings``) or the ``Attributes``
section of a model's numpydoc docstring; the list of derived-layer functions comes from
:data:`esdc.derive.FUNCTIONS` and the samples from the registry.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from esdc import recipe
from esdc.derive import FUNCTIONS
from esdc.ml import config
from esdc.recipe.files import StacSpec, WmtsSpec
from esdc.samples import SAMPLES

__all__ = ["render"]


def _first_paragraph(doc: str | None) -> str:
    text = inspect.cleandoc(doc or "")
    return text.split("\n\n", 1)[0].replace("\n", " ").strip()


def _numpydoc_attributes(doc: str | None) -> dict[str, str]:
    """``{name: description}`` from a numpydoc ``Attributes`` section.

    Several names separated by commas share one entry.
    """
    text = inspect.cleandoc(doc or "")
    m = re.search(r"^Attributes\n-+\n(.*?)(?:\n\n[A-Z][a-z]+\n-+\n|\Z)", text, re.S | re.M)
    if not m:
        return {}
    out: dict[str, str] = {}
    names: list[str] = []
    for line in m.group(1).split("\n"):
        if line and not line.startswith(" "):
            names = [n.strip() for n in line.split(":", 1)[0].split(",")]
            for n in names:
                out[n] = ""
        elif line.strip():
            for n in names:
                out[n] = (out[n] + " " + line.strip()).strip()
    return out


def _constraints(meta: list[Any]) -> list[str]:
    """Readable bounds from pydantic/annotated-types metadata (``Gt(0)`` → ``> 0``)."""
    out = []
    for m in meta:
        for sub in [m, *getattr(m, "metadata", [])]:
            # max_length is left out: it only caps identifiers at 64 characters.
            for key, sym in (("ge", "≥ "), ("gt", "> "), ("le", "≤ "), ("lt", "< "),
                             ("min_length", "at least ")):
                val = getattr(sub, key, None)
                if val is not None:
                    out.append(f"{sym}{val}")
            if getattr(sub, "pattern", None):
                out.append("identifier" if "A-Za-z_" in sub.pattern else
                           f"pattern `{sub.pattern}`")
    return out


def _type(t: Any, meta: list[Any] | None = None) -> str:
    """A short, readable rendering of a field annotation and its constraints."""
    origin = typing.get_origin(t)
    args = typing.get_args(t)
    if origin is typing.Annotated:
        return _type(args[0], list(args[1:]) + list(meta or []))
    if meta:
        bounds = _constraints(meta)
        name = _type(t)
        if bounds == ["identifier"] and name == "str":
            return "identifier"
        return f"{name} ({', '.join(bounds)})" if bounds else name
    if origin is typing.Literal:
        return " \\| ".join(f"`{str(a).lower()}`" if isinstance(a, bool) else f"`{a}`"
                             for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in args if a is not type(None))
    if origin in (list, tuple, dict):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"[{', '.join(_type(a) for a in args)}]"
        inner = ", ".join(_type(a) for a in args if a is not Ellipsis)
        return {list: "list", tuple: "list", dict: "mapping"}[origin] + f" of {inner}"
    if isinstance(t, type) and issubclass(t, BaseModel):
        return f"[{t.__name__}](#{t.__name__.lower()})"
    if t is typing.Any:
        return "any"
    return getattr(t, "__name__", str(t))


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "(defaults)"
        return f"`{value!r}`"
    d = field.default
    if d is None or d is PydanticUndefined:
        return "—"
    if isinstance(d, bool):
        return f"`{str(d).lower()}`"
    return f"`{list(d) if isinstance(d, tuple) else d}`"


def _model_section(model: type[BaseModel], level: str = "##") -> list[str]:
    lines = [f"{level} {model.__name__}", "", _first_paragraph(model.__doc__), "",
             "| field | type | default | description |", "|---|---|---|---|"]
    numpydoc = _numpydoc_attributes(model.__doc__)
    for name, field in model.model_fields.items():
        desc = " ".join((field.description or numpydoc.get(name, "")).split())
        desc = desc.replace("|", "\\|")
        kind = _type(field.annotation, list(field.metadata))
        lines.append(f"| `{name}` | {kind} | {_default(field)} | {desc} |")
    lines.append("")
    return lines


def _functions() -> list[str]:
    lines = ["## Derived-layer functions", "",
             "Names accepted in `derived[].function` (`esdc.derive.FUNCTIONS`).", "",
             "| function | what it computes |", "|---|---|"]
    for name in sorted(FUNCTIONS):
        lines.append(f"| `{name}` | {_first_paragraph(FUNCTIONS[name].__doc__)} |")
    return [*lines, ""]


def _samples() -> list[str]:
    lines = ["## Registered samples", "",
             "Names accepted in `sources[].sample` (`esdc samples list`; files are fetched "
             "from package registries and checked by SHA-256).", "",
             "| sample | product | mission / instrument | licence |", "|---|---|---|---|"]
    for name in sorted(SAMPLES):
        s = SAMPLES[name]
        cells = [" ".join(str(v).split()).replace("|", "\\|") for v in (
            s.product, f"{s.mission} / {s.instrument}", s.licence)]
        lines.append(f"| `{name}` | {' | '.join(cells)} |")
    return [*lines, ""]


def render() -> str:
    """The Markdown reference of recipes and training configs.

    Returns
    -------
    str
        Markdown text: one table per recipe model (field, type, default, description),
        the derived-layer functions, the registered samples and the training config.
    """
    models = [recipe.Recipe, recipe.GridSpec, recipe.TimeAxisSpec, recipe.ObservedTimeSpec,
              recipe.SourceSpec, recipe.FilesSpec, recipe.GranuleTimeSpec, StacSpec, WmtsSpec,
              recipe.ProvenanceSpec, recipe.GeoreferenceSpec, recipe.VariableSpec,
              recipe.FitsSpec, recipe.DerivedSpec, recipe.OutputSpec, recipe.CompressorSpec]
    out = ["# Recipe and training-config reference", "",
           "Generated from the pydantic schemas by `esdc reference` — do not edit by hand. "
           "A recipe is YAML (safe loader: data only) whose top level is a "
           "[Recipe](#recipe); unknown keys are refused with the path of the key. "
           "Worked recipes are in `recipes/`.", ""]
    for m in models:
        out += _model_section(m)
    out += _functions()
    out += _samples()
    out += ["# Training config (`esdc train --config`)", ""]
    train_models = [getattr(config, n) for n in dir(config)
                    if isinstance(getattr(config, n), type)
                    and issubclass(getattr(config, n), BaseModel)
                    and getattr(config, n).__module__ == config.__name__
                    and not n.startswith("_")]
    train_models.sort(key=lambda m: (m.__name__ != "TrainConfig", m.__name__))
    for m in train_models:
        out += _model_section(m)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
