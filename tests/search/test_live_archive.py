"""A live archive: new granules flow into the cube, its embeddings and the index while it serves.

The OSTIA monthly sample, cut into one NetCDF granule per month (the fixture of
tests/sources/test_granules.py), is the archive; the cube is its equatorial band at
1 degree (9 x 360 cells), embedded in tiles of 3 x 3 cells. The encoder is the cheapest
real one ``esdc embed`` takes: a seeded, untrained :class:`esdc.ml.ssl.Encoder` (what
``esdc train`` with ``task: embedding`` starts from), logged as an MLflow run for the
CLI, loaded from its files for the library tests. The archive grows from 8 months
(2006-04 .. 2006-11) to 12 (.. 2007-03).
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

pytest.importorskip("faiss")
pytest.importorskip("torch")

from esdc.build import build  # noqa: E402
from esdc.cli import app  # noqa: E402
from esdc.errors import EmbeddingConflictError, SearchIndexError  # noqa: E402
from esdc.loopback import LoopbackServer  # noqa: E402
from esdc.recipe import Recipe  # noqa: E402
from tests.sources.test_granules import ostia_granules, ostia_recipe  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "https://archive.example/ostia"
TILE = 3
OLD_END, NEW_END = "2006-11-01", "2007-03-01"  # 8 months, then 4 more
META = {"class": "esdc.ml.ssl.Encoder", "in_channels": 1, "params": {"dim": 16, "width": 8},
        "inputs": ["sst"], "tile": [TILE, TILE]}
runner = CliRunner()


def live_recipe(source: dict[str, Any], end: str) -> dict[str, Any]:
    """The granule recipe of test_granules over the whole equatorial band of the sample."""
    doc = ostia_recipe(source, end=end)
    doc["grid"]["bbox"] = [0, -5, 360, 4]
    return doc


def encoder_files(folder: Path, seed: int = 0) -> Path:
    """``encoder.pt`` (a seeded, untrained encoder) and ``encoder.json`` in ``folder``."""
    import torch

    from esdc.ml.ssl import Encoder

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(Encoder(1, **META["params"]).state_dict(), folder / "encoder.pt")
    (folder / "encoder.json").write_text(json.dumps(META))
    return folder


def bundle(folder: Path, seed: int = 0) -> Any:
    from esdc.embed import EncoderBundle

    files = encoder_files(folder / f"encoder-{seed}", seed)
    return EncoderBundle(files / "encoder.pt", META)


def chunk_bytes(cube: Path, array: str) -> dict[Path, bytes]:
    return {p.relative_to(cube): p.read_bytes() for p in (cube / array).rglob("*")
            if p.is_file() and p.name != "zarr.json"}


@pytest.fixture(scope="module")
def grown(ostia_granules, tmp_path_factory) -> tuple[Path, Path]:  # noqa: F811
    """An 8-month cube with ``embedding_t3``, and its copy appended to 12 months.

    The copy is appended (``build(append=True)``) after it was embedded: its embedding
    is carried over with 12 time steps, the last 4 NaN.
    """
    from esdc.embed import embed_cube

    folder = tmp_path_factory.mktemp("live")
    source = {"files": {"pattern": f"{ostia_granules}/ostia_{{time:%Y%m}}.nc"}}
    old = build(Recipe.from_dict(live_recipe(source, OLD_END)), folder / "old.zarr")
    embed_cube(str(old), bundle(folder), [TILE])
    new = folder / "new.zarr"
    shutil.copytree(old, new)
    build(Recipe.from_dict(live_recipe(source, NEW_END)), new, append=True)
    return old, new


def _copy(cube: Path, tmp_path: Path) -> Path:
    out = tmp_path / cube.name
    shutil.copytree(cube, out)
    return out


# ------------------------------------------------------------------ the cube's append
def test_cube_append_carries_the_embeddings(grown):
    from esdc.storage import resolve
    from esdc.verify import verify_store

    old, new = grown
    with xr.open_zarr(old) as a, xr.open_zarr(new) as b:
        va, vb = a["embedding_t3"], b["embedding_t3"]
        assert va.dims == vb.dims == ("tile_y_t3", "tile_x_t3", "time", "feature_t3")
        assert va.shape == (3, 120, 8, 16) and vb.shape == (3, 120, 12, 16)
        assert vb.attrs["esdc_time_steps"] == 8  # the 4 new steps are not embedded yet
        np.testing.assert_array_equal(vb.values[:, :, :8], va.values)
        assert np.isnan(vb.values[:, :, 8:]).all()
        assert np.isfinite(va.values).all(axis=-1).mean() > 0.3  # the ocean
    # the embedding's files were carried over, not rewritten; outside the build's record
    assert chunk_bytes(new, "embedding_t3") == chunk_bytes(old, "embedding_t3")
    assert verify_store(new) == []
    report = resolve(new).checksums()
    assert "embedding_t3" in report.uncovered and not report.problems


# ------------------------------------------------------------------ embed --append
def test_embed_append_writes_only_new_steps(grown, tmp_path):
    from esdc.embed import compute_embeddings, embed_cube
    from esdc.verify import verify_store

    cube = _copy(grown[1], tmp_path)
    stored = chunk_bytes(cube, "embedding_t3")
    assert len(stored) == 8  # one chunk file per time step
    said: list[str] = []
    enc = bundle(tmp_path)
    assert embed_cube(str(cube), enc, append=True, report=said.append) == ["embedding_t3"]
    assert said == ["appended time steps 8..11 to embedding_t3"]
    after = chunk_bytes(cube, "embedding_t3")
    assert len(after) == 12 and all(after[k] == v for k, v in stored.items())
    with xr.open_zarr(cube) as ds:
        emb = ds["embedding_t3"]
        assert emb.attrs["esdc_time_steps"] == 12
        got = emb.values
        norm = emb.attrs["esdc_normalisation"]
    assert np.isfinite(got[:, :, 8:]).all(axis=-1).mean() > 0.3
    # the same vectors as embedding all 12 steps at once with the recorded normalisation
    whole = compute_embeddings(str(cube), enc, TILE, normalised_with=norm)["embedding_t3"]
    np.testing.assert_array_equal(whole.values, got)
    assert verify_store(cube) == []
    said.clear()
    assert embed_cube(str(cube), enc, append=True, report=said.append) == []
    assert "nothing to append" in said[0]


def test_embed_append_refuses_what_would_mix(grown, tmp_path):
    from esdc.embed import append_plan
    from esdc.ml.stats import write_statistics
    from esdc.storage import resolve

    cube = _copy(grown[1], tmp_path)
    with pytest.raises(EmbeddingConflictError, match=r"embedding_t3 was made by encoder run .*"
                       r"not by the encoder given"):
        append_plan(cube, bundle(tmp_path, seed=1))
    enc = bundle(tmp_path)
    with pytest.raises(EmbeddingConflictError, match=r"no embedding of tile size \[5\] to "
                       r"append to; its tile sizes are \[3\]"):
        append_plan(cube, enc, [5])
    write_statistics(cube, {"sst": {"mean": 280.0, "std": 10.0}})
    with pytest.raises(EmbeddingConflictError, match="stored statistics normalise"):
        append_plan(cube, enc)
    resolve(cube).update(attrs={"sst": {"esdc_statistics": None}})
    resolve(cube).update(attrs={"embedding_t3": {"esdc_normalisation": None}})
    with pytest.raises(EmbeddingConflictError, match="older esdc"):
        append_plan(cube, enc)
    # nothing was written by a refused append
    assert chunk_bytes(cube, "embedding_t3") == chunk_bytes(grown[1], "embedding_t3")


def test_cli_embed_append_without_embeddings(ostia_granules, tmp_path):  # noqa: F811
    source = {"files": {"pattern": f"{ostia_granules}/ostia_{{time:%Y%m}}.nc"}}
    cube = build(Recipe.from_dict(live_recipe(source, "2006-05-01")), tmp_path / "c.zarr")
    res = runner.invoke(app, ["embed", str(cube), "--append"])
    assert res.exit_code == 2, res.output
    assert "--append: " in res.output and "no embeddings to append to" in res.output
    assert "append=True" not in res.output
    res = runner.invoke(app, ["embed", str(cube)])
    assert res.exit_code == 2 and "--model RUN" in res.output


# ------------------------------------------------------------------ index --update
@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_index_update_adds_only_new_vectors(grown, tmp_path, kind):
    from esdc.embed import embed_cube
    from esdc.search import SearchEngine, build_index, update_index
    from esdc.search.index import index_dir

    cube = _copy(grown[1], tmp_path)
    small = {"nlist": 8, "m": 4} if kind == "ivfpq" else {}  # few vectors: quick training
    first = build_index(cube, kind=kind, **small)  # the 8 embedded steps only
    assert (first.generation, first.time_steps) == (1, 8)
    assert first.time_range == ["2006-04-01", "2006-11-01"]
    assert update_index(cube) == first  # nothing embedded since: no new generation
    engine = SearchEngine(cube)
    assert len(engine.times) == 8 and engine.identity.startswith("1-")
    embed_cube(str(cube), bundle(tmp_path), append=True)
    served = SearchEngine(cube)  # appended vectors are not searched until indexed
    assert served.identity == engine.identity and len(served.times) == 8
    m = update_index(cube)
    assert (m.generation, m.time_steps, m.kind) == (2, 12, kind)
    assert m.time_range == ["2006-04-01", "2007-03-01"]
    assert [(g["generation"], g["mode"], g["time_steps"]) for g in m.generations] == [
        (1, "build", [0, 8]), (2, "update", [8, 12])]
    assert m.generations[1]["added"] == m.count - first.count > 0
    assert m.centre == first.centre and m.params == first.params  # not retrained
    engine = SearchEngine(cube)
    assert len(engine.times) == 12 and engine.identity.startswith("2-")
    # every new vector is found at its own tile (nearest, or among equals for HNSW/IVF)
    with xr.open_zarr(cube) as ds:
        vec = ds["embedding_t3"].values
    for ty, tx, t in np.argwhere(np.isfinite(vec[:, :, 8:]).all(axis=-1))[::97]:
        found = engine.search_vector(vec[ty, tx, t + 8], k=10).neighbours
        assert any((n.tile_y, n.tile_x, n.t) == (ty, tx, t + 8) for n in found)
        assert found[0].distance < 1e-5
    # the same set of ids and vectors as a rebuild from scratch
    rebuilt = build_index(cube, kind=kind, **small)
    assert (rebuilt.count, rebuilt.ids_sha256, rebuilt.vectors_sha256, rebuilt.generation) == (
        m.count, m.ids_sha256, m.vectors_sha256, 3)
    assert len(list(index_dir(cube).glob("embedding_t3.*.faiss"))) == 2  # current, previous


def test_index_update_refusals(grown, tmp_path):
    from esdc.embed import compute_embeddings, write_embeddings
    from esdc.search import build_index, update_index

    cube = _copy(grown[1], tmp_path)
    with pytest.raises(SearchIndexError, match="no index of 'embedding_t3' beside .* to update"):
        update_index(cube)
    build_index(cube, kind="flat")
    other = compute_embeddings(str(cube), bundle(tmp_path, seed=1), TILE)  # re-embedded
    write_embeddings(cube, other)
    with pytest.raises(SearchIndexError, match="lineage mismatch"):
        update_index(cube)
    res = runner.invoke(app, ["index", str(cube), "--update"])
    assert res.exit_code == 2 and "lineage mismatch" in res.output


# ------------------------------------------------------------------ the whole loop, served
def _log_encoder(folder: Path, tracking: str) -> str:
    """The seeded, untrained encoder as an MLflow run (what ``esdc embed --model`` takes)."""
    import mlflow

    art = encoder_files(folder / "model")
    mlflow.set_tracking_uri(tracking)
    exp = mlflow.create_experiment("live_archive", artifact_location=(folder / "mlruns").as_uri())
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_artifacts(str(art), artifact_path="model")
    return run.info.run_id


def _ok(*args: Any) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.stdout


@pytest.mark.slow
def test_live_archive_while_serving(ostia_granules, tmp_path, monkeypatch,  # noqa: F811
                                    client):
    """Granules -> cube -> embeddings -> index -> serve; the archive grows while it answers.

    A real ``esdc serve`` (uvicorn, 127.0.0.1) answers a stream of searches from two
    client threads while the archive gains 4 monthly granules and ``esdc update``,
    ``esdc embed --append`` and ``esdc index --update`` run: every answer is 200 and
    byte for byte the answer of the index generation its ``X-Esdc-Index`` header
    names; then the new months are found.
    """
    pytest.importorskip("fastapi")
    pytest.importorskip("mlflow")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_load

    monkeypatch.setenv("ESDC_GRANULE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    archive = tmp_path / "archive"
    archive.mkdir()
    months = sorted(ostia_granules.glob("ostia_*.nc"))[:12]  # 2006-04 .. 2007-03
    for f in months[:8]:
        shutil.copy(f, archive / f.name)
    recipe, cube = tmp_path / "ostia.yaml", tmp_path / "ostia.zarr"
    source = {"files": {"pattern": f"{PREFIX}/ostia_{{time:%Y%m}}.nc"}}
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    sched = ["--scheduler", client.scheduler.address]
    with LoopbackServer(archive) as granules:
        mirror = ["--mirror", f"{PREFIX}={granules.base_url.rstrip('/')}"]
        recipe.write_text(yaml.safe_dump(live_recipe(source, OLD_END)))
        _ok("build", recipe, "--out", cube, *mirror, *sched)
        run = _log_encoder(tmp_path, tracking)
        _ok("embed", cube, "--model", run, "--tracking-uri", tracking, "--tile", TILE, *sched)
        _ok("index", cube, "--kind", "hnsw")
        stored = chunk_bytes(cube, "embedding_t3")
        with xr.open_zarr(cube) as ds:
            vector = ds["embedding_t3"].values[1, 56, 2]  # lat -0.5, lon 169.5, 2006-06
        point = {"lat": -0.5, "lon": 169.5, "k": 5}
        pool = [bench_load.Request("tile", "GET", "/search/tile?" + urlencode(
                    {**point, "time": "2006-06-01"})),
                bench_load.Request("new", "GET", "/search/tile?" + urlencode(
                    {**point, "time": "2006-06-01", "start": "2006-12-01"})),
                bench_load.Request("latest", "GET", "/search/tile?" + urlencode(
                    {**point, "time": "2007-02-01"})),
                bench_load.Request("vector", "POST", "/search/vector", json.dumps(
                    {"vector": [float(v) for v in vector], "k": 5}).encode())]

        def bodies(server: Any) -> dict[str, dict[str, Any]]:
            out = {}
            for r in pool[:3]:
                status, body, _ = bench_load.http_get(server.port, r.path)
                assert status == 200, body
                out[r.kind] = json.loads(body)
            return out

        with bench_load.Server(cube, tmp_path / "serve.log", watch=0.2) as server:
            gen1, want1 = bench_load.expected_answers(server, pool, 1)
            before = bodies(server)
            stop = threading.Event()
            load: list[bench_load.Load] = []
            stream = threading.Thread(target=lambda: load.append(bench_load.hammer(
                server.port, pool, range(len(pool)), 2, stop=stop)))
            stream.start()
            try:
                time.sleep(0.5)
                for f in months[8:]:  # the archive publishes four more months
                    shutil.copy(f, archive / f.name)
                recipe.write_text(yaml.safe_dump(live_recipe(source, NEW_END)))
                granules.clear_log()
                t0 = time.perf_counter()
                _ok("update", recipe, "--out", cube, *mirror, *sched)
                fetched = sorted(r.path for r in granules.requests("GET"))
                time.sleep(0.5)  # the server reloads the grown cube: same generation
                said = _ok("embed", cube, "--append", "--tracking-uri", tracking, *sched)
                _ok("index", cube, "--update")
                manifest = json.loads((cube.parent / "ostia.zarr.index" /
                                       "embedding_t3.json").read_text())
                server.wait_for(manifest["index_sha256"][:16])
                seconds = time.perf_counter() - t0
                time.sleep(0.5)
            finally:
                stop.set()
                stream.join()
            gen2, want2 = bench_load.expected_answers(server, pool, 1)
            after = bodies(server)
            health = server.health()
    assert fetched == [f"/{f.name}" for f in months[8:]]  # only the new granules
    assert "appended time steps 8..11 to embedding_t3" in said
    now = chunk_bytes(cube, "embedding_t3")  # the stored vectors' files, untouched
    assert len(now) == 12 and all(now[k] == v for k, v in stored.items())
    # every streamed answer: 200, and the exact answer of the generation that gave it
    checked = bench_load.check(load[0], {gen1.split("-")[1]: want1, gen2.split("-")[1]: want2})
    assert checked["failed"] == checked["mixed"] == checked["unknown_index"] == 0, checked
    assert set(checked["by_index"]) == {gen1, gen2}, checked
    assert sum(checked["by_index"].values()) > 100 and seconds < 120
    assert gen1.startswith("1-") and gen2.startswith("2-")
    assert health["reloads"] >= 2 and health["times"][-1] == "2007-03-01"
    assert [g["mode"] for g in manifest["generations"]] == ["build", "update"]
    assert manifest["kind"] == "hnsw" and manifest["time_range"] == ["2006-04-01", "2007-03-01"]
    # generation 1 knew nothing after 2006-11; generation 2 finds the new months
    assert before["new"]["neighbours"] == [] and before["latest"]["query"]["time"] == "2006-11-01"
    new = after["new"]["neighbours"]
    assert len(new) == 5 and all(n["time"] >= "2006-12-01" for n in new)
    latest = after["latest"]
    assert latest["query"]["time"] == "2007-02-01"
    assert any((n["tile_y"], n["tile_x"], n["time"]) == (1, 56, "2007-02-01")
               for n in latest["neighbours"])
