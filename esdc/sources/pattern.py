"""File patterns of multi-file sources: ``{time:STRFTIME}`` and ``{name}`` fields.

A pattern is a local path or a URL whose fields are written in Python's format syntax
(:class:`string.Formatter`): ``{time:%Y%m%d}`` takes a granule's time through
:meth:`datetime.datetime.strftime`, and ``{name}`` one value of ``files.values.name``,
as in pangeo-forge-recipes' ``FilePattern`` (a ``ConcatDim`` over time, ``MergeDim``
over the other fields). Parsing a pattern reads nothing and sends no request.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["TIME_FIELD", "Pattern", "parse_pattern"]

#: The name of the time field of a pattern.
TIME_FIELD = "time"

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DIRECTIVE = re.compile(r"%[-#]?[A-Za-z%]")


@dataclass(frozen=True)
class Pattern:
    """A parsed file pattern.

    Attributes
    ----------
    text : str
        The pattern as written.
    parts : tuple of (str, str or None, str)
        ``(literal text, field name or None, format spec)`` in order.
    """

    text: str
    parts: tuple[tuple[str, str | None, str], ...]

    @property
    def fields(self) -> tuple[str, ...]:
        """The field names in order of first appearance (``time`` included)."""
        return tuple(dict.fromkeys(name for _, name, _ in self.parts if name is not None))

    @property
    def has_time(self) -> bool:
        """Whether the pattern has a ``{time:...}`` field."""
        return TIME_FIELD in self.fields

    @property
    def value_fields(self) -> tuple[str, ...]:
        """The fields other than ``time``, expanded over ``files.values``."""
        return tuple(f for f in self.fields if f != TIME_FIELD)

    def render(self, time: Any = None, values: Mapping[str, Any] | None = None) -> str:
        """The path or URL of one granule.

        Parameters
        ----------
        time : datetime-like, optional
            The granule's time (``pandas.Timestamp``); needed when the pattern has a
            ``time`` field.
        values : mapping, optional
            One value per other field.

        Returns
        -------
        str
        """
        out = []
        for literal, name, spec in self.parts:
            out.append(literal)
            if name == TIME_FIELD:
                out.append(time.strftime(spec))
            elif name is not None:
                out.append(str((values or {})[name]))
        return "".join(out)


def parse_pattern(text: str) -> Pattern:
    """Parse and check a file pattern.

    Parameters
    ----------
    text : str
        E.g. ``https://host/sst/{time:%Y}/sst_{time:%Y%m%d}.nc`` or
        ``aia/{channel}/aia_{channel}_{time:%Y%m%dT%H%M}.fits``.

    Returns
    -------
    Pattern

    Raises
    ------
    ValueError
        For unbalanced braces, positional (``{}``) or attribute fields, a conversion
        (``!r``), a ``time`` field without a strftime directive (``{time:%Y%m%d}``), or a
        format spec on another field.
    """
    try:
        raw = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"pattern {text!r} is malformed: {exc} (write literal braces as "
                         "'{{' and '}}')") from None
    parts: list[tuple[str, str | None, str]] = []
    for literal, name, spec, conversion in raw:
        if name is None:
            parts.append((literal, None, ""))
            continue
        if not _NAME.match(name):
            raise ValueError(f"pattern {text!r}: field {{{name}}} must be a name such as "
                             "{time:%Y%m%d} or {channel}")
        if conversion:
            raise ValueError(f"pattern {text!r}: field {{{name}!{conversion}}} takes no "
                             "conversion")
        if name == TIME_FIELD:
            if not spec or not _DIRECTIVE.search(spec):
                raise ValueError(f"pattern {text!r}: the time field needs a strftime format, "
                                 "e.g. {time:%Y%m%d}")
        elif spec:
            raise ValueError(f"pattern {text!r}: field {{{name}:{spec}}} takes no format; "
                             "only {time:...} has one")
        parts.append((literal, name, spec or ""))
    return Pattern(text, tuple(parts))
