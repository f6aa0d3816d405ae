"""Correctness of the reverse image search: self-match, tile location, filters, lineage.

Fast tests use the small synthetic cubes of ``conftest.py`` (an untrained, seeded
encoder; a flat index). One slow test runs the whole pipeline on the real Earth cube:
train an encoder, ``esdc embed``, ``esdc index``, ``esdc search``, ``esdc
evaluate-search`` (the embedding must beat the random baseline).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from esdc.cli import app
from esdc.errors import EsdcError

pytest.importorskip("faiss")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


# ---------------------------------------------------------------- helpers
def _copy(cube: Path, folder: Path, with_index: bool = True) -> Path:
    """Copy a fixture cube (and its index and encoder files) so a test may change it."""
    from esdc.search import index_dir

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / cube.name
    shutil.copytree(cube, target)
    if with_index:
        shutil.copytree(index_dir(cube), index_dir(target))
    for f in ("encoder.pt", "encoder.json"):
        shutil.copy(cube.parent / f, folder / f)
    return target


def _bundle(folder: Path, run_id: str = ""):
    from esdc.embed import EncoderBundle

    return EncoderBundle(folder / "encoder.pt", json.loads((folder / "encoder.json").read_text()),
                         run_id)


def _fails(args: list[str], *needles: str) -> str:
    """Exit code 2, the message on stderr, no traceback."""
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)
    assert "Traceback" not in res.output
    assert "error:" in res.stderr
    for n in needles:
        assert n in res.output, res.output
    return res.output


def _ok(args: list[str]) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.stdout


def _listing(cube: Path) -> list[str]:
    """Every file of a store, relative, sorted (arrays, chunks and metadata)."""
    return sorted(str(p.relative_to(cube)) for p in cube.rglob("*") if p.is_file())


# ---------------------------------------------------------------- self-match
def test_nearest_neighbour_in_exact_index_is_itself(embedded_cube):
    from esdc.search import SearchEngine

    engine = SearchEngine(embedded_cube)
    assert engine.manifest.kind == "flat"
    ny, nx = engine.shape
    assert (ny, nx) == (8, 16) and engine.manifest.count == ny * nx
    for ty in range(ny):
        for tx in range(nx):
            res = engine.search_tile(engine.yc[ty], engine.xc[tx], k=3)
            first = res.neighbours[0]
            assert (first.tile_y, first.tile_x) == (ty, tx)
            assert first.distance == pytest.approx(0.0, abs=1e-5)
            assert res.neighbours[1].distance >= first.distance
    # the same through FAISS directly: every stored vector finds its own id first
    from esdc.search.index import embedding_matrix

    vec, ids, _ = embedding_matrix(engine.ds, engine.variable)
    _, nn = engine.index.search(vec, 1)
    assert np.array_equal(nn[:, 0], ids)


# ---------------------------------------------------------------- location
@pytest.mark.parametrize("tile", [(0, 0), (3, 7), (7, 15), (5, 2)])
def test_embedding_coordinates_locate_the_tile(embedded_cube, tile):
    """Recompute one tile's vector from the pixels inside its coordinate bounds."""
    from esdc.ml.stats import cube_statistics, normalisation, read_statistics
    from esdc.search import SearchEngine
    from esdc.storage import open_cube

    ds = open_cube(embedded_cube)
    emb = ds["embedding_t8"]
    inputs = list(emb.attrs["esdc_inputs"])
    ty, tx = tile
    yc, xc = float(ds["tile_y_t8"][ty]), float(ds["tile_x_t8"][tx])
    ylo, yhi = sorted(float(b) for b in ds["tile_y_t8_bounds"].values[ty])
    xlo, xhi = sorted(float(b) for b in ds["tile_x_t8_bounds"].values[tx])
    lat, lon = ds["lat"].values, ds["lon"].values
    rows = np.flatnonzero((lat > ylo) & (lat < yhi))
    cols = np.flatnonzero((lon > xlo) & (lon < xhi))
    assert len(rows) == len(cols) == emb.attrs["esdc_tile_size"] == 8
    assert lat[rows].mean() == pytest.approx(yc) and lon[cols].mean() == pytest.approx(xc)
    assert ylo < yc < yhi and xlo < xc < xhi
    pixels = np.stack([ds[v].isel(lat=rows, lon=cols).values for v in inputs]).astype("float32")
    stats = read_statistics(ds, inputs) or cube_statistics(ds, inputs)
    mean, scale = normalisation(stats, inputs)  # what PatchStream applies
    x = (pixels - mean[:, None, None]) / scale[:, None, None]
    x[~np.isfinite(pixels)] = 0.0
    vec = _bundle(embedded_cube.parent).encode(x[None])[0]
    stored = emb.values[ty, tx]
    np.testing.assert_allclose(vec, stored, rtol=1e-4, atol=1e-5)
    other = emb.values[(ty + 1) % 8, (tx + 1) % 16]
    assert not np.allclose(vec, other, atol=1e-3)  # the location matters
    # and the search engine maps the centre (and any point inside) back to this tile
    engine = SearchEngine(embedded_cube)
    assert engine.tile_at(yc, xc)[:2] == (ty, tx)
    assert engine.tile_at(ylo + 0.01, xhi - 0.01)[:2] == (ty, tx)


# ---------------------------------------------------------------- filters
def test_filters_never_leave_bbox_or_time_range(embedded_cube_time):
    from esdc.search import SearchEngine

    engine = SearchEngine(embedded_cube_time)
    assert engine.has_time and engine.shape == (8, 16, 3)
    times = [str(t.date()) for t in engine.times]
    rng = np.random.default_rng(1)
    cases = [((-90.0, -45.0, 45.0, 60.0), ("2020-02-01", "2020-03-01")),
             ((0.0, 0.0, 180.0, 90.0), (None, "2020-01-31")),
             ((150.0, -60.0, -150.0, 60.0), ("2020-02-15", None)),  # crosses the antimeridian
             ((-180.0, -90.0, 180.0, 90.0), ("2020-03-01", "2020-03-01")),
             (None, ("2020-01-01", "2020-02-01")),
             ((-30.0, -30.0, 30.0, 30.0), None)]
    for bbox, trange in cases:
        allowed = engine._allowed(bbox, trange)
        for _ in range(4):
            ty, tx, t = (int(rng.integers(8)), int(rng.integers(16)), int(rng.integers(3)))
            res = engine.search_tile(engine.yc[ty], engine.xc[tx], times[t], k=60, bbox=bbox,
                                     time_range=trange)
            assert len(res.neighbours) == min(60, len(allowed))
            for n in res.neighbours:
                if bbox is not None:
                    w, s, e, north = bbox
                    assert s <= n.y <= north
                    assert (w <= n.x <= e) if w <= e else (n.x >= w or n.x <= e)
                if trange is not None:
                    lo, hi = trange
                    assert n.time is not None
                    assert lo is None or n.time >= lo
                    assert hi is None or n.time <= hi
            d = [n.distance for n in res.neighbours]
            assert d == sorted(d)


def test_filters_through_the_cli(embedded_cube_time):
    text = _ok(["search", embedded_cube_time, "--lat", 10, "--lon", 20, "--time", "2020-02",
                "-k", 40, "--bbox", "-100,-50,100,50", "--start", "2020-02-01",
                "--end", "2020-03-01", "--json"])
    res = json.loads(text)
    assert res["query"]["time"] == "2020-02-01" and len(res["neighbours"]) == 40
    for n in res["neighbours"]:
        assert -50 <= n["lat"] <= 50 and -100 <= n["lon"] <= 100
        assert n["time"] in ("2020-02-01", "2020-03-01")


# ---------------------------------------------------------------- index rebuild
def test_rebuilt_index_returns_the_same_neighbours(embedded_cube, tmp_path):
    from esdc.search import SearchEngine, build_index

    cube = _copy(embedded_cube, tmp_path)
    before = SearchEngine(cube)
    queries = [(float(before.yc[ty]), float(before.xc[tx])) for ty, tx in
               [(0, 0), (2, 5), (4, 9), (7, 15), (6, 1)]]
    first = [before.search_tile(y, x, k=20).to_json() for y, x in queries]
    m1 = before.manifest
    m2 = build_index(cube, kind="flat")
    assert (m2.model_run, m2.model_sha256, m2.ids_sha256, m2.count) == (
        m1.model_run, m1.model_sha256, m1.ids_sha256, m1.count)
    assert m2.index_sha256 == m1.index_sha256  # an exact index is byte-for-byte the same
    after = SearchEngine(cube)
    again = [after.search_tile(y, x, k=20).to_json() for y, x in queries]
    assert again == first


# ---------------------------------------------------------------- re-embedding
def _log_encoder(folder: Path, tracking: str, seed: int | None) -> str:
    """Log an encoder as an MLflow run (the fixture's weights, or fresh ones from ``seed``)."""
    import mlflow
    import torch

    from esdc.ml.ssl import Encoder

    art = folder / f"model-{seed}"
    art.mkdir()
    meta = json.loads((folder / "encoder.json").read_text())
    if seed is None:
        shutil.copy(folder / "encoder.pt", art / "encoder.pt")
    else:
        torch.manual_seed(seed)
        torch.save(Encoder(meta["in_channels"], **meta["params"]).state_dict(),
                   art / "encoder.pt")
    (art / "encoder.json").write_text(json.dumps(meta))
    mlflow.set_tracking_uri(tracking)
    name = "search_tests"
    if mlflow.get_experiment_by_name(name) is None:
        mlflow.create_experiment(name, artifact_location=(folder / "mlruns").as_uri())
    mlflow.set_experiment(name)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(art), artifact_path="model")
    return run.info.run_id


def test_reembed_replaces_the_embedding_cleanly(embedded_cube, tmp_path, client):
    pytest.importorskip("mlflow")
    from esdc.storage import open_cube
    from esdc.verify import verify_store

    cube = _copy(embedded_cube, tmp_path / "work")
    folder = cube.parent
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    same = _log_encoder(folder, tracking, None)  # the fixture's weights, now as a run
    other = _log_encoder(folder, tracking, seed=1)
    old = open_cube(cube)["embedding_t8"].values
    files = _listing(cube)
    sched = client.scheduler.address

    def embed(run: str) -> None:
        _ok(["embed", cube, "--model", run, "--tracking-uri", tracking, "--tile", 8,
             "--scheduler", sched])
        assert _listing(cube) == files  # same arrays and chunks: nothing left over
        assert not [p.name for p in folder.iterdir() if p.name.startswith(f".{cube.name}")]
        assert verify_store(cube) == []

    embed(same)
    ds = open_cube(cube)
    assert ds["embedding_t8"].attrs["esdc_model_run"] == same
    np.testing.assert_allclose(ds["embedding_t8"].values, old, rtol=1e-5, atol=1e-6)
    meta = json.loads((cube / "zarr.json").read_text())["consolidated_metadata"]["metadata"]
    assert {k for k in meta if "t8" in k} == {"embedding_t8", "tile_y_t8", "tile_x_t8",
                                              "tile_y_t8_bounds", "tile_x_t8_bounds"}

    embed(other)
    ds = open_cube(cube)
    new = ds["embedding_t8"]
    assert new.attrs["esdc_model_run"] == other
    assert new.shape == old.shape and not np.allclose(new.values, old, atol=1e-3)
    assert new.attrs["esdc_model_sha256"] != _bundle(folder).sha256
    # the old index no longer matches the cube's embeddings: refused until rebuilt
    _fails(["search", cube, "--lat", 0, "--lon", 0], "lineage mismatch", other, "esdc index")
    _ok(["index", cube, "--kind", "flat"])
    res = json.loads(_ok(["search", cube, "--lat", 0, "--lon", 0, "-k", 3, "--json"]))
    assert res["neighbours"][0]["distance"] == pytest.approx(0, abs=1e-5)
    assert (res["neighbours"][0]["tile_y"], res["neighbours"][0]["tile_x"]) == (
        res["query"]["tile_y"], res["query"]["tile_x"])


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(("args", "needles"), [
    (["--lat", 95, "--lon", 0], ["lat 95.0 is outside the embedded grid"]),
    (["--lat", 0, "--lon", 200], ["lon 200.0 is outside the embedded grid"]),
    (["--lat", 0, "--lon", 0, "-k", 0], ["k = 0 must be between 1 and 128"]),
    (["--lat", 0, "--lon", 0, "-k", -3], ["k = -3 must be between 1 and 128"]),
    (["--lat", 0, "--lon", 0, "-k", 129], ["k = 129 must be between 1 and 128"]),
    (["--lat", 0, "--lon", 0, "--bbox", "1,2,3"], ["give four numbers"]),
    (["--lat", 0, "--lon", 0, "--variable", "embedding_t99"], ["is not an embedding",
                                                              "embedding_t8"]),
], ids=["lat-outside", "lon-outside", "k-zero", "k-negative", "k-too-large", "bbox",
        "variable"])
def test_search_bad_input(embedded_cube, args, needles):
    _fails(["search", embedded_cube, *args], *needles)


def test_search_needs_time_on_a_time_cube(embedded_cube_time):
    _fails(["search", embedded_cube_time, "--lat", 0, "--lon", 0], "give --time")


def test_search_cube_without_embeddings(tmp_path):
    from esdc.testing import new_cube

    cube = tmp_path / "plain.zarr"
    new_cube(shape=(16, 32), times=0).to_zarr(cube, zarr_format=3, consolidated=True)
    _fails(["search", cube, "--lat", 0, "--lon", 0], "the cube has no embeddings",
           "esdc embed")
    _fails(["index", cube], "the cube has no embeddings")
    _fails(["search", tmp_path / "missing.zarr", "--lat", 0, "--lon", 0], "no cube at")


def test_search_without_or_with_a_corrupted_index(embedded_cube, tmp_path):
    from esdc.search import index_dir

    cube = _copy(embedded_cube, tmp_path, with_index=False)
    _fails(["search", cube, "--lat", 0, "--lon", 0], "no index for 'embedding_t8'",
           "esdc index")
    shutil.copytree(index_dir(embedded_cube), index_dir(cube))
    manifest = json.loads((index_dir(cube) / "embedding_t8.json").read_text())
    f = index_dir(cube) / manifest["index_file"]  # this generation's file
    data = bytearray(f.read_bytes())
    data[-8] ^= 0xFF
    f.write_bytes(bytes(data))
    _fails(["search", cube, "--lat", 0, "--lon", 0], "does not match its manifest")


def test_index_from_another_model_is_refused(embedded_cube, tmp_path):
    """Embeddings replaced by another model's: the old index fails its lineage check."""
    import torch

    from esdc.embed import EncoderBundle, compute_embeddings, write_embeddings
    from esdc.ml.ssl import Encoder
    from esdc.search import SearchEngine

    cube = _copy(embedded_cube, tmp_path)
    meta = json.loads((cube.parent / "encoder.json").read_text())
    torch.manual_seed(7)
    torch.save(Encoder(meta["in_channels"], **meta["params"]).state_dict(),
               tmp_path / "other.pt")
    write_embeddings(cube, compute_embeddings(str(cube), EncoderBundle(
        tmp_path / "other.pt", meta, "other-run"), 8))
    out = _fails(["search", cube, "--lat", 0, "--lon", 0], "lineage mismatch", "other-run",
                 "rebuild the index")
    assert len(out.strip().splitlines()) <= 3  # one paragraph
    with pytest.raises(EsdcError, match="lineage mismatch"):
        SearchEngine(cube)


@pytest.mark.parametrize("size", [5, 15, 17, 64])
def test_vector_of_the_wrong_dimension(embedded_cube, size):
    from esdc.search import SearchEngine

    engine = SearchEngine(embedded_cube)
    with pytest.raises(EsdcError, match=f"query vector has {size} values; the index holds "
                                        "16-dimensional"):
        engine.search_vector(np.ones(size, dtype="float32"))
    with pytest.raises(EsdcError, match="NaN"):
        engine.search_vector(np.full(16, np.nan, dtype="float32"))
    assert len(engine.search_vector(np.ones(16), k=4).neighbours) == 4


# ---------------------------------------------------------------- the real Earth cube
@pytest.mark.slow
def test_earth_pipeline_search_beats_random(earth_cube, tmp_path, monkeypatch, client):
    """Train (2 epochs), embed, index, search and evaluate on a copy of the Earth cube."""
    pytest.importorskip("mlflow")
    from esdc.ml.config import TrainConfig
    from esdc.ml.train import train

    cube = tmp_path / "earth.zarr"
    shutil.copytree(earth_cube, cube)
    monkeypatch.chdir(tmp_path)  # MLflow's artifact root defaults to ./mlruns
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = yaml.safe_load((ROOT / "recipes" / "train" / "encoder.yaml").read_text())
    cfg["epochs"] = 2
    res = train(str(cube), TrainConfig.model_validate(cfg), tracking)
    assert res.metric == "simsiam_loss" and res.test < res.baseline  # it learned

    _ok(["embed", cube, "--model", res.run_id, "--tracking-uri", tracking, "--tile", 8,
         "--scheduler", client.scheduler.address])
    _ok(["index", cube])
    found = json.loads(_ok(["search", cube, "--lat", -3.0, "--lon", -60.0, "-k", 5,
                            "--json"]))  # Amazon rainforest
    assert len(found["neighbours"]) == 5
    assert found["neighbours"][0]["distance"] == pytest.approx(0, abs=1e-5)
    assert found["query"]["variable"] == "embedding_t8"

    ev = json.loads(_ok(["evaluate-search", cube, "--label", "koppen_class", "--queries",
                         500, "--json"]))
    p = ev["precision_at_k"]
    assert ev["k"] == 10 and ev["queries"] == 500 and ev["variable"] == "embedding_t8"
    assert p["random"] == pytest.approx(p["random_expected"], abs=0.05)
    assert p["embedding"] > p["random_expected"] + 0.2
    assert p["embedding"] > p["random"] + 0.2
