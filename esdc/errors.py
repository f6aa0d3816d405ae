"""The esdc exception hierarchy.

Every class also inherits the matching builtin (as zarr-python v3 does), so
``except FileNotFoundError`` still catches a missing source file. Messages say
what went wrong, where (file or recipe field) and what to do next.
"""

from __future__ import annotations

__all__ = [
    "BuildConflictError",
    "ChecksumError",
    "ChunkDecodeError",
    "CubeExistsError",
    "CubeNotFoundError",
    "EsdcError",
    "EsdcWarning",
    "GridError",
    "OutputPathError",
    "RecipeError",
    "RegridError",
    "SearchIndexError",
    "SourceError",
    "SourceNotFoundError",
    "StorageError",
    "TrainConfigError",
    "UpsamplingWarning",
]


class EsdcError(Exception):
    """Base class of every error esdc raises for a user's mistake or bad input."""


class EsdcWarning(UserWarning):
    """Base class of esdc's warnings (errors in the test suite)."""


class UpsamplingWarning(EsdcWarning):
    """A layer's source is more than twice as coarse as the grid (its cells add no detail).

    Silenced per variable by the recipe's ``allow_upsampling: true``.
    """


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


class CubeNotFoundError(EsdcError, FileNotFoundError):
    """No cube (a Zarr store with esdc's root metadata) at the path or URL given."""


class ChunkDecodeError(EsdcError, OSError):
    """A chunk of a stored cube cannot be decoded: its file is damaged or truncated.

    Raised where chunks are read (the codec pipeline of :func:`esdc.storage.open_cube`),
    naming the array and the chunk; ``verify_store(..., checksums=True)`` names every
    corrupted or missing chunk file.
    """


class BuildConflictError(EsdcError, ValueError):
    """A build's options contradict each other or the cube they would change.

    For example ``append=True`` with ``overwrite=True``, an append whose new cube is not
    a longer version of the stored one, or a resume over another recipe's partial build.
    """


class StorageError(EsdcError, OSError):
    """A storage target (object store, bucket) cannot be reached or read as needed."""


class SearchIndexError(EsdcError, ValueError):
    """A search index is missing, stale (its vectors changed) or does not fit the query."""


class TrainConfigError(RecipeError):
    """A training config is malformed or does not fit the cube it is used on."""
