"""PyTorch adapter: an ``IterableDataset`` over :class:`~esdc.ml.patches.PatchStream`.

Each DataLoader worker (and each distributed rank) reads a disjoint shard of the
cube's work units, so a multi-worker loader delivers every patch once per epoch.
Batches are stacked in NumPy by the stream (``batch_size`` here), not collated per
sample by torch: use ``DataLoader(ds, batch_size=None, ...)``. With workers, use
``multiprocessing_context="forkserver"`` (or spawn): forking after Dask's thread
pool ran deadlocks (../shared/STACK.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

from esdc.errors import EsdcError, TrainConfigError
from esdc.ml.patches import PatchStream

__all__ = ["PatchDataset", "device_for"]


try:
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    raise EsdcError("PyTorch is not installed: pip install 'esdc[ml]' (torch==2.13.0).") \
        from None


def device_for(prefer: str = "auto", resources: Mapping[str, float] | None = None) -> str:
    """Choose the torch device: ``cuda`` when asked or available, else ``cpu``.

    When the Dask worker's resources are given, CUDA is used only if the worker has a
    ``GPU`` resource.

    Parameters
    ----------
    prefer : {"auto", "cpu", "cuda"}
        ``auto`` picks CUDA when present.
    resources : dict, optional
        The Dask worker's resources (e.g. ``{"GPU": 1}``); without a GPU resource
        the CPU is used even if CUDA is visible, so one GPU is not shared by workers.

    Returns
    -------
    str
        ``"cuda"`` or ``"cpu"``.

    Raises
    ------
    TrainConfigError
        If ``cuda`` is asked for and no CUDA device is available.
    """
    has_cuda = bool(torch.cuda.is_available())
    if prefer == "cuda":
        if not has_cuda:
            raise TrainConfigError("device 'cuda' was asked for but no CUDA device is "
                                   "available; use device 'auto' or 'cpu'.")
        return "cuda"
    if prefer == "cpu" or not has_cuda:
        return "cpu"
    if resources is not None and resources.get("GPU", 0) < 1:
        return "cpu"
    return "cuda"


class PatchDataset(torch.utils.data.IterableDataset):  # type: ignore[misc]
    """``torch.utils.data.IterableDataset`` of patch batches.

    Parameters
    ----------
    stream : PatchStream
        The patches (its ``shard``/``num_shards`` give this rank's share).
    batch_size : int
        Patches per batch.
    epoch : int
        Epoch number (changes the shuffle); :meth:`set_epoch` updates it.
    drop_last : bool
        Drop the last, smaller batch of each shard.
    threads : int
        Reading threads per process (:meth:`PatchStream.threaded_batches`): parallel
        reading without process workers, so batches are never pickled or copied to
        shared memory; use with ``num_workers=0`` where cores are few.

    Yields
    ------
    tuple of torch.Tensor
        ``(x, valid, index)``: float32 ``(B, C, ph, pw)``, bool ``(B, C, ph, pw)``,
        int64 ``(B, 3)`` rows ``(t, y, x)``; plus ``target`` float32 ``(B, K, ph, pw)``
        when the stream has targets.
    """

    def __init__(self, stream: PatchStream, batch_size: int = 64, epoch: int = 0,
                 drop_last: bool = False, threads: int = 1) -> None:
        super().__init__()
        self.threads = threads
        self.stream = stream
        self.batch_size = batch_size
        self.epoch = epoch
        self.drop_last = drop_last

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s shuffle on the next iteration."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        """Batches of this worker's shard (DataLoader workers split the stream's shard)."""
        info = torch.utils.data.get_worker_info()
        stream = self.stream
        if info is not None and info.num_workers > 1:
            stream = replace(stream, shard=stream.shard * info.num_workers + info.id,
                             num_shards=stream.num_shards * info.num_workers)
        for b in stream.threaded_batches(self.batch_size, self.epoch, self.drop_last,
                                         threads=self.threads):
            out = (torch.from_numpy(b.x), torch.from_numpy(b.valid), torch.from_numpy(b.index))
            yield out if b.target is None else (*out, torch.from_numpy(b.target))
