import numpy as np
import pytest

torch = pytest.importorskip("torch")

from esdc.errors import EsdcError  # noqa: E402
from esdc.ml import PatchStream  # noqa: E402
from esdc.ml.torch import PatchDataset, device_for  # noqa: E402


def test_dataloader_two_workers_complete_and_disjoint(cube):
    stream = PatchStream(cube, ["a", "b"], patch=(8, 8), seed=3)
    ds = PatchDataset(stream, batch_size=10)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2,
                                         multiprocessing_context="forkserver")
    seen = [tuple(r) for _, _, idx in loader for r in idx.tolist()]
    assert len(seen) == len(set(seen)) == len(stream)
    x, v, idx = next(iter(torch.utils.data.DataLoader(ds, batch_size=None)))
    assert x.dtype == torch.float32 and x.shape == (10, 2, 8, 8) and v.dtype == torch.bool


def test_device_selection_logic():
    assert device_for("cpu") == "cpu"
    assert device_for("cpu", {"GPU": 1}) == "cpu"  # asked for the CPU: never CUDA
    if torch.cuda.is_available():
        assert device_for("auto", {"GPU": 1}) == "cuda"
        assert device_for("auto", {}) == "cpu"
    else:
        assert device_for("auto", {"GPU": 1}) == "cpu"
        with pytest.raises(EsdcError, match="no CUDA"):
            device_for("cuda")
    # without the worker's resources, "auto" follows what torch sees
    assert device_for("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_unit_patches_is_the_largest_work_unit(cube):
    # chunks (2, 16, 32), patches 8 x 8: a band of 16 rows holds 2 x 8 origins, a time
    # chunk 2 steps; the last time chunk (step 4) holds one step
    assert PatchStream(cube, ["a", "b"], patch=(8, 8)).unit_patches == 2 * 8 * 2
    assert PatchStream(cube, ["a", "b"], patch=(8, 8), time_steps=(4, 5)).unit_patches == 16
    # steps 1 and 2 lie in two time chunks: each unit holds one step
    assert PatchStream(cube, ["a", "b"], patch=(8, 8), time_steps=(1, 3)).unit_patches == 16
    assert PatchStream(cube, ["s"], patch=(8, 8)).unit_patches == 16  # static: one step


def test_patch_loader_prefetches_a_unit_and_delivers_every_patch_once(cube):
    from esdc.errors import TrainConfigError
    from esdc.ml.torch import PatchLoader, patch_loader

    stream = PatchStream(cube, ["a", "b"], patch=(8, 8), seed=5, buffer_size=20)
    ds = PatchDataset(stream, batch_size=4)
    loader = patch_loader(ds, 2)
    # a unit is 32 patches, 8 batches of 4: all 8 in one message (at most 256 patches),
    # one unit's messages in flight per worker, at least 2
    assert isinstance(loader, PatchLoader) and loader.dataset.batches_per_message == 8
    assert ds.batches_per_message == 1  # the caller's dataset is not changed
    assert loader.prefetch_factor == 2 and loader.persistent_workers
    assert loader.batch_size is None and loader.in_order
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        sizes = [len(x) for x, _v, _i in loader]
        assert max(sizes) == 4 and sum(sizes) == len(stream)  # batch by batch
        seen = [tuple(r) for _, _, idx in loader for r in idx.tolist()]
        assert len(seen) == len(set(seen)) == len(stream)
    one = patch_loader(ds, 2, batches_per_message=1)  # 8 batches in flight (16 slots - 4)
    assert one.prefetch_factor == 8 and one.dataset.batches_per_message == 1
    assert patch_loader(ds, 2, batches_per_message=2).prefetch_factor == 4
    unordered = patch_loader(PatchDataset(stream, batch_size=4), 2, in_order=False)
    seen = [tuple(r) for _, _, idx in unordered for r in idx.tolist()]
    assert len(seen) == len(set(seen)) == len(stream) and not unordered.in_order
    few = PatchDataset(stream, batch_size=4, max_slots=6)
    assert patch_loader(few, 2, batches_per_message=1).prefetch_factor == 2
    threaded = patch_loader(PatchDataset(stream, batch_size=4, threads=2), 2)
    assert threaded.dataset.batches_per_message == 1  # reading threads: one a message
    assert patch_loader(PatchDataset(stream, batch_size=64), 2).dataset \
        .batches_per_message == 1  # a unit is one batch
    assert patch_loader(ds, 2, prefetch_factor=3).prefetch_factor == 3
    inline = patch_loader(ds)  # no workers: this process's reading threads
    assert inline.num_workers == 0 and inline.batch_size is None
    assert sum(len(x) for x, _v, _i in inline) == len(stream)
    with pytest.raises(TrainConfigError, match="num_workers=-1"):
        patch_loader(ds, -1)
    with pytest.raises(TrainConfigError, match="prefetch_factor=0"):
        patch_loader(ds, 2, prefetch_factor=0)
    with pytest.raises(TrainConfigError, match="batches_per_message=0"):
        patch_loader(ds, 2, batches_per_message=0)


@pytest.mark.parametrize("workers", [0, 2])
def test_set_epoch_reshuffles_in_persistent_workers(cube, workers):
    """Persistent workers hold the dataset as it was when they started: the epoch is
    shared memory, so set_epoch still changes their shuffle (it did not before)."""
    from esdc.ml.torch import patch_loader

    ds = PatchDataset(PatchStream(cube, ["a", "b"], patch=(8, 8), seed=5, buffer_size=20),
                      batch_size=4)
    loader = patch_loader(ds, workers)
    orders = []
    for epoch in (0, 1, 1, 0):
        ds.set_epoch(epoch)
        orders.append(np.concatenate([i.numpy() for _x, _v, i in loader]))
    assert ds.epoch == 0 and loader.dataset.epoch == 0
    assert not np.array_equal(orders[0], orders[1])  # another epoch, another order
    np.testing.assert_array_equal(orders[1], orders[2])  # the same epoch, the same order
    np.testing.assert_array_equal(orders[0], orders[3])


def test_a_plain_dataloader_yields_the_groups_of_batches(cube):
    from esdc.ml.torch import BatchGroup

    stream = PatchStream(cube, ["a", "b"], patch=(8, 8), seed=5, buffer_size=20)
    loader = torch.utils.data.DataLoader(
        PatchDataset(stream, batch_size=4, batches_per_message=3), batch_size=None,
        num_workers=1, multiprocessing_context="forkserver")
    groups, idx = [], []
    for g in loader:  # each group dropped before the next: its slot is reused
        assert type(g) is BatchGroup
        groups.append([len(x) for x, _v, _i in g])
        idx += [i.numpy().copy() for _x, _v, i in g]
        x, _v, i = g[0]
        assert x.shape[1:] == (2, 8, 8) and i.shape == (len(x), 3)
    assert all(len(g) == 3 for g in groups[:-1]) and 1 <= len(groups[-1]) <= 3
    assert all(n == 4 for g in groups[:-1] for n in g)  # 3 full batches a message
    idx = np.concatenate(idx)
    assert len(np.unique(idx, axis=0)) == len(idx) == len(stream)
