"""The base of every recipe model, shared field types and the CRS check."""

from __future__ import annotations

from typing import Annotated

import pyproj
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


def format_errors(exc: ValidationError, where: str) -> str:
    """One line per invalid field of a pydantic validation error, by its path.

    Used for recipes and training configs (:mod:`esdc.ml.config`).

    Parameters
    ----------
    exc : pydantic.ValidationError
        The error.
    where : str
        What was validated (a file name or ``recipe``), the first words of the message.

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
            msg = "unknown key (check its spelling; see docs/recipes.md)"
        lines.append(f"  {loc or '(top level)'}: {msg}")
    return f"{where} is invalid:\n" + "\n".join(lines)
