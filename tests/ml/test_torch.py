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
    from esdc.ml.torch import patch_loader

    stream = PatchStream(cube, ["a", "b"], patch=(8, 8), seed=5, buffer_size=20)
    ds = PatchDataset(stream, batch_size=4)
    loader = patch_loader(ds, 2)
    # a unit is 32 patches: 8 batches of 4 in flight per worker (within 16 slots - 4)
    assert loader.prefetch_factor == 8 and loader.persistent_workers
    assert loader.batch_size is None and loader.in_order
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        seen = [tuple(r) for _, _, idx in loader for r in idx.tolist()]
        assert len(seen) == len(set(seen)) == len(stream)
    unordered = patch_loader(PatchDataset(stream, batch_size=4), 2, in_order=False)
    seen = [tuple(r) for _, _, idx in unordered for r in idx.tolist()]
    assert len(seen) == len(set(seen)) == len(stream) and not unordered.in_order
    assert patch_loader(PatchDataset(stream, batch_size=4, max_slots=6), 2).prefetch_factor == 2
    assert patch_loader(ds, 2, prefetch_factor=3).prefetch_factor == 3
    inline = patch_loader(ds)  # no workers: this process's reading threads
    assert inline.num_workers == 0 and inline.batch_size is None
    assert sum(len(x) for x, _v, _i in inline) == len(stream)
    with pytest.raises(TrainConfigError, match="num_workers=-1"):
        patch_loader(ds, -1)
    with pytest.raises(TrainConfigError, match="prefetch_factor=0"):
        patch_loader(ds, 2, prefetch_factor=0)
