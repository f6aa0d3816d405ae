"""Self-supervised encoders: the VICReg loss on known inputs, geodata views, the fitter.

The views (esdc.ml.augment) may move, turn, crop or hide cells and channels but never
change a value (no colour jitter on physical units); the VICReg loss is checked term by
term on inputs whose variance, covariance and view distance are known by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from esdc.errors import TrainConfigError
from esdc.ml.config import TrainConfig

torch = pytest.importorskip("torch")

from esdc.ml.augment import Views, channel_dropout, flip_rotate, random_crop  # noqa: E402
from esdc.ml.ssl import OBJECTIVES, Encoder, VICReg, vicreg_loss  # noqa: E402

# four samples, two uncorrelated dimensions of standard deviation sqrt(4/3) > 1
SPREAD = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])


# ---------------------------------------------------------------- VICReg loss
def test_vicreg_loss_is_zero_for_equal_spread_uncorrelated_views():
    assert vicreg_loss(SPREAD, SPREAD.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_vicreg_loss_terms_on_known_inputs():
    # invariance: views 1 apart in every dimension -> mean squared distance 1, times 25
    assert vicreg_loss(SPREAD, SPREAD + 1).item() == pytest.approx(25.0, rel=1e-5)
    # variance: a collapsed batch has std sqrt(1e-4) = 0.01 in both views:
    # 25 * (2 views * mean(1 - 0.01) / 2) = 24.75
    zero = torch.zeros(4, 2)
    assert vicreg_loss(zero, zero).item() == pytest.approx(24.75, rel=1e-5)
    # covariance: two equal dimensions, variance 4/3 each (no hinge): off-diagonal
    # covariances (4/3)^2 twice, over D = 2, in both views: 2 * (2 * 16/9) / 2 = 32/9
    same = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]])
    assert vicreg_loss(same, same).item() == pytest.approx(32 / 9, rel=1e-5)
    # the weights scale their terms
    assert vicreg_loss(SPREAD, SPREAD + 1, invariance=1.0).item() == pytest.approx(1.0,
                                                                                 rel=1e-5)
    assert vicreg_loss(same, same, covariance=0.5).item() == pytest.approx(16 / 9, rel=1e-5)


def test_vicreg_network_and_loss_train():
    """A few steps of VICReg lower its loss on random tiles (the gradient flows)."""
    torch.manual_seed(0)
    net = VICReg(3, dim=8, width=4, expander=16)
    assert net.encoder.dim == 8 and net(torch.zeros(5, 3, 8, 8), torch.zeros(5, 3, 8, 8))[
        0].shape == (5, 16)
    x = torch.randn(32, 3, 8, 8)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    first = None
    for _ in range(20):
        loss = vicreg_loss(*net(x + 0.1 * torch.randn_like(x), x + 0.1 * torch.randn_like(x)))
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first
    assert set(OBJECTIVES) == {"simsiam", "vicreg", "mae"}


def test_pooled_encoder_sees_channel_means():
    torch.manual_seed(0)
    enc = Encoder(2, dim=4, width=4, pooled=True).eval()
    assert enc.head.in_features == 4 * 4 + 2
    x = torch.zeros(1, 2, 8, 8)
    # a constant shift of one channel changes the pooled input the head gets
    assert not torch.allclose(enc(x), enc(x + torch.tensor([1.0, 0.0])[None, :, None, None]))
    # an encoder saved without `pooled` (older runs) loads as before
    Encoder(2, dim=4, width=4).load_state_dict(Encoder(2, dim=4, width=4).state_dict())


# ---------------------------------------------------------------- views keep units
def _tiles(b: int = 6, c: int = 3, h: int = 12, w: int = 12) -> torch.Tensor:
    """Tiles whose every value is distinct: where a value moved to can be traced."""
    return torch.arange(b * c * h * w, dtype=torch.float32).reshape(b, c, h, w)


def test_random_crop_is_a_window_of_each_tile():
    x = _tiles()
    g = torch.Generator().manual_seed(1)
    out = random_crop(x, (8, 8), g)
    assert out.shape == (6, 3, 8, 8) and out.dtype == x.dtype
    places = set()
    for i in range(len(x)):
        # the window's first value locates it; the whole window must match there
        y0, x0 = divmod(int(out[i, 0, 0, 0] - x[i, 0, 0, 0]), 12)
        assert torch.equal(out[i], x[i, :, y0:y0 + 8, x0:x0 + 8])
        places.add((y0, x0))
    assert len(places) > 1  # drawn per tile
    assert random_crop(x, (12, 12), g) is x
    with pytest.raises(ValueError, match="does not fit"):
        random_crop(x, (13, 8), g)


def test_flip_rotate_moves_values_without_changing_them():
    x = _tiles()
    out = flip_rotate(x, torch.Generator().manual_seed(2))
    assert out.shape == x.shape
    turned = 0
    for i in range(len(x)):
        for c in range(3):  # the same values per tile and channel: units unchanged
            assert torch.equal(out[i, c].flatten().sort().values, x[i, c].flatten().sort().values)
        # one of the 8 symmetries of the square, the same for every channel
        syms = [torch.rot90(v, k, dims=(1, 2)) for v in (x[i], torch.flip(x[i], dims=(2,)))
                for k in range(4)]
        assert any(torch.equal(out[i], s) for s in syms)
        turned += not torch.equal(out[i], x[i])
    assert turned > 0
    rect = flip_rotate(_tiles(h=8, w=12), torch.Generator().manual_seed(3))
    assert rect.shape == (6, 3, 8, 12)  # no quarter turns of non-square tiles


def test_channel_dropout_zeroes_whole_channels_and_keeps_one():
    x = _tiles() + 1  # no zero values
    out = channel_dropout(x, 0.5, torch.Generator().manual_seed(4))
    dropped = (out == 0).flatten(2).all(dim=2)
    kept = (out == x).flatten(2).all(dim=2)
    assert torch.all(dropped ^ kept) and dropped.any()
    hard = channel_dropout(x, 0.99, torch.Generator().manual_seed(5))
    assert (hard != 0).flatten(2).all(dim=2).any(dim=1).all()  # every tile keeps a channel
    assert channel_dropout(x, 0.0, torch.Generator()) is x


def test_views_keep_units_and_shape():
    x = _tiles()
    view = Views(crop=(8, 8), flip_rotate=True, channel_drop=0.0, noise=0.0)
    out = view(x, torch.Generator().manual_seed(6))
    assert out.shape == (6, 3, 8, 8)
    for i in range(len(x)):
        for c in range(3):  # every value of a view is a value of its tile and channel
            assert bool(torch.isin(out[i, c], x[i, c]).all())
    noisy = Views(noise=0.1, channel_drop=0.0)(x, torch.Generator().manual_seed(7))
    assert noisy.shape == x.shape and not torch.equal(noisy.sort().values, x.sort().values)


# ---------------------------------------------------------------- config and fitter
def _enc_cfg(**changes) -> TrainConfig:
    d = dict(name="t_ssl", framework="torch", task="embedding", inputs=["a", "b"],
             model={"kind": "vicreg", "dim": 8, "width": 4, "expander": 32}, patch=[8, 8],
             split={"block": [16, 16], "fractions": [0.6, 0.2, 0.2]}, epochs=2,
             batch_size=16, augment={"stride": [4, 4], "crop": [6, 6], "noise": 0.0,
                                     "channel_drop": 0.0})
    d.update(changes)
    return TrainConfig.from_dict(d)


def test_augment_and_vicreg_configs_are_checked():
    cfg = _enc_cfg()
    assert cfg.fitter == "simsiam" and cfg.model_kind == "vicreg"
    assert cfg.augment is not None and cfg.augment.crop == (6, 6)
    with pytest.raises(TrainConfigError, match="augment.crop"):
        _enc_cfg(augment={"crop": [9, 9]})
    with pytest.raises(TrainConfigError, match="augment.stride"):
        _enc_cfg(augment={"stride": [4, 12]})
    with pytest.raises(TrainConfigError, match="augment.channel_drop"):
        _enc_cfg(augment={"channel_drop": 1.0})
    with pytest.raises(TrainConfigError, match="`augment` is for task embedding"):
        TrainConfig.from_dict(dict(name="t", framework="torch", task="classification",
                                   inputs=["a"], target="b", augment={"crop": [4, 4]}))
    with pytest.raises(TrainConfigError, match="simsiam or vicreg"):
        _enc_cfg(model={"kind": "byol"})


@pytest.fixture(scope="module")
def cube(tmp_path_factory) -> Path:
    """A static 48 x 96 cube with inputs a, b (esdc.testing)."""
    from esdc.testing import new_cube

    out = tmp_path_factory.mktemp("ssl") / "cube.zarr"
    new_cube(shape=(48, 96), times=0, seed=3).to_zarr(out, zarr_format=3, consolidated=True)
    return out


def _fit(cube: Path, cfg: TrainConfig, out: Path) -> tuple:
    from esdc.ml.fit import FitContext, load_fitter
    from esdc.ml.patches import PatchStream
    from esdc.storage import open_cube

    streams = {s: PatchStream(str(cube), cfg.inputs, patch=cfg.patch, split=s,
                              split_block=cfg.split.block, split_fractions=cfg.split.fractions,
                              seed=cfg.seed, shuffle=(s == "train"))
               for s in ("train", "validation", "test")}
    out.mkdir()
    logged: list = []
    ctx = FitContext(open_cube(cube), streams, out, "cpu", lambda e, m: logged.append((e, m)))
    return load_fitter(cfg.fitter).fit(cfg, ctx), logged


def test_vicreg_fitter_learns_and_saves_an_encoder_embed_loads(cube, tmp_path):
    from esdc.embed import EncoderBundle, compute_embeddings

    res, logged = _fit(cube, _enc_cfg(), tmp_path / "vicreg")
    assert res.metric == "vicreg_loss" and res.test < res.baseline and res.test >= 0
    assert [e for e, _ in logged] == [0, 1] and set(logged[0][1]) == {"train_loss",
                                                                      "val_loss"}
    meta = json.loads((res.model_file.parent / "encoder.json").read_text())
    # only the encoder's parameters: embed rebuilds the encoder from them
    assert meta["params"] == {"dim": 8, "width": 4} and meta["objective"] == "vicreg"
    emb = compute_embeddings(str(cube), EncoderBundle(res.model_file, meta), 8)
    vec = emb["embedding_t8"].values
    assert vec.shape == (6, 12, 8) and np.isfinite(vec).all()

    with pytest.raises(TrainConfigError, match=r"\['depth'\] are not known to vicreg"):
        _fit(cube, _enc_cfg(model={"kind": "vicreg", "depth": 3}), tmp_path / "bad")


def test_overlapping_patches_give_more_training_patches(cube):
    """augment.stride makes the fitter read shifted, overlapping training patches."""
    from esdc.ml.fit.simsiam import training_stream
    from esdc.ml.patches import PatchStream

    cfg = _enc_cfg(augment={"stride": [4, 4]})
    train = PatchStream(str(cube), cfg.inputs, patch=cfg.patch, split="train",
                        split_block=cfg.split.block, split_fractions=cfg.split.fractions)
    dense = training_stream(cfg, train)
    # each 16 x 16 train block holds 2 x 2 patches side by side, 3 x 3 at stride 4
    assert len(train) > 0 and len(dense) == len(train) * 9 // 4
    assert {tuple(o) for o in train._origins} <= {tuple(o) for o in dense._origins}
    assert training_stream(_enc_cfg(augment={"crop": [4, 4]}), train) is train
