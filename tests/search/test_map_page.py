"""The search page's slippy map: XYZ tiles over HTTP, and the page in headless Chromium.

HTTP tests call the FastAPI app in process (TestClient) over the small embedded cubes of
``conftest.py``; the browser tests run the app in uvicorn on 127.0.0.1 and drive Debian's
Chromium with Playwright, as ``test_page_browser.py`` does (its ``Server`` and ``browser``
fixture are reused): the map loads its tiles, a box is drawn with the mouse, a click
searches, the neighbours are outlined and listed, two are ticked and the refined ranking
is shown; a helioprojective (Sun) cube is shown in cell (pixel) coordinates.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("fastapi")

# browser, geo: fixtures of test_page_browser (Chromium; the static cube served), used here too
from .test_page_browser import browser, embed_and_index, geo, serve_cube  # noqa: E402, F401


def _client(cube):
    from esdc.search.http import create_app

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient
    return TestClient(create_app(cube, watch=None))


@pytest.fixture(scope="module")
def api(embedded_cube):
    return _client(embedded_cube)


@pytest.fixture(scope="module")
def api_time(embedded_cube_time):
    return _client(embedded_cube_time)


def _png(r) -> np.ndarray:
    from PIL import Image

    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (256, 256)
    assert img.mode in ("RGB", "RGBA")  # RGB: opaque everywhere
    return np.asarray(img.convert("RGBA"))


def _expected_cells(info: dict, z: int, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell (row, column) under each pixel of an EPSG:4326 tile, from the map's geometry."""
    c = np.arange(256) + 0.5
    lat = 90 - (y * 256 + c) * 180 / (256 * 2**z)
    lon = (x * 256 + c) * 180 / (256 * 2**z) - 180
    (n0, n1), (w0, w1) = info["y_edges"], info["x_edges"]
    rows = np.floor((lat - n0) / ((n1 - n0) / info["shape"][0])).astype(int)
    cols = np.floor((lon - w0) / ((w1 - w0) / info["shape"][1])).astype(int)
    return rows, cols


# ---------------------------------------------------------------- HTTP: the XYZ endpoint
def test_map_json(api):
    r = api.get("/map.json")
    assert r.status_code == 200
    info = r.json()
    assert info["crs"] == "EPSG:4326" and info["tile"] == 256
    assert info["shape"] == [64, 128] and info["dims"] == ["lat", "lon"]
    assert info["bounds"] == [-180.0, -90.0, 180.0, 90.0]
    names = [layer["name"] for layer in info["layers"]]
    assert names[0] == "rgb" and names[1] == "bmng_red"  # default, then the first input
    assert set(names) == {"rgb", "bmng_red", "bmng_green", "bmng_blue"}
    assert info["min_zoom"] == 0 and info["max_zoom"] >= 3
    assert info["coordinates"] == ["lat", "lon"] and info["tiles"] == [8, 16]
    assert info["scales"][0] == info["tile_size"] == 8
    assert info["times"] is None
    import time

    deadline = time.monotonic() + 60  # the server warms its tiles in a background thread
    while not info["ready"] and time.monotonic() < deadline:
        time.sleep(0.05)
        info = api.get("/map.json").json()
    assert info["ready"] is True
    assert api.get("/map/bmng_red/0/1/0.png").status_code == 200


def test_rgb_tile_is_the_cube_nearest_neighbour(api):
    info = api.get("/map.json").json()
    ds = api.app.state.engine.ds
    rgb = np.stack([np.asarray(ds[b].values) for b in ("bmng_red", "bmng_green", "bmng_blue")],
                   -1)
    for z, x, y in [(0, 0, 0), (0, 1, 0), (2, 5, 1), (3, 9, 4)]:
        img = _png(api.get(f"/map/rgb/{z}/{x}/{y}.png"))
        rows, cols = _expected_cells(info, z, x, y)
        want = np.round(np.clip(rgb[np.ix_(rows, cols)], 0, 1) * 255)
        assert np.abs(img[..., :3].astype(float) - want).max() <= 1, (z, x, y)
        assert (img[..., 3] == 255).all()  # the cube is global: no transparent pixel
        assert img[..., :3].std() > 0  # not blank


def test_variable_tile_uses_the_colour_map(api):
    from matplotlib import colormaps

    legend = api.get("/map/bmng_red/legend.json").json()
    assert legend["kind"] == "continuous" and legend["cmap"] == "viridis"
    lo, hi = legend["vmin"], legend["vmax"]
    assert lo < hi
    info = api.get("/map.json").json()
    values = np.asarray(api.app.state.engine.ds["bmng_red"].values)
    img = _png(api.get("/map/bmng_red/1/1/0.png"))
    rows, cols = _expected_cells(info, 1, 1, 0)
    v = values[np.ix_(rows, cols)]
    lut = np.round(colormaps["viridis"](np.linspace(0, 1, 256)) * 255)
    idx = np.clip((v - lo) * (255.0 / (hi - lo)), 0, 255).astype(int)
    assert np.abs(img.astype(float) - lut[idx]).max() <= 1


def test_tile_errors(api):
    r = api.get("/map/nope/0/0/0.png")
    assert r.status_code == 422
    assert r.json()["detail"] == ("no map layer 'nope'; the cube's layers are rgb, bmng_red, "
                                  "bmng_blue, bmng_green.")
    r = api.get("/map/nope/legend.json")
    assert r.status_code == 422 and "no map layer 'nope'" in r.json()["detail"]
    max_zoom = api.get("/map.json").json()["max_zoom"]
    for path, reason in [
        (f"/map/rgb/{max_zoom + 1}/0/0.png", f"zoom {max_zoom + 1} is outside 0 .. {max_zoom}"),
        ("/map/rgb/-1/0/0.png", "zoom -1 is outside"),
        ("/map/rgb/0/2/0.png", "tile (2, 0) is outside the 2 x 1 tiles of zoom 0"),
        ("/map/rgb/0/0/1.png", "tile (0, 1) is outside the 2 x 1 tiles of zoom 0"),
        ("/map/rgb/1/-1/0.png", "tile (-1, 0) is outside the 4 x 2 tiles of zoom 1"),
    ]:
        r = api.get(path)
        assert r.status_code == 404, path
        assert reason in r.json()["detail"], (path, r.json())
    for path in ["/map/rgb/a/0/0.png", "/map/rgb/0/1.5/0.png"]:
        assert api.get(path).status_code == 422, path
    # a path built from the request names a layer, never a file
    assert api.get("/map/..%2F..%2Fetc/0/0/0.png").status_code in (404, 422)


def test_time_steps_and_cache(api_time):
    info = api_time.get("/map.json").json()
    assert info["times"] == ["2020-01-01", "2020-02-01", "2020-03-01"]
    a = _png(api_time.get("/map/rgb/0/0/0.png", params={"time": "2020-01-01"}))
    b = _png(api_time.get("/map/rgb/0/0/0.png", params={"time": "2020-03-01"}))
    first = _png(api_time.get("/map/rgb/0/0/0.png"))  # default: the first step
    assert (a == first).all() and not (a == b).all()
    ds = api_time.app.state.engine.ds
    rows, cols = _expected_cells(info, 0, 0, 0)
    red = np.asarray(ds["bmng_red"].isel(time=2).values)[np.ix_(rows, cols)]
    assert np.abs(b[..., 0] - np.round(np.clip(red, 0, 1) * 255)).max() <= 1
    # nearest step; the same bytes again (cached)
    near = api_time.get("/map/rgb/0/0/0.png", params={"time": "2020-02-27"})
    again = api_time.get("/map/rgb/0/0/0.png", params={"time": "2020-03-01"})
    assert near.content == again.content
    r = api_time.get("/map/rgb/0/0/0.png", params={"time": "soon"})
    assert r.status_code == 422 and r.json()["detail"] == "time='soon' is not a date."


# ---------------------------------------------------------------- a Sun cube
def make_sun_cube(folder: Path) -> Path:
    """A helioprojective cube (40 x 48 cells of 50 arcsec, one variable), embedded, indexed."""
    import pandas as pd
    import xarray as xr

    from esdc.grid import HELIOPROJECTIVE, Grid

    folder.mkdir(parents=True, exist_ok=True)
    times = list(pd.date_range("2014-01-01", periods=2, freq="D"))
    grid = Grid.from_bbox("sun", HELIOPROJECTIVE, (-1200.0, -1000.0, 1200.0, 1000.0), 50.0,
                          times)
    coords = grid.coords()
    yy, xx = np.meshgrid(coords["y"].values, coords["x"].values, indexing="ij")
    disk = np.hypot(yy, xx) < 960  # the solar disk, brighter
    rng = np.random.default_rng(5)
    data = (np.where(disk, 1.0, 0.1) + 0.3 * rng.random((2, *grid.shape))).astype("float32")
    ds = xr.Dataset({"aia_171": (("time", "y", "x"), data,
                                 {"units": "DN/s", "long_name": "AIA 171 A", "colormap": "inferno",
                                  "grid_mapping": "crs"})},
                    coords={**coords, "crs": xr.DataArray(0, attrs={})})
    ds.attrs = {"title": "sun test cube", "esdc_grid": json.dumps(grid.to_dict())}
    cube = folder / "sun.zarr"
    ds.to_zarr(cube, zarr_format=3, consolidated=True)
    return embed_and_index(cube, ["aia_171"])


@pytest.fixture(scope="module")
def sun_cube(tmp_path_factory):
    return make_sun_cube(tmp_path_factory.mktemp("map") / "sun")


def test_sun_tiles_in_pixel_coordinates(sun_cube):
    api = _client(sun_cube)
    info = api.get("/map.json").json()
    assert info["crs"] == "pixel" and info["dims"] == ["y", "x"]
    assert info["shape"] == [40, 48] and info["coordinates"] == ["y", "x"]
    assert info["units"] == ["arcsec", "arcsec"]
    assert info["y_edges"] == [1000.0, -1000.0] and info["x_edges"] == [-1200.0, 1200.0]
    assert [layer["name"] for layer in info["layers"]] == ["aia_171"]
    assert info["layers"][0]["cmap"] == "inferno"  # the variable's colormap attribute
    assert info["native_zoom"] == 0 and info["min_zoom"] == 0
    img = _png(api.get("/map/aia_171/0/0/0.png", params={"time": "2014-01-02"}))
    # zoom 0: one cell a pixel, the cube's first row on top; beyond it transparent
    assert (img[:40, :48, 3] == 255).all() and (img[40:, :, 3] == 0).all()
    assert (img[:, 48:, 3] == 0).all()
    z2 = _png(api.get("/map/aia_171/2/0/0.png"))  # 4 pixels a cell
    assert (z2[:4, :4] == z2[0, 0]).all()
    assert z2[0, 0, :3].tolist() != z2[80, 80, :3].tolist()  # limb corner vs disk
    assert api.get("/map/aia_171/0/1/0.png").status_code == 404  # 48 cells: one tile
    assert api.get("/map/aia_171/2/0/1.png").status_code == 404  # 160 x 192 px: one tile
    z3 = _png(api.get("/map/aia_171/3/1/1.png"))  # 8 px a cell: rows 32.., columns 32..
    assert (z3[:64, :128, 3] == 255).all() and (z3[64:, :, 3] == 0).all()
    assert api.get("/map/aia_171/3/2/1.png").status_code == 404


# ---------------------------------------------------------------- browser
def _open(browser, server):  # noqa: F811 (browser: the fixture)
    page = browser.new_page()
    problems: list[str] = []
    tiles: list[tuple[int, str, str]] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("response", lambda r: tiles.append((r.status, r.url, r.headers.get(
        "content-type", ""))) if "/map/" in r.url and ".png" in r.url else None)
    page.goto(server.base)
    page.wait_for_selector("body[data-state=ready]", state="attached")
    return page, problems, tiles


def _screen(page, lat: float, lon: float) -> tuple[float, float]:
    """Page position of a map LatLng (or cell-space lat/lng on a pixel map)."""
    p = page.evaluate(f"(() => {{ const p = esdc.map.latLngToContainerPoint([{lat}, {lon}]);"
                      "return [p.x, p.y]; })()")
    box = page.locator("#map").bounding_box()
    return box["x"] + p[0], box["y"] + p[1]


def _cards(page) -> list[dict]:
    return page.eval_on_selector_all("#neighbours .tile", """els => els.map(e => ({
        tile_y: +e.dataset.tileY, tile_x: +e.dataset.tileX, time: e.dataset.time || null,
        y: +e.dataset.y, x: +e.dataset.x, distance: +e.dataset.distance,
        img: e.querySelector('img').getAttribute('src')}))""")


def _outlines(page) -> list[list[float]]:
    """[S, W, N, E] of each outline on the map (query first, then neighbours k .. 1)."""
    return page.evaluate("""(() => { const out = [];
        esdc.map.eachLayer(l => { if (l.options && l.options.className
                                       && l.options.className.startsWith('outline'))
          out.push([l.options.className, l.getBounds().getSouth(), l.getBounds().getWest(),
                    l.getBounds().getNorth(), l.getBounds().getEast()]); });
        return out; })()""")


def _wait_tiles(page) -> None:
    page.wait_for_function("""() => { const imgs = [...document.querySelectorAll(
        '#map .leaflet-tile-container img')]; return imgs.length > 0 &&
        imgs.every(i => i.complete && i.naturalWidth === 256); }""")


def test_map_box_search_outline_refine(browser, geo, tmp_path):  # noqa: F811
    page, problems, tiles = _open(browser, geo)
    _wait_tiles(page)
    assert page.evaluate("esdc.map.options.crs === esdc.L.CRS.EPSG4326")
    assert page.eval_on_selector_all("#layer option", "o => o.map(e => e.value)")[:2] == [
        "rgb", "bmng_red"]
    assert page.eval_on_selector_all("#scales input:checked", "b => b.map(e => +e.value)") == [8]
    # the tiles the map asked for: all answered 200 PNG, and not blank
    assert tiles and all(s == 200 and ct == "image/png" for s, _, ct in tiles), tiles
    for _, url, _ in tiles[:4]:
        img = geo.png(url[len(geo.base):])
        assert img.shape == (256, 256, 3)  # opaque (a global cube): RGB
        assert img.std() > 0

    # another layer: the map asks for its tiles
    page.select_option("#layer", "bmng_red")
    page.wait_for_function("""() => [...document.querySelectorAll('#map .leaflet-tile')]
        .some(i => i.src.includes('/map/bmng_red/') && i.complete && i.naturalWidth === 256)""")
    # the legend comes from its own request (legend.json), not with the tiles: wait for it
    # (the rgb layer's legend names bmng_red too: wait for the colour map's name)
    page.wait_for_function("""() => document.querySelector('#legend').textContent
        .includes('viridis')""")
    legend = page.locator("#legend").inner_text()
    assert "bmng_red" in legend and "true colour" not in legend

    # draw a box (Draw box, then drag): the bbox filter in lon/lat
    page.click("#draw")
    x0, y0 = _screen(page, 45, -90)
    x1, y1 = _screen(page, -40, 100)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2)
    page.mouse.move(x1, y1)
    page.mouse.up()
    bbox = page.evaluate("esdc.bbox")
    assert bbox == pytest.approx([-90, -40, 100, 45], abs=2.0)
    assert page.locator("#bbox-label").inner_text().startswith("bbox ")
    assert page.locator("#map path.bbox").count() == 1

    # click a place: the neighbours of its tile, inside the box
    page.fill("#k", "6")
    x, y = _screen(page, 11.25, 11.25)  # centre of tile (3, 8)
    page.mouse.click(x, y)
    page.wait_for_selector("body[data-state=done]", state="attached")
    url = page.evaluate("esdc.last.url")
    assert url.startswith("search/tile?") and "bbox=" in url and "k=6" in url
    status, api = geo.api(url)
    assert status == 200
    assert (api["query"]["tile_y"], api["query"]["tile_x"]) == (3, 8)
    cards = _cards(page)
    assert [(c["tile_y"], c["tile_x"]) for c in cards] == [
        (n["tile_y"], n["tile_x"]) for n in api["neighbours"]]
    assert [c["distance"] for c in cards] == pytest.approx(
        [n["distance"] for n in api["neighbours"]], abs=1e-6)
    for n in api["neighbours"]:
        assert bbox[0] <= n["lon"] <= bbox[2] and bbox[1] <= n["lat"] <= bbox[3]
    page.wait_for_function("""() => [...document.querySelectorAll('#neighbours img')]
                              .every(i => i.complete && i.naturalWidth === 8)""")
    # outlines: the query tile and each neighbour's tile (22.5 degrees a side)
    out = _outlines(page)
    assert len(out) == 7 and sum("neighbour" in o[0] for o in out) == 6
    by_rank = {int(o[0].split("rank-")[1]): o[1:] for o in out if "rank-" in o[0]}
    for i, n in enumerate(api["neighbours"], start=1):
        s, w, nn, e = by_rank[i]
        assert nn - s == pytest.approx(22.5) and e - w == pytest.approx(22.5)
        assert (s + nn) / 2 == pytest.approx(n["lat"]) and (w + e) / 2 == pytest.approx(n["lon"])
    assert page.locator("#map path.outline.neighbour").count() == 6
    before = [(c["tile_y"], c["tile_x"]) for c in cards]

    # tick two: one more like this, one not this; refine
    page.locator("#neighbours .tile").nth(2).locator("input.more").check()
    page.locator("#neighbours .tile").nth(3).locator("input.not").check()
    assert page.is_enabled("#refine")
    page.click("#refine")
    page.wait_for_selector("body[data-state=done]", state="attached")
    page.wait_for_selector("#refined", state="visible")
    body = page.evaluate("esdc.refineBody")
    assert len(body["positive"]) == 2 and len(body["negative"]) == 1
    assert body["bbox"] == pytest.approx(bbox)
    status, refined = geo.api_post("search/refine", body)
    assert status == 200
    after = [(c["tile_y"], c["tile_x"]) for c in _cards(page)]
    assert after == [(n["tile_y"], n["tile_x"]) for n in refined["neighbours"]]
    assert after != before  # the ranking changed
    marked = {before[0], before[2], before[3]}  # query tile and the two ticked ones
    assert not marked & set(after)  # judged tiles left out
    assert page.locator("#map path.outline.neighbour").count() == len(after)
    page.screenshot(path=str(tmp_path / "map.png"), full_page=True)
    assert not problems, problems
    page.close()


def test_time_slider(browser, embedded_cube_time):  # noqa: F811
    with serve_cube(embedded_cube_time) as server:
        page, problems, tiles = _open(browser, server)
        assert page.locator("#time-field").is_visible()
        assert page.locator("#time-label").inner_text() == "2020-01-01"
        page.evaluate("""(() => { const s = document.getElementById('time'); s.value = 2;
                                  s.dispatchEvent(new Event('input')); })()""")
        assert page.locator("#time-label").inner_text() == "2020-03-01"
        page.wait_for_function("""() => [...document.querySelectorAll('#map .leaflet-tile')]
            .some(i => i.src.endsWith('?time=2020-03-01') && i.complete
                  && i.naturalWidth === 256)""")
        x, y = _screen(page, -30, 50)
        page.mouse.click(x, y)
        page.wait_for_selector("body[data-state=done]", state="attached")
        assert "time=2020-03-01" in page.evaluate("esdc.last.url")
        assert page.evaluate("esdc.last.query.time") == "2020-03-01"
        assert any("time=2020-03-01" in u for _, u, _ in tiles)
        assert not problems, problems
        page.close()


def test_sun_map_in_pixel_coordinates(browser, sun_cube, tmp_path):  # noqa: F811
    with serve_cube(sun_cube) as server:
        page, problems, tiles = _open(browser, server)
        _wait_tiles(page)
        assert page.evaluate("esdc.map.options.crs === esdc.L.CRS.Simple")
        assert tiles and all(s == 200 for s, _, _ in tiles), tiles
        # hovering shows the grid's coordinates (arcsec) and the pixel (cell) position
        x, y = _screen(page, -10.5, 20.5)  # cell row 10, column 20
        page.mouse.move(x, y)
        text = page.locator("#cursor").inner_text()
        assert "(pixel row 10, column 20)" in text
        m = re.match(r"y (\S+) arcsec, x (\S+) arcsec", text)
        assert m, text
        assert 450 < float(m[1]) < 500 and -200 < float(m[2]) < -150  # in that cell
        # a click searches at that cell: tile (1, 2) of 8 cells
        page.mouse.click(x, y)
        page.wait_for_selector("body[data-state=done]", state="attached")
        url = page.evaluate("esdc.last.url")
        status, api = server.api(url)
        assert status == 200 and "y=" in url and "x=" in url
        q = api["query"]
        assert (q["tile_y"], q["tile_x"]) == (1, 2)
        assert [(c["tile_y"], c["tile_x"]) for c in _cards(page)] == [
            (n["tile_y"], n["tile_x"]) for n in api["neighbours"]]
        # the query tile outlined over cells rows 8..16, columns 16..24 (lat = -row)
        query = [o for o in _outlines(page) if "query" in o[0]][0]
        assert query[1:] == pytest.approx([-16, 16, -8, 24])
        page.screenshot(path=str(tmp_path / "sun.png"), full_page=True)
        assert not problems, problems
        page.close()


@pytest.fixture(scope="module")
def multiscale_cube(tmp_path_factory):
    """The static test cube embedded at 8, 16 and 32 cells, every scale indexed."""
    from esdc.embed import EncoderBundle, embed_cube
    from esdc.search import build_indexes

    from .conftest import INPUTS, make_embedded_cube

    folder = tmp_path_factory.mktemp("map") / "multiscale"
    cube = make_embedded_cube(folder)
    meta = json.loads((folder / "encoder.json").read_text())
    embed_cube(str(cube), EncoderBundle(folder / "encoder.pt", meta), [16, 32], input_size=8)
    build_indexes(cube, kind="flat")
    assert meta["inputs"] == INPUTS
    return cube


def test_scale_selector_searches_several_scales(browser, multiscale_cube):  # noqa: F811
    with serve_cube(multiscale_cube) as server:
        page, problems, _ = _open(browser, server)
        assert page.eval_on_selector_all("#scale option", "o => o.map(e => +e.value)") == [
            8, 16, 32]
        assert page.input_value("#scale") == "8"  # default: the finest
        assert page.eval_on_selector_all("#scales input:checked",
                                         "b => b.map(e => +e.value)") == [8]
        page.select_option("#scale", "16")
        for s in ("16", "32"):
            page.check(f"#scales input[value='{s}']")
        x, y = _screen(page, 11.25, 11.25)
        page.mouse.click(x, y)
        page.wait_for_selector("body[data-state=done]", state="attached")
        url = page.evaluate("esdc.last.url")
        assert "scale=16" in url and "scales=8%2C16%2C32" in url
        status, api = server.api(url)
        assert status == 200
        q = api["query"]
        assert q["scale"] == 16 and (q["tile_y"], q["tile_x"]) == (1, 4)
        found = {n["scale"] for n in api["neighbours"]}
        assert found <= {8, 16, 32} and len(found) >= 2, found
        cards = page.eval_on_selector_all("#neighbours .tile", """els => els.map(e => [
            +e.dataset.tileY, +e.dataset.tileX, +e.dataset.scale,
            e.querySelector('img').getAttribute('src')])""")
        assert [c[:3] for c in cards] == [[n["tile_y"], n["tile_x"], n["scale"]]
                                          for n in api["neighbours"]]
        for (_, _, scale, src) in cards:
            assert ("scale=" in src) == (scale != 8), src
        page.wait_for_function("""() => [...document.querySelectorAll('#neighbours img')]
                                  .every(i => i.complete && i.naturalWidth > 0)""")
        # each outline is its neighbour's bounds (2.8125 degree cells: 22.5, 45, 90 wide)
        out = {int(o[0].split("rank-")[1]): o[1:] for o in _outlines(page) if "rank-" in o[0]}
        for i, n in enumerate(api["neighbours"], start=1):
            w, s, e, nn = n["bounds"]
            assert out[i] == pytest.approx([s, w, nn, e])
            assert e - w == pytest.approx(2.8125 * n["scale"])
        # refine searches the same scales
        page.locator("#neighbours .tile").nth(1).locator("input.more").check()
        page.click("#refine")
        page.wait_for_selector("#refined", state="visible")
        body = page.evaluate("esdc.refineBody")
        assert body["scales"] == [8, 16, 32] and body["positive"][0]["scale"] == 16
        status, refined = server.api_post("search/refine", body)
        assert status == 200
        assert page.evaluate("esdc.last.neighbours") == refined["neighbours"]
        assert not problems, problems
        page.close()


def test_pixel_grid_zooms_out_below_zero():
    """A pixel map of a large grid starts at a negative zoom (2 ** -z cells a pixel)."""
    import xarray as xr
    from matplotlib import colormaps

    from esdc.search.xyz import MapRenderer, TileRange

    rng = np.random.default_rng(0)
    values = rng.random((600, 700)).astype("float32")
    values[2, 2] = np.nan  # the cell under pixel (0, 0) at zoom -2
    ds = xr.Dataset({"v": (("y", "x"), values, {"valid_range": [0.0, 1.0]})},
                    coords={"y": 1000.0 - 2.0 * np.arange(600), "x": 2.0 * np.arange(700)})
    maps = MapRenderer(ds, ("y", "x"))
    assert maps.crs == "pixel" and maps.min_zoom == -2 and maps.max_zoom == 4
    assert maps.legend("v")["vmin"] == 0.0 and maps.legend("v")["vmax"] == 1.0
    img = maps.rgba("v", -2, 0, 0)  # 4 cells a pixel: the whole grid in one tile
    rows = np.floor((np.arange(256) + 0.5) * 4).astype(int)
    inside = rows < 600
    cols_in = rows < 700
    lut = np.round(colormaps["viridis"](np.linspace(0, 1, 256)) * 255)
    v = values[np.ix_(rows[inside], rows[cols_in])]
    want = lut[np.clip(np.nan_to_num(v) * 255, 0, 255).astype(int)]
    got = img[np.ix_(inside, cols_in)].astype(float)
    assert np.abs(got[1:, 1:] - want[1:, 1:]).max() <= 1
    assert img[0, 0, 3] == 0  # the NaN cell: transparent
    assert (img[~inside][..., 3] == 0).all() and (img[:, ~cols_in][..., 3] == 0).all()
    with pytest.raises(TileRange, match="zoom -3 is outside -2 .. 4"):
        maps.rgba("v", -3, 0, 0)
    with pytest.raises(TileRange, match=r"tile \(1, 0\) is outside the 1 x 1 tiles"):
        maps.rgba("v", -2, 1, 0)


def test_sharded_cube_tiles_read_whole_shards(tmp_path):
    """On a sharded cube a colour block is a whole shard; the tiles equal the unsharded ones."""
    import xarray as xr

    from esdc.search.xyz import MapRenderer

    rng = np.random.default_rng(1)
    ds = xr.Dataset({"v": (("lat", "lon"), rng.random((128, 256)).astype("float32"),
                           {"valid_range": [0.0, 1.0]})},
                    coords={"lat": 90 - 180 / 128 * (np.arange(128) + 0.5),
                            "lon": -180 + 360 / 256 * (np.arange(256) + 0.5)})
    ds.to_zarr(tmp_path / "plain.zarr", zarr_format=3, consolidated=False,
               encoding={"v": {"chunks": (32, 32)}})
    ds.to_zarr(tmp_path / "sharded.zarr", zarr_format=3, consolidated=False,
               encoding={"v": {"chunks": (32, 32), "shards": (64, 128)}})
    plain = MapRenderer(xr.open_zarr(tmp_path / "plain.zarr", consolidated=False),
                        ("lat", "lon"))
    sharded = MapRenderer(xr.open_zarr(tmp_path / "sharded.zarr", consolidated=False),
                          ("lat", "lon"))
    layer = sharded.layer("v")
    assert sharded._block_shape(layer) == (64, 128)  # noqa: SLF001 (the read unit)
    assert plain._block_shape(plain.layer("v")) == (32, 32)  # noqa: SLF001
    for z, x, y in [(0, 0, 0), (0, 1, 0), (1, 2, 1), (3, 9, 4)]:
        np.testing.assert_array_equal(sharded.rgba("v", z, x, y), plain.rgba("v", z, x, y))


def test_prepare_colours_every_layer_so_first_views_read_nothing(tmp_path):
    """After ``prepare()`` a zoomed-out tile of any layer needs no read of the store."""
    import xarray as xr

    from esdc.search.xyz import MapRenderer

    rng = np.random.default_rng(2)
    ny, nx = 128, 256
    coords = {"lat": 90 - 180 / ny * (np.arange(ny) + 0.5),
              "lon": -180 + 360 / nx * (np.arange(nx) + 0.5)}
    ds = xr.Dataset({name: (("lat", "lon"), rng.random((ny, nx)).astype("float32"),
                            {"valid_range": [0.0, 1.0]})
                     for name in ("bmng_red", "bmng_green", "bmng_blue", "altitude")},
                    coords=coords)
    ds.to_zarr(tmp_path / "c.zarr", zarr_format=3, consolidated=False,
               encoding={v: {"chunks": (32, 64)} for v in ds.data_vars})
    fresh = MapRenderer(xr.open_zarr(tmp_path / "c.zarr", consolidated=False), ("lat", "lon"))
    want = {(name, x): fresh.tile(name, 0, x, 0) for name in fresh.layers for x in (0, 1)}
    assert set(fresh.layers) == {"rgb", "bmng_red", "bmng_green", "bmng_blue", "altitude"}

    maps = MapRenderer(xr.open_zarr(tmp_path / "c.zarr", consolidated=False), ("lat", "lon"))
    assert maps.prepare() == 5 * (ny // 32) * (nx // 64)  # every layer's chunks
    chunks = [p for v in ds.data_vars for p in (tmp_path / "c.zarr" / v / "c").rglob("*")
              if p.is_file()]
    assert len(chunks) == 4 * (ny // 32) * (nx // 64)
    for path in chunks:  # chunks corrupted: a read would fail to decode
        path.write_bytes(b"not a chunk")
    with pytest.raises(Exception):  # noqa: B017, PT011 (the codec's own error)
        fresh_again = MapRenderer(xr.open_zarr(tmp_path / "c.zarr", consolidated=False),
                                  ("lat", "lon"))
        fresh_again.tile("altitude", 0, 0, 0)
    for name in maps.layers:
        for x in (0, 1):
            assert maps.tile(name, 0, x, 0) == want[name, x]


def test_seed_encodes_the_zoomed_out_tiles_of_every_layer(tmp_path):
    """``seed()`` caches zooms min .. native of each layer; tiles outside the cube skipped."""
    import xarray as xr

    from esdc.search.xyz import MapRenderer

    rng = np.random.default_rng(3)
    ny, nx = 80, 160  # 0.25 degree cells over 20 S .. 0, 0 .. 40 E: native zoom 2
    coords = {"lat": 0 - 0.25 * (np.arange(ny) + 0.5), "lon": 0.25 * (np.arange(nx) + 0.5)}
    ds = xr.Dataset({name: (("lat", "lon"), rng.random((ny, nx)).astype("float32"),
                            {"valid_range": [0.0, 1.0]}) for name in ("a", "b")}, coords=coords)
    maps = MapRenderer(ds, ("lat", "lon"))
    assert (maps.min_zoom, maps.native_zoom) == (0, 2)
    # the cube lies in one tile at each of zooms 0, 1 and 2 (x east of 0, y south of 0)
    inside = [(0, 1, 0), (1, 2, 1), (2, 4, 2)]
    assert maps.seed() == len(inside) * 2
    for name in ("a", "b"):
        for z, x, y in inside:
            cached = maps.cached(name, z, x, y)
            assert cached is not None and cached == MapRenderer(ds, ("lat", "lon")).tile(
                name, z, x, y)
        assert maps.cached(name, 2, 0, 0) is None  # no cell: not seeded
        assert maps.cached(name, 3, 8, 4) is None  # closer than a cell a pixel: on demand
