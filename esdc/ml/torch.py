"""PyTorch adapter: an ``IterableDataset`` over :class:`~esdc.ml.patches.PatchStream`.

Each DataLoader worker (and each distributed rank) reads a disjoint shard of the
cube's work units, so a multi-worker loader delivers every patch once per epoch.
Batches are stacked in NumPy by the stream (``batch_size`` here), not collated per
sample by torch: use ``DataLoader(ds, batch_size=None, ...)``. With workers, use
``multiprocessing_context="forkserver"`` (or spawn): forking after Dask's thread
pool ran deadlocks (../shared/STACK.md).

Batches cross the process boundary without being copied into fresh shared memory: each
worker writes its batches straight into a small ring of shared-memory slots
(``torch.Tensor.share_memory_``, created once) and sends only the slot's number (the
slot's memory is handed over once, the first time it is used). The main process gives
each batch tensors of their own over the slot; when the last of them (and every view of
them) is gone, the slot is marked free in a shared flag array and the worker reuses it.
A batch that is kept (collected in a list, say) is therefore never overwritten: the
worker takes another slot, and past ``max_slots`` it falls back to fresh tensors. Each
worker decodes with one zarr thread and reads no unit ahead (``worker_threads=1``), as
torch runs one intra-op thread per worker: N workers use about N cores.

With CUDA, ``DataLoader(pin_memory=True)`` and ``tensor.to("cuda", non_blocking=True)``
overlap the host-to-device copy with compute (the training loop of
:mod:`esdc.ml.fit.torch` does so when it trains on CUDA).
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import replace
from multiprocessing.reduction import ForkingPickler
from typing import Any

import numpy as np
import zarr

from esdc.errors import EsdcError, TrainConfigError
from esdc.ml.patches import Batch, PatchStream

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
    worker_threads : int or None
        In a DataLoader worker: zarr's decoding threads (set before the worker's first
        read) and no read-ahead thread, so that N workers use about N cores; None keeps
        zarr's default pool and the stream's ``units_ahead``.
    max_slots : int
        Shared-memory batch slots per worker (a ring, reused once the main process has
        dropped a batch); 0 sends every batch through torch's default path (a fresh
        shared-memory segment each).

    Yields
    ------
    tuple of torch.Tensor
        ``(x, valid, index)``: float32 ``(B, C, ph, pw)``, bool ``(B, C, ph, pw)``,
        int64 ``(B, 3)`` rows ``(t, y, x)``; plus ``target`` float32 ``(B, K, ph, pw)``
        when the stream has targets.
    """

    def __init__(self, stream: PatchStream, batch_size: int = 64, epoch: int = 0,
                 drop_last: bool = False, threads: int = 1, worker_threads: int | None = 1,
                 max_slots: int = 16) -> None:
        super().__init__()
        self.threads = threads
        self.worker_threads = worker_threads
        self.max_slots = max_slots
        self._ring: _Ring | None = None
        self.stream = stream
        self.batch_size = batch_size
        self.epoch = epoch
        self.drop_last = drop_last

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s shuffle on the next iteration."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Any]:
        """Batches of this worker's shard (DataLoader workers split the stream's shard)."""
        info = torch.utils.data.get_worker_info()
        stream = self.stream
        if info is None:  # in the main process: tensors over the stream's fresh arrays
            for b in stream.threaded_batches(self.batch_size, self.epoch, self.drop_last,
                                             threads=self.threads):
                yield _tensors(b)
            return
        if info.num_workers > 1:
            stream = replace(stream, shard=stream.shard * info.num_workers + info.id,
                             num_shards=stream.num_shards * info.num_workers)
        if self.worker_threads is not None:
            zarr.config.set({"threading.max_workers": self.worker_threads})
            stream = replace(stream, units_ahead=0)
        if self._ring is None and self.max_slots > 0:
            c, k = len(stream.variables), len(stream.targets)
            self._ring = _Ring(self.max_slots, (self.batch_size, c, *stream.patch),
                               (self.batch_size, k, *stream.patch) if k else None)
        ring = self._ring
        if ring is None:
            for b in stream.threaded_batches(self.batch_size, self.epoch, self.drop_last,
                                             threads=self.threads):
                yield _tensors(b)
            return
        ring.sent.clear()  # the main process may have let this worker's slots go
        for b in stream.threaded_batches(self.batch_size, self.epoch, self.drop_last,
                                         threads=self.threads, out=ring.out):
            yield ring.message(b)


def _tensors(b: Batch) -> tuple[Any, ...]:
    out = (torch.from_numpy(b.x), torch.from_numpy(b.valid), torch.from_numpy(b.index))
    return out if b.target is None else (*out, torch.from_numpy(b.target))


class _Ring:
    """A DataLoader worker's shared-memory batch slots (see the module's docstring).

    ``flags[i]`` is 1 while slot ``i`` is being filled, in flight or held by the main
    process, 0 once the main process dropped its batch; only the main process clears it.
    """

    def __init__(self, max_slots: int, x_shape: tuple[int, ...],
                 target_shape: tuple[int, ...] | None) -> None:
        self.token = uuid.uuid4().hex
        self.flags = torch.zeros(max_slots, dtype=torch.uint8).share_memory_()
        self._flags = self.flags.numpy()
        self.shapes = (x_shape, target_shape)
        self.slots: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self.by_address: dict[int, int] = {}
        self.sent: set[int] = set()
        self._lock = threading.Lock()

    def out(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """Arrays of ``n`` rows over a free slot; None (fresh arrays) when none is free."""
        with self._lock:
            free = np.flatnonzero(self._flags[:len(self.slots)] == 0)
            if len(free):
                i = int(free[0])
            elif len(self.slots) < len(self._flags):
                x_shape, t_shape = self.shapes
                slot = (torch.empty(x_shape, dtype=torch.float32).share_memory_(),
                        torch.empty(x_shape, dtype=torch.bool).share_memory_(),
                        None if t_shape is None else
                        torch.empty(t_shape, dtype=torch.float32).share_memory_())
                i = len(self.slots)
                self.slots.append(slot)
                self.by_address[slot[0].data_ptr()] = i
            else:
                return None
            self._flags[i] = 1
        x, valid, target = self.slots[i]
        return (x.numpy()[:n], valid.numpy()[:n],
                None if target is None else target.numpy()[:n])

    def message(self, b: Batch) -> Any:
        """What a worker yields for batch ``b``: a slot message, or tensors if not a slot's."""
        i = self.by_address.get(b.x.__array_interface__["data"][0])
        if i is None:
            return _tensors(b)
        first = i not in self.sent
        self.sent.add(i)
        return _SlotBatch(self.token, i, len(b.x), self.flags if first else None,
                          self.slots[i] if first else None, b.index, b.target is not None)


class _SlotBatch:
    """A batch in slot ``slot`` of worker ring ``token``: pickled as the slot's number."""

    __slots__ = ("base", "flags", "has_target", "index", "n", "slot", "token")

    def __init__(self, token: str, slot: int, n: int, flags: Any, base: Any,
                 index: np.ndarray, has_target: bool) -> None:
        self.token, self.slot, self.n, self.flags = token, slot, n, flags
        self.base, self.index, self.has_target = base, index, has_target


#: In the main process: ``{ring token: {"flags": array, slot: (x, valid, target)}}``,
#: most recently heard ring last; a ring not heard for a while is forgotten (it sends
#: its slots again at the start of its next iteration).
_RINGS: OrderedDict[str, dict[Any, Any]] = OrderedDict()
_RINGS_KEPT = 64


def _reduce_slot(b: _SlotBatch) -> tuple[Any, tuple[Any, ...]]:
    return _rebuild_slot, (b.token, b.slot, b.n, b.flags, b.base, b.index, b.has_target)


def _release(flags: np.ndarray, slot: int, left: list[int]) -> None:
    left[0] -= 1
    if left[0] == 0:
        flags[slot] = 0


def _rebuild_slot(token: str, slot: int, n: int, flags: Any, base: Any, index: np.ndarray,
                  has_target: bool) -> tuple[Any, ...]:
    """In the main process: the batch's own tensors over the slot's shared memory."""
    ring = _RINGS.setdefault(token, {})
    _RINGS.move_to_end(token)
    while len(_RINGS) > _RINGS_KEPT:
        _RINGS.popitem(last=False)
    if flags is not None:
        ring["flags"] = flags.numpy()
    if base is not None:
        ring[slot] = tuple(None if t is None else t.numpy() for t in base)
    views = [a[:n] for a in ring[slot] if a is not None]
    left = [len(views)]
    for v in views:  # a tensor from_numpy keeps its array: finalised with the last view
        weakref.finalize(v, _release, ring["flags"], slot, left)
    out = (torch.from_numpy(views[0]), torch.from_numpy(views[1]), torch.from_numpy(index))
    return out if not has_target else (*out, torch.from_numpy(views[2]))


ForkingPickler.register(_SlotBatch, _reduce_slot)
