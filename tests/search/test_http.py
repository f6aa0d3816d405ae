"""The HTTP API of the search: in-process with TestClient, and a real `esdc serve`."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings

import numpy as np
import pytest

from esdc.testing import stop_process

pytest.importorskip("faiss")
pytest.importorskip("fastapi")


def _test_client(app):
    with warnings.catch_warnings():  # starlette 1.x: "install httpx2 instead"
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient
    return TestClient(app)


@pytest.fixture(scope="module")
def api(embedded_cube):
    from esdc.search.http import create_app

    return _test_client(create_app(embedded_cube))


@pytest.fixture(scope="module")
def api_time(embedded_cube_time):
    from esdc.search.http import create_app

    return _test_client(create_app(embedded_cube_time))


def _engine(client):
    return client.app.state.engine


# ---------------------------------------------------------------- health, OpenAPI
def test_health(api, embedded_cube):
    r = api.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["variable"] == "embedding_t8"
    assert body["coordinates"] == ["lat", "lon"]
    assert body["tiles"] == [8, 16]
    assert body["times"] is None
    m = body["manifest"]
    assert m["count"] == 128 and m["dim"] == 16 and m["kind"] == "flat"
    assert m["cube"] == str(embedded_cube.resolve())


def test_health_time(api_time):
    body = api_time.get("/health").json()
    assert body["tiles"] == [8, 16, 3]
    assert body["times"] == ["2020-01-01", "2020-02-01", "2020-03-01"]


def test_engine_loaded_once(api):
    from esdc.search.query import SearchEngine

    engine = _engine(api)
    assert isinstance(engine, SearchEngine)
    api.get("/search/tile", params={"lat": 0, "lon": 0})
    assert _engine(api) is engine


def test_openapi_lists_paths(api):
    doc = api.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) >= {"/health", "/search/tile", "/search/vector",
                                 "/tiles/{tile_y}/{tile_x}.png"}
    assert "post" in doc["paths"]["/search/vector"]
    params = {p["name"] for p in doc["paths"]["/search/tile"]["get"]["parameters"]}
    assert params >= {"lat", "lon", "y", "x", "time", "k", "bbox", "start", "end"}
    schemas = doc["components"]["schemas"]
    assert {"lat", "lon", "time", "distance"} <= set(schemas["Neighbour"]["properties"])
    assert "image/png" in doc["paths"]["/tiles/{tile_y}/{tile_x}.png"]["get"]["responses"][
        "200"]["content"]


# ---------------------------------------------------------------- search by tile
def test_search_tile_returns_itself_first(api):
    r = api.get("/search/tile", params={"lat": 10.0, "lon": 20.0, "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"query", "neighbours"}
    q = body["query"]
    assert (q["lat"], q["lon"], q["tile_y"], q["tile_x"]) == (11.25, 11.25, 3, 8)
    assert q["k"] == 5 and q["variable"] == "embedding_t8" and q["time"] is None
    nbs = body["neighbours"]
    assert len(nbs) == 5
    for n in nbs:
        assert {"lat", "lon", "time", "distance"} <= set(n)
    first = nbs[0]
    assert (first["lat"], first["lon"]) == (q["lat"], q["lon"])
    assert first["distance"] == pytest.approx(0.0, abs=1e-5)
    dists = [n["distance"] for n in nbs]
    assert dists == sorted(dists)
    assert all(0.0 <= d <= 2.0 for d in dists)


def test_search_tile_matches_engine(api):
    r = api.get("/search/tile", params={"lat": -40, "lon": 100, "k": 7}).json()
    direct = _engine(api).search_tile(-40, 100, None, 7).to_json()
    assert [(n["tile_y"], n["tile_x"]) for n in r["neighbours"]] == [
        (n["tile_y"], n["tile_x"]) for n in direct["neighbours"]]


def test_search_tile_accepts_y_x(api):
    a = api.get("/search/tile", params={"lat": 30, "lon": -60, "k": 4}).json()
    b = api.get("/search/tile", params={"y": 30, "x": -60, "k": 4}).json()
    assert a == b


def test_search_tile_with_time(api_time):
    r = api_time.get("/search/tile", params={"lat": 10, "lon": 20, "time": "2020-02-10",
                                             "k": 4})
    assert r.status_code == 200
    body = r.json()
    assert body["query"]["time"] == "2020-02-01"
    first = body["neighbours"][0]
    assert (first["lat"], first["lon"], first["time"]) == (11.25, 11.25, "2020-02-01")
    assert first["distance"] == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("bbox", ["0,0,60,50", "-180,-90,-100,0", "150,-60,-150,60"])
def test_bbox_filter(api, bbox):
    w, s, e, n = (float(v) for v in bbox.split(","))
    r = api.get("/search/tile", params={"lat": 10, "lon": 20, "k": 100, "bbox": bbox})
    assert r.status_code == 200
    body = r.json()
    assert body["query"]["bbox"] == [w, s, e, n]
    nbs = body["neighbours"]
    assert nbs, "some tiles lie inside"
    for nb in nbs:
        assert s <= nb["lat"] <= n
        if w <= e:
            assert w <= nb["lon"] <= e
        else:  # crosses the antimeridian
            assert nb["lon"] >= w or nb["lon"] <= e
    engine = _engine(api)
    inside = ((engine.yc >= s) & (engine.yc <= n)).sum() * (
        ((engine.xc >= w) & (engine.xc <= e)) if w <= e
        else ((engine.xc >= w) | (engine.xc <= e))).sum()
    assert len(nbs) == inside  # every tile inside, none outside


def test_time_range_filter(api_time):
    r = api_time.get("/search/tile", params={"lat": 10, "lon": 20, "time": "2020-01",
                                             "k": 50, "start": "2020-02", "end": "2020-03"})
    assert r.status_code == 200
    times = {n["time"] for n in r.json()["neighbours"]}
    assert times and times <= {"2020-02-01", "2020-03-01"}


# ---------------------------------------------------------------- search by vector
def test_search_vector(api):
    engine = _engine(api)
    vec = engine.vector_of(5, 3).tolist()
    r = api.post("/search/vector", json={"vector": vec, "k": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["query"]["dim"] == 16 and body["query"]["k"] == 3
    nbs = body["neighbours"]
    assert len(nbs) == 3
    assert (nbs[0]["tile_y"], nbs[0]["tile_x"]) == (5, 3)
    assert nbs[0]["lat"] == pytest.approx(float(engine.yc[5]))
    assert nbs[0]["distance"] == pytest.approx(0.0, abs=1e-5)


def test_search_vector_filters(api_time):
    engine = _engine(api_time)
    vec = engine.vector_of(2, 2, 0).tolist()
    r = api_time.post("/search/vector", json={"vector": vec, "k": 30, "bbox": [-90, -45, 90, 45],
                                              "start": "2020-03-01"})
    assert r.status_code == 200
    nbs = r.json()["neighbours"]
    assert nbs
    for n in nbs:
        assert -45 <= n["lat"] <= 45 and -90 <= n["lon"] <= 90
        assert n["time"] == "2020-03-01"


# ---------------------------------------------------------------- tiles as PNG
def test_tile_png(api):
    from PIL import Image

    r = api.get("/tiles/2/5.png")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    img.load()
    assert img.size == (8, 8) and img.mode == "RGB"
    expected = np.round(np.clip(_engine(api).tile_image(2, 5), 0, 1) * 255)
    assert np.abs(np.asarray(img, dtype=float) - expected).max() <= 1


def test_tile_png_time(api_time):
    from PIL import Image

    a = api_time.get("/tiles/0/0.png", params={"t": 0})
    b = api_time.get("/tiles/0/0.png", params={"t": 2})
    assert a.status_code == b.status_code == 200
    ia, ib = (Image.open(io.BytesIO(r.content)) for r in (a, b))
    assert ia.size == ib.size == (8, 8)
    assert not np.array_equal(np.asarray(ia), np.asarray(ib))  # another time step


def test_png_bytes_single_variable():
    from PIL import Image

    from esdc.search.render import png_bytes

    a = np.arange(12.0).reshape(3, 4)
    a[0, 0] = np.nan
    img = Image.open(io.BytesIO(png_bytes(a)))
    assert img.size == (4, 3) and img.mode == "L"
    px = np.asarray(img)
    assert px[0, 0] == 0 and px[-1, -1] == 255


# ---------------------------------------------------------------- invalid input: 422
@pytest.mark.parametrize(("params", "needle"), [
    ({"lat": 95, "lon": 0}, "outside the embedded grid"),
    ({"lat": 0, "lon": 200}, "outside the embedded grid"),
    ({"lat": 0, "lon": 0, "k": 129}, "between 1 and 128"),
    ({"lat": 0, "lon": 0, "k": 100000}, "between 1 and 128"),
    ({"lat": 0, "lon": 0, "bbox": "1,2,3"}, "four numbers"),
    ({"lat": 0, "lon": 0, "bbox": "a,b,c,d"}, "four numbers"),
    ({"lat": 0, "lon": 0, "bbox": "0,50,10,40"}, "south"),
    ({"lat": 0, "lon": 0, "bbox": "0,nan,10,40"}, "finite"),
    ({"lat": 0, "lon": 0, "start": "not-a-date"}, "not a date"),
    ({"lat": 0, "lon": 0, "start": "2021-01", "end": "2020-01"}, "after"),
    ({"lon": 0}, "missing"),
    ({"lat": 1, "y": 2, "lon": 0}, "not both"),
])
def test_search_tile_422(api, params, needle):
    r = api.get("/search/tile", params=params)
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]


@pytest.mark.parametrize("params", [
    {"lat": 0, "lon": 0, "k": 0},
    {"lat": 0, "lon": 0, "k": -3},
    {"lat": 0, "lon": 0, "k": "many"},
    {"lat": "north", "lon": 0},
    {"lat": "nan", "lon": 0},
    {"lat": "inf", "lon": 0},
])
def test_search_tile_422_validation(api, params):
    r = api.get("/search/tile", params=params)
    assert r.status_code == 422
    assert r.json()["detail"]  # FastAPI's list of what is wrong


def test_search_tile_time_422(api_time):
    r = api_time.get("/search/tile", params={"lat": 0, "lon": 0})
    assert r.status_code == 422 and "time" in r.json()["detail"]
    r = api_time.get("/search/tile", params={"lat": 0, "lon": 0, "time": "someday"})
    assert r.status_code == 422 and "not a date" in r.json()["detail"]


@pytest.mark.parametrize(("body", "needle"), [
    ({"vector": [0.1] * 15}, "16-dimensional"),
    ({"vector": [0.1] * 17, "k": 2}, "16-dimensional"),
    ({"vector": [0.1] * 16, "k": 500}, "between 1 and 128"),
    ({"vector": [0.1] * 16, "bbox": [0, 50, 10, 40]}, "south"),
    ({"vector": [0.1] * 16, "start": "2020-13-45"}, "not a date"),
])
def test_search_vector_422(api, body, needle):
    r = api.post("/search/vector", json=body)
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]


@pytest.mark.parametrize("body", [
    {},
    {"vector": []},
    {"vector": [0.1] * 16, "k": 0},
    {"vector": [0.1] * 16, "bbox": [0, 0, 1]},
    {"vector": ["a"] * 16},
    {"vector": [0.1] * 16, "colour": "red"},
])
def test_search_vector_422_validation(api, body):
    r = api.post("/search/vector", json=body)
    assert r.status_code == 422
    assert r.json()["detail"]


def test_search_vector_nan_422(api):
    raw = json.dumps({"vector": [float("nan")] + [0.1] * 15})  # NaN token
    r = api.post("/search/vector", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422


@pytest.mark.parametrize(("path", "status"), [
    ("/tiles/8/0.png", 422),     # 8 rows of tiles: 0 .. 7
    ("/tiles/0/16.png", 422),
    ("/tiles/-1/0.png", 422),
    ("/tiles/a/0.png", 422),
    ("/tiles/1.5/0.png", 422),
    ("/tiles/0/0.png?t=1", 422),  # static cube: one time step
    ("/tiles/..%2F..%2Fetc/passwd.png", 404),
    ("/tiles/../../etc/passwd.png", 404),
])
def test_tile_png_422(api, path, status):
    r = api.get(path)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"


def test_create_app_without_index(tmp_path, embedded_cube):
    import shutil

    from esdc.errors import EsdcError
    from esdc.search.http import create_app

    cube = tmp_path / "copy.zarr"
    shutil.copytree(embedded_cube, cube)  # the index stays beside the original
    with pytest.raises(EsdcError, match="no index"):
        create_app(cube)


# ---------------------------------------------------------------- a real server
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 10) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("content-type", "")


def test_esdc_serve_subprocess(embedded_cube_time, tmp_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "w+b")
    proc = subprocess.Popen([sys.executable, "-m", "esdc.cli", "serve", str(embedded_cube_time),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                status, body, _ = _get(f"{base}/health", timeout=2)
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not start in 90 s"
            time.sleep(0.2)
        assert json.loads(body)["status"] == "ok"

        status, body, ctype = _get(f"{base}/search/tile?lat=10&lon=20&time=2020-03&k=3")
        assert status == 200 and ctype.startswith("application/json")
        res = json.loads(body)
        assert len(res["neighbours"]) == 3
        assert res["neighbours"][0]["distance"] == pytest.approx(0.0, abs=1e-5)

        vec = [0.1] * 16
        req = urllib.request.Request(f"{base}/search/vector", method="POST",
                                     data=json.dumps({"vector": vec, "k": 2}).encode(),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
            assert len(json.loads(r.read())["neighbours"]) == 2

        status, body, ctype = _get(f"{base}/tiles/1/1.png?t=2")
        assert status == 200 and ctype == "image/png" and body[:8] == b"\x89PNG\r\n\x1a\n"

        status, body, _ = _get(f"{base}/search/tile?lat=100&lon=20&time=2020-03")
        assert status == 422 and "outside" in json.loads(body)["detail"]

        status, body, _ = _get(f"{base}/openapi.json")
        assert status == 200 and "/search/vector" in json.loads(body)["paths"]
    finally:
        stop_process(proc, timeout=20)
        log.close()
    assert b"serving embedding_t8" in (tmp_path / "serve.log").read_bytes()


def test_esdc_serve_bad_cube(tmp_path):
    from typer.testing import CliRunner

    from esdc.cli import app

    res = CliRunner().invoke(app, ["serve", str(tmp_path / "none.zarr")])
    assert res.exit_code == 2
    assert "no cube" in res.output
