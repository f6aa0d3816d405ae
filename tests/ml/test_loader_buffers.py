"""Reused buffers of the fast loader: no batch ever shows another batch's values.

The stream writes batches into buffers handed in (``out=``), DataLoader workers into a
ring of shared-memory slots; a sharded cube gives the same patches as a plain one.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from esdc.ml import PatchStream


def _by_index(batches) -> dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]]:
    return {tuple(int(v) for v in idx): (np.array(x), np.array(ok))
            for b in batches for idx, x, ok in zip(b[2], b[0], b[1], strict=True)}


def _cube_patch(cube, variables, stream, t, y, x):
    ds = xr.open_zarr(cube)
    ph, pw = stream.patch
    raw = np.stack([ds[v].values[t, y:y + ph, x:x + pw] for v in variables])
    return (raw - stream._mean[:, None, None]) / stream._scale[:, None, None], ~np.isnan(raw)


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_written_into_one_reused_buffer_equal_fresh_batches(cube, shuffle):
    stream = PatchStream(cube, ["a", "b"], patch=(8, 8), seed=5, shuffle=shuffle,
                         buffer_size=40)
    fresh = list(stream.batches(7, epoch=2))  # kept in a list: each has its own arrays
    assert len({id(b.x) for b in fresh}) == len(fresh)
    shape = (7, 2, 8, 8)
    xbuf, vbuf = np.full(shape, 999.0, "float32"), np.zeros(shape, bool)
    calls = []

    def out(n):
        calls.append(n)
        return xbuf[:n], vbuf[:n], None

    reused = []
    for b in stream.batches(7, epoch=2, out=out):
        assert b.x.base is xbuf or b.x is xbuf  # written into the buffer handed in
        reused.append((b.x.copy(), b.valid.copy(), b.index.copy()))
    assert calls and len(reused) == len(fresh)
    for (x, v, idx), f in zip(reused, fresh, strict=True):
        np.testing.assert_array_equal(idx, f.index)
        np.testing.assert_array_equal(x, f.x)  # not a value of an earlier batch
        np.testing.assert_array_equal(v, f.valid)
    # and the fresh batches equal the cube itself
    for (t, y, x0), (x, ok) in list(_by_index(fresh).items())[:25]:
        want, valid = _cube_patch(cube, ["a", "b"], stream, t, y, x0)
        np.testing.assert_array_equal(ok, valid)
        np.testing.assert_allclose(x[ok], want[valid], rtol=1e-6)
        assert np.all(x[~ok] == 0)


def test_shuffle_pool_reuses_rows_without_mixing_patches(cube):
    """A pool smaller than the epoch: freed rows are refilled by later units."""
    stream = PatchStream(cube, ["a", "b"], patch=(8, 8), seed=1, buffer_size=10)
    seen = _by_index(stream.batches(3))
    assert len(seen) == len(stream)
    for (t, y, x0), (x, ok) in list(seen.items())[::7]:
        want, valid = _cube_patch(cube, ["a", "b"], stream, t, y, x0)
        np.testing.assert_array_equal(ok, valid)
        np.testing.assert_allclose(x[ok], want[valid], rtol=1e-6)


def test_sharded_and_plain_cubes_give_the_same_patches(cube, tmp_path):
    ds = xr.open_zarr(cube).load()
    for v in ds.variables.values():
        v.encoding = {}
    sharded = tmp_path / "sharded.zarr"
    enc = {v: {"chunks": (2, 16, 32), "shards": (4, 32, 64)} for v in ("a", "b")}
    ds.to_zarr(sharded, zarr_format=3, encoding=enc, consolidated=True)
    import zarr

    assert zarr.open_array(sharded / "a", mode="r").shards == (4, 32, 64)
    for shuffle in (False, True):
        plain = PatchStream(cube, ["a", "b"], patch=(8, 8), overlap=(2, 3), seed=2,
                            shuffle=shuffle, buffer_size=17)
        shard = PatchStream(sharded, ["a", "b"], patch=(8, 8), overlap=(2, 3), seed=2,
                            shuffle=shuffle, buffer_size=17)
        assert shard.band == 32 and plain.band == 16  # a unit reads whole shards
        a, b = _by_index(plain.batches(9)), _by_index(shard.batches(9))
        assert len(a) == len(plain) and a.keys() == b.keys()
        for k, (x, ok) in a.items():
            np.testing.assert_array_equal(x, b[k][0])
            np.testing.assert_array_equal(ok, b[k][1])


torch = pytest.importorskip("torch")


def _loader(stream, workers, **kw):
    from esdc.ml.torch import PatchDataset, PatchLoader

    return PatchLoader(PatchDataset(stream, batch_size=4, **kw), batch_size=None,
                       num_workers=workers, multiprocessing_context="forkserver")


@pytest.mark.parametrize("group", [1, 3])
def test_worker_slots_kept_by_the_consumer_are_never_overwritten(cube, group):
    """Batches of 2 workers kept in a list equal a fresh in-process read (one batch or
    three a message)."""
    stream = PatchStream(cube, ["a", "b"], patch=(8, 8), seed=3, buffer_size=20)
    # more batches than slots: fallback to fresh tensors
    kept = list(_loader(stream, 2, max_slots=4, batches_per_message=group))
    assert all(len(b) == 3 for b in kept)
    got = _by_index([(x.numpy(), v.numpy(), i.numpy()) for x, v, i in kept])
    want = _by_index(b for b in PatchStream(cube, ["a", "b"], patch=(8, 8),
                                           shuffle=False).batches(16))
    assert len(got) == len(stream) == len(want)
    for k, (x, ok) in want.items():
        np.testing.assert_array_equal(got[k][0], x)
        np.testing.assert_array_equal(got[k][1], ok)


@pytest.mark.parametrize("group", [1, 3])
def test_worker_slots_are_reused_once_dropped_and_values_stay_right(cube, group):
    stream = PatchStream(cube, ["a", "b"], patch=(8, 8), seed=3, buffer_size=20,
                         targets=["s"])
    want = _by_index(b for b in PatchStream(cube, ["a", "b"], patch=(8, 8),
                                           shuffle=False).batches(16))
    addresses, n = set(), 0
    for x, v, idx, target in _loader(stream, 2, batches_per_message=group):
        addresses.add(x.data_ptr())
        assert target.shape == (len(x), 1, 8, 8)
        for row, xi, vi in zip(idx.tolist(), x.numpy(), v.numpy(), strict=True):
            np.testing.assert_array_equal(xi, want[tuple(row)][0])
            np.testing.assert_array_equal(vi, want[tuple(row)][1])
            np.testing.assert_array_equal(target.numpy()[0, 0, 0], np.arange(
                row[2], row[2] + 8, dtype="float32"))  # static s = column number
            break
        n += len(x)
        del x, v, idx, target  # the slot is free again
    assert n == len(stream)
    assert len(addresses) <= 2 * 16 * group and len(addresses) < n // 4  # slots reused


def test_shuffle_pool_bounds_held_units_and_gives_every_patch_once():
    from esdc.ml.units import Batch, Recycler, ShufflePool

    rng = np.random.default_rng(0)
    recycler = Recycler()
    pool = ShufflePool(buffer_size=30, recycler=recycler)
    out, held = [], []
    for u in range(40):  # units of 12 patches whose value is their number
        ids = np.arange(u * 12, u * 12 + 12)
        x = np.broadcast_to(ids[:, None, None, None], (12, 1, 2, 2)).astype("float32")
        pool.add(Batch(x, None, np.column_stack([ids, ids, ids]), None))
        while pool.size - 8 >= 30:
            b = pool.draw(rng, 8)
            out.append(b)
            held.append(len(pool._units))
    out += list(pool.drain(rng, 8, False))
    x = np.concatenate([b.x for b in out])
    idx = np.concatenate([b.index for b in out])
    assert sorted(idx[:, 0]) == list(range(480))  # every patch once
    np.testing.assert_array_equal(x[:, 0, 0, 0], idx[:, 0])  # with its own values
    assert max(held) <= pool.max_units + 1  # the spill bounds what is held


def test_shuffle_pool_spills_a_patch_at_most_once(monkeypatch):
    """Units left nearly empty are released by moving their last patches to the spill;
    no patch is copied there twice, and the spill holds at most one unit's worth."""
    from esdc.ml.units import Batch, ShufflePool

    pool = ShufflePool(buffer_size=40)
    spilled: list[np.ndarray] = []
    spill = ShufflePool._spill

    def watch(self):
        u = min(self._left, key=lambda k: (self._left[k], k))
        moving = self._units[u].index[self._row[self._unit == u], 0]
        ok = spill(self)
        if ok:
            spilled.append(moving)
        return ok

    monkeypatch.setattr(ShufflePool, "_spill", watch)
    rng, out = np.random.default_rng(1), []
    for u in range(60):
        ids = np.arange(u * 10, u * 10 + 10)
        pool.add(Batch(ids.astype("float32")[:, None, None, None], None,
                       np.column_stack([ids, ids, ids]), None))
        while pool.size - 5 >= 40:
            out.append(pool.draw(rng, 5))
        if pool.SPILL in pool._units:
            assert len(pool._units[pool.SPILL].x) <= 10  # one unit's worth
    out += list(pool.drain(rng, 5, False))
    idx = np.concatenate([b.index for b in out])[:, 0]
    assert sorted(idx) == list(range(600))
    np.testing.assert_array_equal(np.concatenate([b.x for b in out])[:, 0, 0, 0], idx)
    moved = np.concatenate(spilled)
    assert len(moved) and len(np.unique(moved)) == len(moved)  # each moved at most once
    assert len(moved) < 600 // 2  # the stragglers only


def _slot_mappings() -> set[str]:
    """The main process's mappings of the workers' torch shared memory (``/proc/self/maps``
    lines; not this process's own segments, such as the dataset's shared epoch)."""
    own = f"/torch_{__import__('os').getpid()}_"
    with open("/proc/self/maps") as f:
        return {" ".join(line.split()[:1] + line.split()[5:6]) for line in f
                if "/torch_" in line and ".so" not in line and own not in line}


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="Linux only")
@pytest.mark.parametrize("persistent", [True, False])
def test_worker_slots_are_mapped_once_not_once_per_epoch(cube, persistent):
    """Persistent workers send a slot's memory once: later epochs send slot numbers only,
    the main process keeps the same mappings; rings of exited workers are let go."""
    stream = PatchStream(cube, ["a", "b"], patch=(8, 8), seed=3, buffer_size=20)
    loader = _loader(stream, 2)
    loader = torch.utils.data.DataLoader(loader.dataset, batch_size=None, num_workers=2,
                                         multiprocessing_context="forkserver",
                                         persistent_workers=persistent)
    seen, ptrs = [], []
    for epoch in range(3):
        loader.dataset.set_epoch(epoch)
        idx, addresses = [], set()
        for x, _v, i in loader:
            addresses.add(x.data_ptr())
            idx.append(i.numpy())
        assert len(np.unique(np.concatenate(idx), axis=0)) == len(stream)  # every patch
        seen.append(_slot_mappings())
        ptrs.append(addresses)
    if persistent:
        # nothing remapped (a worker may add slots, up to max_slots, when it runs ahead)
        assert seen[0] and seen[0] <= seen[1] <= seen[2]
        assert all(len(p) <= 2 * 16 for p in ptrs)  # batches lie in the slots
    else:  # each epoch's workers are new: the exited workers' slots are unmapped
        names = [{m.split()[1] for m in maps} for maps in seen]
        assert names[2] and not names[2] & names[0]
        assert len(seen[2]) <= 2 * (2 * 16 + 2)  # 2 workers' slots (x, valid) and flags


def test_subshards_share_the_opened_cube_and_split_it_like_replace(cube):
    from dataclasses import replace

    from esdc.errors import TrainConfigError

    stream = PatchStream(cube, ["a", "b"], patch=(8, 8), seed=6, buffer_size=15,
                         shard=1, num_shards=2)
    subs = [stream.subshard(i, 3, units_ahead=0) for i in range(3)]
    assert all(s.dataset is stream.dataset and s.units_ahead == 0 for s in subs)
    assert stream.units_ahead == 1 and stream.shard == 1  # the stream is unchanged
    got = [list(s.batches(5, epoch=1)) for s in subs]
    for i, batches in enumerate(got):  # the same patches as a reopened stream's shard
        want = list(replace(stream, shard=1 * 3 + i, num_shards=6).batches(5, epoch=1))
        assert len(batches) == len(want)
        for b, w in zip(batches, want, strict=True):
            np.testing.assert_array_equal(b.index, w.index)
            np.testing.assert_array_equal(b.x, w.x)
    other = PatchStream(cube, ["a", "b"], patch=(8, 8), seed=6, buffer_size=15, shard=0,
                        num_shards=2)
    got += [list(other.subshard(i, 3).batches(5, epoch=1)) for i in range(3)]
    idx = np.concatenate([b.index for batches in got for b in batches])
    whole = np.concatenate([b.index for b in replace(stream, shard=0, num_shards=1)
                            .batches(5, epoch=1)])
    assert len(idx) == len(np.unique(idx, axis=0))  # disjoint ...
    assert {tuple(r) for r in idx} == {tuple(r) for r in whole}  # ... and complete
    assert len(idx) == len(stream)
    with pytest.raises(TrainConfigError, match="sub-shard 3 is not in 0..2"):
        stream.subshard(3, 3)


def _epochs_equal_fresh(stream, cube, kw, epochs) -> None:
    """Each of ``epochs`` of ``stream``, in turn, equals that epoch of a fresh stream."""
    for epoch in epochs:
        fresh = list(PatchStream(cube, ["a", "b"], **kw).batches(4, epoch=epoch))
        got = list(stream.batches(4, epoch=epoch))
        assert len(got) == len(fresh)
        for b, f in zip(got, fresh, strict=True):
            for name in ("x", "valid", "index", "target"):
                np.testing.assert_array_equal(getattr(b, name), getattr(f, name))


def test_buffers_kept_between_epochs_never_leak_values(cube):
    """A stream reuses its read buffers epoch after epoch (an abandoned epoch's are not
    reused): every epoch equals the same epoch of a fresh stream."""
    kw = {"patch": (8, 8), "seed": 2, "buffer_size": 12, "targets": ["s"]}
    stream = PatchStream(cube, ["a", "b"], **kw)
    it = stream.batches(4, epoch=0)
    next(it)  # abandoned after one batch
    del it
    import pickle

    size = len(pickle.dumps(stream))
    _epochs_equal_fresh(stream, cube, kw, (1, 2, 1))
    # the buffers kept for the next epoch are not sent to a DataLoader worker
    assert len(pickle.dumps(stream)) == size


def test_the_pools_spill_is_kept_between_epochs(cube):
    """The shuffle pool's spill arrays of one epoch are the next epoch's (no fresh pages
    to fault in), and never leak values: each epoch equals a fresh stream's."""
    kw = {"patch": (4, 4), "seed": 3, "buffer_size": 100, "targets": ["s"]}
    stream = PatchStream(cube, ["a", "b"], **kw)
    _epochs_equal_fresh(stream, cube, kw, (0, 1))  # epoch 1 grows the spill it was given
    spill = stream._spare[0][2]
    assert spill is not None  # the pool spilled
    _epochs_equal_fresh(stream, cube, kw, (2, 3))
    assert stream._spare[0][2].x is spill.x  # the same arrays, epoch after epoch


def test_chunks_read_in_this_thread_equal_zarrs_reads(cube, tmp_path):
    """Chunk files decoded directly (Zstd and Blosc, edge chunks, a missing chunk; shard
    files with edge shards, a missing shard and empty inner chunks) give what zarr gives."""
    import shutil

    import zarr

    from esdc.ml.cutting import read_into
    from esdc.recipe import CompressorSpec
    from esdc.storage import encoding
    from esdc.storage.chunkfiles import chunk_reader

    copy = tmp_path / "copy.zarr"
    shutil.copytree(cube, copy)
    (copy / "b" / "c" / "1" / "2" / "0").unlink()  # never written: the fill value
    ds = xr.open_zarr(cube).load()
    for v in ds.variables.values():
        v.encoding = {}
    blosc = tmp_path / "blosc.zarr"  # Blosc zstd + shuffle, as esdc writes cubes
    ds[["a", "b"]].to_zarr(blosc, zarr_format=3, consolidated=False, encoding=encoding(
        ds[["a", "b"]], {"time": 2, "lat": 16, "lon": 32}, CompressorSpec()))
    sharded = tmp_path / "sharded.zarr"  # shards of 2 x 2 x 2 chunks, edges partial
    part = ds[["a", "b"]].copy()
    part["b"][:, 32:, :] = np.nan  # whole inner chunks of the fill value: left empty
    part.to_zarr(sharded, zarr_format=3, consolidated=False, encoding=encoding(
        part, {"time": 2, "lat": 16, "lon": 32}, CompressorSpec(),
        shards={"time": 4, "lat": 32, "lon": 64}))
    (sharded / "a" / "c" / "1" / "0" / "1").unlink()  # a whole shard never written
    rng = np.random.default_rng(0)
    cases = [(copy, "a"), (copy, "b"), (copy, "s"), (blosc, "a"), (blosc, "b"),
             (sharded, "a"), (sharded, "b")]
    for path, name in cases:
        arr = zarr.open_array(path / name, mode="r")
        assert chunk_reader(arr) is not None  # read here, not by zarr
        for _ in range(12):
            sel = []
            for n in arr.shape:
                a = int(rng.integers(0, n))
                sel.append(slice(a, int(rng.integers(a + 1, n + 1))))
            want = arr[tuple(sel)]
            got = np.full(want.shape, 7.0, arr.dtype)
            read_into(arr, tuple(sel), got)
            np.testing.assert_array_equal(got, want)
        whole = np.empty(arr.shape, arr.dtype)
        read_into(arr, tuple(slice(None) for _ in arr.shape), whole)
        np.testing.assert_array_equal(whole, arr[...])
    assert np.isnan(zarr.open_array(copy / "b", mode="r")[2:4, 32:48, 0:32]).all()
    assert np.isnan(zarr.open_array(sharded / "a", mode="r")[4:5, 0:32, 64:70]).all()


def test_damaged_shard_index_names_the_shard(cube, tmp_path):
    """A shard file whose index fails its CRC-32C, or that is cut short, raises
    ChunkDecodeError naming the shard, from the direct read."""
    import zarr

    from esdc.errors import ChunkDecodeError
    from esdc.ml.cutting import read_into
    from esdc.recipe import CompressorSpec
    from esdc.storage import encoding

    ds = xr.open_zarr(cube).load()[["a"]]
    for v in ds.variables.values():
        v.encoding = {}
    path = tmp_path / "sharded.zarr"
    ds.to_zarr(path, zarr_format=3, consolidated=False, encoding=encoding(
        ds, {"time": 2, "lat": 16, "lon": 32}, CompressorSpec(), shards={"time": 2, "lat": 32,
                                                                     "lon": 64}))
    shard = path / "a" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # inside the index: its checksum no longer matches
    shard.write_bytes(bytes(data))
    arr = zarr.open_array(path / "a", mode="r")
    out = np.empty((2, 16, 32), "float32")
    with pytest.raises(ChunkDecodeError, match="c/0/0/0") as err:
        read_into(arr, (slice(0, 2), slice(0, 16), slice(0, 32)), out)
    assert "CRC-32C" in str(err.value)
    shard.write_bytes(bytes(data[:20]))  # truncated: no room for the index
    with pytest.raises(ChunkDecodeError, match="c/0/0/0"):
        read_into(arr, (slice(0, 2), slice(0, 16), slice(0, 32)), out)


def test_chunk_by_chunk_cut_equals_the_block_cut(cube, tmp_path):
    """Patches cut chunk by chunk (each chunk decompressed in place; of a sharded cube,
    each shard file read once per unit) equal those cut from the unit's assembled block:
    time and static channels, NaNs; a patch across a chunk boundary makes the chunk path
    decline (the caller then reads the block)."""
    import zarr

    from esdc.ml.cutting import cut, cut_chunks, read_into
    from esdc.recipe import CompressorSpec
    from esdc.storage import encoding

    ds = xr.open_zarr(cube).load()
    for v in ds.variables.values():
        v.encoding = {}
    sharded = tmp_path / "sharded.zarr"
    ds[["a", "s", "b"]].to_zarr(sharded, zarr_format=3, consolidated=False, encoding=encoding(
        ds[["a", "s", "b"]], {"time": 2, "lat": 16, "lon": 32}, CompressorSpec(),
        shards={"time": 2, "lat": 32, "lon": 64}))
    for path in (cube, sharded):
        arrays = [zarr.open_array(path / v, mode="r") for v in ("a", "s", "b")]
        times, r0, r1 = range(0, 2), 0, 32  # one time chunk, two chunk rows; NaNs in a
        ys, xs = (g.ravel() for g in np.meshgrid(np.arange(0, 32, 8), np.arange(0, 57, 8),
                                                 indexing="ij"))
        block = np.empty((2, 3, r1 - r0, 70), "float32")
        for c, a in enumerate(arrays):
            if a.ndim == 3:
                read_into(a, (slice(0, 2), slice(r0, r1), slice(None)), block[:, c])
            else:
                read_into(a, (slice(r0, r1), slice(None)), block[0, c])
                block[1, c] = block[0, c]
        want = cut(block, ys, xs, (8, 8))
        assert np.isnan(want).any() and not np.isnan(want).all()
        got = np.full_like(want, 7.0)
        assert cut_chunks(arrays, times, r0, ys, xs, (8, 8), {}, got) is got
        np.testing.assert_array_equal(got, want)
        across = np.full_like(want, 7.0)
        assert cut_chunks(arrays, times, r0, ys, xs + 4, (8, 8), {}, across) is None
        assert (across == 7.0).all()


def test_cut_equals_a_patch_by_patch_copy():
    """``cut`` (one strided copy for a regular grid of patches, row by row otherwise)
    writes each patch where a plain per-patch copy puts it: grids with overlap, a chunk's
    grid at spaced positions of a larger unit, and patches left out by a split."""
    from esdc.ml.cutting import cut

    rng = np.random.default_rng(5)
    block = rng.normal(size=(3, 2, 40, 56)).astype("float32")  # (T, C, rows, cols)
    ph, pw = 8, 6

    def naive(ys, xs, at, total):
        out = np.full((3 * total, 2, ph, pw), np.nan, "float32")
        for y, x, a in zip(ys, xs, at, strict=True):
            for t in range(3):
                out[t * total + a] = block[t, :, y:y + ph, x:x + pw]
        return out

    gy, gx = np.meshgrid(np.arange(0, 33, 4), np.arange(0, 51, 5), indexing="ij")
    ys, xs = gy.ravel(), gx.ravel()  # overlapping grid, 9 x 11
    cases = [(ys, xs, np.arange(len(ys)), len(ys)),  # a whole unit
             (ys, xs, ((np.arange(9) * 30)[:, None] + np.arange(11) + 4).ravel(), 270),
             (ys[::2], xs[::2], np.arange(0, len(ys), 2), len(ys)),  # a split's holes
             (ys[:15], xs[:15], np.arange(15), 15),  # a grid's last row cut short
             (ys[:1], xs[:1], np.array([3]), 4)]
    for y, x, at, total in cases:
        want = naive(y, x, at, total)
        got = np.full_like(want, np.nan)
        assert cut(block, y, x, (ph, pw), got, at=at, total=total) is got
        np.testing.assert_array_equal(got, want)
    # a strided (transposed) block, as cut_chunks hands it
    chunked = np.ascontiguousarray(block.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    np.testing.assert_array_equal(cut(chunked, ys, xs, (ph, pw)), cut(block, ys, xs, (ph, pw)))


def test_finish_masks_normalises_and_fills_like_numpy():
    """``finish`` (in place: the compiled kernel for C-contiguous float32, NumPy's ufuncs
    for a strided batch) gives what plain NumPy gives: ``valid = ~isnan(x)``,
    ``(x - mean) / scale`` per channel, the fill value in missing cells (``+0.0`` for 0)."""
    from esdc.ml.units import finish

    rng = np.random.default_rng(2)
    raw = rng.normal(3.0, 2.0, size=(70, 3, 16, 16)).astype("float32")  # > 256 KB
    raw[rng.random(raw.shape) < 0.3] = np.nan
    mean, scale = np.float32([1.0, -2.0, 0.5]), np.float32([2.0, 4.0, 0.25])
    for fill, normalize, strided in [(0.0, True, False), (-9.0, True, False),
                                     (np.nan, False, False), (0.0, True, True)]:
        x = raw.copy() if not strided else np.asfortranarray(raw)
        valid = finish(x, None, mean, scale, fill, normalize)
        ok = ~np.isnan(raw)
        want = (raw - mean[:, None, None]) / scale[:, None, None] if normalize else raw
        want = np.where(ok, want, np.float32(fill))
        np.testing.assert_array_equal(valid, ok)
        np.testing.assert_array_equal(x, want)
        if fill == 0.0:
            assert not np.signbit(x[~ok]).any()  # +0.0, not -0.0


def _numpy_finished(raw, mean, scale, fill, normalize):
    ok = ~np.isnan(raw)
    want = (raw - mean[:, None, None]) / scale[:, None, None] if normalize else raw
    return np.where(ok, want, np.float32(fill)).astype("float32"), ok


@pytest.mark.parametrize(("fill", "normalize"), [(0.0, True), (-0.0, True), (-9.0, True),
                                                 (np.nan, False), (0.0, False)])
def test_gather_finish_equals_take_then_numpy_bit_for_bit(fill, normalize):
    """The compiled one-pass kernel gives the bits of ``take`` followed by NumPy's
    ``(x - mean) / scale`` and fill (``-0.0`` and NaN fills kept as they are), writes
    only its rows of the batch, and ``valid`` is ``~isnan``."""
    from esdc.ml.gather import gather_finish

    rng = np.random.default_rng(4)
    src = rng.normal(3.0, 2.0, size=(40, 3, 8, 8)).astype("float32")
    src[rng.random(src.shape) < 0.25] = np.nan
    mean, scale = np.float32([1.0, -2.0, 0.3]), np.float32([2.0, 3.0, 0.7])
    rows = np.array([39, 0, 7, 7, 12])  # any order, repeats
    x = np.full((9, 3, 8, 8), 123.0, "float32")
    valid = np.zeros(x.shape, bool)
    gather_finish(src, rows, x, valid, 3, mean, scale, fill, normalize)
    want, ok = _numpy_finished(src[rows], mean, scale, fill, normalize)
    np.testing.assert_array_equal(x[3:8].view(np.int32), want.view(np.int32))
    np.testing.assert_array_equal(valid[3:8], ok)
    assert (x[:3] == 123.0).all() and (x[8:] == 123.0).all() and not valid[:3].any()


def test_gather_finish_rejects_what_it_cannot_take():
    """Rows outside the source or the batch raise IndexError; float64 or strided arrays
    ValueError (the pool then takes NumPy's path)."""
    from esdc.ml.gather import gather_finish

    src = np.zeros((4, 1, 2, 2), "float32")
    x, valid = np.zeros((3, 1, 2, 2), "float32"), np.zeros((3, 1, 2, 2), bool)
    args = (np.zeros(1, "float32"), np.ones(1, "float32"), 0.0)
    with pytest.raises(IndexError, match="source"):
        gather_finish(src, np.array([4]), x, valid, 0, *args)
    with pytest.raises(IndexError, match="source"):
        gather_finish(src, np.array([-1]), x, valid, 0, *args)
    with pytest.raises(IndexError, match="batch"):
        gather_finish(src, np.array([0, 1]), x, valid, 2, *args)
    with pytest.raises(ValueError, match="float32"):
        gather_finish(src.astype("float64"), np.array([0]), x, valid, 0, *args)
    with pytest.raises(ValueError, match="contiguous"):
        gather_finish(src, np.array([0]), np.asfortranarray(x), valid, 0, *args)


def test_kernel_compiles_without_a_cache_where_none_can_be_written(monkeypatch):
    """Where Numba finds no writable cache location (it raises RuntimeError for
    ``cache=True``), the kernel is compiled in memory and gives the same results."""
    import numba

    from esdc.ml import gather

    njit, asked = numba.njit, []

    def no_cache(*args, **kwargs):
        asked.append(kwargs.get("cache", False))
        if kwargs.get("cache"):
            raise RuntimeError("cannot cache function: no locator available")
        return njit(*args, **kwargs)

    monkeypatch.setattr(gather, "_compiled", [])
    monkeypatch.setattr(numba, "njit", no_cache)
    src = np.arange(2 * 1 * 2 * 2, dtype="float32").reshape(2, 1, 2, 2)
    src[1, 0, 0, 0] = np.nan
    x, valid = np.empty((2, 1, 2, 2), "float32"), np.empty((2, 1, 2, 2), bool)
    gather.gather_finish(src, np.array([1, 0]), x, valid, 0, np.float32([1.0]),
                         np.float32([2.0]), -1.0)
    assert asked == [True, False]
    want, ok = _numpy_finished(src[[1, 0]], np.float32([1.0]), np.float32([2.0]), -1.0, True)
    np.testing.assert_array_equal(x, want)
    np.testing.assert_array_equal(valid, ok)


@pytest.mark.parametrize("strided", [False, True])
def test_pool_that_finishes_equals_raw_draws_finished_by_numpy(strided, monkeypatch):
    """A pool given a ``Finish`` hands out the batches a raw pool hands out with the same
    seed, finished (gathered in one pass by the kernel, or, where a unit's array is
    strided, by ``take`` and NumPy), through draws, spills and the drain."""
    import esdc.ml.units
    from esdc.ml.gather import Finish, gather_flat
    from esdc.ml.units import Batch, ShufflePool

    kernel_calls = []
    monkeypatch.setattr(esdc.ml.units, "gather_flat",
                        lambda *a: kernel_calls.append(1) or gather_flat(*a))
    mean, scale = np.float32([0.5, 2.0]), np.float32([1.5, 0.25])
    fin = Finish.of(mean, scale, 0.0, True)
    raw_pool, pool = ShufflePool(buffer_size=30), ShufflePool(buffer_size=30, finish=fin)
    rng_a, rng_b, gen = np.random.default_rng(8), np.random.default_rng(8), np.random.default_rng(9)
    got, want = [], []
    for u in range(25):
        x = gen.normal(size=(12, 2, 4, 4)).astype("float32")
        x[gen.random(x.shape) < 0.2] = np.nan
        if strided and u % 3 == 0:
            x = np.asfortranarray(x)
        ids = np.arange(u * 12, u * 12 + 12)
        index = np.column_stack([ids, ids, ids])
        raw_pool.add(Batch(x.copy(), None, index, None))
        pool.add(Batch(x, None, index, None))
        while pool.size - 7 >= 30:
            want.append(raw_pool.draw(rng_a, 7))
            got.append(pool.draw(rng_b, 7))
    want += list(raw_pool.drain(rng_a, 7, False))
    got += list(pool.drain(rng_b, 7, False))
    assert pool.spill is not None  # the stragglers were spilled and drawn from there
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.index, w.index)
        wx, ok = _numpy_finished(w.x, mean, scale, 0.0, True)
        np.testing.assert_array_equal(g.x.view(np.int32), wx.view(np.int32))
        np.testing.assert_array_equal(g.valid, ok)
    assert len(kernel_calls) >= len(got)  # the kernel did the batches of contiguous units


def test_next_epoch_read_while_an_epoch_drains(cube, monkeypatch):
    """While a shuffled epoch drains its pool, the next epoch's first units (one pool's
    fill) are read in a thread that then ends; that epoch equals a fresh stream's. Asking
    for another epoch discards them; ``epoch_ahead=False`` and threaded sub-streams (made
    per call) read nothing ahead."""
    kw = {"patch": (8, 8), "seed": 3, "buffer_size": 20, "targets": ["s"]}
    stream = PatchStream(cube, ["a", "b"], **kw)
    list(stream.batches(4, epoch=0))
    ahead = stream._ahead
    assert ahead is not None and ahead.epoch == 1
    ahead._thread.join(timeout=30)
    assert not ahead._thread.is_alive()  # it ends once one pool's fill is read
    assert 24 <= sum(len(b.x) for b in ahead._ready.values()) < len(stream)
    _epochs_equal_fresh(stream, cube, kw, (1, 2, 4))  # 1, 2 read ahead; 4 after 3 was
    list(stream.batches(4, epoch=5))
    stream.stop_reading_ahead()  # returns once the read (of epoch 6) stopped
    assert stream._ahead is not None and not stream._ahead._thread.is_alive()
    _epochs_equal_fresh(stream, cube, kw, (6,))  # what it read is used
    stream.stop_reading_ahead()  # again: nothing under way
    off = PatchStream(cube, ["a", "b"], epoch_ahead=False, **kw)
    list(off.batches(4, epoch=0))
    assert off._ahead is None
    import esdc.ml.patches
    from esdc.ml.units import EpochStart

    made = []
    monkeypatch.setattr(esdc.ml.patches, "EpochStart",
                        lambda *a, **k: made.append(a[0]) or EpochStart(*a, **k))
    assert len(list(stream.threaded_batches(4, epoch=0, threads=2))) > 0
    assert made == []  # the sub-streams read no next epoch
    list(stream.batches(4, epoch=5))
    assert made == [6]


def test_asking_for_the_epoch_stops_its_early_read_after_the_current_unit():
    """``EpochStart.take`` stops the thread after the unit it is reading (the stream's
    reading threads read the rest), rather than waiting for a whole pool's fill."""
    import threading

    from esdc.ml.units import Batch, EpochStart

    started, release = threading.Event(), threading.Event()

    def produce(u):
        if u == 1:
            started.set()
            release.wait(30)
        return Batch(np.zeros((10, 1, 2, 2), "float32"), None, np.zeros((10, 3), int), None)

    ahead = EpochStart(3, produce, list(range(50)), patches=400)
    assert started.wait(30)
    got = []
    taker = threading.Thread(target=lambda: got.append(ahead.take(3)))
    taker.start()
    while not ahead._stop.is_set():
        threading.Event().wait(0.001)
    release.set()
    taker.join(30)
    assert sorted(got[0]) == [0, 1]  # unit 1 finished, no unit begun after the ask
    assert not ahead._thread.is_alive()


def test_reading_threads_give_the_same_epochs_as_one(cube):
    """Units read by several threads come in the order one thread reads them: the same
    seed gives the same batches, values and valid masks, epoch after epoch."""
    kw = {"patch": (8, 8), "seed": 7, "buffer_size": 24, "targets": ["s"]}
    one = PatchStream(cube, ["a", "b"], read_threads=1, **kw)
    three = PatchStream(cube, ["a", "b"], read_threads=3, **kw)
    for epoch in (0, 1, 2):  # 1 and 2 start from units read while the last drained
        a, b = list(one.batches(5, epoch=epoch)), list(three.batches(5, epoch=epoch))
        assert len(a) == len(b) and sum(len(x.x) for x in a) == len(one)
        for p, q in zip(a, b, strict=True):
            for u, v in zip(p, q, strict=True):
                np.testing.assert_array_equal(u, v)
    assert len(three._spare[0][0]) == 3  # each thread kept its own read buffers


def test_the_default_reading_threads_follow_the_usable_cores(cube, monkeypatch):
    import os

    def threads(**kw):
        return PatchStream(cube, ["a", "b"], patch=(8, 8), **kw).read_threads

    assert threads() == min(2, len(os.sched_getaffinity(0)))
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert threads() == 1  # one core: one reader
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)))
    assert threads() == 2
    assert threads(read_threads=3) == 3


def test_recycler_hands_out_the_newest_array_big_enough_and_keeps_smaller_ones():
    from esdc.ml.units import Recycler

    r = Recycler(keep=3)
    big, small = np.zeros(100, "float32"), np.zeros(10, "float32")
    r.give(big)
    r.give(small)
    got = r.get((5, 10), "float32")  # the small one is skipped, not dropped
    assert got.shape == (5, 10) and np.shares_memory(got, big)
    assert np.shares_memory(r.get((10,), "float32"), small)
    assert r.get((1,), "float32") is None
    for _ in range(5):
        r.give(np.zeros(4, "float32"))
    assert sum(r.get((4,), "float32") is not None for _ in range(5)) == 3  # keep=3


def test_a_worker_stream_reuses_its_pools_unit_arrays_in_the_next_epoch(cube):
    """As in a DataLoader worker (no reading ahead): the second epoch cuts its units into
    the first epoch's arrays, so it faults in no fresh pages (with two kept, every other
    epoch did)."""
    stream = PatchStream(cube, ["a", "b"], patch=(8, 8), seed=1, buffer_size=70,
                         units_ahead=0, epoch_ahead=False, time_steps=(0, 4))
    assert stream.unit_patches == 32  # every unit (two steps); a pool holds up to 3 + 4
    # units: 8 arrays kept
    list(stream.batches(4, epoch=0))
    kept = {id(a) for a in stream._spare[0][1]._bin}
    assert 2 < len(kept) <= 8
    list(stream.batches(4, epoch=1))
    assert {id(a) for a in stream._spare[0][1]._bin} == kept
