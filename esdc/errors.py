"""The esdc exception hierarchy.

Every class also inherits the matching builtin (as zarr-python v3 does), so
``except FileNotFoundError`` still catches a missing source file. Messages say
what went wrong, where (file or recipe field) and what to do next.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "BuildConflictError",
    "ChecksumError",
    "ChunkDecodeError",
    "EmbeddingConflictError",
    "CubeExistsError",
    "CubeNotFoundError",
    "EsdcError",
    "EsdcWarning",
    "FetchError",
    "GapFillError",
    "GapFillWarning",
    "GranuleNotFoundError",
    "GridError",
    "OutputPathError",
    "RecipeError",
    "RegridError",
    "SearchIndexError",
    "SelectionError",
    "SourceError",
    "SourceNotFoundError",
    "StorageError",
    "TrainConfigError",
    "TrainingDataWarning",
    "UpsamplingWarning",
    "did_you_mean",
]


class EsdcError(Exception):
    """Base class of every error esdc raises for a user's mistake or bad input."""


class EsdcWarning(UserWarning):
    """Base class of esdc's warnings (errors in the test suite)."""


class UpsamplingWarning(EsdcWarning):
    """A layer's source is more than twice as coarse as the grid (its cells add no detail).

    Silenced per variable by the recipe's ``allow_upsampling: true``.
    """


class GapFillWarning(EsdcWarning):
    """Gap filling left cells inside the domain NaN (e.g. time interpolation at a series' end).

    :func:`esdc.gapfill.fill_gaps` says how many, with which method.
    """


class TrainingDataWarning(EsdcWarning):
    """A training run's data are thin (blocks waste most patches, a split lacks a class).

    Raised as a warning by :func:`esdc.ml.train.train`, which reports the counts.
    """


class RecipeError(EsdcError, ValueError):
    """A recipe is malformed, has an unknown key, a wrong type or an impossible value."""


class GridError(EsdcError, ValueError):
    """A grid cannot be constructed (unknown CRS, empty or negative size)."""


class SourceError(EsdcError, ValueError):
    """A source file cannot be read as declared (format, variable, coordinates)."""


class SourceNotFoundError(SourceError, FileNotFoundError):
    """A source file or registered sample is missing."""


class GranuleNotFoundError(SourceNotFoundError):
    """A granule of a multi-file source is missing upstream (HTTP 404/410, no such key).

    Raised by :func:`esdc.storage.fetch.fetch_granules` with ``missing="error"``, naming
    the first missing granule; a source's ``files: {missing: skip}`` skips them instead.
    """


class FetchError(SourceError):
    """A granule could not be fetched: its attempts (with retries) all failed.

    Names the URL, the number of attempts and the last failure; a partial download is
    kept and resumed by the next fetch.
    """


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


class EmbeddingConflictError(BuildConflictError):
    """Embeddings cannot be appended to as asked (``append=True``).

    No embedding of that tile size, or the encoder, its inputs or their normalisation
    differ from those the stored vectors were made with: appending would mix vectors
    that cannot be compared.
    """


class SelectionError(EsdcError, LookupError):
    """A variable, place or time asked of a cube is not in it (export, point series, maps)."""


class StorageError(EsdcError, OSError):
    """A storage target (object store, bucket) cannot be reached or read as needed."""


class SearchIndexError(EsdcError, ValueError):
    """A search index is missing, stale (its vectors changed) or does not fit the query."""


class GapFillError(EsdcError, ValueError):
    """Gaps cannot be filled as asked.

    An unknown method or option, a domain that does not match the data's grid, a time step
    without an observed value inside the domain for a spatial method, or an evaluation of
    a variable without time.
    """


class TrainConfigError(RecipeError):
    """A training config is malformed or does not fit the cube it is used on."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'NAME'?)"`` for the closest of ``choices`` (difflib), else ``""``.

    Parameters
    ----------
    name : str
        What was asked for (a variable, key or sample name).
    choices : iterable of str
        The names that exist.

    Returns
    -------
    str
        The hint, to append to a message; empty when nothing is close.
    """
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
