"""Multi-scale search: tiles of 8, 16 and 32 cells embedded by one encoder, indexed, searched.

A seeded, untrained encoder embeds a synthetic Blue Marble cube at three scales with
:func:`esdc.embed.embed_cube` (what ``esdc embed`` runs), every scale is indexed with
:func:`esdc.search.build_indexes` (``esdc index``), and the search is asked across
scales from Python, the CLI and HTTP.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from esdc.errors import SearchIndexError
from tests.search.conftest import INPUTS

pytest.importorskip("faiss")
pytest.importorskip("torch")

SCALES = [8, 16, 32]


def _bundle(folder: Path):
    import torch

    from esdc.embed import EncoderBundle
    from esdc.ml.ssl import Encoder

    torch.manual_seed(0)
    meta = {"class": "esdc.ml.ssl.Encoder", "in_channels": len(INPUTS),
            "params": {"dim": 16, "width": 8}, "inputs": INPUTS, "tile": [8, 8]}
    torch.save(Encoder(len(INPUTS), **meta["params"]).state_dict(), folder / "encoder.pt")
    (folder / "encoder.json").write_text(json.dumps(meta))
    return EncoderBundle(folder / "encoder.pt", meta)


@pytest.fixture(scope="module")
def scaled(tmp_path_factory) -> Path:
    """128 x 256 cells; embeddings of 8, 16 and 32 cells (the default), every scale indexed."""
    import esdc.testing
    from esdc.embed import embed_cube
    from esdc.search import build_indexes

    folder = tmp_path_factory.mktemp("multiscale")
    cube = folder / "cube.zarr"
    ds = esdc.testing.new_cube(shape=(128, 256), times=0, variables=tuple(INPUTS))
    # a class per 32-cell block that shifts its pixels (an untrained encoder sees it)
    blocks = np.random.default_rng(3).choice(3, size=(4, 8), p=(0.5, 0.3, 0.2))
    cls = np.kron(blocks, np.ones((32, 32), dtype=int)).astype("uint8")
    for c, v in enumerate(INPUTS):
        ds[v].data[...] += np.array([[0, 0, 0], [3, 0, 0], [0, -3, 3]], "float32")[cls, c]
    ds["surface_class"] = (("lat", "lon"), cls, {
        "units": "1", "flag_values": [0, 1, 2], "flag_meanings": "water land ice",
        "grid_mapping": "crs"})
    ds.to_zarr(cube, zarr_format=3, consolidated=True)
    names = embed_cube(str(cube), _bundle(folder))
    assert names == ["embedding_t8", "embedding_t16", "embedding_t32"]
    build_indexes(cube, kind="flat")
    return cube


def _engine(cube: Path):
    from esdc.search import SearchEngine

    return SearchEngine(cube)


# ------------------------------------------------------------------ embedding
def test_every_scale_is_area_averaged_to_the_encoder_input(scaled):
    """A 16- or 32-cell tile's vector is the encoder's of the tile coarsened to 8 x 8 cells."""
    import xarray as xr

    from esdc.conventions import ATTR_INPUT_SIZE, ATTR_NORMALISATION, ATTR_TILE_SIZE
    from esdc.embed import EncoderBundle
    from esdc.storage import open_cube

    ds = open_cube(scaled)
    meta = json.loads((scaled.parent / "encoder.json").read_text())
    bundle = EncoderBundle(scaled.parent / "encoder.pt", meta)
    for size in SCALES:
        emb = ds[f"embedding_t{size}"]
        assert emb.attrs[ATTR_TILE_SIZE] == size and emb.attrs[ATTR_INPUT_SIZE] == 8
        assert emb.shape[:2] == (128 // size, 256 // size)
        norm = emb.attrs[ATTR_NORMALISATION]
        ty, tx = 1, 2
        block = np.stack([(ds[v].values[ty * size:(ty + 1) * size, tx * size:(tx + 1) * size]
                           - norm[v]["mean"]) / norm[v]["scale"] for v in INPUTS])
        coarse = xr.DataArray(block, dims=("c", "y", "x")).coarsen(
            y=size // 8, x=size // 8).mean().values
        want = bundle.encode(coarse[None].astype("float32"))[0]
        np.testing.assert_allclose(emb.values[ty, tx], want, rtol=1e-4, atol=1e-5)


def test_default_scales_are_those_that_fit_the_grid(tmp_path):
    """A grid 20 cells high gets tiles of 8 and 16 cells by default (no 32-cell tile fits)."""
    import esdc.testing
    from esdc.conventions import ATTR_INPUT_SIZE
    from esdc.embed import embed_cube
    from esdc.storage import open_cube

    cube = tmp_path / "narrow.zarr"
    esdc.testing.new_cube(shape=(20, 64), times=0, variables=tuple(INPUTS)).to_zarr(
        cube, zarr_format=3, consolidated=True)
    assert embed_cube(str(cube), _bundle(tmp_path)) == ["embedding_t8", "embedding_t16"]
    assert open_cube(cube)["embedding_t16"].attrs[ATTR_INPUT_SIZE] == 8
    # a scale added later keeps the input size of the cube's embeddings by this encoder
    assert embed_cube(str(cube), _bundle(tmp_path), [20]) == ["embedding_t20"]
    assert open_cube(cube)["embedding_t20"].attrs[ATTR_INPUT_SIZE] == 8


def test_append_plan_keeps_the_input_size(scaled):
    from esdc.embed import EncoderBundle, append_plan

    meta = json.loads((scaled.parent / "encoder.json").read_text())
    bundle = EncoderBundle(scaled.parent / "encoder.pt", meta)
    plan = append_plan(scaled, bundle)
    assert [(p.tile, p.input_size, p.start, p.stop) for p in plan] == [
        (8, 8, 0, 0), (16, 8, 0, 0), (32, 8, 0, 0)]  # static: nothing to append


# ------------------------------------------------------------------ index and search
def test_every_scale_is_indexed_and_its_manifest_records_the_scales(scaled):
    from esdc.search import index_dir
    from esdc.search.manifest import read_manifest

    for size in SCALES:
        m = read_manifest(index_dir(scaled) / f"embedding_t{size}.json")
        assert m is not None and m.scale == size and m.scales == SCALES
        assert m.count == (128 // size) * (256 // size)
    engine = _engine(scaled)
    assert sorted(engine.levels) == SCALES and engine.tile_size == 8
    assert engine.describe()["scales"] == SCALES


def test_search_across_scales(scaled):
    engine = _engine(scaled)
    res = engine.search_tile(10.0, 20.0, k=12, scales="all")
    assert res.query["scale"] == 8 and res.query["scales"] == SCALES
    first = res.neighbours[0]
    assert (first.scale, first.tile_y, first.tile_x, first.distance) == (
        8, res.query["tile_y"], res.query["tile_x"], pytest.approx(0.0, abs=1e-5))
    d = [n.distance for n in res.neighbours]
    assert d == sorted(d) and len(d) == 12
    for n in res.neighbours:
        lev = engine.levels[n.scale]
        w, s, e, north = n.bounds
        assert w < n.x < e and s < n.y < north
        assert (e - w) == pytest.approx(n.scale * 360 / 256)  # tile width: scale cells
        assert (n.y, n.x) == (lev.yc[n.tile_y], lev.xc[n.tile_x])
    # the merged answer holds exactly the nearest tiles of each scale's own ranking
    for size in SCALES:
        own = engine.search_tile(10.0, 20.0, k=12, scales=[size])
        mine = [(n.tile_y, n.tile_x) for n in res.neighbours if n.scale == size]
        assert [(n.tile_y, n.tile_x) for n in own.neighbours][:len(mine)] == mine
    # a query tile of 16 cells: itself first; JSON gives scale and bounds
    res16 = engine.search_tile(10.0, 20.0, k=5, scale=16, scales="8,16")
    assert (res16.neighbours[0].scale, res16.neighbours[0].distance) == (16, pytest.approx(
        0.0, abs=1e-5))
    row = res16.to_json()["neighbours"][0]
    assert {"scale", "tile_y", "tile_x", "lat", "lon", "bounds", "time", "distance"} <= set(row)
    assert res16.query["scale"] == 16 and res16.query["scales"] == [8, 16]
    # default: the query tile's scale only (as before multi-scale)
    assert {n.scale for n in engine.search_tile(10.0, 20.0, k=20, scale=32).neighbours} == {32}


def test_refine_with_tiles_of_several_scales(scaled):
    engine = _engine(scaled)
    res = engine.refine([{"lat": 10, "lon": 20, "scale": 8}, {"lat": 10, "lon": 20, "scale": 32}],
                        [{"lat": -40, "lon": 120, "scale": 16}], k=10)
    assert res.query["scales"] == [8, 32]  # the positives' scales
    assert {n.scale for n in res.neighbours} <= {8, 32}
    marked = {(m["scale"], m["tile_y"], m["tile_x"]) for m in res.query["positive"]}
    assert not marked & {(n.scale, n.tile_y, n.tile_x) for n in res.neighbours}
    every = engine.refine([{"lat": 10, "lon": 20, "scale": 16}], k=30, scales="all")
    assert {n.scale for n in every.neighbours} <= set(SCALES)


def test_scales_not_held_are_refused_with_the_scales_held(scaled):
    engine = _engine(scaled)
    with pytest.raises(SearchIndexError, match=r"scales=\[64\]: the cube holds embeddings of "
                       r"\[8, 16, 32\] cells per tile"):
        engine.search_tile(10.0, 20.0, scales="8,64")
    with pytest.raises(SearchIndexError, match=r"scale=12 is not embedded in the cube; its "
                       r"scales \(cells per tile\) are \[8, 16, 32\]"):
        engine.search_tile(10.0, 20.0, scale=12)
    with pytest.raises(SearchIndexError, match=r"positive tile 2: scale=64 is not embedded"):
        engine.refine([{"lat": 10, "lon": 20}, {"lat": 0, "lon": 0, "scale": 64}])
    with pytest.raises(SearchIndexError, match=r"negative tile 1: scale=4 is not embedded"):
        engine.refine([{"lat": 10, "lon": 20}], [{"lat": 0, "lon": 0, "scale": 4}])
    for bad in ("big", "8;16", "0", "-8"):
        with pytest.raises(SearchIndexError, match="is not 'all' or a comma list"):
            engine.search_tile(10.0, 20.0, scales=bad)
    with pytest.raises(SearchIndexError, match="k = 700 must be between 1 and 672"):
        engine.search_tile(10.0, 20.0, k=700, scales="all")  # 512 + 128 + 32 tiles


def test_scale_embedded_but_not_indexed(scaled, tmp_path):
    from esdc.search import SearchEngine, index_dir

    cube = tmp_path / scaled.name
    shutil.copytree(scaled, cube)
    shutil.copytree(index_dir(scaled), index_dir(cube))
    for f in index_dir(cube).glob("embedding_t32*"):
        f.unlink()
    engine = SearchEngine(cube)
    assert sorted(engine.levels) == [8, 16] and sorted(engine.scales) == SCALES
    assert {n.scale for n in engine.search_tile(10.0, 20.0, k=20, scales="all").neighbours} \
        <= {8, 16}
    with pytest.raises(SearchIndexError, match=r"scales=\[32\].*searchable: \[8, 16\] "
                       r"\(index them: `esdc index"):
        engine.search_tile(10.0, 20.0, scales="32")


def test_single_scale_cube_still_searches(embedded_cube):
    """A cube of one scale (an older esdc's): every scale is that one."""
    engine = _engine(embedded_cube)
    assert list(engine.levels) == [8]
    res = engine.search_tile(10.0, 20.0, k=3, scales="all")
    assert [n.scale for n in res.neighbours] == [8, 8, 8]


# ------------------------------------------------------------------ evaluation
def test_precision_per_scale_and_scale_consistency(scaled):
    """The figures of evaluate-search, checked against the engine's own multi-scale answers."""
    pytest.importorskip("sklearn")
    from esdc.search.evaluate import evaluate_scales, evaluate_search

    r = evaluate_scales(scaled, "surface_class", k=10, queries=10_000)
    assert sorted(r["per_scale"], key=int) == ["8", "16", "32"]
    for size, v in r["per_scale"].items():
        assert v["variable"] == f"embedding_t{size}" and v["queries"] == v["tiles"]
        assert 0.55 < v["embedding"] <= 1 and 0.55 < v["all_scales"] <= 1  # random: 0.38
        assert sum(v["neighbour_scales"].values()) == pytest.approx(1.0)
    c = r["scale_consistency"]
    assert list(c["pairs"]) == ["8->16", "16->32"] and c["k"] == 10
    # the 8 -> 16 figure by hand: the engine's answer over every scale, the query left out
    engine = _engine(scaled)
    lev8, found = engine.levels[8], []
    for ty in range(lev8.shape[0]):
        for tx in range(lev8.shape[1]):
            res = engine.search_tile(float(lev8.yc[ty]), float(lev8.xc[tx]), k=11, scales="all")
            others = [(n.scale, n.tile_y, n.tile_x) for n in res.neighbours
                      if (n.scale, n.tile_y, n.tile_x) != (8, ty, tx)][:10]
            found.append((16, ty // 2, tx // 2) in others)
    assert c["pairs"]["8->16"]["queries"] == 512
    assert c["pairs"]["8->16"]["parent_in_top_k"] == pytest.approx(np.mean(found), abs=0.01)
    n = 512 + 128
    assert c["overall"] == pytest.approx((512 * np.mean(found) + 128 * c["pairs"][
        "16->32"]["parent_in_top_k"]) / n, abs=0.01)
    full = evaluate_search(scaled, "surface_class", k=10, queries=50)
    assert full["per_scale"]["8"]["queries"] == 50 and full["scale_consistency"]["pairs"]


# ------------------------------------------------------------------ CLI
def _cli(args: list):
    from esdc.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_search_scales_json(scaled):
    res = _cli(["search", scaled, "--lat", 10, "--lon", 20, "--scales", "all", "--json",
                "-k", 15])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["query"]["scales"] == SCALES and out["query"]["scale"] == 8
    for n in out["neighbours"]:
        assert {"scale", "tile_y", "tile_x", "lat", "lon", "bounds", "time", "distance"} <= set(n)
        assert n["scale"] in SCALES and len(n["bounds"]) == 4
    res = _cli(["search", scaled, "--lat", 10, "--lon", 20, "--scale", 32, "--scales", "16,32"])
    assert res.exit_code == 0, res.output
    assert "scale=32" in res.stdout and "scales [16, 32]" in res.stdout
    res = _cli(["search", scaled, "--positive", "10,20,32", "--negative", "-40,120,8",
                "--scales", "all", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["query"]["scales"] == SCALES


def test_cli_bad_scales_exit_2(scaled):
    for args, needle in [
        (["--scales", "8,64"], "--scales [64]: the cube holds embeddings of [8, 16, 32]"),
        (["--scale", 12], "scale=12 is not embedded in the cube; its scales (cells per tile) "
                          "are [8, 16, 32]"),
        (["--scales", "eight"], "--scales 'eight' is not 'all' or a comma list"),
        (["--positive", "0,0,64"], "positive tile 2: scale=64 is not embedded"),
    ]:
        res = _cli(["search", scaled, "--lat", 10, "--lon", 20, *args])
        assert res.exit_code == 2, res.output
        assert needle in " ".join(res.output.split()), res.output


def test_cli_evaluate_reports_scales(scaled):
    pytest.importorskip("sklearn")
    res = _cli(["evaluate-search", scaled, "--label", "surface_class", "--queries", 40,
                "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert set(r["per_scale"]) == {"8", "16", "32"} and 0 <= r["scale_consistency"][
        "overall"] <= 1
    res = _cli(["evaluate-search", scaled, "--label", "surface_class", "--queries", 40])
    assert res.exit_code == 0 and "scale consistency (parent tile in the top 10" in res.stdout


def test_cli_embed_scales_option(scaled):
    res = _cli(["embed", scaled, "--model", "0" * 32, "--scales", "8,x"])
    assert res.exit_code == 2 and "--scales 8,x: give tile sizes in cells, e.g. 8,16,32" in \
        " ".join(res.output.split())
    res = _cli(["embed", scaled, "--model", "0" * 32, "--scales", "8,0"])
    assert res.exit_code == 2 and "tile sizes must be positive" in res.output


def test_cli_index_builds_every_scale(scaled, tmp_path):
    cube = tmp_path / scaled.name
    shutil.copytree(scaled, cube)
    res = _cli(["index", cube, "--kind", "flat"])
    assert res.exit_code == 0, res.output
    for size in SCALES:
        assert f"embedding_t{size} (scale {size}, flat" in " ".join(res.stdout.split())
    res = _cli(["index", cube, "--scales", "16,64"])
    assert res.exit_code == 2 and "--scales [64]: the cube holds no embedding" in \
        " ".join(res.output.split())


# ------------------------------------------------------------------ HTTP
def _client(cube: Path):
    from esdc.search.http import create_app

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient
    return TestClient(create_app(cube, watch=None))


def test_http_scales(scaled):
    pytest.importorskip("fastapi")
    api = _client(scaled)
    assert api.get("/health").json()["manifest"]["scales"] == SCALES
    r = api.get("/search/tile", params={"lat": 10, "lon": 20, "k": 12, "scales": "all"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"]["scales"] == SCALES and body["query"]["scale"] == 8
    assert len(body["query"]["bounds"]) == 4
    for n in body["neighbours"]:
        assert {"scale", "tile_y", "tile_x", "lat", "lon", "bounds", "time", "distance"} <= set(n)
    engine = api.app.state.engine
    want = engine.search_tile(10.0, 20.0, k=12, scales="all").to_json()["neighbours"]
    assert [(n["scale"], n["tile_y"], n["tile_x"]) for n in body["neighbours"]] == [
        (n["scale"], n["tile_y"], n["tile_x"]) for n in want]
    r = api.get("/search/tile", params={"lat": 10, "lon": 20, "scale": 16, "scales": "16,32"})
    assert r.status_code == 200 and {n["scale"] for n in r.json()["neighbours"]} <= {16, 32}
    assert r.json()["neighbours"][0]["scale"] == 16
    for params, needle in [({"scales": "8,64"}, "scales=[64]: the cube holds embeddings of "
                            "[8, 16, 32]"),
                           ({"scale": 12}, "scale=12 is not embedded in the cube; its scales "
                            "(cells per tile) are [8, 16, 32]"),
                           ({"scales": "x"}, "is not 'all' or a comma list")]:
        bad = api.get("/search/tile", params={"lat": 10, "lon": 20, **params})
        assert bad.status_code == 422 and needle in bad.json()["detail"], bad.text
    body = {"positive": [{"lat": 10, "lon": 20, "scale": 16}, {"lat": 10, "lon": 20}],
            "negative": [{"lat": -40, "lon": 120, "scale": 32}], "k": 6, "scales": "all"}
    r = api.post("/search/refine", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["query"]["scales"] == SCALES
    assert [m["scale"] for m in r.json()["query"]["positive"]] == [16, 8]
    bad = api.post("/search/refine", json={**body, "negative": [{"lat": 0, "lon": 0,
                                                                 "scale": 64}]})
    assert bad.status_code == 422 and "negative tile 1: scale=64 is not embedded" in \
        bad.json()["detail"]
    vec = engine.vector_of(1, 1, scale=32).tolist()
    r = api.post("/search/vector", json={"vector": vec, "k": 3, "scales": [32]})
    assert r.status_code == 200 and r.json()["neighbours"][0]["scale"] == 32
    assert r.json()["neighbours"][0]["distance"] == pytest.approx(0.0, abs=1e-5)
    png = api.get("/tiles/3/7.png", params={"scale": 32})
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert api.get("/tiles/4/0.png", params={"scale": 32}).status_code == 422  # 4 x 8 tiles
