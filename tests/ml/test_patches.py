import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esdc.errors import ChunkDecodeError, EsdcError
from esdc.ml import PatchStream, block_splits
from esdc.ml.stats import cube_statistics, read_statistics, write_statistics
from esdc.storage import open_cube


def _all(stream, epoch=0):
    return [(p.t, p.y, p.x) for p in stream.patches(epoch)]


def test_patch_equals_cube_slice(cube):
    ds = open_cube(cube).load()
    stream = PatchStream(cube, ["a", "s", "b"], patch=(8, 12), normalize=False,
                         fill_value=np.nan, seed=1)
    n = 0
    for p in stream:
        expect = np.stack([ds["a"].values[p.t, p.y:p.y + 8, p.x:p.x + 12],
                           ds["s"].values[p.y:p.y + 8, p.x:p.x + 12],
                           ds["b"].values[p.t, p.y:p.y + 8, p.x:p.x + 12]])
        np.testing.assert_array_equal(p.data, expect)
        np.testing.assert_array_equal(p.valid, ~np.isnan(expect))
        n += 1
    assert n == len(stream) == 5 * (50 // 8) * (70 // 12)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ph=st.integers(1, 20), pw=st.integers(1, 30), oy=st.integers(0, 5), ox=st.integers(0, 5),
       seed=st.integers(0, 2**16), shards=st.integers(1, 4))
def test_epoch_complete_disjoint_and_patches_exact(cube, ph, pw, oy, ox, seed, shards):
    oy, ox = min(oy, ph - 1), min(ox, pw - 1)
    ds = open_cube(cube)
    a = ds["a"].values
    kw = dict(patch=(ph, pw), overlap=(oy, ox), seed=seed, normalize=False, fill_value=np.nan,
              buffer_size=37)
    full = _all(PatchStream(cube, ["a"], **kw))
    assert len(full) == len(set(full)) == len(PatchStream(cube, ["a"], **kw))
    parts = [_all(PatchStream(cube, ["a"], shard=k, num_shards=shards, **kw))
             for k in range(shards)]
    merged = [x for part in parts for x in part]
    assert len(merged) == len(set(merged))  # disjoint
    assert set(merged) == set(full)  # complete
    p = next(iter(PatchStream(cube, ["a"], **kw)))
    np.testing.assert_array_equal(p.data[0], a[p.t, p.y:p.y + ph, p.x:p.x + pw])


def test_same_seed_same_order_and_epochs_differ(cube):
    s1 = PatchStream(cube, ["a", "b"], patch=(8, 8), seed=7)
    s2 = PatchStream(cube, ["a", "b"], patch=(8, 8), seed=7)
    assert _all(s1) == _all(s2)
    assert _all(s1, 0) != _all(s1, 1)
    assert sorted(_all(s1, 0)) == sorted(_all(s1, 1))
    assert _all(PatchStream(cube, ["a"], patch=(8, 8), shuffle=False)) == sorted(
        _all(PatchStream(cube, ["a"], patch=(8, 8), shuffle=False)),
        key=lambda k: (k[0] // 2, k[1] // 16, k[0], k[1], k[2]))


def test_normalisation_from_stored_statistics_and_nan_fill(cube, tmp_path):
    import shutil

    path = tmp_path / "c.zarr"
    shutil.copytree(cube, path)
    ds = open_cube(path)
    stats = cube_statistics(ds, ["a", "b"])
    write_statistics(path, stats)
    assert read_statistics(open_cube(path), ["a", "b"])["a"]["mean"] == stats["a"]["mean"]
    stream = PatchStream(path, ["a", "b"], patch=(10, 10), seed=0)
    xs = np.concatenate([p.data[0][p.valid[0]] for p in stream])
    assert abs(xs.mean()) < 0.05 and abs(xs.std() - 1) < 0.05
    p = next(p for p in stream if not p.valid.all())
    assert np.all(p.data[~p.valid] == 0.0)  # fill value after normalisation
    dropped = PatchStream(path, ["a"], patch=(10, 10), min_valid_fraction=1.0)
    assert all(q.valid.all() for q in dropped)
    assert sum(1 for _ in dropped) < len(dropped)


def test_spatial_splits_disjoint_no_straddle(cube):
    kw = dict(patch=(5, 5), split_block=(10, 14), seed=0, normalize=False)
    sets = {s: set(_all(PatchStream(cube, ["a"], split=s, **kw)))
            for s in ("train", "validation", "test")}
    assert not (sets["train"] & sets["validation"]) and not (sets["train"] & sets["test"])
    labels = block_splits((50, 70), (5, 5), (10, 14), seed=0)
    for split, patches in sets.items():
        want = {"train": 0, "validation": 1, "test": 2}[split]
        for _, y, x in patches:
            assert y // 10 == (y + 4) // 10 and x // 14 == (x + 4) // 14
            assert labels[y // 10, x // 14] == want
    assert sets["train"] and sets["validation"]


def test_batches_shapes(cube):
    stream = PatchStream(cube, ["a", "s"], patch=(8, 8), seed=0)
    batches = list(stream.batches(16))
    x, v, idx, target = batches[0]
    assert x.shape == (16, 2, 8, 8) and v.shape == x.shape and idx.shape == (16, 3)
    assert target is None
    assert sum(len(b.x) for b in batches) == len(stream)


def test_targets_read_alongside_unnormalised(cube):
    ds = open_cube(cube)
    stream = PatchStream(cube, ["a"], patch=(8, 8), targets=["s"], seed=2)
    for b in stream.batches(7):
        for (_, y, x), tgt in zip(b.index, b.target, strict=True):
            np.testing.assert_array_equal(tgt[0], ds["s"].values[y:y + 8, x:x + 8])


@pytest.mark.parametrize("kw, match", [
    (dict(variables=["nope"]), "not in the cube"),
    (dict(patch=(60, 8)), "does not fit the grid"),
    (dict(overlap=(8, 0)), "overlap"),
    (dict(shard=2, num_shards=2), "shard"),
])
def test_bad_input(cube, kw, match):
    args = dict(variables=["a"], patch=(8, 8)) | kw
    with pytest.raises(EsdcError, match=match):
        PatchStream(cube, **args)


@pytest.mark.parametrize("threads", [2, 3])
def test_threaded_batches_complete_deterministic_and_exact(cube, threads):
    """Threads read sub-shards: every patch once, same seed same order, values exact."""
    stream = PatchStream(cube, ["a", "b"], patch=(8, 8), seed=3, shuffle=True, normalize=False,
                         fill_value=np.nan)
    ds = open_cube(cube).load()
    runs = []
    for _ in range(2):
        batches = list(stream.threaded_batches(16, epoch=1, threads=threads))
        idx = np.concatenate([b.index for b in batches])
        assert len(idx) == len(stream) == len(np.unique(idx, axis=0))
        runs.append(idx)
    np.testing.assert_array_equal(runs[0], runs[1])
    # the same patches as the single-threaded epoch, in another order
    single = np.concatenate([b.index for b in stream.batches(16, epoch=1)])
    assert {tuple(r) for r in single} == {tuple(r) for r in runs[0]}
    b = batches[0]
    for i in range(len(b.x)):
        t, y, x = (int(v) for v in b.index[i])
        want = np.stack([ds[v].values[t, y:y + 8, x:x + 8] for v in ("a", "b")])
        np.testing.assert_array_equal(b.x[i], want)


def test_threaded_batches_keep_their_sub_streams_between_epochs(cube):
    """The reading threads' sub-streams (and their buffers) serve the next epoch; they are
    made again when a parameter of the stream changes; epochs equal a fresh stream's."""
    kw = {"patch": (8, 8), "seed": 3, "buffer_size": 24}

    def epoch(stream, e):
        return [b.x for b in stream.threaded_batches(8, epoch=e, threads=2)]

    stream = PatchStream(cube, ["a", "b"], **kw)
    for e in (0, 1, 2):
        got, fresh = epoch(stream, e), epoch(PatchStream(cube, ["a", "b"], **kw), e)
        assert len(got) == len(fresh)
        for a, b in zip(got, fresh, strict=True):
            np.testing.assert_array_equal(a, b)
        if e == 0:
            subs = stream._subs[1]
    assert stream._subs[1] is subs and all(s._spare for s in subs)  # kept, with buffers
    stream.fill_value = -9.0  # the cube's "a" has missing cells
    changed = np.concatenate(epoch(stream, 1))
    assert stream._subs[1] is not subs  # a changed parameter: made again
    assert np.any(changed == -9.0)
    np.testing.assert_array_equal(
        changed, np.concatenate(epoch(PatchStream(cube, ["a", "b"], fill_value=-9.0, **kw), 1)))


def test_threaded_batches_raise_a_reading_error(cube, tmp_path):
    """An error in a reading thread reaches the consumer (no hang, no silent loss)."""
    import shutil

    broken = tmp_path / "broken.zarr"
    shutil.copytree(cube, broken)
    stream = PatchStream(broken, ["a", "b"], patch=(8, 8), seed=0)
    for f in (broken / "a" / "c").rglob("*"):
        if f.is_file():
            f.write_bytes(b"not a chunk")
    with pytest.raises(Exception):  # noqa: B017 - whatever the codec raises
        list(stream.threaded_batches(16, threads=2))


def test_a_damaged_chunk_is_named(cube, tmp_path):
    """Patches are read through esdc's codec pipeline: a damaged chunk is ChunkDecodeError."""
    copy = tmp_path / "cube.zarr"
    shutil.copytree(cube, copy)
    chunk = copy / "b" / "c" / "1" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    stream = PatchStream(str(copy), ["a", "b"], patch=(8, 8), normalize=False)
    with pytest.raises(ChunkDecodeError, match="b/c/1/1/0"):
        for _ in stream.batches(64):
            pass
