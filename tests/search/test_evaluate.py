"""Search evaluation (precision@k against class labels) and class-balanced sampling.

The cubes here carry a class label per 8 x 8 tile (imbalanced: 60 / 30 / 10 %) that
shifts the pixels of its tile, so even an untrained encoder separates the classes:
the embedding search must then beat the random baseline by far.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from esdc.cli import app
from esdc.errors import EsdcError
from tests.search.conftest import cli_fails as _fails

pytest.importorskip("faiss")
pytest.importorskip("torch")
pytest.importorskip("sklearn")

INPUTS = ("bmng_red", "bmng_green", "bmng_blue")
SHARES = (0.6, 0.3, 0.1)
runner = CliRunner()


def make_labelled_cube(folder: Path, times: int = 0, shape: tuple[int, int] = (64, 128),
                       tile: int = 8) -> tuple[Path, np.ndarray]:
    """A cube whose tiles have a class (``surface_class``) that shifts their pixels.

    Returns the cube (embedded with a seeded, untrained encoder; flat index) and the
    ``(tile_y, tile_x)`` classes.
    """
    import torch

    from esdc.embed import EncoderBundle, compute_embeddings, write_embeddings
    from esdc.ml.ssl import Encoder
    from esdc.search import build_index
    from esdc.testing import new_cube

    folder.mkdir(parents=True, exist_ok=True)
    ds = new_cube(shape=shape, times=times, variables=INPUTS)
    blocks = np.random.default_rng(10).choice(3, size=(shape[0] // tile, shape[1] // tile),
                                              p=SHARES)
    cls = np.kron(blocks, np.ones((tile, tile), dtype=int)).astype("uint8")
    shift = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, -3.0, 3.0]], dtype="float32")
    for c, v in enumerate(INPUTS):
        ds[v].data[...] += shift[cls, c]
    ds["surface_class"] = (("lat", "lon"), cls, {
        "units": "1", "long_name": "surface class", "flag_values": [0, 1, 2],
        "flag_meanings": "water land ice", "grid_mapping": "crs"})
    cube = folder / "labelled.zarr"
    ds.to_zarr(cube, zarr_format=3, consolidated=True)
    torch.manual_seed(0)
    meta = {"class": "esdc.ml.ssl.Encoder", "in_channels": len(INPUTS),
            "params": {"dim": 16, "width": 8}, "inputs": list(INPUTS), "tile": [tile, tile]}
    torch.save(Encoder(len(INPUTS), **meta["params"]).state_dict(), folder / "encoder.pt")
    bundle = EncoderBundle(folder / "encoder.pt", meta, run_id="test-run")
    write_embeddings(cube, compute_embeddings(str(cube), bundle, tile))
    build_index(cube, kind="flat")
    return cube, blocks


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> tuple[Path, np.ndarray]:
    return make_labelled_cube(tmp_path_factory.mktemp("labelled"))


@pytest.fixture(scope="module")
def labelled_time(tmp_path_factory) -> tuple[Path, np.ndarray]:
    return make_labelled_cube(tmp_path_factory.mktemp("labelled_time"), times=2)


def _ok(args: list) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.stdout


# ---------------------------------------------------------------- tile labels
def test_tile_labels_are_the_mode_of_the_cells(labelled):
    from esdc.search.evaluate import tile_labels
    from esdc.storage import open_cube

    cube, blocks = labelled
    ds = open_cube(cube).load()
    labels, ok, classes, names = tile_labels(ds, "surface_class", "embedding_t8")
    assert ok.all() and np.array_equal(labels.reshape(blocks.shape), blocks)
    assert classes.tolist() == [0, 1, 2] and names == ["water", "land", "ice"]

    cls = ds["surface_class"].values.astype("float64")
    cls[0:8, 0:8] = 0
    cls[0:3, 0:8] = 2  # 24 of 64 cells: the mode stays 0
    cls[0:8, 8:16] = np.nan
    cls[0:2, 8:16] = 1  # 16 of 64 cells labelled: mostly missing, skipped
    cls[0:8, 16:24] = np.nan
    cls[0:4, 16:24] = 9  # not a flag value: missing too
    cls[4:8, 16:24] = 2  # 32 of 64 labelled: kept (half is not "mostly missing")
    cls[8:16, 0:8] = 0
    cls[8:12, 0:8] = 1  # a tie 32 / 32 goes to the smaller class
    ds["surface_class"] = (("lat", "lon"), cls, ds["surface_class"].attrs)
    labels, ok, _, _ = tile_labels(ds, "surface_class", "embedding_t8")
    labels, ok = labels.reshape(blocks.shape), ok.reshape(blocks.shape)
    assert ok[0, 0] and labels[0, 0] == 0
    assert not ok[0, 1]
    assert ok[0, 2] and labels[0, 2] == 2
    assert ok[1, 0] and labels[1, 0] == 0
    assert ok.sum() == ok.size - 1
    # against a brute-force mode of every tile
    for ty in range(8):
        for tx in range(16):
            cells = cls[8 * ty: 8 * ty + 8, 8 * tx: 8 * tx + 8].ravel()
            cells = cells[np.isin(cells, [0, 1, 2])]
            if len(cells) >= 32:
                vals, counts = np.unique(cells, return_counts=True)
                assert labels[ty, tx] == vals[np.argmax(counts)]


def test_tile_labels_in_time(labelled_time):
    from esdc.search.evaluate import tile_labels
    from esdc.storage import open_cube

    cube, blocks = labelled_time
    ds = open_cube(cube).load()
    labels, ok, _, _ = tile_labels(ds, "surface_class", "embedding_t8")
    assert ok.all() and labels.shape == (8 * 16 * 2,)
    assert np.array_equal(labels.reshape(8, 16, 2), np.repeat(blocks[:, :, None], 2, axis=2))
    # a label varying in time: one label per step for time-varying embeddings
    lab = xr.concat([ds["surface_class"], 2 - ds["surface_class"]], dim="time").transpose(
        "time", "lat", "lon").assign_coords(time=ds["time"])
    ds["varying"] = lab.assign_attrs(ds["surface_class"].attrs)
    labels, ok, _, _ = tile_labels(ds, "varying", "embedding_t8")
    assert np.array_equal(labels.reshape(8, 16, 2), np.stack([blocks, 2 - blocks], axis=2))


def test_label_must_be_categorical_on_the_grid(labelled):
    from esdc.search.evaluate import tile_labels
    from esdc.storage import open_cube

    ds = open_cube(labelled[0])
    with pytest.raises(EsdcError, match="not a class variable"):
        tile_labels(ds, "bmng_red", "embedding_t8")
    with pytest.raises(EsdcError, match="is not a variable of the cube"):
        tile_labels(ds, "koppen_class", "embedding_t8")
    with pytest.raises(EsdcError, match="is an embedding"):
        tile_labels(ds, "embedding_t8", "embedding_t8")


# ---------------------------------------------------------------- precision@k
def test_precision_at_k_excludes_the_query():
    from esdc.search.evaluate import precision_at_k
    from esdc.search.index import normalise

    rng = np.random.default_rng(0)
    centres = np.eye(4, dtype="float32")[:2] * 10
    labels = np.repeat([0, 1], 20)
    vec = centres[labels] + rng.normal(0, 0.1, (40, 4)).astype("float32")
    vec = normalise(vec, np.zeros(4, "float32"))
    q = np.arange(40)
    assert precision_at_k(vec, labels, q, 19).tolist() == [1.0] * 40
    # k = 20 must take one tile of the other class: the query itself never counts
    assert precision_at_k(vec, labels, q, 20) == pytest.approx(np.full(40, 19 / 20))
    dup = np.vstack([vec, vec[:1]])  # an exact duplicate of tile 0, with another label
    p = precision_at_k(dup, np.append(labels, 1), np.array([0, 40]), 1)
    assert p.tolist() == [0.0, 0.0]  # each one's nearest other tile is its twin


def test_evaluate_search_beats_random_and_reports_the_formula(labelled):
    from esdc.search.evaluate import evaluate_search

    cube, blocks = labelled
    r = evaluate_search(cube, "surface_class", k=5, queries=60, seed=3)
    assert set(r) >= {"label", "variable", "k", "queries", "precision_at_k", "per_class"}
    assert (r["label"], r["variable"], r["k"], r["queries"], r["tiles"]) == (
        "surface_class", "embedding_t8", 5, 60, 128)
    p = r["precision_at_k"]
    share = np.bincount(blocks.ravel(), minlength=3) / blocks.size
    assert p["random_expected"] == pytest.approx(float(np.sum(share ** 2)))
    assert p["random"] == pytest.approx(p["random_expected"], abs=0.12)
    assert p["embedding"] > p["random_expected"] + 0.3
    assert p["pca_pixels"] > p["random_expected"] + 0.3
    assert set(r["per_class"]) == {"0", "1", "2"}
    assert sum(c["queries"] for c in r["per_class"].values()) == 60
    assert sum(c["tiles"] for c in r["per_class"].values()) == 128
    for c, v in r["per_class"].items():
        assert v["share"] == pytest.approx(share[int(c)])
        assert v["random_expected"] == pytest.approx(share[int(c)])
        assert v["name"] == ["water", "land", "ice"][int(c)]
    weighted = sum(v["embedding"] * v["queries"] for v in r["per_class"].values()) / 60
    assert weighted == pytest.approx(p["embedding"])
    assert r == evaluate_search(cube, "surface_class", k=5, queries=60, seed=3)  # seeded
    json.dumps(r)  # serialisable
    everything = evaluate_search(cube, "surface_class", k=5, queries=10_000)
    assert everything["queries"] == 128


def test_evaluate_search_in_time(labelled_time):
    from esdc.search.evaluate import evaluate_search

    r = evaluate_search(labelled_time[0], "surface_class", k=10, queries=100)
    assert r["tiles"] == 8 * 16 * 2 and r["queries"] == 100
    p = r["precision_at_k"]
    assert p["embedding"] > p["random_expected"] + 0.3
    assert p["pca_pixels"] > p["random_expected"] + 0.3


def test_evaluate_search_cli(labelled):
    cube = labelled[0]
    r = json.loads(_ok(["evaluate-search", cube, "--label", "surface_class", "-k", 3,
                        "--queries", 20, "--seed", 1, "--json"]))
    assert r["k"] == 3 and r["queries"] == 20
    assert set(r["precision_at_k"]) == {"embedding", "pca_pixels", "random", "random_expected"}
    text = _ok(["evaluate-search", cube, "--label", "surface_class", "--queries", 20])
    assert "precision@10 by surface_class" in text and "raw-pixel PCA" in text


def test_evaluate_search_bad_input(labelled, embedded_cube, tmp_path):
    from esdc.testing import new_cube

    cube = labelled[0]
    _fails(["evaluate-search", cube, "--label", "nope"], "'nope' is not a variable")
    _fails(["evaluate-search", cube, "--label", "bmng_red"], "not a class variable")
    _fails(["evaluate-search", cube, "--label", "surface_class", "-k", 0],
           "k = 0 must be between 1 and 127")
    _fails(["evaluate-search", cube, "--label", "surface_class", "-k", 128],
           "k = 128 must be between 1 and 127")
    _fails(["evaluate-search", cube, "--label", "surface_class", "--queries", 0],
           "--queries 0 must be at least 1")
    _fails(["evaluate-search", cube, "--label", "surface_class", "--variable", "emb"],
           "is not an embedding")
    _fails(["evaluate-search", tmp_path / "missing.zarr", "--label", "x"], "no cube at")
    plain = tmp_path / "plain.zarr"
    new_cube(shape=(16, 32), times=0).to_zarr(plain, zarr_format=3, consolidated=True)
    _fails(["evaluate-search", plain, "--label", "a"], "the cube has no embeddings")


# ---------------------------------------------------------------- balanced sample
def test_balanced_sample_is_balanced_and_deterministic(labelled):
    from esdc.search.balance import balanced_sample
    from esdc.storage import open_cube

    cube, blocks = labelled
    r = balanced_sample(cube, clusters=6, per_cluster=10, seed=0)
    sizes, taken = np.array(r["cluster_sizes"]), np.array(r["sample_sizes"])
    assert len(sizes) == 6 and sizes.sum() == r["tiles"] == 128
    assert np.all(np.diff(sizes) <= 0)  # numbered by size
    assert np.array_equal(taken, np.minimum(sizes, 10))
    assert sizes.min() < 10 < sizes.max()  # a small cluster is taken whole, big ones capped
    got = np.bincount([s["cluster"] for s in r["sample"]], minlength=6)
    assert np.array_equal(got, taken) and r["count"] == taken.sum()
    ids = [s["id"] for s in r["sample"]]
    assert len(set(ids)) == len(ids)
    ds = open_cube(cube)
    for s in r["sample"]:
        assert s["id"] == s["tile_y"] * 16 + s["tile_x"] and s["t"] is None
        assert s["lat"] == float(ds["tile_y_t8"][s["tile_y"]])
        assert s["lon"] == float(ds["tile_x_t8"][s["tile_x"]])
    # deterministic: same seed, same clusters and sample
    assert balanced_sample(cube, clusters=6, per_cluster=10, seed=0) == r
    other = balanced_sample(cube, clusters=6, per_cluster=10, seed=1)
    assert other["tiles"] == 128 and other["count"] == np.minimum(
        other["cluster_sizes"], 10).sum()
    # the rare class (7 % of the tiles) is better represented than in the archive
    few = balanced_sample(cube, clusters=3, per_cluster=5, seed=0)
    rare = blocks.ravel()[[s["id"] for s in few["sample"]]] == 2
    assert rare.mean() > 2 * (blocks == 2).mean()


def test_cluster_assignment_is_seeded():
    from esdc.search.balance import cluster_embeddings
    from esdc.search.index import normalise

    rng = np.random.default_rng(0)
    vec = normalise(rng.normal(size=(500, 8)).astype("float32"), np.zeros(8, "float32"))
    a = cluster_embeddings(vec, 7, seed=5)
    assert np.array_equal(a, cluster_embeddings(vec, 7, seed=5))
    assert set(a.tolist()) <= set(range(7))
    assert np.all(np.diff(np.bincount(a, minlength=7)) <= 0)


def test_balanced_sample_in_time(labelled_time):
    from esdc.search.balance import balanced_sample

    r = balanced_sample(labelled_time[0], clusters=4, per_cluster=5, seed=0)
    assert r["tiles"] == 256 and r["count"] == 20
    assert {s["time"] for s in r["sample"]} <= {"2020-01-01", "2020-02-01"}
    for s in r["sample"]:
        assert s["id"] == (s["tile_y"] * 16 + s["tile_x"]) * 2 + s["t"]


def test_balance_cli(labelled, tmp_path):
    from esdc.search.balance import balanced_sample

    cube = labelled[0]
    out = tmp_path / "sample.json"
    text = _ok(["balance", cube, "--clusters", 5, "--per-cluster", 4, "--seed", 2,
                "--out", out])
    assert "tiles of embedding_t8 from 5 clusters" in text
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(balanced_sample(cube, None, 5, 4, 2)))
    printed = json.loads(_ok(["balance", cube, "--clusters", 5, "--per-cluster", 4,
                              "--seed", 2]))
    assert printed == saved
    _fails(["balance", cube, "--clusters", 0], "--clusters 0 must be between 1 and 128")
    _fails(["balance", cube, "--clusters", 129], "--clusters 129 must be between 1 and 128")
    _fails(["balance", cube, "--per-cluster", 0], "--per-cluster 0 must be at least 1")
    _fails(["balance", cube, "--out", tmp_path / "no" / "s.json"], "does not exist")
    _fails(["balance", tmp_path / "missing.zarr"], "no cube at")


def test_balance_needs_embeddings(tmp_path):
    from esdc.search.balance import balanced_sample
    from esdc.testing import new_cube

    plain = tmp_path / "plain.zarr"
    new_cube(shape=(16, 32), times=0).to_zarr(plain, zarr_format=3, consolidated=True)
    with pytest.raises(EsdcError, match="has no embeddings"):
        balanced_sample(plain)
