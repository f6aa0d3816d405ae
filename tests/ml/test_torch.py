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
