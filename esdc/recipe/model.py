"""The base of every recipe model, shared field types and the CRS check."""

from __future__ import annotations

from typing import Annotated, Any, get_args

import pyproj
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from esdc.errors import did_you_mean
from esdc.regrid.methods import METHODS

__all__ = ["BBox", "Identifier", "Model", "check_crs", "format_errors"]

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]
BBox = tuple[float, float, float, float]


class Model(BaseModel):
    """Base of every recipe model: unknown keys, NaN and infinity refused; frozen."""

    # allow_inf_nan=False: no NaN or infinity in any number of a recipe (a NaN
    # scale_factor or valid_min would silently blank a layer; an infinite bbox has no cells).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False,
                              use_attribute_docstrings=True, allow_inf_nan=False)



def check_crs(v: str | None) -> str | None:
    """``v`` unchanged when PROJ knows it (or it is None); ValueError naming it otherwise."""
    if v is not None:
        try:
            pyproj.CRS.from_user_input(v)
        except pyproj.exceptions.CRSError:
            raise ValueError(f"unknown CRS {v!r}; use an authority code such as 'EPSG:4326' "
                             "or 'IAU_2015:30100', a PROJ string or WKT") from None
    return v


def _model_of(annotation: Any, name: str | None = None) -> type[BaseModel] | None:
    """The model class inside a field's annotation (``X | None``, ``list[X]``, unions).

    ``name``: of a union's members, the one pydantic named in the error's location.
    """
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation if name in (None, annotation.__name__) else None
    found = [m for m in (_model_of(a, name) for a in get_args(annotation)) if m is not None]
    return found[0] if found else None


def _keys_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed beside the last key of ``loc`` (walking ``model``'s fields)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or current is None:
            continue  # a list index
        cls = _model_of(current)
        if cls is not None and part in cls.model_fields:
            current = cls.model_fields[part].annotation
        elif _model_of(current, str(part)) is not None:  # a union member pydantic tried
            current = _model_of(current, str(part))
    cls = _model_of(current)
    return list(cls.model_fields) if cls is not None else []


def format_errors(exc: ValidationError, where: str,
                  model: type[BaseModel] | None = None) -> str:
    """One line per invalid field of a pydantic validation error, by its path.

    Used for recipes and training configs (:mod:`esdc.ml.config`).

    Parameters
    ----------
    exc : pydantic.ValidationError
        The error.
    where : str
        What was validated (a file name or ``recipe``), the first words of the message.
    model : pydantic model class, optional
        The model validated: an unknown key then gets the closest allowed key ("did you
        mean") and the list of the keys allowed there.

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
            elif part in METHODS or str(part).startswith(("function-", "tagged")):
                continue
            else:
                loc += ("." if loc else "") + str(part)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = _keys_at(model, tuple(err["loc"]))
            key = str(err["loc"][-1]) if err["loc"] else ""
            hint = did_you_mean(key, allowed)
            msg = (f"unknown key{hint}"
                   + (f"; allowed here: {', '.join(allowed)}" if allowed and not hint else "")
                   + " (see docs/RECIPE_REFERENCE.md)")
        lines.append(f"  {loc or '(top level)'}: {msg}")
    return f"{where} is invalid:\n" + "\n".join(lines)
