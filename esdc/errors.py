"""The esdc exception hierarchy.

Every class also inherits the matching builtin (as zarr-python v3 does), so
``except FileNotFoundError`` still catches a missing source file. Messages say
what went wrong, where (file or recipe field) and what to do next.
"""

from __future__ import annotations

__all__ = [
    "ChecksumError",
    "CubeExistsError",
    "EsdcError",
    "EsdcWarning",
    "GridError",
    "OutputPathError",
    "RecipeError",
    "RegridError",
    "SourceError",
    "SourceNotFoundError",
]


class EsdcError(Exception):
    """Base class of every error esdc raises for a user's mistake or bad input."""


class EsdcWarning(UserWarning):
    """Base class of esdc's warnings (errors in the test suite)."""


class RecipeError(EsdcError, ValueError):
    """A recipe is malformed, has an unknown key, a wrong type or an impossible value."""


class GridError(EsdcError, ValueError):
    """A grid cannot be constructed (unknown CRS, empty or negative size)."""


class SourceError(EsdcError, ValueError):
    """A source file cannot be read as declared (format, variable, coordinates)."""


class SourceNotFoundError(SourceError, FileNotFoundError):
    """A source file or registered sample is missing."""


class ChecksumError(SourceError):
    """A file's SHA-256 differs from the one recorded for it."""


class RegridError(EsdcError, ValueError):
    """Data cannot be resampled onto the grid (no overlap, unknown method)."""


class CubeExistsError(EsdcError, FileExistsError):
    """The target cube exists and ``overwrite`` was not requested."""


class OutputPathError(EsdcError, PermissionError):
    """The output location cannot be written."""
