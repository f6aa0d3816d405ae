"""Chunk-aligned patch streaming from a cube: the fast data path into ML frameworks.

Patches are *defined* with xbatcher's :class:`xbatcher.generators.BatchSchema`
(input dims, overlap) and *read* chunk-aligned: a work unit is one band of Zarr
chunk rows (all columns) for one time chunk; its variables are read once with
``zarr`` (each chunk decompressed once, plus the ``patch - 1`` rows below the band)
and every patch whose origin lies in the band is cut from memory. Units are
shuffled with a seed and split disjointly across shards (DataLoader workers ×
Dask workers / ranks); patches go through a seeded shuffle buffer. Memory is
bounded by a few units plus the buffer, never by the cube.

The fast path (:mod:`esdc.ml.cutting`, :mod:`esdc.ml.units`): a unit's chunks are
decompressed into reused buffers (chunk or shard files read in the calling thread on a
local cube, one read per shard file, else ``zarr``'s ``out=``), its patches cut from
them chunk by chunk, masked, normalised and NaN-filled per batch, copied once into the
shuffle pool and once out of it (``numpy.take``, into fresh arrays or into buffers the
caller hands in with ``out=``), while threads read and cut the next units
(``units_ahead``, ``read_threads``).

Reading one patch at a time decompresses a whole chunk per patch — that, not
Python, makes plain xbatcher slow (../shared/STACK.md: ~156 patches/s vs ~85,000/s
for whole-chunk reads); ``benchmarks/bench_batches.py`` measures the difference.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr
import zarr

from esdc.errors import TrainConfigError
from esdc.ml.cutting import cut, cut_chunks, read_into, scratch
from esdc.ml.gather import Finish
from esdc.ml.stats import cube_statistics, normalisation, read_statistics
from esdc.ml.units import (
    Batch,
    EpochStart,
    Out,
    Recycler,
    ShufflePool,
    batch_rows,
    concat_batches,
    finish,
    owned,
    put_until,
    read_ahead,
)
from esdc.storage import resolve
from esdc.storage.codecs import checked_reads

__all__ = ["Batch", "Patch", "PatchStream", "block_splits"]

Split = Literal["train", "validation", "test"]


@dataclass(frozen=True)
class Patch:
    """One patch and where it is.

    Attributes
    ----------
    data : numpy.ndarray
        ``(C, ph, pw)`` float32, channels in the order of ``PatchStream.variables``,
        normalised (``(x - mean) / std`` from the cube's statistics) unless disabled;
        invalid cells hold ``fill_value``.
    valid : numpy.ndarray
        ``(C, ph, pw)`` bool, False where the cube is NaN.
    t : int or None
        Time index in the cube (None for a static cube).
    y, x : int
        Row and column index of the patch's upper-left cell in the cube.
    target : numpy.ndarray or None
        ``(K, ph, pw)`` float32 values of ``PatchStream.targets``, not normalised, NaN
        where missing; None without targets.
    """

    data: np.ndarray
    valid: np.ndarray
    t: int | None
    y: int
    x: int
    target: np.ndarray | None = None


def block_splits(shape: tuple[int, int], patch: tuple[int, int], block: tuple[int, int],
                 fractions: Sequence[float] = (0.7, 0.15, 0.15),
                 seed: int = 0) -> np.ndarray:
    """Assign spatial blocks to train / validation / test.

    The grid is cut into blocks of ``block`` cells; blocks are shuffled with ``seed``
    and given to the splits in proportion to ``fractions``. A patch belongs to a
    split only if it lies wholly inside one block, so neighbouring patches never
    straddle splits (spatial autocorrelation; Roberts et al. 2017, Ecography 40,
    913-929, "Cross-validation strategies for data with temporal, spatial,
    hierarchical, or phylogenetic structure").

    Parameters
    ----------
    shape : (int, int)
        Grid ``(ny, nx)`` in cells.
    patch : (int, int)
        Patch ``(ph, pw)`` in cells (used to check that a block holds a patch).
    block : (int, int)
        Block ``(bh, bw)`` in cells, at least the patch size.
    fractions : 3 floats
        Shares of blocks for train, validation, test (normalised to sum 1).
    seed : int
        Random seed.

    Returns
    -------
    numpy.ndarray
        ``(nby, nbx)`` int8 block labels: 0 train, 1 validation, 2 test.

    Raises
    ------
    TrainConfigError
        If a block is smaller than a patch or the fractions are invalid.
    """
    if block[0] < patch[0] or block[1] < patch[1]:
        raise TrainConfigError(f"split block {block} is smaller than the patch {patch}.")
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or np.any(f < 0) or f.sum() <= 0:
        raise TrainConfigError(f"split fractions {list(fractions)} must be 3 non-negative "
                               "numbers.")
    nby, nbx = -(-shape[0] // block[0]), -(-shape[1] // block[1])
    n = nby * nbx
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.round(np.cumsum(f / f.sum()) * n).astype(int)
    labels = np.empty(n, dtype=np.int8)
    labels[order[: bounds[0]]] = 0
    labels[order[bounds[0]: bounds[1]]] = 1
    labels[order[bounds[1]:]] = 2
    return labels.reshape(nby, nbx)


def _usable_cores() -> int:
    """CPU cores this process may run on (its affinity; ``os.cpu_count()`` without one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


@dataclass
class PatchStream:
    """Stream patches of ``variables`` from a Zarr cube, chunk-aligned and shuffled.

    Parameters
    ----------
    cube : str or pathlib.Path
        The cube's Zarr store (built by esdc).
    variables : sequence of str
        Channels; time-varying ``(time, y, x)`` and static ``(y, x)`` variables may be
        mixed (static ones repeat at every time step).
    patch : (int, int)
        Patch size ``(ph, pw)`` in grid cells.
    overlap : (int, int)
        Overlap of neighbouring patches in cells (stride = patch - overlap).
    seed : int
        Seed of the unit order and the shuffle buffer (same seed, same order).
    shuffle : bool
        Shuffle units and patches; ``False`` streams in cube order.
    buffer_size : int
        Patches held in the shuffle buffer.
    normalize : bool
        Normalise with the ``esdc_statistics`` stored in the cube
        (:func:`esdc.ml.stats.write_statistics`); computed on the fly if absent.
    fill_value : float
        Value put where the cube is NaN (after normalisation: 0 = the mean).
    min_valid_fraction : float
        Skip patches with a smaller fraction of valid cells (over all channels).
    split : {"train", "validation", "test"}, optional
        Keep only patches of this spatial split (:func:`block_splits` with
        ``split_block``, ``split_fractions``, ``split_seed``).
    targets : sequence of str
        Variables read alongside as labels (``Patch.target``), never normalised.
    shard, num_shards : int
        This stream reads units ``shard, shard + num_shards, ...`` of the shuffled
        unit list: shards are disjoint and together complete.
    version : str, optional
        The version of a versioned (Icechunk) cube to read: a tag or snapshot id.
    time_steps : (int, int), optional
        Read only the time steps ``start .. stop - 1`` of a time-varying cube (indices
        of ``Patch.t`` and ``Batch.index`` stay the cube's); default: all.
    units_ahead : int
        Work units read and cut ahead by a background thread while the caller draws
        batches from the current one (zarr's decoding and NumPy's copies release the
        GIL); 0 reads in the caller's thread. A DataLoader worker of
        :class:`esdc.ml.torch.PatchDataset` uses 0 (the workers are the parallelism).
    epoch_ahead : bool
        With ``units_ahead > 0``, read the next epoch's first units (one pool's fill) while
        a shuffled epoch drains (:class:`~esdc.ml.units.EpochStart`).
    read_threads : int
        With ``units_ahead > 0``, threads reading units (unit ``k`` by thread ``k %
        read_threads``, each with its own buffers and ``units_ahead`` units ahead), in
        the same order as one: on two cores two readers keep up with the consumer's
        shuffling and normalisation where one could not. Memory: one unit and one read
        buffer more per thread. Default: 2, or 1 where the process may use one core
        (``os.sched_getaffinity``).

    Raises
    ------
    TrainConfigError
        If a variable is missing, the patch is larger than the grid, the variables do
        not share the spatial grid, or another parameter is out of range (a stream's
        parameters are a training config's ``inputs``, ``target``, ``patch`` and
        ``split``).
    """

    cube: str | Path
    variables: Sequence[str]
    patch: tuple[int, int] = (64, 64)
    overlap: tuple[int, int] = (0, 0)
    seed: int = 0
    shuffle: bool = True
    buffer_size: int = 4096
    normalize: bool = True
    fill_value: float = 0.0
    min_valid_fraction: float = 0.0
    split: Split | None = None
    split_block: tuple[int, int] | None = None
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_seed: int = 0
    targets: Sequence[str] = ()
    shard: int = 0
    num_shards: int = 1
    version: str | None = None
    time_steps: tuple[int, int] | None = None
    units_ahead: int = 1
    epoch_ahead: bool = True
    read_threads: int = field(default_factory=lambda: min(2, _usable_cores()))
    _ds: xr.Dataset = field(init=False, repr=False)
    #: read buffers, recycled unit arrays and the pool's spill of a finished epoch, for
    #: the next one
    _spare: list[tuple[list[dict[str, np.ndarray]], Recycler, Batch | None]] = field(
        init=False, repr=False, compare=False, default_factory=list)
    #: the next epoch's first units, read while a shuffled epoch drains (EpochStart)
    _ahead: EpochStart | None = field(init=False, repr=False, compare=False, default=None)
    #: threaded_batches' sub-streams (and the parameters they were made from), kept with
    #: their spare buffers for the next epoch
    _subs: tuple[Any, list[PatchStream]] | None = field(init=False, repr=False,
                                                        compare=False, default=None)

    def __post_init__(self) -> None:
        self.variables = list(self.variables)
        self.targets = list(self.targets)
        target = resolve(self.cube).at(self.version)
        self._ds = target.open()
        missing = [v for v in [*self.variables, *self.targets] if v not in self._ds.data_vars]
        if missing:
            raise TrainConfigError(f"variables {missing} are not in the cube {self.cube}; it "
                                   f"has {sorted(map(str, self._ds.data_vars))}.")
        spatial = {self._ds[v].dims[-2:] for v in [*self.variables, *self.targets]}
        if len(spatial) != 1:
            raise TrainConfigError(f"variables {self.variables} do not share spatial dims: "
                                   f"{spatial}.")
        self.ydim, self.xdim = next(iter(spatial))
        self.ny, self.nx = self._ds.sizes[self.ydim], self._ds.sizes[self.xdim]
        ph, pw = self.patch
        if ph < 1 or pw < 1 or ph > self.ny or pw > self.nx:
            raise TrainConfigError(f"patch {self.patch} does not fit the grid ({self.ny}, "
                                   f"{self.nx}); choose a patch size between 1 and the grid "
                                   "size.")
        if not (0 <= self.overlap[0] < ph and 0 <= self.overlap[1] < pw):
            raise TrainConfigError(f"overlap {self.overlap} must be >= 0 and smaller than the "
                                   "patch.")
        if not 0 <= self.shard < self.num_shards:
            raise TrainConfigError(f"shard {self.shard} is not in 0..{self.num_shards - 1}.")
        self.has_time = any("time" in self._ds[v].dims for v in [*self.variables, *self.targets])
        self.nt = self._ds.sizes["time"] if self.has_time else 1
        t0, t1 = self.time_steps or (0, self.nt)
        if self.has_time and not 0 <= t0 <= t1 <= self.nt:
            raise TrainConfigError(f"time_steps {self.time_steps} are not within the cube's "
                                   f"{self.nt} time steps.")
        self._steps = (t0, t1) if self.has_time else (0, 1)
        # Arrays opened with esdc's codec pipeline: a damaged chunk raises ChunkDecodeError.
        with checked_reads():
            group = zarr.open_group(target.zarr_store(), mode="r")
            self._arrays = {v: group[v] for v in dict.fromkeys([*self.variables,
                                                                *self.targets])}
        # a unit reads whole stored files: shards of a sharded cube (one read each)
        first = self._arrays[self.variables[0]]
        self.band = int((first.shards or first.chunks)[-2])
        tvars = [v for v in [*self.variables, *self.targets] if "time" in self._ds[v].dims]
        tarr = self._arrays[tvars[0]] if tvars else None
        self.tchunk = int((tarr.shards or tarr.chunks)[0]) if tarr is not None else 1
        self._origins = self._patch_origins()
        if self.normalize:
            stats = read_statistics(self._ds, self.variables)
            if stats is None:
                stats = cube_statistics(self._ds, self.variables)
            self._mean, self._scale = normalisation(stats, self.variables)
        else:
            c = len(self.variables)
            self._mean, self._scale = np.zeros(c, "float32"), np.ones(c, "float32")

    def __getstate__(self) -> dict[str, Any]:
        """The stream, pickled (to a DataLoader worker) without its spare read buffers."""
        state = self.__dict__.copy()
        state["_spare"], state["_ahead"], state["_subs"] = [], None, None
        return state

    def subshard(self, index: int, count: int, units_ahead: int | None = None,
                 time_steps: tuple[int, int] | None = None) -> PatchStream:
        """Sub-shard ``index`` of ``count`` of this stream's shard, sharing the opened cube.

        A DataLoader worker or a reading thread uses it: sub-shard ``shard * count +
        index`` of ``num_shards * count``, so the sub-shards of all shards are disjoint
        and together complete. The cube is not opened again (``dataclasses.replace``
        would reopen it, read its metadata and statistics: tens of milliseconds a call).

        Parameters
        ----------
        index, count : int
            Which sub-shard (``0 <= index < count``), of how many; ``count = 1`` gives a
            copy of this stream.
        units_ahead : int, optional
            The copy's ``units_ahead``; None keeps this stream's.
        time_steps : (int, int), optional
            The copy's ``time_steps``, within this stream's; None keeps this stream's.

        Returns
        -------
        PatchStream
            A new stream over the same opened cube, arrays and statistics.

        Raises
        ------
        TrainConfigError
            If ``index`` is not in ``0 .. count - 1``.
        """
        if not 0 <= index < count:
            raise TrainConfigError(f"sub-shard {index} is not in 0..{count - 1}.")
        sub = copy.copy(self)  # without the spare buffers (__getstate__): a stream's own
        sub.shard, sub.num_shards = self.shard * count + index, self.num_shards * count
        if units_ahead is not None:
            sub.units_ahead = units_ahead
        if time_steps is not None and self.has_time:
            sub.time_steps = sub._steps = (int(time_steps[0]), int(time_steps[1]))
        return sub

    @property
    def dataset(self) -> xr.Dataset:
        """The cube, opened lazily (coordinates and attributes of its variables)."""
        return self._ds

    # ------------------------------------------------------------------ geometry
    @property
    def steps(self) -> int:
        """Time steps read (1 for a static stream): patches per epoch = patches x steps."""
        return self._steps[1] - self._steps[0]

    def footprint(self) -> np.ndarray:
        """``(ny, nx)`` bool: the grid cells that this stream's patches cover."""
        mask = np.zeros((self.ny, self.nx), dtype=bool)
        for y0, x0 in self._origins:
            mask[y0:y0 + self.patch[0], x0:x0 + self.patch[1]] = True
        return mask

    def _patch_origins(self) -> np.ndarray:
        """``(N, 2)`` (y0, x0) of every patch of this stream's split in one time step."""
        origins = self.grid_origins()
        if self.split is not None:
            block = self.split_block or (4 * self.patch[0], 4 * self.patch[1])
            labels = block_splits((self.ny, self.nx), self.patch, block, self.split_fractions,
                                  self.split_seed)
            want = {"train": 0, "validation": 1, "test": 2}[self.split]
            by, bx = origins[:, 0] // block[0], origins[:, 1] // block[1]
            inside = ((origins[:, 0] + self.patch[0] - 1) // block[0] == by) & (
                (origins[:, 1] + self.patch[1] - 1) // block[1] == bx)
            origins = origins[inside & (labels[by, bx] == want)]
        return origins

    def grid_origins(self) -> np.ndarray:
        """``(N, 2)`` (y0, x0) of every patch the grid holds in one time step, any split.

        From xbatcher's schema (patch and overlap); a split keeps those wholly inside one
        of its blocks.
        """
        from xbatcher.generators import BatchSchema

        skeleton = xr.Dataset(coords={self.ydim: np.arange(self.ny), self.xdim: np.arange(
            self.nx)})
        skeleton["v"] = xr.DataArray(np.broadcast_to(np.float32(0), (self.ny, self.nx)),
                                     dims=(self.ydim, self.xdim))
        schema = BatchSchema(skeleton, input_dims={self.ydim: self.patch[0],
                                                   self.xdim: self.patch[1]},
                             input_overlap={self.ydim: self.overlap[0],
                                            self.xdim: self.overlap[1]}, batch_dims={})
        sel = [s for batch in schema.selectors.values() for s in batch]
        return np.array([(s[self.ydim].start, s[self.xdim].start) for s in sel],
                        dtype=int).reshape(-1, 2)

    def units(self) -> list[tuple[int, int]]:
        """Work units ``(time chunk index, band index)`` in cube order."""
        bands = np.unique(self._origins[:, 0] // self.band)
        t0, t1 = self._steps
        return [(tc, int(b)) for tc in range(t0 // self.tchunk, -(-t1 // self.tchunk))
                for b in bands]

    def _shard_units(self, epoch: int) -> list[tuple[int, int]]:
        units = self.units()
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(units))
            units = [units[i] for i in order]
        return units[self.shard:: self.num_shards]

    def __len__(self) -> int:
        """Patches per epoch over all shards (before ``min_valid_fraction``)."""
        return len(self._origins) * (self._steps[1] - self._steps[0])

    @property
    def unit_patches(self) -> int:
        """Patches in this stream's largest work unit (one band of rows, one time chunk).

        A stream reads a unit at a time: a reader that waits for one gets this many
        patches at once (what a DataLoader worker's prefetch should cover,
        :func:`esdc.ml.torch.patch_loader`).
        """
        if not len(self._origins):
            return 0
        per_band = np.bincount(self._origins[:, 0] // self.band).max()
        t0, t1 = self._steps  # a unit's steps: its time chunk's, within time_steps
        steps = max((min(t1, (tc + 1) * self.tchunk) - max(t0, tc * self.tchunk)
                     for tc in {tc for tc, _band in self.units()}), default=0)
        return int(per_band) * steps

    # ------------------------------------------------------------------ reading
    def _read(self, names: list[str], times: range, r0: int, r1: int,
              out: np.ndarray | None = None) -> np.ndarray:
        """``(T, C, r1 - r0, nx)`` float32 block of ``names``, read into ``out`` if given."""
        shape = (len(times), len(names), r1 - r0, self.nx)
        block = np.empty(shape, dtype="float32") if out is None else out
        for c, v in enumerate(names):
            if "time" in self._ds[v].dims:
                read_into(self._arrays[v], (slice(times.start, times.stop), slice(r0, r1),
                                            slice(None)), block[:, c])
            else:
                read_into(self._arrays[v], (slice(r0, r1), slice(None)), block[0, c])
                block[1:, c] = block[0, c]
        return block

    def _cut(self, names: list[str], times: range, r0: int, r1: int, ys: np.ndarray,
             xs: np.ndarray, buffers: dict[str, np.ndarray], buffer: str,
             out: np.ndarray | None) -> np.ndarray:
        """``(T * n, C, ph, pw)`` patches of ``names``, chunk by chunk or from a block."""
        if out is None:
            out = np.empty((len(times) * len(ys), len(names), *self.patch), "float32")
        done = cut_chunks([self._arrays[v] for v in names], times if self.has_time else None,
                          r0, ys, xs, self.patch, buffers, out)
        if done is not None:
            return done
        shape = (len(times), len(names), r1 - r0, self.nx)
        block = self._read(names, times, r0, r1, scratch(buffers, buffer, shape, "float32"))
        return cut(block, ys, xs, self.patch, out)

    def _unit(self, tc: int, band: int, buffers: dict[str, np.ndarray] | None = None,
              recycler: Recycler | None = None) -> Batch:
        """Every patch of one unit, raw (``valid`` None), read through reused ``buffers``."""
        buffers = {} if buffers is None else buffers
        mine = self._origins[self._origins[:, 0] // self.band == band]
        r0 = band * self.band
        r1 = min(self.ny, int(mine[:, 0].max()) + self.patch[0])  # no rows no patch needs
        times = range(max(tc * self.tchunk, self._steps[0]),
                      min(self._steps[1], (tc + 1) * self.tchunk))
        ys, xs = mine[:, 0] - r0, mine[:, 1]
        recycler = recycler or Recycler(0)
        n = len(times) * len(mine)
        x = self._cut(self.variables, times, r0, r1, ys, xs, buffers, "x",  # raw: masked,
                      recycler.get((n, len(self.variables), *self.patch), "float32"))
        target = None
        if self.targets:
            target = self._cut(self.targets, times, r0, r1, ys, xs, buffers, "target",
                               recycler.get((n, len(self.targets), *self.patch), "float32"))
        t = np.repeat(np.asarray(times) if self.has_time else np.full(len(times), -1), len(mine))
        index = np.column_stack([t, np.tile(mine, (len(times), 1))]).astype(np.int64)
        if self.min_valid_fraction > 0:
            keep = (~np.isnan(x)).reshape(len(x), -1).mean(axis=1) >= self.min_valid_fraction
            x, index = x[keep], index[keep]
            target = None if target is None else target[keep]
        return Batch(x, None, index, target)  # type: ignore[arg-type]

    def _finish(self, b: Batch) -> Batch:
        """Mask, normalise and NaN-fill a batch of raw patches in place."""
        valid = finish(b.x, b.valid, self._mean, self._scale, self.fill_value,
                       self.normalize)
        return Batch(b.x, valid, b.index, b.target)

    def _units(self, epoch: int, recycler: Recycler | None = None,
               buffers: list[dict[str, np.ndarray]] | None = None,
               ready: dict[Any, Batch] | None = None) -> Iterator[Batch]:
        """The units of ``epoch`` in order, read ahead (``ready``: read already).

        ``buffers``: one dict per reading thread (``read_threads``), grown if short.
        """
        buffers = [] if buffers is None else buffers
        threads = max(1, self.read_threads)
        buffers += [{} for _ in range(threads - len(buffers))]
        ready = {} if ready is None else ready
        return read_ahead(lambda u, i: ready.pop(u, None) or self._unit(*u, buffers[i], recycler),
                          self._shard_units(epoch), depth=self.units_ahead,
                          name=f"esdc-units-{self.shard}", threads=threads)

    def __iter__(self) -> Iterator[Patch]:
        return self.patches(epoch=0)

    def patches(self, epoch: int = 0) -> Iterator[Patch]:
        """Patches of this shard for one epoch, shuffled through the buffer.

        Yields
        ------
        Patch
            Each patch of the shard exactly once per epoch.
        """
        for b in self.batches(256, epoch):
            for i in range(len(b.x)):
                t = int(b.index[i, 0])
                yield Patch(b.x[i], b.valid[i], None if t < 0 else t, int(b.index[i, 1]),
                            int(b.index[i, 2]), None if b.target is None else b.target[i])

    def batches(self, batch_size: int, epoch: int = 0, drop_last: bool = False,
                out: Out | None = None) -> Iterator[Batch]:
        """Stacked batches of this shard for one epoch.

        Units are read whole (``units_ahead`` units ahead, in a thread) and their patches
        pooled in a shuffle buffer of ``buffer_size`` patches (preallocated arrays);
        each batch is a seeded random draw from the pool, whose holes are filled from
        its end. Without shuffling, patches come in unit order. After a complete epoch
        the stream keeps its read buffer and the unit arrays its pool released (as many
        as a pool holds: ``buffer_size`` / :attr:`unit_patches` + 5, the memory the
        epoch used anyway) for its next epoch, which then faults in no fresh pages
        (keeping two, every other epoch of a DataLoader worker ran 15-20 % slower); and
        while the pool drains, the next epoch's first units are read (``epoch_ahead``).

        Parameters
        ----------
        batch_size : int
            Patches per batch.
        epoch : int
            Epoch number (the shuffle of units and patches).
        drop_last : bool
            Drop the last, smaller batch.
        out : callable, optional
            ``out(n)`` returns the ``(x, valid, target)`` arrays (``n`` rows, C order;
            target None without targets) that a batch of ``n`` patches is written into,
            e.g. reused shared-memory buffers; by default each batch has fresh arrays.

        Yields
        ------
        Batch
            ``x`` float32 ``(B, C, ph, pw)``, ``valid``, ``index`` ``(B, 3)``, ``target``.
        """
        if not self.shuffle:
            yield from self._ordered_batches(batch_size, epoch, drop_last, out)
            return
        rng = np.random.default_rng([self.seed, epoch, self.shard, 1])
        ahead, self._ahead = self._ahead, None
        ready = {} if ahead is None else ahead.take(epoch)  # joined: its buffers are free
        # an earlier epoch's read buffer and unit arrays: no fresh pages to fault in
        buffers, recycler, spill = (self._spare.pop() if self._spare else (
            [], Recycler(ShufflePool.units_held(self.buffer_size, self.unit_patches)
                         * (2 if self.targets else 1)), None))  # x (and target) arrays
        pool = ShufflePool(self.buffer_size, recycler, spill, Finish.of(
            self._mean, self._scale, self.fill_value, self.normalize))
        for unit in self._units(epoch, recycler, buffers, ready):
            pool.add(unit)
            while pool.size - batch_size >= self.buffer_size:
                yield pool.draw(rng, batch_size, out)  # finished by the pool
        if self.epoch_ahead and self.units_ahead > 0:
            self._ahead = EpochStart(epoch + 1, lambda u: self._unit(*u, buffers[0], recycler),
                                     self._shard_units(epoch + 1), self.buffer_size + batch_size)
        yield from pool.drain(rng, batch_size, drop_last, out)
        # kept only after a whole epoch: an abandoned one may still be reading into them
        if not self._spare:
            self._spare.append((buffers, recycler, pool.spill))

    def stop_reading_ahead(self) -> None:
        """Stop reading the next epoch's first units (``epoch_ahead``) after the current one.

        For a pause between epochs where something else should have the CPU (a
        validation pass, another loader, a benchmark's other path): the read, started as
        an epoch drains, otherwise runs on into it. The units read so far are kept for the
        next epoch; nothing happens if no read is under way.
        """
        if self._ahead is not None:
            self._ahead.stop()

    def threaded_batches(self, batch_size: int, epoch: int = 0, drop_last: bool = False,
                         threads: int = 2, prefetch: int = 4,
                         out: Out | None = None) -> Iterator[Batch]:
        """Batches of this shard made by ``threads`` threads of this process.

        The shard is split into ``threads`` sub-shards exactly as a DataLoader splits it
        among its workers (sub-shard ``shard * threads + i`` of ``num_shards * threads``),
        each read and shuffled by one thread (chunk decompression and NumPy slicing
        release the GIL), and their batches are taken in turn (round robin), so the
        epoch holds every patch of the shard once and the same seed gives the same
        order. No process boundary: batches are not pickled or copied to shared memory,
        which is what makes DataLoader workers cost more than they give on few cores.
        The sub-shards' streams are kept for the next call with the same ``threads``
        and parameters, with their read buffers and unit arrays (made anew per call
        before, every epoch faulted in fresh pages: 22-27k against 24-28k patches a
        second, full ``bench_batches`` cube, 2 threads on 2 cores).

        Parameters
        ----------
        batch_size, epoch, drop_last, out
            As for :meth:`batches` (``drop_last`` applies per sub-shard; ``out`` is called
            from the reading threads).
        threads : int
            Reading threads (1 is :meth:`batches` itself).
        prefetch : int
            Batches each thread may have ready ahead of the consumer.

        Yields
        ------
        Batch
            As :meth:`batches`.
        """
        if threads <= 1:
            yield from self.batches(batch_size, epoch, drop_last, out)
            return
        key = (threads, *(tuple(v) if isinstance(v := getattr(self, f.name), list) else v
                          for f in dataclasses.fields(self) if f.init))
        if self._subs is None or self._subs[0] != key:  # else kept, with their buffers
            self._subs = key, [self.subshard(i, threads) for i in range(threads)]
            for sub in self._subs[1]:  # no next epoch read ahead: it would go unused
                sub.epoch_ahead, sub.read_threads = False, 1
        subs = self._subs[1]
        queues: list[queue.Queue[Any]] = [queue.Queue(maxsize=prefetch) for _ in subs]
        stop = threading.Event()
        done = object()

        def work(sub: PatchStream, q: queue.Queue[Any]) -> None:
            try:
                for b in sub.batches(batch_size, epoch, drop_last, out):
                    if not put_until(q, b, stop):
                        return
                q.put(done)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                q.put(exc)

        pool = [threading.Thread(target=work, args=(sub, q), daemon=True,
                                 name=f"esdc-patches-{i}") for i, (sub, q) in
                enumerate(zip(subs, queues, strict=True))]
        for t in pool:
            t.start()
        active = list(range(threads))
        try:
            while active:
                for i in list(active):
                    item = queues[i].get()
                    if item is done:
                        active.remove(i)
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        yield item
        finally:
            stop.set()
            for t in pool:
                t.join(timeout=5)

    def _ordered_batches(self, batch_size: int, epoch: int, drop_last: bool,
                         out: Out | None = None) -> Iterator[Batch]:
        """Batches in unit order (``shuffle=False``)."""
        carry: list[Batch] = []
        count = 0
        for unit in self._units(epoch):
            carry.append(unit)
            count += len(unit.x)
            while count >= batch_size:
                merged = concat_batches(carry)
                yield self._finish(owned(batch_rows(merged, slice(0, batch_size)), out))
                rest = batch_rows(merged, slice(batch_size, None))
                carry, count = [rest], len(rest.x)
        if count and not drop_last:
            yield self._finish(owned(concat_batches(carry), out))
