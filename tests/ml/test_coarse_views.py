"""Multi-scale views (``augment.coarse``): a tile paired with its surroundings, coarsened."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from esdc.errors import TrainConfigError
from esdc.ml.config import TrainConfig

torch = pytest.importorskip("torch")


def _block_means(x: np.ndarray, oy: int, ox: int, win: int, size: int) -> np.ndarray:
    """``(C, size, size)`` block means of the ``win``-cell window of ``x`` at ``(oy, ox)``."""
    w = x[:, oy:oy + win, ox:ox + win]
    f = win // size
    return w.reshape(x.shape[0], size, f, size, f).mean(axis=(2, 4))


def test_coarse_window_is_a_window_averaged_in_blocks():
    from esdc.ml.augment import coarse_window

    x = torch.randn(5, 2, 12, 12)
    out = coarse_window(x, (8, 8), (4, 4), torch.Generator().manual_seed(1))
    assert out.shape == (5, 2, 4, 4)
    for b in range(5):
        xb = x[b].numpy()
        hits = [(oy, ox) for oy in range(5) for ox in range(5)
                if np.allclose(out[b].numpy(), _block_means(xb, oy, ox, 8, 4), atol=1e-6)]
        assert hits, "each coarse view is the block mean of one 8-cell window"
    with pytest.raises(ValueError, match="smaller than the view"):
        coarse_window(x, (4, 4), (8, 8), torch.Generator())


def test_view_pairs_are_a_crop_and_a_coarse_window_around_it():
    from esdc.ml.augment import Views

    x = torch.randn(6, 3, 16, 16)
    views = Views(crop=(8, 8), flip_rotate=False, channel_drop=0.0, noise=0.0,
                  coarse=(16, 16))
    first, second = views.pair(x, torch.Generator().manual_seed(0))
    assert first.shape == second.shape == (6, 3, 8, 8)
    # the coarse view of a whole 16-cell patch is its 2 x 2 block means
    for b in range(6):
        np.testing.assert_allclose(second[b].numpy(), _block_means(x[b].numpy(), 0, 0, 16, 8),
                                   atol=1e-6)
    # without coarse, both views are crops drawn independently
    plain = Views(crop=(8, 8), flip_rotate=False, channel_drop=0.0, noise=0.0)
    a, b = plain.pair(x, torch.Generator().manual_seed(0))
    assert a.shape == b.shape == (6, 3, 8, 8) and not torch.equal(a, b)


def _cfg(**augment) -> TrainConfig:
    return TrainConfig.from_dict(dict(
        name="t_coarse", framework="torch", task="embedding", inputs=["a", "b"],
        model={"kind": "vicreg", "dim": 8, "width": 4, "expander": 32}, patch=[16, 16],
        split={"block": [32, 32], "fractions": [0.6, 0.2, 0.2]}, epochs=2, batch_size=16,
        augment={"stride": [4, 4], "crop": [8, 8], "flip_rotate": False, "channel_drop": 0.0,
                 "noise": 0.0, **augment}))


def test_coarse_views_are_checked_and_train(tmp_path: Path):
    from esdc.ml.fit import FitContext, load_fitter
    from esdc.ml.patches import PatchStream
    from esdc.storage import open_cube
    from esdc.testing import new_cube

    with pytest.raises(TrainConfigError, match="augment.coarse"):
        _cfg(coarse=[24, 24])
    with pytest.raises(TrainConfigError, match="smaller than the view"):
        _cfg(coarse=[6, 6])
    cfg = _cfg(coarse=[16, 16])
    assert cfg.augment is not None and cfg.augment.coarse == (16, 16)
    cube = tmp_path / "cube.zarr"
    new_cube(shape=(96, 192), times=0, seed=3).to_zarr(cube, zarr_format=3, consolidated=True)
    streams = {s: PatchStream(str(cube), cfg.inputs, patch=cfg.patch, split=s,
                              split_block=cfg.split.block,
                              split_fractions=cfg.split.fractions, shuffle=(s == "train"))
               for s in ("train", "validation", "test")}
    out = tmp_path / "fit"
    out.mkdir()
    ctx = FitContext(open_cube(cube), streams, out, "cpu", lambda e, m: None)
    res = load_fitter(cfg.fitter).fit(cfg, ctx)
    assert res.metric == "vicreg_loss" and 0 <= res.test < res.baseline
