"""PyTorch adapter: an ``IterableDataset`` over :class:`~esdc.ml.patches.PatchStream`.

Each DataLoader worker (and each distributed rank) reads a disjoint shard of the
cube's work units, so a multi-worker loader delivers every patch once per epoch.
Batches are stacked in NumPy by the stream (``batch_size`` here), not collated per
sample by torch: use ``DataLoader(ds, batch_size=None, ...)``. With workers, use
``multiprocessing_context="forkserver"`` (or spawn): forking after Dask's thread
pool ran deadlocks (../shared/STACK.md). :func:`patch_loader` makes the DataLoader
with these settings, persistent workers, and a prefetch that covers one work unit.

A worker reads a whole unit (hundreds of patches) before the batches it gives: with
torch's default ``prefetch_factor=2`` and batches handed out in order, while one worker
reads a unit the others stop after two batches each and wait. Measured on 2 cores
(``benchmarks/bench_batches.py``'s cubes, medians of 20-30 alternating epochs, four
series): 2 workers gave 1.34-1.59x one worker with torch's default, 1.53-1.67x with a
prefetch of a unit's batches (2 workers 6-13 % faster), and ``in_order=False`` another
1-15 %.

Each item a DataLoader hands over costs torch's machinery in both processes (the main
process's request to the worker, the worker's message and its unpickling, a profiler
range): about 0.3 ms a batch, a sixth of a 64-patch batch's cost on 2 cores and, with
two workers, CPU taken from them. :func:`patch_loader`'s workers therefore send a few
consecutive batches in one message (``batches_per_message``, about 256 patches: written
into one slot, unpickled once) and its :class:`PatchLoader` hands them out one by one:
1 worker 34-38k patches/s against 32-34k, 2 workers 59-62k against 52-55k
(``bench_batches.py``'s full cube, standalone epochs, session 17).

The epoch (:meth:`PatchDataset.set_epoch`) is kept in shared memory: persistent workers
hold the copy of the dataset made when they started, and would otherwise give every
epoch the first epoch's shuffle.

Batches cross the process boundary without being copied into fresh shared memory: each
worker writes its batches straight into a small ring of shared-memory slots
(``torch.Tensor.share_memory_``, created once) and sends only the slot's number (the
slot's memory is handed over once per worker, the first time it is used, not once per
epoch: a shared flag array tells the worker which slots the main process has mapped;
the rings of exited workers are unmapped when a new worker is heard). The main process
gives each batch tensors of their own over the slot; when the last of them (and every
view of them) is gone, the slot is marked free in a shared flag array and the worker
reuses it. A batch that is kept (collected in a list, say) is therefore never
overwritten: the worker takes another slot, and past ``max_slots`` it falls back to
fresh tensors. Each worker decodes with one zarr thread and reads no unit ahead
(``worker_threads=1``), as torch runs one intra-op thread per worker: N workers use
about N cores. A worker's share of the stream is
:meth:`~esdc.ml.patches.PatchStream.subshard`, over the cube opened once (not reopened
at each epoch), and the stream keeps its read buffers from epoch to epoch.

With CUDA, ``DataLoader(pin_memory=True)`` and ``tensor.to("cuda", non_blocking=True)``
overlap the host-to-device copy with compute (the training loop of
:mod:`esdc.ml.fit.torch` does so when it trains on CUDA).
"""

from __future__ import annotations

import copy
import os
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from multiprocessing.reduction import ForkingPickler
from typing import Any

import numpy as np
import zarr

from esdc.errors import EsdcError, TrainConfigError
from esdc.ml.patches import Batch, PatchStream

__all__ = ["BatchGroup", "PatchDataset", "PatchLoader", "device_for", "patch_loader"]


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
    batches_per_message : int
        In a DataLoader worker with slots and one reading thread: consecutive batches
        sent in one message (one slot holds them all), received as a
        :class:`BatchGroup`. :func:`patch_loader` chooses it and hands the batches out
        one by one; a plain DataLoader yields the groups. 1 (the default): one batch a
        message, the DataLoader yields batches.

    Yields
    ------
    tuple of torch.Tensor
        ``(x, valid, index)``: float32 ``(B, C, ph, pw)``, bool ``(B, C, ph, pw)``,
        int64 ``(B, 3)`` rows ``(t, y, x)``; plus ``target`` float32 ``(B, K, ph, pw)``
        when the stream has targets. In a worker with ``batches_per_message`` above 1,
        a :class:`BatchGroup` of such tuples instead.
    """

    def __init__(self, stream: PatchStream, batch_size: int = 64, epoch: int = 0,
                 drop_last: bool = False, threads: int = 1, worker_threads: int | None = 1,
                 max_slots: int = 16, batches_per_message: int = 1) -> None:
        super().__init__()
        self.threads = threads
        self.worker_threads = worker_threads
        self.max_slots = max_slots
        self.batches_per_message = batches_per_message
        self._ring: _Ring | None = None
        self._share: tuple[tuple[Any, ...], PatchStream] | None = None  # a worker's stream
        # shared memory: persistent workers hold a copy of this dataset made when they
        # started, and read the epoch from here at each iteration (set_epoch reaches them)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.stream = stream
        self.batch_size = batch_size
        self.epoch = epoch
        self.drop_last = drop_last

    @property
    def epoch(self) -> int:
        """The epoch whose shuffle the next iteration gives (in every worker)."""
        return int(self._epoch)

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s shuffle on the next iteration, in this process and in workers.

        The epoch lives in shared memory, so DataLoader workers that were started earlier
        (``persistent_workers=True``) see it too.
        """
        self.epoch = epoch

    def _message_batches(self, wanted: int) -> int:
        """Batches a worker's message can hold: ``wanted``, or 1 without slots or threads.

        With reading threads the batches of one slot could come out of order.
        """
        return max(1, wanted) if self.threads <= 1 and self.max_slots > 0 else 1

    def __iter__(self) -> Iterator[Any]:
        """Batches of this worker's shard (DataLoader workers split the stream's shard)."""
        info = torch.utils.data.get_worker_info()
        stream = self.stream
        if info is None:  # in the main process: tensors over the stream's fresh arrays
            for b in stream.threaded_batches(self.batch_size, self.epoch, self.drop_last,
                                             threads=self.threads):
                yield _tensors(b)
            return
        # this worker's share of the stream's shard, over the cube opened once (no reopen),
        # kept from epoch to epoch (with its read buffers) by a persistent worker
        key = (info.id, info.num_workers, self.worker_threads, id(stream))
        if self._share is None or self._share[0] != key:
            self._share = (key, stream.subshard(info.id, info.num_workers,
                                                None if self.worker_threads is None else 0))
        stream = self._share[1]
        if self.worker_threads is not None:
            zarr.config.set({"threading.max_workers": self.worker_threads})
        group = self._message_batches(self.batches_per_message)
        if self._ring is None and self.max_slots > 0:
            c, k, rows = len(stream.variables), len(stream.targets), self.batch_size * group
            self._ring = _Ring(self.max_slots, (rows, c, *stream.patch),
                               (rows, k, *stream.patch) if k else None)
        ring = self._ring
        if ring is None:
            for b in stream.threaded_batches(self.batch_size, self.epoch, self.drop_last,
                                             threads=self.threads):
                yield _tensors(b)
            return
        ring.reopen()  # a slot an abandoned epoch left half-filled and unsent
        pending: list[Batch] = []  # batches in the open slot, not sent yet
        for b in stream.threaded_batches(self.batch_size, self.epoch, self.drop_last,
                                         threads=self.threads, out=ring.out):
            if ring.holds(b):
                pending.append(b)
                if len(pending) >= group:
                    yield ring.message(pending, group > 1)
                    pending = []
                continue
            if pending:  # not in a slot (none was free): what came before goes first
                yield ring.message(pending, group > 1)
                pending = []
            yield _tensors(b)
        if pending:
            yield ring.message(pending, group > 1)


#: Patches per worker message that :func:`patch_loader` aims at (``batches_per_message``):
#: 4 batches of 64, the measured gain in the module's docstring.
MESSAGE_PATCHES = 256


def patch_loader(dataset: PatchDataset, num_workers: int = 0, *,
                 prefetch_factor: int | None = None, in_order: bool = True,
                 persistent_workers: bool = True, multiprocessing_context: Any = "forkserver",
                 batches_per_message: int | None = None, **kwargs: Any) -> Any:
    """A ``torch.utils.data.DataLoader`` over ``dataset``, set up for patch batches.

    ``batch_size=None`` (the stream stacks the batches); with workers, the
    ``forkserver`` start method (forking after Dask's threads ran deadlocks), persistent
    workers (they keep the opened cube and their read buffers from epoch to epoch), a
    few consecutive batches sent in one message (``batches_per_message``, handed out one
    by one: :class:`PatchLoader`) and a prefetch of as many messages as one work unit
    holds (:attr:`PatchStream.unit_patches` / ``batch_size`` / ``batches_per_message``,
    at most the worker's shared-memory slots less 4): a worker reads a unit at a time,
    and with torch's default of 2 items in flight the other workers wait while one
    reads (see the module's docstring). ``dataset`` itself is not changed: the loader
    has a shallow copy with ``batches_per_message`` set (it shares the stream and the
    epoch: ``dataset.set_epoch`` reaches the workers).

    Parameters
    ----------
    dataset : PatchDataset
        The batches.
    num_workers : int
        DataLoader worker processes; 0 reads in this process (``dataset.threads``
        reading threads).
    prefetch_factor : int, optional
        Messages in flight per worker; default as above.
    in_order : bool
        Hand out messages in the workers' round-robin order (torch's default; the
        sequence of batches is then the same for the same seed and workers). False
        takes whichever worker's message is ready first: a few percent faster where the
        workers' speeds differ, the order no longer reproducible.
    persistent_workers, multiprocessing_context
        DataLoader's (defaults as above).
    batches_per_message : int, optional
        Batches a worker sends at once (:class:`PatchDataset`); default: as many as
        hold about 256 patches, at most a unit's, 1 where the dataset has reading
        threads or no slots. Torch's work per item (the main process's request, the
        message, its unpickling) is then paid once for several batches.
    **kwargs
        Other DataLoader arguments (``pin_memory``, ``timeout``, ``worker_init_fn``).

    Returns
    -------
    PatchLoader
        A DataLoader that yields what :class:`PatchDataset` yields, batch by batch.

    Raises
    ------
    TrainConfigError
        If ``num_workers`` is negative, or ``prefetch_factor`` or ``batches_per_message``
        below 1.
    """
    if num_workers < 0:
        raise TrainConfigError(f"num_workers={num_workers}: use 0 or more workers.")
    if num_workers == 0:
        return PatchLoader(dataset, batch_size=None, **kwargs)
    unit_batches = -(-dataset.stream.unit_patches // max(1, dataset.batch_size))
    if batches_per_message is None:
        batches_per_message = dataset._message_batches(  # noqa: SLF001 - the same rule
            min(unit_batches, MESSAGE_PATCHES // max(1, dataset.batch_size)))
    if batches_per_message < 1:
        raise TrainConfigError(f"batches_per_message={batches_per_message}: use 1 or more.")
    if prefetch_factor is None:
        unit_messages = -(-unit_batches // batches_per_message)
        slots = dataset.max_slots - 4 if dataset.max_slots > 0 else unit_messages
        prefetch_factor = max(2, min(unit_messages, slots))
    if prefetch_factor < 1:
        raise TrainConfigError(f"prefetch_factor={prefetch_factor}: use 1 or more messages.")
    dataset = copy.copy(dataset)  # the caller's dataset keeps one batch a message
    dataset.batches_per_message = batches_per_message
    return PatchLoader(
        dataset, batch_size=None, num_workers=num_workers, prefetch_factor=prefetch_factor,
        in_order=in_order, persistent_workers=persistent_workers,
        multiprocessing_context=multiprocessing_context, **kwargs)


def _tensors(b: Batch) -> tuple[Any, ...]:
    out = (torch.from_numpy(b.x), torch.from_numpy(b.valid), torch.from_numpy(b.index))
    return out if b.target is None else (*out, torch.from_numpy(b.target))


class _Ring:
    """A DataLoader worker's shared-memory batch slots (see the module's docstring).

    ``flags[i]`` is 1 while slot ``i`` is being filled, in flight or held by the main
    process, 0 once the main process dropped its batches; only the main process clears
    it (and the worker, for a slot it never sent: :meth:`reopen`). ``mapped[i]`` is 1
    while the main process has slot ``i``'s memory (it was sent once); only the main
    process writes it, so the worker sends a slot's memory again only after the main
    process forgot the ring (its worker's next epoch sends numbers only). A slot holds
    the rows of one message: consecutive batches are written into the open slot until
    its message is sent.
    """

    def __init__(self, max_slots: int, x_shape: tuple[int, ...],
                 target_shape: tuple[int, ...] | None) -> None:
        self.token = uuid.uuid4().hex
        self.pid = os.getpid()
        self.flags = torch.zeros(max_slots, dtype=torch.uint8).share_memory_()
        self.mapped = torch.zeros(max_slots, dtype=torch.uint8).share_memory_()
        self._flags, self._mapped = self.flags.numpy(), self.mapped.numpy()
        self.shapes = (x_shape, target_shape)
        self.slots: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self.arrays: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        self.open: int | None = None  # the slot being filled, and its rows handed out
        self.filled = 0
        self.introduced = False
        self._lock = threading.Lock()

    def out(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """``n`` rows of the open slot (or of a free one); None (fresh arrays) if none is free."""
        with self._lock:
            rows = self.shapes[0][0]
            if n > rows:
                return None
            if self.open is None or self.filled + n > rows:
                i = self._free()
                if i is None:
                    return None
                self.open, self.filled = i, 0
            i, start = self.open, self.filled
            self.filled += n
        x, valid, target = self.arrays[i]
        return (x[start:start + n], valid[start:start + n],
                None if target is None else target[start:start + n])

    def _free(self) -> int | None:
        """A free slot, marked taken (a new one while fewer than ``max_slots`` exist)."""
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
            self.arrays.append((slot[0].numpy(), slot[1].numpy(),
                                None if slot[2] is None else slot[2].numpy()))
        else:
            return None
        self._flags[i] = 1
        return i

    def holds(self, b: Batch) -> bool:
        """Whether batch ``b`` lies in the open slot (else it has fresh arrays)."""
        if self.open is None:
            return False
        x = self.arrays[self.open][0]
        start = b.x.__array_interface__["data"][0] - x.__array_interface__["data"][0]
        return 0 <= start < x.nbytes

    def reopen(self) -> None:
        """Free the open slot if nothing of it was sent (an epoch abandoned midway)."""
        with self._lock:
            if self.open is not None:
                self._flags[self.open] = 0
            self.open = None

    def message(self, batches: list[Batch], group: bool) -> Any:
        """What a worker yields for ``batches``, consecutive rows of the open slot.

        The slot is closed: the next batch opens another. ``group``: received as a
        :class:`BatchGroup` (else as one batch's tensors; ``batches`` holds one).
        """
        i = self.open
        assert i is not None
        with self._lock:
            self.open = None
        # the shared flag arrays go with the first message, a slot's memory while the
        # main process has not mapped it: later messages are a slot number and the index
        first = not self.introduced or not self._mapped.any()
        self.introduced = True
        index = (batches[0].index if len(batches) == 1
                 else np.concatenate([b.index for b in batches]))
        return _SlotBatch(self.token, i, tuple(len(b.x) for b in batches), group,
                          (self.flags, self.mapped, self.pid) if first else None,
                          None if self._mapped[i] else self.slots[i], index,
                          batches[0].target is not None)


class BatchGroup(list):  # type: ignore[type-arg]
    """Consecutive batches a DataLoader worker sent in one message (one slot).

    A list of what :class:`PatchDataset` yields, each batch with tensors of its own over
    the slot's rows; the slot is reused once every batch of the group is dropped.
    :func:`patch_loader`'s DataLoader hands the batches out one by one.
    """


class PatchLoader(torch.utils.data.DataLoader):  # type: ignore[misc]
    """``torch.utils.data.DataLoader`` that hands out :class:`BatchGroup` items batch by batch.

    What :func:`patch_loader` returns; any other item passes through as it is.
    """

    def __iter__(self) -> Iterator[Any]:
        return _ungroup(super().__iter__())


def _ungroup(items: Iterator[Any]) -> Iterator[Any]:
    for item in items:
        if type(item) is BatchGroup:
            yield from item
        else:
            yield item


class _SlotBatch:
    """Batches in slot ``slot`` of worker ring ``token``: pickled as the slot's number.

    ``sizes``: the batches' rows, consecutive from the slot's first; ``group``: rebuilt
    as a :class:`BatchGroup` (else as the one batch's tensors).
    """

    __slots__ = ("base", "group", "has_target", "index", "ring", "sizes", "slot", "token")

    def __init__(self, token: str, slot: int, sizes: tuple[int, ...], group: bool, ring: Any,
                 base: Any, index: np.ndarray, has_target: bool) -> None:
        self.token, self.slot, self.sizes, self.group = token, slot, sizes, group
        self.ring, self.base, self.index, self.has_target = ring, base, index, has_target


#: In the main process: ``{ring token: {"flags": array, "mapped": array, "pid": worker,
#: slot: (x, valid, target)}}``, most recently heard ring last. When a new ring is heard,
#: the rings of workers that have exited are forgotten (their slots unmapped); past
#: ``_RINGS_KEPT`` rings the least recently heard is forgotten too (it sends its slots
#: again).
_RINGS: OrderedDict[str, dict[Any, Any]] = OrderedDict()
_RINGS_KEPT = 256


def _reduce_slot(b: _SlotBatch) -> tuple[Any, tuple[Any, ...]]:
    return _rebuild_slot, (b.token, b.slot, b.sizes, b.group, b.ring, b.base, b.index,
                           b.has_target)


def _release(flags: np.ndarray, slot: int, left: list[int]) -> None:
    left[0] -= 1
    if left[0] == 0:
        flags[slot] = 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process of that number
        return True
    return True


def _forget(token: str) -> None:
    ring = _RINGS.pop(token)
    ring["mapped"][:] = 0  # the worker, if alive, sends its slots' memory again


def _ring(token: str, intro: Any) -> dict[Any, Any]:
    """The main process's record of ring ``token`` (created from its first message)."""
    ring = _RINGS.get(token)
    if ring is None:
        if intro is None:
            raise EsdcError("a DataLoader worker sent a batch of a shared-memory ring that "
                            "this process does not know (more than "
                            f"{_RINGS_KEPT} worker rings at once?); use "
                            "PatchDataset(max_slots=0).")
        for old in [t for t, r in _RINGS.items() if not _alive(r["pid"])]:
            _forget(old)
        flags, mapped, pid = intro
        ring = _RINGS[token] = {"flags": flags.numpy(), "mapped": mapped.numpy(), "pid": pid}
        while len(_RINGS) > _RINGS_KEPT:
            _forget(next(iter(_RINGS)))
    else:
        _RINGS.move_to_end(token)
    return ring


def _rebuild_slot(token: str, slot: int, sizes: tuple[int, ...], group: bool, intro: Any,
                  base: Any, index: np.ndarray, has_target: bool) -> Any:
    """In the main process: each batch's own tensors over its rows of the slot."""
    ring = _ring(token, intro)
    if base is not None:
        ring[slot] = tuple(None if t is None else t.numpy() for t in base)
        ring["mapped"][slot] = 1
    arrays = [a for a in ring[slot] if a is not None]
    left = [len(sizes) * len(arrays)]  # the slot is free when the last of these goes
    batches, start = [], 0
    for n in sizes:
        views = [a[start:start + n] for a in arrays]
        for v in views:  # a tensor from_numpy keeps its array: finalised with the last view
            weakref.finalize(v, _release, ring["flags"], slot, left)
        out = (torch.from_numpy(views[0]), torch.from_numpy(views[1]),
               torch.from_numpy(index[start:start + n]))
        batches.append(out if not has_target else (*out, torch.from_numpy(views[2])))
        start += n
    return BatchGroup(batches) if group else batches[0]


ForkingPickler.register(_SlotBatch, _reduce_slot)
