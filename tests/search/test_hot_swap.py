"""Rebuilding the index while `esdc serve` answers: every answer wholly old or wholly new.

A real server (``esdc serve --watch 0.1`` in a subprocess, 127.0.0.1) serves a cube
while client threads hammer it and this process re-embeds the cube with another
encoder and rebuilds its index (``build_index``, once ``esdc index`` in a subprocess),
four times (A -> B -> A -> B -> A). The two encoders
give different neighbours, so each answer can be matched byte for byte against the
answer of the index generation its ``X-Esdc-Index`` header names.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("faiss")
pytest.importorskip("fastapi")
pytest.importorskip("torch")

from tests.search.conftest import make_embedded_cube  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_load  # noqa: E402  (benchmarks/bench_load.py: server, clients, checks)


def _states(folder: Path, cube: Path) -> list[bench_load.State]:
    """A: the fixture's encoder (the embeddings now in the cube); B: another seed."""
    import torch

    from esdc.embed import EncoderBundle, compute_embeddings
    from esdc.ml.ssl import Encoder
    from esdc.search.index import index_dir

    meta = json.loads((folder / "encoder.json").read_text())
    torch.manual_seed(7)
    torch.save(Encoder(meta["in_channels"], **meta["params"]).state_dict(), folder / "b.pt")
    a = bench_load.State("A", compute_embeddings(str(cube), EncoderBundle(
        folder / "encoder.pt", meta), 8))
    b = bench_load.State("B", compute_embeddings(str(cube), EncoderBundle(
        folder / "b.pt", meta, "run-b"), 8))
    a.sha16 = json.loads((index_dir(cube) / "embedding_t8.json").read_text())[
        "index_sha256"][:16]
    return [a, b]


def test_index_swapped_while_serving(tmp_path):
    folder = tmp_path / "hot"
    cube = make_embedded_cube(folder)
    a, b = _states(folder, cube)
    pool = bench_load.request_pool(cube, 120, seed=3)
    searches = [i for i, r in enumerate(pool) if r.kind != "png"]
    with bench_load.Server(cube, tmp_path / "serve.log", watch=0.1) as server:
        # the exact answers of each index generation, asked while nothing changes
        first, want_a = bench_load.expected_answers(server, pool, 4)
        assert first == f"1-{a.sha16}" == server.health()["index"]
        bench_load.swap_to(cube, b)
        server.wait_for(b.sha16)
        second, want_b = bench_load.expected_answers(server, pool, 4)
        assert second == f"2-{b.sha16}"
        differ = sum(want_a[i] != want_b[i] for i in searches)
        assert differ >= 0.8 * len(searches)  # the two indexes are told apart by answers
        assert all(want_a[i] == want_b[i] for i, r in enumerate(pool) if r.kind == "png")
        bench_load.swap_to(cube, a)
        server.wait_for(a.sha16)

        stop = threading.Event()
        result: list[bench_load.Load] = []
        clients = threading.Thread(target=lambda: result.append(bench_load.hammer(
            server.port, pool, range(len(pool)), 8, stop=stop)))
        clients.start()
        swaps = []  # (generation, sha16, rebuild started, server seen serving it)
        try:
            for i, state in enumerate((b, a, b, a)):
                time.sleep(0.5)  # traffic on the generation being served
                started = time.perf_counter()
                # the third rebuild by the command a user runs: `esdc index CUBE`
                manifest = bench_load.swap_to(cube, state, cli=i == 2)
                server.wait_for(state.sha16, timeout=90)
                swaps.append((manifest["generation"], state.sha16, started,
                               time.perf_counter()))
            time.sleep(0.5)
        finally:
            stop.set()
            clients.join(timeout=120)
        health = server.health()
    load = result[0]

    res = bench_load.check(load, {a.sha16: want_a, b.sha16: want_b})
    assert res["failed"] == 0, res["examples"]
    assert res["mixed"] == 0, res["examples"]
    assert res["unknown_index"] == 0, res["examples"]
    assert res["server_errors"] == 0
    # every generation built while the clients ran answered some of their requests
    served = set(res["by_index"])
    assert {f"{g}-{sha}" for g, sha, _, _ in swaps} <= served, (served, swaps)
    assert len(load.answers) > 200
    # once /health showed a generation, every request sent later is answered by it
    # (until the next rebuild starts): the swap is at one instant and never goes back
    for (gen, sha, _, seen), nxt in zip(swaps, [*swaps[1:], None], strict=True):
        later = [x for x in load.answers if x.start > seen
                 and (nxt is None or x.end < nxt[2])]
        assert later and all(x.index == f"{gen}-{sha}" for x in later)
    assert health["generation"] == swaps[-1][0] == 7
    assert health["reload_error"] is None and health["reloads"] >= 6
    log = (tmp_path / "serve.log").read_text()
    assert "now serving index 7-" in log
    assert "Traceback" not in log


# ---------------------------------------------------------------- generations on disk
def test_index_generations_on_disk(tmp_path):
    """Each build: a new file named by its checksum, then the manifest; two files kept."""
    from esdc.search import SearchEngine, build_index, index_dir

    cube = make_embedded_cube(tmp_path / "gen")
    folder = index_dir(cube)
    m1 = json.loads((folder / "embedding_t8.json").read_text())
    assert m1["generation"] == 1 and m1["index_file"] == (
        f"embedding_t8.{m1['index_sha256'][:16]}.faiss")
    m2 = build_index(cube, kind="hnsw")
    m3 = build_index(cube, kind="flat")
    assert (m2.generation, m3.generation) == (2, 3)
    assert m3.index_file == m1["index_file"]  # the same bytes, the same name
    files = sorted(p.name for p in folder.glob("*.faiss"))
    assert files == sorted({m2.index_file, m3.index_file})  # this and the previous one
    assert not list(folder.glob(".*tmp"))
    engine = SearchEngine(cube)
    assert engine.identity == f"3-{m3.index_sha256[:16]}"

    # a manifest of an earlier esdc (no index_file: VARIABLE.faiss) still loads
    legacy = json.loads((folder / "embedding_t8.json").read_text())
    (folder / "embedding_t8.faiss").write_bytes((folder / legacy.pop("index_file")).read_bytes())
    for key in ("generation", "vectors_sha256"):
        legacy.pop(key)
    (folder / "embedding_t8.json").write_text(json.dumps(legacy))
    old = SearchEngine(cube)
    assert old.identity.startswith("0-") and old.manifest.index_file == ""
    assert (old.search_tile(10, 20, k=5).to_json()
            == engine.search_tile(10, 20, k=5).to_json())
    m4 = build_index(cube, kind="flat")  # the legacy file is the previous one: kept once
    assert m4.generation == 1 and (folder / "embedding_t8.faiss").exists()
    build_index(cube, kind="flat")
    assert not (folder / "embedding_t8.faiss").exists()


def test_vectors_changed_since_indexing_are_refused(tmp_path):
    """Same model, other vectors in the cube (a torn or edited write): not served."""
    import zarr

    from esdc.errors import EsdcError
    from esdc.search import SearchEngine

    cube = make_embedded_cube(tmp_path / "vec")
    arr = zarr.open_array(str(cube / "embedding_t8"), mode="r+")
    arr[0, 0] = arr[0, 0] * 2
    with pytest.raises(EsdcError, match="not those the index was built from"):
        SearchEngine(cube)


def _client(app):
    import warnings

    with warnings.catch_warnings():  # starlette 1.x: "install httpx2 instead"
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient
    return TestClient(app)


def test_reembedded_cube_keeps_the_old_index_until_rebuilt(tmp_path):
    """Re-embedding alone fails the reload (lineage): the old index answers on, then the new."""
    from esdc.embed import write_embeddings
    from esdc.search import build_index
    from esdc.search.http import INDEX_HEADER, create_app

    folder = tmp_path / "re"
    cube = make_embedded_cube(folder)
    a, b = _states(folder, cube)
    app = create_app(cube, watch=None)
    api = _client(app)
    watcher = app.state.watcher
    before = api.get("/search/tile", params={"lat": 10, "lon": 20})
    assert before.headers[INDEX_HEADER] == f"1-{a.sha16}"
    assert watcher.check() is False  # nothing changed

    write_embeddings(cube, b.embeddings)
    assert watcher.check() is False
    health = api.get("/health").json()
    assert "lineage mismatch" in health["reload_error"] and health["index"] == f"1-{a.sha16}"
    still = api.get("/search/tile", params={"lat": 10, "lon": 20})
    assert still.status_code == 200 and still.json() == before.json()
    assert watcher.check() is False  # nothing changed, no retry due yet
    watcher._retry_at = 0  # a failed reload is retried later even without a change
    assert watcher.check() is False and "lineage mismatch" in watcher.error
    assert watcher._delay == 40  # tried again: 10 s, then 20, now 40 before the next try

    m = build_index(cube)
    assert watcher.check() is True
    after = api.get("/search/tile", params={"lat": 10, "lon": 20})
    assert after.headers[INDEX_HEADER] == f"2-{m.index_sha256[:16]}"
    assert after.json()["neighbours"] != before.json()["neighbours"]
    health = api.get("/health").json()
    assert health["reload_error"] is None and health["reloads"] == 1
    assert health["generation"] == 2
    bad = api.get("/search/tile", params={"lat": 100, "lon": 20})
    assert bad.status_code == 422 and bad.headers[INDEX_HEADER] == health["index"]
    png = api.get("/tiles/0/0.png")
    assert png.status_code == 200 and png.headers[INDEX_HEADER] == health["index"]


def test_serve_watch_must_not_be_negative(tmp_path):
    from typer.testing import CliRunner

    from esdc.cli import app

    res = CliRunner().invoke(app, ["serve", str(tmp_path), "--watch", "-1"])
    assert res.exit_code == 2 and "--watch -1" in res.output
