"""The masked-autoencoder objective (``model.kind: mae``): loss, network and fitter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from esdc.errors import TrainConfigError
from esdc.ml.config import TrainConfig

torch = pytest.importorskip("torch")


def test_mae_loss_weights_hidden_cells():
    from esdc.ml.ssl import mae_loss

    x = torch.randn(4, 3, 8, 8)
    hidden = torch.zeros(4, 1, 8, 8)
    hidden[:, :, :4] = 1
    assert mae_loss(x.clone(), x, hidden).item() == 0.0
    wrong = x.clone()
    wrong[:, :, :4] += 2.0  # every hidden cell off by 2: squared error 4 there
    # weights: 128 hidden cells x 1, 128 shown x 0.1 -> 4 * 128 / 140.8 (per channel)
    assert mae_loss(wrong, x, hidden).item() == pytest.approx(4 * 128 / (128 + 12.8))
    assert mae_loss(wrong, x, hidden, visible=1.0).item() == pytest.approx(2.0)


def test_mae_network_hides_cells_and_rebuilds_views_of_any_size():
    from esdc.ml.ssl import OBJECTIVES, MaskedAutoencoder

    torch.manual_seed(0)
    net = MaskedAutoencoder(3, mask=0.5, decoder=16, grid=8, dim=8, width=4, pooled=True)
    x1, x2 = torch.randn(5, 3, 8, 8), torch.randn(5, 3, 8, 8)
    rebuilt, x, hidden = net(x1, x2)
    assert rebuilt.shape == x.shape == (10, 3, 8, 8) and hidden.shape == (10, 1, 8, 8)
    assert torch.equal(x, torch.cat([x1, x2])) and 0.3 < hidden.mean().item() < 0.7
    rebuilt, _, _ = net(torch.randn(2, 3, 12, 12), torch.randn(2, 3, 12, 12))
    assert rebuilt.shape == (4, 3, 12, 12)
    assert OBJECTIVES["mae"].network is MaskedAutoencoder
    with pytest.raises(TrainConfigError, match="model.mask 1.0"):
        MaskedAutoencoder(3, mask=1.0)


@pytest.fixture(scope="module")
def cube(tmp_path_factory) -> Path:
    from esdc.testing import new_cube

    out = tmp_path_factory.mktemp("mae") / "cube.zarr"
    new_cube(shape=(48, 96), times=0, seed=3).to_zarr(out, zarr_format=3, consolidated=True)
    return out


def test_mae_fitter_learns_and_saves_an_encoder_embed_loads(cube, tmp_path):
    from esdc.embed import EncoderBundle, compute_embeddings
    from esdc.ml.fit import FitContext, load_fitter
    from esdc.ml.patches import PatchStream
    from esdc.storage import open_cube

    cfg = TrainConfig.from_dict(dict(
        name="t_mae", framework="torch", task="embedding", inputs=["a", "b"],
        model={"kind": "mae", "dim": 8, "width": 4, "mask": 0.5, "decoder": 32},
        patch=[16, 16], split={"block": [16, 16], "fractions": [0.6, 0.2, 0.2]}, epochs=3,
        batch_size=16, augment={"stride": [4, 4], "crop": [8, 8], "flip_rotate": False,
                                "channel_drop": 0.0, "noise": 0.0}))
    assert cfg.fitter == "simsiam" and cfg.model_kind == "mae"
    streams = {s: PatchStream(str(cube), cfg.inputs, patch=cfg.patch, split=s,
                              split_block=cfg.split.block,
                              split_fractions=cfg.split.fractions, shuffle=(s == "train"))
               for s in ("train", "validation", "test")}
    ctx = FitContext(open_cube(cube), streams, tmp_path, "cpu", lambda e, m: None)
    res = load_fitter(cfg.fitter).fit(cfg, ctx)
    assert res.metric == "mae_loss" and 0 <= res.test < res.baseline
    meta = json.loads((tmp_path / "encoder.json").read_text())
    assert meta["params"] == {"dim": 8, "width": 4} and meta["objective"] == "mae"
    vec = compute_embeddings(str(cube), EncoderBundle(res.model_file, meta), 8)
    assert vec["embedding_t8"].shape == (6, 12, 8)
    assert np.isfinite(vec["embedding_t8"].values).all()
