"""A Zarr codec pipeline that reports a chunk it cannot decode as :class:`ChunkDecodeError`.

A damaged chunk file (a flipped bit, a truncated or emptied file) makes Blosc, Zstd or
the bytes codec fail deep inside zarr with an error that names neither the array nor
the chunk. :class:`CheckedCodecPipeline` is zarr-python's own
:class:`~zarr.core.codec_pipeline.BatchedCodecPipeline` whose reads turn such a failure
into a :class:`~esdc.errors.ChunkDecodeError` naming the chunk key (``sst/c/3/1/2``). It is
selected only for the cubes esdc opens (:func:`checked_reads` around ``xarray.open_zarr``):
zarr creates an array's pipeline when it opens the array, and the pipeline travels with
the array when Dask ships it to a worker.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import zarr
from zarr.core.codec_pipeline import BatchedCodecPipeline
from zarr.registry import register_pipeline

from esdc.errors import ChunkDecodeError, EsdcError

__all__ = ["PIPELINE", "CheckedCodecPipeline", "checked_reads", "decode_error"]

PIPELINE = "esdc.storage.codecs.CheckedCodecPipeline"
"""The pipeline's name in zarr's ``codec_pipeline.path`` setting."""
# zarr's config is process-wide: esdc's opens take turns setting it, so that one open
# restoring the setting cannot undo another's.
_CONFIG_LOCK = threading.RLock()


def decode_error(key: str, exc: BaseException) -> ChunkDecodeError:
    """The error for chunk ``key`` that failed to decode with ``exc``.

    Parameters
    ----------
    key : str
        The chunk's key in its store (``sst/c/3/1/2``).
    exc : BaseException
        What the codec raised.

    Returns
    -------
    ChunkDecodeError
        With attributes ``key`` and ``reason`` (``"RuntimeError: ..."``).
    """
    reason = f"{type(exc).__name__}: {exc}"
    err = ChunkDecodeError(
        f"chunk {key} of the cube could not be decoded ({reason}): its file is damaged or "
        "truncated. verify_store(cube, checksums=True) names every corrupted or missing "
        "chunk file; rebuild the cube or restore it from a copy.")
    err.key = key  # type: ignore[attr-defined]
    err.reason = reason  # type: ignore[attr-defined]
    return err


@dataclass(frozen=True)
class CheckedCodecPipeline(BatchedCodecPipeline):
    """zarr's batched codec pipeline; a chunk that fails to decode raises ChunkDecodeError."""

    async def read_batch(self, batch_info: Iterable[Any], out: Any,
                         drop_axes: tuple[int, ...] = ()) -> None:
        """Read and decode a batch of chunks into ``out`` (see zarr's pipeline).

        Raises
        ------
        ChunkDecodeError
            Naming the first chunk of the batch that cannot be decoded.
        """
        batch = list(batch_info)
        try:
            await super().read_batch(batch, out, drop_axes)
        except EsdcError:
            raise
        except Exception as exc:  # noqa: BLE001 - any codec failure: find the chunk
            for item in batch:  # one at a time, to name the damaged one
                try:
                    await super().read_batch([item], out, drop_axes)
                except Exception as one:  # noqa: BLE001
                    raise decode_error(str(item[0].path), one) from one
            raise decode_error(", ".join(str(i[0].path) for i in batch[:3]), exc) from exc


register_pipeline(CheckedCodecPipeline)


@contextlib.contextmanager
def checked_reads() -> Iterator[None]:
    """Within the block, Zarr arrays opened get :class:`CheckedCodecPipeline`."""
    with _CONFIG_LOCK, zarr.config.set({"codec_pipeline.path": PIPELINE}):
        yield
