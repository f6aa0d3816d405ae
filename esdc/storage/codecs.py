"""A Zarr codec pipeline that reports a chunk it cannot decode as :class:`ChunkDecodeError`.

A damaged chunk file (a flipped bit, a truncated or emptied file) makes Blosc, Zstd or
the bytes codec fail deep inside zarr with an error that names neither the array nor
the chunk. :class:`CheckedCodecPipeline` is zarr-python's own
:class:`~zarr.core.codec_pipeline.BatchedCodecPipeline` whose reads turn such a failure
into a :class:`~esdc.errors.ChunkDecodeError` naming the chunk key (``sst/c/3/1/2``), or,
in a sharded array, the chunk's position and its shard's key (the shard's codec reads its
chunks through a pipeline of the same class). It is
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
from zarr.abc.codec import CodecPipeline
from zarr.codecs.sharding import ShardingCodec
from zarr.core.codec_pipeline import BatchedCodecPipeline
from zarr.registry import register_pipeline

from esdc.errors import ChunkDecodeError, EsdcError

__all__ = ["PIPELINE", "CheckedCodecPipeline", "CheckedShardingCodec", "checked_reads",
           "decode_error"]

PIPELINE = "esdc.storage.codecs.CheckedCodecPipeline"
"""The pipeline's name in zarr's ``codec_pipeline.path`` setting."""
# zarr's config is process-wide: esdc's opens take turns setting it, so that one open
# restoring the setting cannot undo another's.
_CONFIG_LOCK = threading.RLock()


def decode_error(key: str, exc: BaseException, chunk: tuple[int, ...] | None = None,
                 reason: str | None = None) -> ChunkDecodeError:
    """The error for chunk ``key`` (or chunk ``chunk`` inside shard ``key``) that failed.

    Parameters
    ----------
    key : str
        The chunk's key in its store (``sst/c/3/1/2``); of a sharded array, the shard's.
    exc : BaseException
        What the codec raised.
    chunk : tuple of int, optional
        The chunk's position inside the shard ``key`` (a sharded array).
    reason : str, optional
        The failure, when not ``exc`` itself (``"RuntimeError: ..."``).

    Returns
    -------
    ChunkDecodeError
        With attributes ``key``, ``chunk`` (None unless sharded) and ``reason``.
    """
    reason = reason or f"{type(exc).__name__}: {exc}"
    where = f"chunk {key}" if chunk is None else f"chunk {chunk} inside shard {key}"
    err = ChunkDecodeError(
        f"{where} of the cube could not be decoded ({reason}): its file is damaged or "
        "truncated. verify_store(cube, checksums=True) names every corrupted or missing "
        "chunk file; rebuild the cube or restore it from a copy.")
    err.key = key  # type: ignore[attr-defined]
    err.chunk = chunk  # type: ignore[attr-defined]
    err.reason = reason  # type: ignore[attr-defined]
    return err


def _located(item: Any, exc: BaseException) -> ChunkDecodeError:
    """``exc`` of the batch item ``item`` as a ChunkDecodeError naming its chunk.

    A chunk inside a shard is read by the shard's own pipeline through a getter with no
    path (``chunk_coords`` only): its error names the position; the shard's pipeline
    adds the shard's key.
    """
    getter = item[0]
    if not hasattr(getter, "path"):  # inside a shard: the shard's pipeline names it
        return decode_error("", exc, chunk=tuple(getattr(getter, "chunk_coords", ())))
    inner = exc if isinstance(exc, ChunkDecodeError) else None
    return decode_error(str(getter.path), exc, chunk=getattr(inner, "chunk", None),
                        reason=getattr(inner, "reason", None))


class CheckedShardingCodec(ShardingCodec):
    """zarr's sharding codec whose chunks are decoded by a :class:`CheckedCodecPipeline`.

    zarr builds a shard's inner pipeline each time it reads one, from the setting in
    effect then (on a Dask worker: the default); this codec always builds ours.
    """

    @property
    def codec_pipeline(self) -> CodecPipeline:
        """The pipeline of the chunks inside a shard."""
        return CheckedCodecPipeline.from_codecs(self.codecs)


def _checked(codec: Any) -> Any:
    if type(codec) is ShardingCodec:
        return CheckedShardingCodec(chunk_shape=codec.chunk_shape, codecs=codec.codecs,
                                    index_codecs=codec.index_codecs,
                                    index_location=codec.index_location)
    return codec


@dataclass(frozen=True)
class CheckedCodecPipeline(BatchedCodecPipeline):
    """zarr's batched codec pipeline; a chunk that fails to decode raises ChunkDecodeError."""

    @classmethod
    def from_codecs(cls, codecs: Iterable[Any], *, batch_size: int | None = None
                    ) -> CheckedCodecPipeline:
        """The pipeline of ``codecs``; a sharding codec reads its chunks with this class too."""
        return super().from_codecs([_checked(c) for c in codecs], batch_size=batch_size)

    async def read_batch(self, batch_info: Iterable[Any], out: Any,
                         drop_axes: tuple[int, ...] = ()) -> None:
        """Read and decode a batch of chunks into ``out`` (see zarr's pipeline).

        Raises
        ------
        ChunkDecodeError
            Naming the first chunk of the batch that cannot be decoded (and its shard).
        """
        batch = list(batch_info)
        try:
            await super().read_batch(batch, out, drop_axes)
        except Exception as exc:  # noqa: BLE001 - any codec failure: find the chunk
            if isinstance(exc, EsdcError) and getattr(exc, "key", None) != "":
                raise  # an error of ours that names its chunk already
            for item in batch:  # one at a time, to name the damaged one
                try:
                    await super().read_batch([item], out, drop_axes)
                except Exception as one:  # noqa: BLE001
                    raise _located(item, one) from one
            raise _located(batch[0], exc) from exc


register_pipeline(CheckedCodecPipeline)


@contextlib.contextmanager
def checked_reads() -> Iterator[None]:
    """Within the block, Zarr arrays opened get :class:`CheckedCodecPipeline`."""
    with _CONFIG_LOCK, zarr.config.set({"codec_pipeline.path": PIPELINE}):
        yield
