"""Context windows: a search tile embedded (and PCA-searched) from the cells around it.

``context`` (a ``task: embedding`` config's, recorded in ``encoder.json``) makes
``esdc embed`` encode each tile from the window of ``tile + 2 * margin`` cells centred on
it, and ``esdc evaluate-search``'s PCA baseline read the same windows. Checked here
against windows cut by hand from the stored cube with NumPy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from esdc.errors import TrainConfigError
from esdc.ml.config import TrainConfig

pytest.importorskip("torch")

INPUTS = ["a", "b"]


@pytest.fixture(scope="module")
def cubes(tmp_path_factory) -> dict[str, Path]:
    """A static 32 x 48 cube (with NaN cells) and a 2-step one, inputs a and b."""
    from esdc.testing import new_cube

    folder = tmp_path_factory.mktemp("windows")
    static = new_cube(shape=(32, 48), times=0, seed=5)
    static["a"].data[3:6, 10:12] = np.nan
    static.to_zarr(folder / "static.zarr", zarr_format=3, consolidated=True)
    new_cube(shape=(32, 48), times=2, seed=6).to_zarr(folder / "time.zarr", zarr_format=3,
                                                       consolidated=True)
    return {"static": folder / "static.zarr", "time": folder / "time.zarr"}


def _stored(cube: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw values ``([T,] C, ny, nx)`` of the inputs, their mean and scale (as embed)."""
    from esdc.ml.stats import cube_statistics, normalisation
    from esdc.storage import open_cube

    ds = open_cube(cube)
    mean, scale = normalisation(cube_statistics(ds, INPUTS), INPUTS)
    return np.stack([ds[v].values for v in INPUTS], axis=-3), mean, scale


def _by_hand(raw: np.ndarray, mean: np.ndarray, scale: np.ndarray, tile: int,
             margin: int) -> np.ndarray:
    """``(nty, ntx, C, W, W)`` normalised, NaN -> 0, mirrored windows of a ``(C, ny, nx)``."""
    x = (raw - mean[:, None, None]) / scale[:, None, None]
    x = np.where(np.isfinite(x), x, 0).astype("float32")
    x = np.pad(x, ((0, 0), (margin, margin), (margin, margin)), mode="reflect")
    w = tile + 2 * margin
    nty, ntx = raw.shape[-2] // tile, raw.shape[-1] // tile
    return np.stack([np.stack([x[:, i * tile:i * tile + w, j * tile:j * tile + w]
                               for j in range(ntx)]) for i in range(nty)])


def test_windows_are_the_tile_and_its_mirrored_surroundings(cubes):
    from esdc.ml.patches import PatchStream
    from esdc.ml.windows import tile_windows

    raw, mean, scale = _stored(cubes["static"])
    stream = PatchStream(str(cubes["static"]), INPUTS, patch=(8, 8), shuffle=False,
                         normalize=False)
    want = _by_hand(raw, mean, scale, 8, 4)
    seen = 0
    for b in tile_windows(stream, 8, 4, batch_size=7, mean=mean, scale=scale):
        assert b.x.shape[1:] == (2, 16, 16) and b.valid.shape == b.x.shape
        for (t, y, x), win, frac in zip(b.index, b.x, b.tile_valid, strict=True):
            assert t == -1
            np.testing.assert_allclose(win, want[y // 8, x // 8], rtol=1e-6, atol=1e-6)
            own = np.isfinite(raw[:, y:y + 8, x:x + 8])
            assert frac == pytest.approx(own.mean())
            seen += 1
    assert seen == 4 * 6
    # the upper-left window mirrors row 1 above row 0 (the edge cell is not repeated)
    np.testing.assert_array_equal(want[0, 0, :, 3], want[0, 0, :, 5])
    # margin 0: exactly the tiles the stream reads, normalised as it does
    plain = list(tile_windows(PatchStream(str(cubes["static"]), INPUTS, patch=(8, 8),
                                          shuffle=False), 8, 0, batch_size=64))
    x0 = np.concatenate([b.x for b in plain])
    idx = np.concatenate([b.index for b in plain])
    for (_, y, x), win in zip(idx, x0, strict=True):
        np.testing.assert_allclose(win, want[y // 8, x // 8][:, 4:12, 4:12], atol=1e-5)

    with pytest.raises(TrainConfigError, match="margin=-1"):
        next(tile_windows(stream, 8, -1))
    with pytest.raises(TrainConfigError, match="non-overlapping 8-cell"):
        next(tile_windows(PatchStream(str(cubes["static"]), INPUTS, patch=(16, 16)), 8, 2))
    with pytest.raises(TrainConfigError, match="too large"):
        next(tile_windows(stream, 8, 32))


def _bundle(folder: Path, context: int):
    import torch

    from esdc.embed import EncoderBundle
    from esdc.ml.ssl import Encoder

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    meta = {"class": "esdc.ml.ssl.Encoder", "in_channels": 2,
            "params": {"dim": 6, "width": 4, "pooled": True}, "inputs": INPUTS,
            "tile": [16, 16], "context": context}
    torch.save(Encoder(2, **meta["params"]).state_dict(), folder / "encoder.pt")
    return EncoderBundle(folder / "encoder.pt", meta)


def test_embeddings_encode_each_tile_from_its_context_window(cubes, tmp_path):
    from esdc.conventions import ATTR_CONTEXT
    from esdc.embed import compute_embeddings

    bundle = _bundle(tmp_path / "enc", context=4)
    assert bundle.context == 4
    raw, mean, scale = _stored(cubes["static"])
    emb = compute_embeddings(str(cubes["static"]), bundle, 8)["embedding_t8"]
    assert emb.attrs[ATTR_CONTEXT] == 4 and emb.shape == (4, 6, 6)
    want = _by_hand(raw, mean, scale, 8, 4)
    np.testing.assert_allclose(emb.values, bundle.encode(want.reshape(24, 2, 16, 16))
                               .reshape(4, 6, 6), rtol=1e-4, atol=1e-5)
    # context=0 overrides the encoder's: the tile alone, no attribute
    alone = compute_embeddings(str(cubes["static"]), bundle, 8, context=0)["embedding_t8"]
    assert ATTR_CONTEXT not in alone.attrs
    np.testing.assert_allclose(alone.values, bundle.encode(
        want[:, :, :, 4:12, 4:12].reshape(24, 2, 8, 8)).reshape(4, 6, 6), rtol=1e-4,
        atol=1e-5)
    # a 16-cell tile area-averaged to the 8-cell input: its margin scales to 8 cells
    big = compute_embeddings(str(cubes["static"]), bundle, 16, input_size=8)["embedding_t16"]
    assert big.attrs[ATTR_CONTEXT] == 8 and np.isfinite(big.values).all()
    # every time step of a time-varying cube gets its own windows
    raw_t, mean_t, scale_t = _stored(cubes["time"])
    emb_t = compute_embeddings(str(cubes["time"]), bundle, 8)["embedding_t8"]
    assert emb_t.dims[2] == "time" and emb_t.shape == (4, 6, 2, 6)
    for t in range(2):
        w = _by_hand(raw_t[t], mean_t, scale_t, 8, 4).reshape(24, 2, 16, 16)
        np.testing.assert_allclose(emb_t.values[:, :, t], bundle.encode(w).reshape(4, 6, 6),
                                   rtol=1e-4, atol=1e-5)


def test_pca_baseline_reads_the_same_windows(cubes, tmp_path):
    """evaluate_search's pca_pixels is the PCA of the windows, searched like the encoder."""
    import xarray as xr
    from sklearn.decomposition import PCA

    from esdc.embed import compute_embeddings, write_embeddings
    from esdc.search.evaluate import evaluate_search, precision_at_k, tile_labels
    from esdc.search.index import normalise
    from esdc.storage import open_cube

    cube = tmp_path / "labelled.zarr"
    ds = xr.open_zarr(cubes["static"]).load()
    cls = np.kron(np.random.default_rng(1).integers(0, 3, (4, 6)), np.ones((8, 8), int))
    ds["surface"] = (("lat", "lon"), cls.astype("uint8"), {
        "units": "1", "flag_values": [0, 1, 2], "flag_meanings": "water land ice"})
    ds.to_zarr(cube, zarr_format=3, consolidated=True)
    write_embeddings(cube, compute_embeddings(str(cube), _bundle(tmp_path / "enc", 2), 8))
    ev = evaluate_search(cube, "surface", k=5, queries=1000, seed=0)
    assert ev["queries"] == ev["tiles"] == 24

    raw, mean, scale = _stored(cube)
    pix = _by_hand(raw, mean, scale, 8, 2).reshape(24, -1)  # 2 x 12 x 12 per tile
    pcs = PCA(n_components=6, random_state=0).fit_transform(pix)
    labels, _, _, _ = tile_labels(open_cube(cube), "surface", "embedding_t8")
    want = precision_at_k(normalise(pcs, pcs.mean(axis=0).astype("float32")), labels,
                          np.arange(24), 5)
    assert ev["precision_at_k"]["pca_pixels"] == pytest.approx(float(want.mean()))


def test_context_is_a_checked_embedding_option_recorded_by_the_fitter(cubes, tmp_path):
    from esdc.ml.fit import FitContext, load_fitter
    from esdc.ml.patches import PatchStream
    from esdc.storage import open_cube

    with pytest.raises(TrainConfigError, match="`context` is for task embedding"):
        TrainConfig.from_dict(dict(name="t", framework="torch", task="classification",
                                   inputs=["a"], target="b", context=2))
    with pytest.raises(TrainConfigError, match="context"):
        TrainConfig.from_dict(dict(name="t", framework="torch", task="embedding",
                                   inputs=INPUTS, model={"kind": "vicreg"}, context=-1))
    cfg = TrainConfig.from_dict(dict(
        name="t", framework="torch", task="embedding", inputs=INPUTS,
        model={"kind": "vicreg", "dim": 6, "width": 4}, patch=[16, 16], context=4,
        split={"block": [16, 16], "fractions": [0.5, 0.25, 0.25]}, epochs=1, batch_size=4,
        augment={"crop": [16, 16], "flip_rotate": False, "channel_drop": 0, "noise": 0}))
    streams = {s: PatchStream(str(cubes["static"]), INPUTS, patch=cfg.patch, split=s,
                              split_block=cfg.split.block,
                              split_fractions=cfg.split.fractions, shuffle=False)
               for s in ("train", "validation", "test")}
    out = tmp_path / "fit"
    out.mkdir()
    ctx = FitContext(open_cube(cubes["static"]), streams, out, "cpu", lambda e, m: None)
    load_fitter(cfg.fitter).fit(cfg, ctx)
    assert json.loads((out / "encoder.json").read_text())["context"] == 4
