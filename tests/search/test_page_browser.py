"""The overview search page of `esdc serve` (``/overview``), driven end to end in Debian's
headless Chromium (the map page at ``/``: ``test_map_page.py``).

The app runs in uvicorn on a free port of 127.0.0.1 (a thread of this process);
Playwright drives ``/usr/bin/chromium`` (``apt-get install chromium``; Playwright's own
browser downloads are not used). The tests click the overview map and fill the form as
a user does, and compare what the page shows with the JSON API's answer to the same
query.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("faiss")
pytest.importorskip("fastapi")

#: Debian's Chromium; ESDC_CHROMIUM names another Chromium build (e.g. on another system).
CHROMIUM = Path(os.environ.get("ESDC_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INSTALL = ("the search page tests need Debian's Chromium at /usr/bin/chromium and the "
           "Python package playwright (test extra): `apt-get install -y chromium` (as root, "
           "or `make install-test`, which does it), `pip install -e '.[test]'`.")
TIMEOUT_MS = 15_000


# ---------------------------------------------------------------- fixtures
class Server:
    """uvicorn serving ``app`` on a free port of 127.0.0.1 in a daemon thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn stopped while starting"
            assert time.monotonic() < deadline, "uvicorn did not start in 30 s"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def png(self, path: str):
        """The PNG at ``path`` as an array ``(H, W[, 3])``."""
        import io

        import numpy as np
        from PIL import Image

        with urllib.request.urlopen(self.base + path, timeout=10) as r:
            assert r.headers["content-type"] == "image/png"
            return np.asarray(Image.open(io.BytesIO(r.read())))

    def api(self, path: str, **params) -> tuple[int, dict]:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        return self.answer(urllib.request.Request(url))

    def api_post(self, path: str, body: dict) -> tuple[int, dict]:
        return self.answer(urllib.request.Request(
            self.base + path, data=json.dumps(body).encode(),
            headers={"content-type": "application/json"}))

    @staticmethod
    def answer(req: urllib.request.Request) -> tuple[int, dict]:
        """Status and JSON body of the answer to ``req`` (error answers too)."""
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A Chromium context with a fresh profile (Debian's browser, not Playwright's)."""
    if shutil.which(str(CHROMIUM)) is None:
        pytest.fail(f"{CHROMIUM} is missing: {INSTALL}", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"playwright is not installed: {INSTALL}", pytrace=False)
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=ARGS,
            viewport={"width": 1280, "height": 1100})
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()


def serve_cube(cube):
    from esdc.search.http import create_app

    return Server(create_app(cube))


@pytest.fixture(scope="module")
def geo(embedded_cube):
    """The static geographic cube (8 x 16 tiles of 8 cells over the globe) served."""
    with serve_cube(embedded_cube) as server:
        yield server


def make_projected_cube(folder: Path) -> Path:
    """A cube on a projected grid (EPSG:3035, 1 km cells, y/x in metres), 2 time steps."""
    import numpy as np
    import pandas as pd
    import xarray as xr

    from esdc.grid import Grid

    from .conftest import INPUTS

    folder.mkdir(parents=True, exist_ok=True)
    times = list(pd.date_range("2021-06-01", periods=2, freq="MS"))
    grid = Grid.from_bbox("earth", "EPSG:3035", (4_000_000.0, 2_800_000.0, 4_064_000.0,
                                                 2_832_000.0), 1000.0, times)
    coords = grid.coords()
    rng = np.random.default_rng(3)
    ds = xr.Dataset(
        {v: (("time", "y", "x"), rng.random((2, *grid.shape)).astype("float32"),
             {"units": "1", "grid_mapping": "crs"}) for v in INPUTS},
        coords={**coords, "crs": xr.DataArray(0, attrs=grid.crs_attrs())})
    ds.attrs = {"title": "projected test cube", "esdc_grid": json.dumps(grid.to_dict())}
    cube = folder / "cube.zarr"
    ds.to_zarr(cube, zarr_format=3, consolidated=True)
    return embed_and_index(cube, INPUTS)


def embed_and_index(cube: Path, inputs: list[str]) -> Path:
    """Embed ``cube`` (8-cell tiles, 16 dims; a seeded, untrained encoder saved beside it)
    and build its flat index."""
    import torch

    from esdc.embed import EncoderBundle, compute_embeddings, write_embeddings
    from esdc.ml.ssl import Encoder
    from esdc.search import build_index

    folder = cube.parent
    torch.manual_seed(0)
    meta = {"class": "esdc.ml.ssl.Encoder", "in_channels": len(inputs),
            "params": {"dim": 16, "width": 8}, "inputs": list(inputs), "tile": [8, 8]}
    torch.save(Encoder(len(inputs), **meta["params"]).state_dict(), folder / "encoder.pt")
    (folder / "encoder.json").write_text(json.dumps(meta))
    write_embeddings(cube, compute_embeddings(str(cube), EncoderBundle(folder / "encoder.pt",
                                                                       meta), 8))
    build_index(cube, kind="flat")
    return cube


@pytest.fixture(scope="module")
def projected(tmp_path_factory):
    cube = make_projected_cube(tmp_path_factory.mktemp("page") / "projected")
    with serve_cube(cube) as server:
        yield server


# ---------------------------------------------------------------- helpers
def _open(browser, server):
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(server.base + "overview")  # the overview page (the map page is at /)
    page.wait_for_selector("body[data-state=ready]", state="attached")
    return page, problems


def _click_tile(page, info: dict, ty: int, tx: int) -> tuple[float, float]:
    """Click the centre of tile (ty, tx) on the overview; the click's page position."""
    box = page.locator("#overview").bounding_box()
    size = info["tile_size"]
    px = box["x"] + box["width"] * (tx + 0.5) * size / (info["width"] * info["step"])
    py = box["y"] + box["height"] * (ty + 0.5) * size / (info["height"] * info["step"])
    page.mouse.click(px, py)
    return px, py


def _shown(page, names: tuple[str, str]) -> dict:
    """What the page shows: query card and neighbour cards, from text and data-*."""
    def cards(selector: str) -> list[dict]:
        return page.eval_on_selector_all(selector, """els => els.map(e => ({
            tile_y: +e.dataset.tileY, tile_x: +e.dataset.tileX,
            y: +e.dataset.y, x: +e.dataset.x, time: e.dataset.time || null,
            distance: e.dataset.distance === undefined ? null : +e.dataset.distance,
            y_text: e.querySelector('.coord-y').textContent,
            x_text: e.querySelector('.coord-x').textContent,
            time_text: e.querySelector('.time') ? e.querySelector('.time').textContent : null,
            d_text: e.querySelector('.distance') ? e.querySelector('.distance').textContent
                                                 : null,
            self: e.classList.contains('self'),
            img: e.querySelector('img').getAttribute('src'),
            img_loaded: e.querySelector('img').complete,
            img_width: e.querySelector('img').naturalWidth}))""")

    return {"query": cards("#query-tile .tile")[0], "neighbours": cards("#neighbours .tile"),
            "markers": page.locator("#markers .marker").count()}


def _assert_matches_api(shown: dict, api: dict, names: tuple[str, str], k: int) -> None:
    ny, nx = names
    q = api["query"]
    assert (shown["query"]["tile_y"], shown["query"]["tile_x"]) == (q["tile_y"], q["tile_x"])
    assert (shown["query"]["y"], shown["query"]["x"]) == (q[ny], q[nx])
    assert len(shown["neighbours"]) == len(api["neighbours"]) == k
    for s, a in zip(shown["neighbours"], api["neighbours"], strict=True):
        assert (s["tile_y"], s["tile_x"], s["time"]) == (a["tile_y"], a["tile_x"], a["time"])
        assert (s["y"], s["x"]) == (a[ny], a[nx])  # the JSON values, exactly
        assert float(s["y_text"]) == pytest.approx(a[ny], abs=1e-6)  # and as text
        assert float(s["x_text"]) == pytest.approx(a[nx], abs=1e-6)
        assert s["distance"] == pytest.approx(a["distance"], abs=1e-6)
        assert s["d_text"] == f"d = {a['distance']:.4f}"
        assert s["time_text"] == a["time"]
        t = "" if a["time"] is None else "?t="
        assert s["img"].startswith(f"tiles/{a['tile_y']}/{a['tile_x']}.png{t}")
    first = shown["neighbours"][0]
    assert (first["tile_y"], first["tile_x"]) == (q["tile_y"], q["tile_x"])
    assert first["distance"] == pytest.approx(0.0, abs=1e-5) and first["self"]
    assert first["d_text"] == "d = 0.0000"
    assert shown["markers"] == k + 1  # the neighbours and a ring on the query tile


def _wait_thumbnails(page) -> None:
    page.wait_for_function("""() => [...document.querySelectorAll('.tile img')]
                              .every(i => i.complete && i.naturalWidth > 0)""")


# ---------------------------------------------------------------- tests
def test_click_on_the_map_shows_the_neighbours(browser, geo, tmp_path):
    page, problems = _open(browser, geo)
    info = page.evaluate("fetch('overview.json').then(r => r.json())")
    assert info["coordinates"] == ["lat", "lon"] and info["tiles"] == [8, 16]
    assert page.locator("#label-y").inner_text() == "lat"
    assert page.locator("#time-field").is_hidden()
    k = 6
    page.fill("#k", str(k))
    px, py = _click_tile(page, info, 3, 8)
    page.wait_for_selector("body[data-state=done]", state="attached")
    _wait_thumbnails(page)

    # The click asked for the cell under the cursor: its centre is in the form.
    lat, lon = float(page.input_value("#coord-y")), float(page.input_value("#coord-x"))
    status, api = geo.api("search/tile", lat=lat, lon=lon, k=k)
    assert status == 200
    assert (api["query"]["tile_y"], api["query"]["tile_x"]) == (3, 8)
    shown = _shown(page, ("lat", "lon"))
    _assert_matches_api(shown, api, ("lat", "lon"), k)
    assert (shown["query"]["y"], shown["query"]["x"]) == (11.25, 11.25)
    assert all(c["img_width"] == 8 for c in shown["neighbours"])  # 8 x 8 cell tiles
    assert page.locator("#count").inner_text() == f"(k = {k})"
    assert page.locator("#error").is_hidden()

    # The query ring sits where the user clicked; marker n on neighbour n's tile.
    ring = page.locator("#markers .marker.query").bounding_box()
    assert abs(ring["x"] + ring["width"] / 2 - px) < 2
    assert abs(ring["y"] + ring["height"] / 2 - py) < 2
    box = page.locator("#overview").bounding_box()
    for i, n in enumerate(api["neighbours"][:3]):
        m = page.locator("#markers .marker:not(.query)", has_text=re.compile(f"^{i + 1}$"))
        mb = m.bounding_box()
        fx = (mb["x"] + mb["width"] / 2 - box["x"]) / box["width"]
        fy = (mb["y"] + mb["height"] / 2 - box["y"]) / box["height"]
        assert int(fx * 16) == n["tile_x"] and int(fy * 8) == n["tile_y"]

    # The JSON link is the page's own request, answered the same.
    href = page.get_attribute("#json-link", "href")
    assert href.startswith("search/tile?")
    status, again = geo.api(href)
    assert again == api
    # The map is the cube's RGB in the grid's order: its cells under the query tile are
    # the query tile's pixels (one image pixel per cell here).
    overview = geo.png("overview.png")
    assert overview.shape == (64, 128, 3) and info["step"] == 1
    assert (overview[24:32, 64:72] == geo.png("tiles/3/8.png")).all()
    page.screenshot(path=str(tmp_path / "click.png"), full_page=True)
    assert not problems, problems
    page.close()


def test_form_query_and_error_message(browser, geo, tmp_path):
    page, problems = _open(browser, geo)
    page.fill("#coord-y", "-40")
    page.fill("#coord-x", "100")
    page.fill("#k", "3")
    page.click("#search")
    page.wait_for_selector("body[data-state=done]", state="attached")
    status, api = geo.api("search/tile", lat=-40, lon=100, k=3)
    assert status == 200
    _assert_matches_api(_shown(page, ("lat", "lon")), api, ("lat", "lon"), 3)

    # A point outside the grid: the API's 422 message on the page, no stale results.
    page.fill("#coord-y", "95")
    page.click("#search")
    page.wait_for_selector("body[data-state=error]", state="attached")
    status, err = geo.api("search/tile", lat=95, lon=100, k=3)
    assert status == 422
    message = page.locator("#error")
    assert message.is_visible()
    assert message.inner_text() == err["detail"]
    assert "lat 95.0 is outside the embedded grid" in message.inner_text()
    assert page.locator("#results").is_hidden()
    assert page.locator("#markers .marker").count() == 0
    page.screenshot(path=str(tmp_path / "error.png"), full_page=True)

    # The next good query clears the message.
    page.fill("#coord-y", "20")
    page.click("#search")
    page.wait_for_selector("body[data-state=done]", state="attached")
    assert page.locator("#error").is_hidden()
    assert page.locator("#neighbours .tile").count() == 3
    # Chromium logs the rejected request; nothing else went wrong.
    assert len(problems) == 1 and "status of 422" in problems[0], problems
    page.close()


def test_projected_grid_with_time(browser, projected, tmp_path):
    page, problems = _open(browser, projected)
    info = page.evaluate("fetch('overview.json').then(r => r.json())")
    assert info["coordinates"] == ["y", "x"] and info["units"] == ["m", "m"]
    assert info["tiles"] == [4, 8] and info["times"] == ["2021-06-01", "2021-07-01"]
    assert page.locator("#label-y").inner_text() == "y (m)"
    assert page.locator("#time-field").is_visible()
    assert page.locator("#y-axis .tick").first.inner_text() == "2832000 m"

    page.select_option("#time", "1")  # second month: the overview follows
    page.wait_for_function("""() => { const i = document.getElementById('overview');
                                      return i.src.endsWith('?t=1') && i.complete
                                             && i.naturalWidth === 64; }""")
    status, err = projected.api("overview.png", t=2)
    assert status == 422 and "outside the 2 time step(s)" in err["detail"]
    page.fill("#k", "5")
    _click_tile(page, info, 2, 5)
    page.wait_for_selector("body[data-state=done]", state="attached")
    _wait_thumbnails(page)
    y, x = float(page.input_value("#coord-y")), float(page.input_value("#coord-x"))
    status, api = projected.api("search/tile", y=y, x=x, time="2021-07-01", k=5)
    assert status == 200
    q = api["query"]
    assert (q["tile_y"], q["tile_x"], q["time"]) == (2, 5, "2021-07-01")
    assert (q["y"], q["x"]) == (2_812_000.0, 4_044_000.0)  # centre of tile (2, 5) in metres
    shown = _shown(page, ("y", "x"))
    _assert_matches_api(shown, api, ("y", "x"), 5)
    assert shown["query"]["time_text"] == "2021-07-01"
    assert shown["neighbours"][0]["img"].endswith("?t=1")
    page.screenshot(path=str(tmp_path / "projected.png"), full_page=True)
    assert not problems, problems
    page.close()
