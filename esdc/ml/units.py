"""The shuffle pool, masks and reading ahead: the machinery under PatchStream.

:class:`esdc.ml.patches.PatchStream` reads a unit into reused buffers and cuts its
patches (:mod:`esdc.ml.cutting`) into contiguous ``(N, C, ph, pw)`` arrays, pools them
for shuffling and reads the next units ahead in threads. The shuffle pool holds the
units' arrays; a batch's rows are gathered per unit and masked, normalised and NaN-filled
in the same pass (:mod:`esdc.ml.gather`; :func:`finish` where the kernel does not apply),
written into fresh arrays or into buffers the caller hands in (shared-memory slots of a
DataLoader worker, :mod:`esdc.ml.torch`).
Reading ahead (:func:`read_ahead`, :class:`EpochStart`) decodes the next units in threads
while the caller draws from this one: decompression and NumPy's copies release the GIL.
"""
from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, TypeVar

import numpy as np

from esdc.ml.gather import Finish, applies, flat, gather_flat, takes

__all__ = ["Batch", "EpochStart", "Out", "Recycler", "ShufflePool", "batch_rows", "concat_batches",
           "finish", "owned", "put_until", "read_ahead"]

T = TypeVar("T")
R = TypeVar("R")

#: ``out(n)``: destination ``(x, valid, target)`` arrays of ``n`` rows for one batch (target
#: None without targets), or None for fresh arrays.
Out = Callable[[int], "tuple[np.ndarray, np.ndarray, np.ndarray | None] | None"]


class Batch(NamedTuple):
    """A stacked batch of patches.

    ``x`` float32 ``(B, C, ph, pw)``, ``valid`` bool like ``x``, ``index`` int64
    ``(B, 3)`` rows ``(t, y, x)`` (t = -1 if static), ``target`` float32
    ``(B, K, ph, pw)`` or None.
    """

    x: np.ndarray
    valid: np.ndarray
    index: np.ndarray
    target: np.ndarray | None


def finish(x: np.ndarray, valid: np.ndarray | None, mean: np.ndarray, scale: np.ndarray,
           fill: float, normalize: bool = True) -> np.ndarray:
    """Mask, normalise and fill a batch in place.

    Float32 C-contiguous batches take one pass of the compiled kernel
    (:func:`esdc.ml.gather.gather_finish`, the batch its own source); others NumPy's
    ufuncs. Both give the same values, bit for bit.

    Parameters
    ----------
    x : numpy.ndarray
        ``(B, C, ph, pw)`` cube values (NaN where missing); overwritten with
        ``(x - mean) / scale`` per channel, NaN cells set to ``fill``.
    valid : numpy.ndarray, optional
        ``(B, C, ph, pw)`` bool written with ``~isnan(x)``; None: a fresh array.
    mean, scale : numpy.ndarray
        ``(C,)`` float32.
    fill : float
        The value of missing cells after normalisation.
    normalize : bool
        False leaves the values as they are (NaN cells are still filled).

    Returns
    -------
    numpy.ndarray
        ``valid``.
    """
    if valid is None:
        valid = np.empty(x.shape, dtype=bool)
    if applies(x, x, valid):
        xf = flat(x)
        gather_flat(xf, np.arange(len(x)), xf, flat(valid), 0,
                    Finish.of(mean, scale, fill, normalize))
        return valid
    nan = np.isnan(x)
    np.logical_not(nan, out=valid)
    if normalize:  # channel by channel with scalars: twice as fast as a broadcast (1, C, 1, 1)
        for c in range(x.shape[1]):
            xc = x[:, c]
            np.subtract(xc, mean[c], out=xc)
            np.divide(xc, scale[c], out=xc)
    np.copyto(x, np.asarray(fill, dtype=x.dtype), where=nan)
    return valid


class Recycler:
    """Unit arrays that the pool released, handed to the next unit to cut into.

    Reusing them spares the allocation and the first-touch page faults of a fresh
    array per unit (tens of MB). Thread-safe (the reading thread takes, the consumer
    gives); keeps at most ``keep`` arrays (the oldest go first).
    """

    def __init__(self, keep: int = 2) -> None:
        self._bin: collections.deque[np.ndarray] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()

    def give(self, arr: np.ndarray | None) -> None:
        """Recycle ``arr`` (no one may read it any more)."""
        if arr is None:
            return
        owner = arr if arr.base is None else arr.base
        if isinstance(owner, np.ndarray) and owner.flags.c_contiguous:
            with self._lock:
                self._bin.append(owner)

    def get(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray | None:
        """A recycled ``shape`` array of ``dtype`` (old values), or None if none is big enough.

        The most recently given array that is big enough; smaller ones (a target's
        arrays, say) stay for a smaller request.
        """
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        with self._lock:
            for i in range(len(self._bin) - 1, -1, -1):
                if self._bin[i].nbytes >= size:
                    owner = self._bin[i]
                    del self._bin[i]
                    return owner.reshape(-1).view(np.uint8)[:size].view(dtype).reshape(shape)
        return None


class ShufflePool:
    """Patches held for shuffling: the units' own arrays, referenced, not copied.

    A unit's patches stay in the arrays it was cut into; the pool keeps the list of
    ``(unit, row)`` of the patches not yet drawn, and a batch is one gather per unit it
    draws from (the kernel, or ``numpy.take``), written into consecutive rows of the
    batch (a batch's rows are grouped by unit; which patches it holds is the seeded
    random draw). A unit is released when its last patch is drawn. Drawn uniformly, a
    unit empties slowly (about half of what is left goes with each unit added), so when
    more than ``max_units`` units are held, the patches left in the emptiest one move to
    the pool's spill arrays (slots reused as they are drawn, at most one unit's worth) and
    that unit is released: a patch is copied into the spill at most once, and memory
    stays bounded by about ``max_units + 1`` units.

    Parameters
    ----------
    buffer_size : int
        Patches kept in the pool before a batch is drawn.
    recycler : Recycler, optional
        Where the arrays of released units go.
    spill : Batch, optional
        An earlier pool's :attr:`spill` (of the same stream, emptied): its arrays are
        reused, so the spill's pages are not faulted in again each epoch.
    finish : esdc.ml.gather.Finish, optional
        Batches come out finished (masked, normalised, NaN-filled as :func:`finish`
        does): each unit's patches gathered and finished in one pass of the compiled
        kernel (:func:`esdc.ml.gather.gather_finish`). None: raw patches, ``valid`` not
        written.
    """

    #: the unit id of the spill arrays
    SPILL = -1

    def __init__(self, buffer_size: int, recycler: Recycler | None = None,
                 spill: Batch | None = None, finish: Finish | None = None) -> None:
        self.buffer_size = buffer_size
        self.recycler = recycler
        self.finish = finish
        self._units: dict[int, Batch] = {}  # arrays of None stay None
        self._flat: dict[int, np.ndarray] = {}  # x of the units the kernel takes, flat
        self._left: dict[int, int] = {}  # patches left per unit (not the spill)
        self._free = np.empty(0, dtype=np.intp)  # free slots of the spill arrays
        if spill is not None:
            self._hold(self.SPILL, spill)
            self._free = np.arange(len(spill.x))
        self._ids = 0
        self._unit = np.empty(0, dtype=np.intp)  # per pooled patch: its unit ...
        self._row = np.empty(0, dtype=np.intp)  # ... and its row there
        self._unit_size = 1

    @property
    def size(self) -> int:
        """Patches in the pool."""
        return len(self._unit)

    @property
    def spill(self) -> Batch | None:
        """The spill arrays (None before the first spill); garbage once drawn."""
        return self._units.get(self.SPILL)

    def add(self, unit: Batch) -> None:
        """Hold a unit's patches (its arrays, referenced)."""
        n = len(unit.x)
        if n == 0:
            return
        self._unit_size = max(self._unit_size, n)
        uid = self._ids
        self._ids += 1
        self._hold(uid, unit)
        self._left[uid] = n
        self._unit = np.concatenate([self._unit, np.full(n, uid)])
        self._row = np.concatenate([self._row, np.arange(n)])
        while len(self._left) > self.max_units and self._spill():
            pass

    def _hold(self, uid: int, unit: Batch) -> None:
        self._units[uid] = unit
        if takes(unit.x):
            self._flat[uid] = flat(unit.x)
        else:
            self._flat.pop(uid, None)

    @property
    def max_units(self) -> int:
        """Units held at most (besides the spill) before the emptiest is spilled."""
        return self.units_held(self.buffer_size, self._unit_size) - 1

    @staticmethod
    def units_held(buffer_size: int, unit_size: int) -> int:
        """Unit arrays a pool of ``buffer_size`` patches holds at most, its spill included.

        ``ceil(buffer_size / unit_size) + 4`` units (:attr:`max_units`) and the spill (at
        most one unit's worth): what a stream keeps for its next epoch (:class:`Recycler`).
        """
        return -(-buffer_size // max(1, unit_size)) + 5

    def _spill(self) -> bool:
        """Move the patches left in the emptiest unit to the spill; False if they do not fit."""
        u = min(self._left, key=lambda k: (self._left[k], k))
        n = self._left[u]
        if len(self._free) < n and not self._grow_spill(n):
            return False  # the spill is full: hold one more unit
        where = np.flatnonzero(self._unit == u)
        slots, self._free = self._free[-n:], self._free[:-n]
        spill, rows = self._units[self.SPILL], self._row[where]
        for src, into in zip(self._units[u], spill, strict=True):
            if src is not None:
                into[slots] = src[rows]
        self._unit[where], self._row[where] = self.SPILL, slots
        self._release(u)
        return True

    def _grow_spill(self, n: int) -> bool:
        """Make room for ``n`` more patches in the spill (at most one unit's worth)."""
        old = self._units.get(self.SPILL)
        cap = 0 if old is None else len(old[0])
        new_cap = min(self._unit_size, max(2 * cap, cap + n - len(self._free)))
        if new_cap - cap < n - len(self._free):
            return False
        ref = next(a for k, a in self._units.items() if k != self.SPILL)
        arrays = Batch(*(None if a is None else np.empty((new_cap, *a.shape[1:]), a.dtype)
                         for a in ref))
        if old is not None:
            for a, b in zip(old, arrays, strict=True):
                if a is not None:
                    b[:cap] = a
        self._hold(self.SPILL, arrays)
        self._free = np.concatenate([self._free, np.arange(cap, new_cap)])
        return True

    def _release(self, u: int) -> None:
        unit = self._units.pop(u)
        self._flat.pop(u, None)
        del self._left[u]
        if self.recycler is not None:
            self.recycler.give(unit.x)  # (a unit's valid is None: masks are made per batch)
            self.recycler.give(unit.target)

    def _take(self, units: np.ndarray, rows: np.ndarray, out: Out | None) -> Batch:
        """The patches ``(units, rows)`` as a batch (into ``out``'s arrays if given)."""
        order = np.lexsort((rows, units))
        units, rows = units[order], rows[order]
        n = len(rows)
        dest = out(n) if out is not None else None
        like = next(iter(self._units.values()))
        into = _destination(like, n, dest)
        fin = self.finish
        if fin is not None and into.valid is None:
            into = into._replace(valid=np.empty(into.x.shape, dtype=bool))
        bounds = np.flatnonzero(np.diff(units)) + 1
        starts, segment_units = [0, *bounds], [int(units[s0]) for s0 in [0, *bounds]]
        fused = (fin is not None and all(u in self._flat for u in segment_units)
                 and applies(self._units[segment_units[0]].x, into.x, into.valid))
        if fused:
            xf, vf = flat(into.x), flat(into.valid)
        for s0, s1, u in zip(starts, [*bounds, n], segment_units, strict=True):
            r = rows[s0:s1]
            for i, (src, dst) in enumerate(zip(self._units[u], into, strict=True)):
                if src is None:
                    continue
                if i == 0 and fused:  # x: gathered and finished in one pass
                    gather_flat(self._flat[u], r, xf, vf, s0, fin)
                else:
                    np.take(src, r, axis=0, out=dst[s0:s1], mode="clip")
            if u == self.SPILL:
                self._free = np.concatenate([self._free, r])
                continue
            self._left[u] -= s1 - s0
            if not self._left[u]:
                self._release(u)
        if fin is not None and not fused:
            finish(into.x, into.valid, fin.mean, fin.scale, fin.fill, fin.normalize)
        return into

    def draw(self, rng: np.random.Generator, batch_size: int, out: Out | None = None) -> Batch:
        """A seeded random batch of raw patches; they leave the pool."""
        m = self.size
        pick = np.sort(rng.choice(m, batch_size, replace=False))
        units, rows = self._unit[pick], self._row[pick]
        end = m - batch_size
        holes = pick[pick < end]  # positions in the list, filled from its end
        taken = np.zeros(batch_size, bool)
        taken[pick[pick >= end] - end] = True
        fillers = end + np.flatnonzero(~taken)
        self._unit[holes], self._row[holes] = self._unit[fillers], self._row[fillers]
        self._unit, self._row = self._unit[:end], self._row[:end]
        return self._take(units, rows, out)

    def drain(self, rng: np.random.Generator, batch_size: int, drop_last: bool,
              out: Out | None = None) -> Iterator[Batch]:
        """The rest of the pool in a seeded random order, ``batch_size`` patches at a time."""
        if not self.size:
            return
        order = rng.permutation(self.size)
        units, rows = self._unit[order], self._row[order]
        self._unit, self._row = self._unit[:0], self._row[:0]
        for s0 in range(0, len(order), batch_size):
            if len(order) - s0 < batch_size and drop_last:
                break
            yield self._take(units[s0:s0 + batch_size], rows[s0:s0 + batch_size], out)


class EpochStart:
    """The first units of a stream's next epoch, read in a thread while an epoch drains.

    A shuffled epoch ends by drawing the last ``buffer_size`` patches from its pool with
    no unit left to read, and the next one starts by filling its pool before its first
    batch: the reading threads are idle in the first phase and the consumer in the
    second. The thread starts when this is made and reads units in the next epoch's
    order until they hold ``patches`` patches (one pool's fill) or the stream asks for
    the epoch (:meth:`take`: it stops after the unit it is reading, and the stream's
    reading threads read the rest), then ends: nothing outlives it, and the units read
    are held (at most one pool of memory more, at the turn of the epoch) until the
    stream asks for an epoch.

    Parameters
    ----------
    epoch : int
        The epoch whose first units these are.
    produce : callable
        ``produce(unit) -> Batch``: one unit read (in the thread).
    units : list
        The epoch's units, in its order.
    patches : int
        Read units until they hold this many patches.
    """

    def __init__(self, epoch: int, produce: Callable[[Any], Batch], units: list[Any],
                 patches: int) -> None:
        self.epoch = epoch
        self._ready: dict[Any, Batch] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(produce, units, patches),
                                        daemon=True, name=f"esdc-epoch-{epoch}-start")
        self._thread.start()

    def _read(self, produce: Callable[[Any], Batch], units: list[Any], patches: int) -> None:
        n = 0
        try:
            for u in units:
                if n >= patches or self._stop.is_set():
                    return
                self._ready[u] = b = produce(u)
                n += len(b.x)
        except Exception:  # noqa: BLE001 - the epoch reads that unit again and raises there
            return

    def stop(self) -> None:
        """Stop reading after the current unit and wait for the thread.

        The units read so far stay for :meth:`take`.
        """
        self._stop.set()
        self._thread.join()

    def take(self, epoch: int) -> dict[Any, Batch]:
        """``{unit: Batch}`` read for ``epoch`` (none for another), the thread ended.

        The thread stops after the unit it is reading (:meth:`stop`): the stream's reading
        threads read the rest, where the consumer, done draining, would otherwise wait for
        one thread to read a whole pool's fill.
        """
        self.stop()
        ready, self._ready = self._ready, {}
        return ready if epoch == self.epoch else {}


def concat_batches(parts: list[Batch]) -> Batch:
    """One batch of the rows of ``parts`` in order (``parts[0]`` itself if alone).

    Each array of a part has its patches on axis 0 (``x`` ``(B, C, ph, pw)``, ``index``
    ``(B, 3)``); ``None`` arrays stay ``None``. Raises ``ValueError`` (NumPy) where the
    parts' other axes differ.
    """
    if len(parts) == 1:
        return parts[0]
    return Batch(*(None if parts[0][i] is None else np.concatenate([p[i] for p in parts])
                   for i in range(4)))


def batch_rows(b: Batch, sel: slice) -> Batch:
    """Rows ``sel`` (axis 0: patches) of every array of ``b``, as views; no copy."""
    return Batch(*(None if a is None else a[sel] for a in b))


def _destination(like: Batch, n: int,
                 dest: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None) -> Batch:
    """Arrays for ``n`` patches shaped like ``like``'s (None where ``like`` has None).

    ``dest``'s ``(x, valid, target)`` where given (``index`` always fresh; ``valid`` even
    where ``like``'s is None: it is written later), else fresh ones.
    """

    def fresh(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.empty((n, *a.shape[1:]), a.dtype)

    if dest is None:
        return Batch(*(fresh(a) for a in like))  # type: ignore[arg-type]
    return Batch(dest[0], dest[1], fresh(like.index),  # type: ignore[arg-type]
                 None if like.target is None else dest[2])


def owned(b: Batch, out: Out | None) -> Batch:
    """Batch ``b`` with fresh arrays, or copied into ``out``'s.

    ``out(n)`` gives ``(x, valid, target)`` arrays of ``n`` rows, the shapes of ``b``'s
    (``x`` float32 ``(n, C, ph, pw)``); ``index`` ``(n, 3)`` is ``b``'s own.
    """
    dest = out(len(b.x)) if out is not None else None
    if dest is None:  # a batch owns its arrays (not a view of a unit's, which is recycled)
        return Batch(*(None if a is None else np.array(a) for a in b))
    into = _destination(b, len(b.x), dest)
    for arr, to in zip((b.x, b.valid, b.target), (into.x, into.valid, into.target),
                       strict=True):
        if arr is not None:
            np.copyto(to, arr)
    return Batch(into.x, into.valid, b.index, into.target)


def put_until(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Put ``item`` on ``q``, waiting while it is full; False if ``stop`` is set first."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def read_ahead(produce: Callable[[T, int], R], items: Iterable[T], depth: int = 1,
               name: str = "esdc-read-ahead", threads: int = 1) -> Iterator[R]:
    """``produce(item, i)`` for each item, computed ``depth`` items ahead in threads.

    With ``threads`` threads, item ``k`` is produced by thread ``i = k % threads`` (each
    up to ``depth`` items ahead of the consumer) and the results are yielded in the order
    of ``items``: the same sequence as one thread gives, made by several cores.

    Parameters
    ----------
    produce : callable
        ``produce(item, i)``, run in thread ``i`` (its NumPy and zarr work releases the
        GIL); ``i`` picks that thread's own buffers.
    items : iterable
        Its inputs, in order.
    depth : int
        Results each thread holds ready ahead of the consumer; 0 runs ``produce(item,
        0)`` in the caller's thread.
    name : str
        The threads' name (``-i`` appended for more than one).
    threads : int
        Producing threads (at least 1).

    Yields
    ------
    object
        ``produce(item, i)`` in the order of ``items``.

    Raises
    ------
    Exception
        What ``produce`` raised, in the consumer, at the item where it happened.
    """
    if depth < 1:
        for item in items:
            yield produce(item, 0)
        return
    threads = max(1, threads)
    todo = list(items)
    queues: list[queue.Queue[Any]] = [queue.Queue(maxsize=depth) for _ in range(threads)]
    stop = threading.Event()

    def work(i: int) -> None:
        try:
            for item in todo[i::threads]:
                if not put_until(queues[i], (produce(item, i),), stop):
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            put_until(queues[i], exc, stop)

    pool = [threading.Thread(target=work, args=(i,), daemon=True,
                             name=name if threads == 1 else f"{name}-{i}")
            for i in range(threads)]
    for t in pool:
        t.start()
    try:
        for k in range(len(todo)):
            got = queues[k % threads].get()
            if isinstance(got, BaseException):
                raise got
            yield got[0]
    finally:
        stop.set()
        for t in pool:
            t.join(timeout=5)
