"""WMTS sources (``format: wmts``) against a loopback server laid out like NASA GIBS.

The real Blue Marble sample (``bmng``, 5400 x 2700 px, 1/15 degree) is cut into 512 px PNG
tiles in GIBS's REST layout (``wmts/epsg4326/best/LAYER/default/[TIME/]SET/ZOOM/ROW/COL``),
padded past 180 E and 90 S as GIBS pads, with a capabilities document written in GIBS's
form (EPSG:4326 ``TopLeftCorner`` given as ``-180 90``, a Time dimension as an ISO 8601
interval, KVP GetTile in OperationsMetadata). The mosaic equals the sample pixel for
pixel; a build equals the build from the sample image, value for value.
"""

from __future__ import annotations

import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import xarray as xr
import yaml
from PIL import Image
from typer.testing import CliRunner

from esdc.build import build, fetch_sources
from esdc.cli import app
from esdc.errors import SourceError, SourceNotFoundError
from esdc.loopback import LoopbackServer
from esdc.recipe import Recipe
from esdc.sources.granules import list_granules, open_granules
from esdc.sources.wmts import METERS_PER_DEGREE, PIXEL_METRES, in_time_domain
from esdc.storage import resolve
from esdc.storage.tables import read_table
from tests.conftest import ROOT, need_sample

GIBS = "https://gibs.earthdata.nasa.gov"
BEST = "wmts/epsg4326/best"
SERVICE = f"{GIBS}/{BEST}/wmts.cgi"
SET = "4arcmin"
TILE = 512
#: TileMatrix id -> pixel size in 1/15 degree (the sample's pixel is 1/15 degree).
LEVELS = {"0": 2, "1": 1}
LAYER = "BlueMarble_NextGeneration"
MONTHLY = "BlueMarble_Monthly"


def _matrix(zoom: str, step: int, height: int, width: int) -> str:
    sd = step / 15 * METERS_PER_DEGREE / PIXEL_METRES
    return (f"<TileMatrix><ows:Identifier>{zoom}</ows:Identifier>"
            f"<ScaleDenominator>{sd!r}</ScaleDenominator>"
            f"<TopLeftCorner>-180 90</TopLeftCorner>"  # GIBS: x y, though EPSG:4326 is lat first
            f"<TileWidth>{TILE}</TileWidth><TileHeight>{TILE}</TileHeight>"
            f"<MatrixWidth>{math.ceil(width / step / TILE)}</MatrixWidth>"
            f"<MatrixHeight>{math.ceil(height / step / TILE)}</MatrixHeight></TileMatrix>")


def capabilities(height: int, width: int, base: str = f"{GIBS}/{BEST}") -> str:
    """A capabilities document in GIBS's form for the two layers cut from the sample."""
    kvp = (f'<ows:DCP><ows:HTTP><ows:Get xlink:href="{base}/wmts.cgi?"><ows:Constraint '
           'name="GetEncoding"><ows:AllowedValues><ows:Value>KVP</ows:Value>'
           '</ows:AllowedValues></ows:Constraint></ows:Get></ows:HTTP></ows:DCP>')

    def layer(ident: str, time: bool) -> str:
        dim = ("<Dimension><ows:Identifier>Time</ows:Identifier><ows:UOM>ISO8601</ows:UOM>"
               "<Default>2004-08-01</Default><Current>false</Current>"
               "<Value>2004-01-01/2004-12-01/P1M</Value></Dimension>") if time else ""
        path = f"{base}/{ident}/default/{'{Time}/' if time else ''}"
        return (f"<Layer><ows:Title xml:lang=\"en\">Blue Marble: Next Generation</ows:Title>"
                '<ows:WGS84BoundingBox crs="urn:ogc:def:crs:OGC:2:84">'
                "<ows:LowerCorner>-180 -90</ows:LowerCorner><ows:UpperCorner>180 90"
                "</ows:UpperCorner></ows:WGS84BoundingBox>"
                f"<ows:Identifier>{ident}</ows:Identifier>"
                '<Style isDefault="true"><ows:Title xml:lang="en">default</ows:Title>'
                "<ows:Identifier>default</ows:Identifier></Style>"
                f"<Format>image/png</Format>{dim}"
                f"<TileMatrixSetLink><TileMatrixSet>{SET}</TileMatrixSet></TileMatrixSetLink>"
                f'<ResourceURL format="image/png" resourceType="tile" template="{path}'
                '{TileMatrixSet}/{TileMatrix}/{TileRow}/{TileCol}.png"/></Layer>')

    matrices = "".join(_matrix(z, s, height, width) for z, s in LEVELS.items())
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<Capabilities xmlns="http://www.opengis.net/wmts/1.0" '
            'xmlns:ows="http://www.opengis.net/ows/1.1" '
            'xmlns:xlink="http://www.w3.org/1999/xlink" '
            'xmlns:gml="http://www.opengis.net/gml" version="1.0.0">'
            '<ows:ServiceIdentification><ows:Title xml:lang="en">NASA Global Imagery Browse '
            "Services for EOSDIS</ows:Title><ows:ServiceType>OGC WMTS</ows:ServiceType>"
            "<ows:ServiceTypeVersion>1.0.0</ows:ServiceTypeVersion>"
            "</ows:ServiceIdentification><ows:OperationsMetadata>"
            f'<ows:Operation name="GetCapabilities">{kvp}</ows:Operation>'
            f'<ows:Operation name="GetTile">{kvp}</ows:Operation></ows:OperationsMetadata>'
            f"<Contents>{layer(LAYER, False)}{layer(MONTHLY, True)}"
            f"<TileMatrixSet><ows:Identifier>{SET}</ows:Identifier>"
            "<ows:SupportedCRS>urn:ogc:def:crs:EPSG::4326</ows:SupportedCRS>"
            f"{matrices}</TileMatrixSet></Contents></Capabilities>\n")


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    """The Blue Marble sample's pixels, ``(2700, 5400, 3)`` uint8, rows 90 -> -90."""
    with Image.open(need_sample("bmng")) as im:
        return np.asarray(im.convert("RGB"))


def write_gibs(root: Path, sample: np.ndarray) -> Path:
    """Lay out ``root`` like GIBS's EPSG:4326 "best" endpoint, tiles cut from ``sample``.

    Also used by ``benchmarks/bench_ingest.py`` (its WMTS case).
    """
    best = root / BEST
    for zoom, step in LEVELS.items():
        img = sample[::step, ::step]
        h, w = img.shape[:2]
        rows, cols = math.ceil(h / TILE), math.ceil(w / TILE)
        padded = np.zeros((rows * TILE, cols * TILE, 3), "uint8")  # GIBS's padding: black
        padded[:h, :w] = img
        for r in range(rows):
            for c in range(cols):
                out = best / LAYER / "default" / SET / zoom / str(r) / f"{c}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(padded[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE]) \
                    .save(out, compress_level=1)
    for month in ("2004-07-01", "2004-08-01"):
        (best / MONTHLY / "default" / month).mkdir(parents=True)
        (best / MONTHLY / "default" / month / SET).symlink_to(best / LAYER / "default" / SET)
    doc = capabilities(*sample.shape[:2])
    (best / "wmts.cgi").write_text(doc)
    (best / "1.0.0").mkdir()
    (best / "1.0.0" / "WMTSCapabilities.xml").write_text(doc)
    return root


@pytest.fixture(scope="module")
def gibs(tmp_path_factory, sample) -> Path:
    """A folder laid out like GIBS's EPSG:4326 "best" endpoint, tiles cut from the sample."""
    return write_gibs(tmp_path_factory.mktemp("gibs"), sample)


def wmts_recipe(bbox: list[float], resolution: float, *, grid_time: dict | None = None,
                **wmts: Any) -> dict[str, Any]:
    band = {"resampling": "bucket_average", "units": "1"}
    return {
        "name": "gibs_test", "title": "GIBS-like WMTS from the Blue Marble sample",
        "grid": {"body": "earth", "bbox": bbox, "resolution": resolution,
                 **({"time": grid_time} if grid_time else {})},
        "sources": [{"name": "bmng", "format": "wmts",
                     "time": "series" if wmts.get("time") == "series" else "static",
                     "wmts": {"capabilities": SERVICE, "layer": LAYER, **wmts},
                     "bands": ["red", "green", "blue"],
                     "variables": [{"name": n, "source": n, **band}
                                   for n in ("red", "green", "blue")]}],
    }


def image_recipe(bbox: list[float], resolution: float) -> dict[str, Any]:
    doc = wmts_recipe(bbox, resolution)
    src = doc["sources"][0]
    del src["wmts"]
    src.update(format="image", sample="bmng",
               georeference={"crs": "EPSG:4326", "bbox": [-180, -90, 180, 90]})
    return doc


def tile_paths(server: LoopbackServer) -> set[str]:
    return {r.path for r in server.requests("GET") if r.path.endswith(".png")}


def mosaic(recipe: Recipe, mirrors: dict[str, str]):
    fetched = fetch_sources(recipe, mirrors=mirrors)
    spec = recipe.sources[0]
    src = fetched[spec.name]
    [geo] = open_granules(spec, src.granules, src.paths())
    return geo, src


def test_mosaic_equals_the_sample_pixel_for_pixel(gibs, sample, tmp_path, monkeypatch):
    monkeypatch.setenv("ESDC_GRANULE_CACHE", str(tmp_path / "cache"))
    bbox = [-30.0, -60.0, 60.0, 30.0]
    recipe = Recipe.from_dict(wmts_recipe(bbox, 0.2, zoom=1))
    with LoopbackServer(gibs) as server:
        one = f"/{BEST}/{LAYER}/default/{SET}/1/2/5.png"
        server.inject(one, "503", times=2)
        server.inject(f"/{BEST}/wmts.cgi", "503")
        geo, src = mosaic(recipe, {GIBS: server.base_url})
        fetched = tile_paths(server)
        assert len(server.requests("GET", one)) == 3  # two 503s, then the tile
    # only the tiles over the bbox (one pixel of margin): columns 4..7, rows 1..4
    tiles = 512 / 15
    cols = range(math.floor((bbox[0] + 180) / tiles), math.ceil((bbox[2] + 180) / tiles))
    rows = range(math.floor((90 - bbox[3]) / tiles), math.ceil((90 - bbox[1]) / tiles))
    assert fetched == {f"/{BEST}/{LAYER}/default/{SET}/1/{r}/{c}.png" for r in rows for c in cols}
    assert len(src.granules) == 1 + len(rows) * len(cols)
    assert src.granules[0].url.endswith("wmts.cgi?SERVICE=WMTS&REQUEST=GetCapabilities"
                                        "&VERSION=1.0.0")
    # pixel for pixel: the mosaic is the sample's block under those tiles
    r0, c0 = rows[0] * TILE, cols[0] * TILE
    ny, nx = geo.data.sizes["lat"], geo.data.sizes["lon"]
    assert (ny, nx) == (len(rows) * TILE, len(cols) * TILE)
    for i, band in enumerate(("red", "green", "blue")):
        got = geo.data[band].values
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, sample[r0:r0 + ny, c0:c0 + nx, i])
    np.testing.assert_allclose(geo.data["lon"].values, -180 + (c0 + np.arange(nx) + 0.5) / 15,
                               atol=1e-9)
    np.testing.assert_allclose(geo.data["lat"].values, 90 - (r0 + np.arange(ny) + 0.5) / 15,
                               atol=1e-9)


def test_global_mosaic_crops_gibs_padding(gibs, sample, tmp_path, monkeypatch):
    """Tiles past 180 E and 90 S carry padding: the mosaic is exactly the globe."""
    monkeypatch.setenv("ESDC_GRANULE_CACHE", str(tmp_path / "cache"))
    recipe = Recipe.from_dict(wmts_recipe([-180, -90, 180, 90], 1.0, zoom=0))
    with LoopbackServer(gibs) as server:
        geo, src = mosaic(recipe, {GIBS: server.base_url})
        assert len(tile_paths(server)) == 6 * 3
    assert geo.bbox == pytest.approx((-180, -90, 180, 90), abs=1e-9)
    np.testing.assert_array_equal(geo.data["green"].values, sample[::2, ::2, 1])


def test_build_equals_the_image_build(gibs, tmp_path, monkeypatch):
    monkeypatch.setenv("ESDC_GRANULE_CACHE", str(tmp_path / "cache"))
    bbox = [-30.0, -60.0, 60.0, 30.0]
    ref = build(Recipe.from_dict(image_recipe(bbox, 0.2)), tmp_path / "ref.zarr")
    with LoopbackServer(gibs) as server:
        server.inject(f"/{BEST}/{LAYER}/default/{SET}/1/3/6.png", "503")
        out = build(Recipe.from_dict(wmts_recipe(bbox, 0.2, zoom=1)), tmp_path / "w.zarr",
                    mirrors={GIBS: server.base_url})
    with xr.open_zarr(out) as got, xr.open_zarr(ref) as want:
        for band in ("red", "green", "blue"):
            assert got[band].shape == (450, 450)
            np.testing.assert_array_equal(got[band].values, want[band].values)
    table = read_table(resolve(out))
    urls = [str(u) for u in table["url"].values]
    assert urls[0].endswith("wmts.cgi?SERVICE=WMTS&REQUEST=GetCapabilities&VERSION=1.0.0")
    assert len(urls) == 1 + 16 and all(u.endswith(".png") for u in urls[1:])
    assert set(table["status"].values) == {"fetched"}
    first = gibs / BEST / LAYER / "default" / SET / "1" / "1" / "4.png"
    assert urls[1].endswith("/1/1/4.png")
    import hashlib

    assert table["sha256"].values[1] == hashlib.sha256(first.read_bytes()).hexdigest()


def test_default_zoom_is_the_coarsest_at_least_as_fine_as_the_grid(gibs):
    index = [gibs / BEST / "wmts.cgi"]

    def zoom(resolution: float) -> str:
        recipe = Recipe.from_dict(wmts_recipe([0, 0, 10, 10], resolution))
        tiles = list_granules(recipe.sources[0], base_dir=None, grid=recipe.grid.to_grid(),
                              index=index)
        return tiles[0].tile.matrix

    assert zoom(0.25) == f"{SET}/0"      # 2/15 degree pixels are finer than 0.25
    assert zoom(0.1) == f"{SET}/1"       # 2/15 is coarser than 0.1: 1/15
    assert zoom(0.01) == f"{SET}/1"      # none fine enough: the finest


class KvpServer:
    """GIBS's KVP GetTile (``wmts.cgi?SERVICE=WMTS&REQUEST=GetTile&...``) over the folder.

    The first GET of each tile in ``fail`` answers 503 (with ``Retry-After: 0``).
    """

    def __init__(self, root: Path, fail: set[tuple[int, int]]) -> None:
        self.root, self.fail, self.log = root, set(fail), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                self.answer(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self.answer(body=True)

            def answer(self, body: bool) -> None:
                q = {k.upper(): v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                outer.log.append((self.command, q))
                if q.get("REQUEST") == "GetCapabilities":
                    file = outer.root / BEST / "wmts.cgi"
                else:
                    key = (int(q["TILEROW"]), int(q["TILECOL"]))
                    if body and key in outer.fail:
                        outer.fail.discard(key)
                        self.send_response(503)
                        self.send_header("Retry-After", "0")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    file = (outer.root / BEST / q["LAYER"] / q["STYLE"] / q["TILEMATRIXSET"]
                            / q["TILEMATRIX"] / str(key[0]) / f"{key[1]}.png")
                data = file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{len(data):x}"')
                self.end_headers()
                if body:
                    self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> KvpServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_kvp_gettile_equals_rest(gibs, sample, tmp_path, monkeypatch):
    monkeypatch.setenv("ESDC_GRANULE_CACHE", str(tmp_path / "cache"))
    recipe = Recipe.from_dict(wmts_recipe([100, 10, 150, 50], 0.2, zoom=1, encoding="kvp"))
    with KvpServer(gibs, fail={(1, 8)}) as server:
        geo, src = mosaic(recipe, {GIBS: server.base_url})
    gets = [q for method, q in server.log if method == "GET" and q.get("REQUEST") == "GetTile"]
    assert {(q["TILEROW"], q["TILECOL"]) for q in gets} == {
        (str(r), str(c)) for r in (1, 2) for c in (8, 9)}
    assert len(gets) == 5  # tile (1, 8) answered 503 once, then retried
    assert all(q["LAYER"] == LAYER and q["FORMAT"] == "image/png" for q in gets)
    assert "REQUEST=GetTile" in src.granules[1].url
    np.testing.assert_array_equal(geo.data["blue"].values,
                                  sample[TILE:3 * TILE, 8 * TILE:10 * TILE, 2])


def test_time_series_takes_one_tile_set_per_grid_cell(gibs, sample, tmp_path, monkeypatch):
    monkeypatch.setenv("ESDC_GRANULE_CACHE", str(tmp_path / "cache"))
    doc = wmts_recipe([0, 0, 20, 20], 0.2, zoom=1, time="series", layer=MONTHLY,
                      grid_time={"start": "2004-07-01", "end": "2004-08-01", "freq": "MS"})
    with LoopbackServer(gibs) as server:
        out = build(Recipe.from_dict(doc), tmp_path / "s.zarr", mirrors={GIBS: server.base_url})
        got = tile_paths(server)
    assert {p.split("/")[6] for p in got} == {"2004-07-01", "2004-08-01"}
    assert len(got) == 2  # one tile (row 2, column 5) per month
    ref = build(Recipe.from_dict(image_recipe([0, 0, 20, 20], 0.2)), tmp_path / "r.zarr")
    with xr.open_zarr(out) as ds, xr.open_zarr(ref) as want:
        assert ds["red"].dims == ("time", "lat", "lon") and ds.sizes["time"] == 2
        for t in range(2):
            np.testing.assert_array_equal(ds["red"].values[t], want["red"].values)
    table = read_table(resolve(out))
    times = table["time"].values[1:]
    assert sorted({str(t)[:10] for t in times}) == ["2004-07-01", "2004-08-01"]


def test_time_outside_the_layer_names_its_times(gibs, tmp_path, monkeypatch):
    monkeypatch.setenv("ESDC_GRANULE_CACHE", str(tmp_path / "cache"))
    doc = wmts_recipe([0, 0, 20, 20], 0.2, zoom=1, time="2030-01-01", layer=MONTHLY)
    with LoopbackServer(gibs) as server, pytest.raises(SourceNotFoundError) as err:
        fetch_sources(Recipe.from_dict(doc), mirrors={GIBS: server.base_url})
    assert "2030-01-01" in str(err.value) and "2004-01-01/2004-12-01/P1M" in str(err.value)
    assert not tile_paths(server)


def test_a_tile_that_is_not_an_image_is_refused(gibs, tmp_path, monkeypatch):
    """A server answering an XML error document (200) for a tile: refused, named."""
    monkeypatch.setenv("ESDC_GRANULE_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "gibs"
    (bad / BEST).mkdir(parents=True)
    (bad / BEST / "wmts.cgi").write_text((gibs / BEST / "wmts.cgi").read_text())
    tile = bad / BEST / LAYER / "default" / SET / "1" / "2" / "5.png"
    tile.parent.mkdir(parents=True)
    tile.write_text("<?xml version='1.0'?><ExceptionReport>no tile</ExceptionReport>")
    recipe = Recipe.from_dict(wmts_recipe([0, 0, 20, 20], 0.2, zoom=1))
    with LoopbackServer(bad) as server:
        with pytest.raises(SourceError, match=r"tile http://127\.0\.0\.1:\d+/.*/2/5\.png is "
                                              "not an image.*ExceptionReport"):
            build(recipe, tmp_path / "x.zarr", mirrors={GIBS: server.base_url})
    assert not (tmp_path / "x.zarr").exists()


def test_time_domain_of_gibs_intervals():
    import pandas as pd

    values = ["2000-02-24/2000-03-01/P1D", "2004-01-01/2004-12-01/P1M", "2010-05-05"]
    assert in_time_domain(pd.Timestamp("2000-02-29"), values)
    assert not in_time_domain(pd.Timestamp("2000-03-02"), values)
    assert in_time_domain(pd.Timestamp("2004-06-01"), values)
    assert not in_time_domain(pd.Timestamp("2004-06-02"), values)
    assert in_time_domain(pd.Timestamp("2010-05-05"), values)
    assert in_time_domain(pd.Timestamp("2020-01-01T00:10"), ["2020-01-01T00:00:00Z/2020-01-02"
                                                              "T00:00:00Z/PT10M"])


@pytest.mark.parametrize(("change", "match"), [
    ({"format": "image"}, "goes with `format: wmts`"),
    ({"time": "series"}, "wmts.time: series"),
    ({"wmts": {"capabilities": SERVICE, "layer": LAYER, "time": "yesterday"}}, "yesterday"),
    ({"georeference": {"bbox": [-180, -90, 180, 90]}}, "remove `georeference`"),
])
def test_bad_wmts_blocks_are_refused_by_the_schema(change, match):
    from esdc.errors import RecipeError

    doc = wmts_recipe([0, 0, 20, 20], 0.2)
    doc["sources"][0].update(change)
    with pytest.raises(RecipeError, match=re.escape(match)):
        Recipe.from_dict(doc)


@pytest.mark.slow
def test_gibs_recipe_through_a_mirror(gibs, tmp_path, monkeypatch, sample):
    """recipes/gibs_bluemarble.yaml (real GIBS endpoint) built by the CLI from the loopback."""
    monkeypatch.setenv("ESDC_GRANULE_CACHE", str(tmp_path / "cache"))
    recipe = ROOT / "recipes" / "gibs_bluemarble.yaml"
    out = tmp_path / "g.zarr"
    with LoopbackServer(gibs) as server:
        server.inject(f"/{BEST}/{LAYER}/default/{SET}/0/1/3.png", "503")
        res = CliRunner().invoke(app, ["build", str(recipe), "--out", str(out), "--no-fetch",
                                       "--mirror", f"{GIBS}={server.base_url}"])
        assert res.exit_code == 0, res.output
    doc = yaml.safe_load(recipe.read_text())
    ref_doc = image_recipe(doc["grid"]["bbox"], doc["grid"]["resolution"])
    ref_doc["sources"][0]["variables"] = doc["sources"][0]["variables"]
    # the grid (0.25 degree) picks TileMatrix 0 (2/15 degree): the image decimated by 2
    ref = build(Recipe.from_dict(ref_doc), tmp_path / "ref.zarr")
    with xr.open_zarr(out) as ds, xr.open_zarr(ref) as want:
        assert ds["red"].shape == (320, 320)
        assert float(ds["red"].max()) <= 1.0 and float(ds["red"].mean()) > 0.05
        # TileMatrix 0 is the sample decimated by 2 (2/15 degree pixels do not tile 0.25
        # degree cells): close to the full-resolution mean, not equal
        diff = np.abs(ds["green"].values - want["green"].values)
        assert diff.mean() < 0.01 and np.quantile(diff, 0.99) < 0.08
    assert read_table(resolve(out)).sizes["granule"] > 1


def test_user_guide_example_is_a_valid_recipe():
    """The USER_GUIDE's WMTS + STAC example: the sources of recipes/gibs_bluemarble.yaml."""
    guide = (ROOT / "docs" / "USER_GUIDE.md").read_text()
    [block] = re.findall(r"```yml\n(.*?)```", guide, re.S)
    real = yaml.safe_load((ROOT / "recipes" / "gibs_bluemarble.yaml").read_text())
    grid = {**real["grid"], "time": {"start": "2006-04-01", "end": "2006-06-01", "freq": "MS"}}
    recipe = Recipe.from_dict({**real, "grid": grid, **yaml.safe_load(block)})
    wmts, stac = recipe.sources
    assert wmts.wmts.model_dump(exclude_defaults=True) == {
        k: v for k, v in real["sources"][0]["wmts"].items() if k != "concurrency"}
    assert stac.files.stac.asset == "data" and stac.files.stac.query
