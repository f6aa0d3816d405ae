"""Run the catalogue of hostile inputs (``catalogue.CASES``) against the real CLI and API.

Every case is built in its own folder (``tmp_path``, also the working directory), then
fed either to the ``esdc`` CLI in-process (``typer.testing.CliRunner``) or to the
FastAPI app of ``esdc serve`` (``TestClient``) over a small embedded cube shared by
the module (``make_embedded_cube``: 64 x 128 cells, 8 x 16 tiles, 16-d, flat index).
Each must give the catalogue's exit code or HTTP status and message fragments, print
no traceback, answer within 30 s (bombs are refused, not expanded), and leave the
case's folder and the shared cube byte-identical (paths, contents and file modification
times). ``test_a_real_process_exits_2_without_traceback`` runs one case through
``python -m esdc.cli`` to check the real exit status and stderr.

Needs no sample data and no network: every source file is made here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

from esdc.cli import app
from tests.reliability.catalogue import CASES, CATEGORIES, Case, markdown
from tests.search.conftest import make_embedded_cube

pytest.importorskip("faiss")
pytest.importorskip("fastapi")

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()

pytestmark = [
    # a vector of 1e300 overflows float32 on its way to FAISS, then is refused (422)
    pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
    # a PNG renamed .tif has no geotransform: rasterio says so, then esdc refuses it
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
]


# --------------------------------------------------------------------------- actions
@dataclass(frozen=True)
class Cli:
    """``esdc ARGS`` through the real CLI."""

    args: list[str]


@dataclass(frozen=True)
class Http:
    """One request to the search API."""

    method: str
    url: str
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Env:
    """A case's folder and the shared embedded cube."""

    ws: Path
    shared: Path  # the folder holding cube.zarr and cube.zarr.index

    @property
    def cube(self) -> Path:
        return self.shared / "cube.zarr"

    @property
    def recipe_path(self) -> Path:
        return self.ws / "recipe.yaml"

    def recipe(self, content: dict[str, Any] | str | bytes) -> Path:
        if isinstance(content, dict):
            content = yaml.safe_dump(content, sort_keys=False)
        if isinstance(content, str):
            content = content.encode()
        self.recipe_path.write_bytes(content)
        return self.recipe_path

    def build(self, content: dict[str, Any] | str | bytes, *extra: str) -> Cli:
        return Cli(["build", str(self.recipe(content)), "--out", str(self.ws / "out.zarr"),
                    "--no-fetch", *extra])

    def copy_cube(self) -> Path:
        """A private copy of the embedded cube and its index in the case's folder."""
        shutil.copytree(self.cube, self.ws / "cube.zarr")
        shutil.copytree(self.shared / "cube.zarr.index", self.ws / "cube.zarr.index")
        return self.ws / "cube.zarr"

    def search_copy(self) -> Cli:
        return Cli(["search", str(self.ws / "cube.zarr"), "--lat", "0", "--lon", "0"])


BUILDERS: dict[str, Callable[[Env], Cli | Http]] = {}


def builds(case_id: str) -> Callable[[Callable[[Env], Cli | Http]], Callable[[Env], Cli | Http]]:
    def register(fn: Callable[[Env], Cli | Http]) -> Callable[[Env], Cli | Http]:
        assert case_id not in BUILDERS, case_id
        BUILDERS[case_id] = fn
        return fn

    return register


# --------------------------------------------------------------------------- inputs
def write_netcdf(path: Path, data: np.ndarray | None = None, **kw: Any) -> Path:
    """A static 4 x 4 NetCDF file ``t2m(lat, lon)`` over 0..4 degrees."""
    lat, lon = np.arange(3.5, 0, -1.0), np.arange(0.5, 4, 1.0)
    data = np.arange(16, dtype="float32").reshape(4, 4) if data is None else data
    xr.Dataset({"t2m": (("lat", "lon"), data, {"units": "K"})},
               coords={"lat": ("lat", lat, {"units": "degrees_north"}),
                       "lon": ("lon", lon, {"units": "degrees_east"})}).to_netcdf(path, **kw)
    return path


def recipe_for(path: Path, fmt: str = "netcdf", **source: Any) -> dict[str, Any]:
    """A static recipe on a 1 degree grid over 0..4 degrees reading ``t2m`` from ``path``."""
    return {
        "name": "hostile", "title": "hostile input",
        "grid": {"body": "earth", "crs": "EPSG:4326", "bbox": [0, 0, 4, 4], "resolution": 1.0},
        "sources": [{"name": "local", "path": str(path), "format": fmt, **source,
                     "variables": [{"name": "t2m", "source": "t2m", "resampling": "bilinear",
                                    "units": "K"}]}],
    }


def good_recipe(env: Env) -> dict[str, Any]:
    return recipe_for(write_netcdf(env.ws / "good.nc"))


def png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), "uint8")).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------ recipes
@builds("recipe-python-object-tag")
def _(env: Env) -> Cli:
    return env.build('name: !!python/object/apply:os.system ["touch pwned"]\n')


@builds("recipe-python-name-tag")
def _(env: Env) -> Cli:
    text = yaml.safe_dump(good_recipe(env), sort_keys=False)
    return env.build(text.replace("title: hostile input", "title: !!python/name:builtins.eval ''"))


@builds("recipe-billion-laughs")
def _(env: Env) -> Cli:
    recipe = good_recipe(env)
    del recipe["title"]
    lol = "title: [&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"
    lol += "".join(f", &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)) + "]\n"
    return env.build(yaml.safe_dump(recipe, sort_keys=False) + lol)


@builds("recipe-deep-nesting")
def _(env: Env) -> Cli:
    return env.build("name: " + "[" * 100_000 + "]" * 100_000 + "\n")


@builds("recipe-not-utf8")
def _(env: Env) -> Cli:
    return env.build(b"name: \xff\xfe\xfa\x00 hostile\n")


@builds("recipe-empty")
def _(env: Env) -> Cli:
    return env.build("")


def _grid(env: Env, **grid: Any) -> Cli:
    recipe = good_recipe(env)
    recipe["grid"].update(grid)
    return env.build(recipe)


@builds("recipe-huge-grid")
def _(env: Env) -> Cli:
    return _grid(env, resolution=1e-300)


@builds("recipe-subnormal-resolution")
def _(env: Env) -> Cli:
    return _grid(env, resolution=5e-324)


@builds("recipe-infinite-bbox")
def _(env: Env) -> Cli:
    return _grid(env, bbox=[float("-inf"), -4, float("inf"), 4])


@builds("recipe-time-axis-bomb")
def _(env: Env) -> Cli:
    return _grid(env, time={"start": "1700-01-01", "end": "2260-01-01", "freq": "s"})


def _files(env: Env, **files: Any) -> Cli:
    """A monthly series recipe whose one source is ``files:``."""
    recipe = good_recipe(env)
    recipe["grid"]["time"] = {"start": "2020-01-01", "end": "2020-03-01", "freq": "MS"}
    source = recipe["sources"][0]
    del source["path"]
    source.update(time="series", files=files)
    return env.build(recipe)


@builds("files-malformed-pattern")
def _(env: Env) -> Cli:
    return _files(env, pattern=f"{env.ws}/data/{{time:%Y%m%d.nc")


@builds("files-granule-bomb")
def _(env: Env) -> Cli:
    return _files(env, pattern="https://archive.example/{time:%Y%m%d%H%M%S}.nc",
                  time={"start": "2000-01-01", "end": "2000-04-26", "freq": "s"})


@builds("files-unknown-scheme")
def _(env: Env) -> Cli:
    return _files(env, urls=["nosuch://host/a.nc"])


@builds("files-empty-glob")
def _(env: Env) -> Cli:
    return _files(env, glob=f"{env.ws}/none_*.nc")


@builds("files-missing-granule")
def _(env: Env) -> Cli:
    for month in ("202001", "202003"):
        write_netcdf(env.ws / f"g_{month}.nc")
    return _files(env, pattern=f"{env.ws}/g_{{time:%Y%m}}.nc")


def _wmts_capabilities(env: Env, *, layer: str = "BlueMarble_NextGeneration",
                       time: bool = False) -> Path:
    """A capabilities document in GIBS's form: one layer of 4 px tiles of 4 degrees (local)."""
    sd = 111319.49079327357 / 0.00028  # 1 degree pixels (OGC 07-057r7 scale denominator)
    dim = ("<Dimension><ows:Identifier>Time</ows:Identifier><Default>2004-08-01</Default>"
           "<Value>2004-01-01/2004-12-01/P1M</Value></Dimension>") if time else ""
    template = f"{env.ws}/tiles/{{TileMatrix}}/{{TileRow}}/{{TileCol}}.png"
    doc = ('<?xml version="1.0" encoding="UTF-8"?><Capabilities '
           'xmlns="http://www.opengis.net/wmts/1.0" xmlns:ows="http://www.opengis.net/ows/1.1" '
           'version="1.0.0"><Contents>'
           f"<Layer><ows:Title>t</ows:Title><ows:Identifier>{layer}</ows:Identifier>"
           '<Style isDefault="true"><ows:Identifier>default</ows:Identifier></Style>'
           f"<Format>image/png</Format>{dim}<TileMatrixSetLink><TileMatrixSet>1deg"
           '</TileMatrixSet></TileMatrixSetLink><ResourceURL format="image/png" '
           f'resourceType="tile" template="{template}"/></Layer>'
           "<TileMatrixSet><ows:Identifier>1deg</ows:Identifier><ows:SupportedCRS>"
           "urn:ogc:def:crs:EPSG::4326</ows:SupportedCRS><TileMatrix><ows:Identifier>0"
           f"</ows:Identifier><ScaleDenominator>{sd!r}</ScaleDenominator><TopLeftCorner>"
           "-180 90</TopLeftCorner><TileWidth>4</TileWidth><TileHeight>4</TileHeight>"
           "<MatrixWidth>90</MatrixWidth><MatrixHeight>45</MatrixHeight></TileMatrix>"
           "</TileMatrixSet></Contents></Capabilities>")
    path = env.ws / "WMTSCapabilities.xml"
    path.write_text(doc)
    return path


def _wmts(env: Env, caps: Path, **wmts: Any) -> Cli:
    """A static recipe whose one source is the WMTS layer of ``caps``."""
    recipe = good_recipe(env)
    source = recipe["sources"][0]
    del source["path"]
    source.update(format="wmts", bands=["grey"], wmts={
        "capabilities": str(caps), "layer": "BlueMarble_NextGeneration", **wmts})
    source["variables"][0]["source"] = "grey"
    return env.build(recipe)


@builds("wmts-layer-missing")
def _(env: Env) -> Cli:
    return _wmts(env, _wmts_capabilities(env, layer="Coastlines"))


@builds("wmts-tile-matrix-set-missing")
def _(env: Env) -> Cli:
    return _wmts(env, _wmts_capabilities(env), tile_matrix_set="250m")


@builds("wmts-zoom-missing")
def _(env: Env) -> Cli:
    return _wmts(env, _wmts_capabilities(env), zoom=9)


@builds("wmts-time-missing")
def _(env: Env) -> Cli:
    return _wmts(env, _wmts_capabilities(env, time=True), time="2030-01-01")


@builds("wmts-tile-not-image")
def _(env: Env) -> Cli:
    for row in (21, 22):
        for col in (44, 45, 46):
            tile = env.ws / "tiles" / "0" / str(row) / f"{col}.png"
            tile.parent.mkdir(parents=True, exist_ok=True)
            tile.write_text("<ExceptionReport>TileOutOfRange</ExceptionReport>")
    return _wmts(env, _wmts_capabilities(env))


def _stac_catalog(env: Env) -> Path:
    """A static STAC catalog in the case's folder: one item (January 2020, asset `data`)."""
    write_netcdf(env.ws / "g_202001.nc")
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "g_202001",
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 4],
                                                             [0, 0]]]},
            "bbox": [0, 0, 4, 4], "properties": {"datetime": "2020-01-15T00:00:00Z"},
            "links": [{"rel": "root", "href": "./catalog.json"}],
            "assets": {"data": {"href": "./g_202001.nc"}}}
    (env.ws / "g_202001.json").write_text(json.dumps(item))
    catalog = {"type": "Catalog", "stac_version": "1.0.0", "id": "local", "description": "d",
               "links": [{"rel": "root", "href": "./catalog.json"},
                         {"rel": "item", "href": "./g_202001.json"}]}
    path = env.ws / "catalog.json"
    path.write_text(json.dumps(catalog))
    return path


@builds("stac-asset-missing")
def _(env: Env) -> Cli:
    return _files(env, stac={"catalog": str(_stac_catalog(env)), "asset": "B04"})


@builds("stac-no-items")
def _(env: Env) -> Cli:
    return _files(env, stac={"catalog": str(_stac_catalog(env)), "asset": "data",
                             "query": {"platform": "sentinel-2a"}})


@builds("recipe-nan-scale-factor")
def _(env: Env) -> Cli:
    recipe = good_recipe(env)
    recipe["sources"][0]["variables"][0]["scale_factor"] = float("nan")
    return env.build(recipe)


@builds("recipe-unknown-key-did-you-mean")
def _(env: Env) -> Cli:
    recipe = good_recipe(env)
    recipe["grid"]["resolutoin"] = recipe["grid"].pop("resolution")
    return env.build(recipe)


@builds("recipe-sample-did-you-mean")
def _(env: Env) -> Cli:
    recipe = good_recipe(env)
    del recipe["sources"][0]["path"]
    recipe["sources"][0]["sample"] = "ostia-montly"
    return env.build(recipe)


@builds("recipe-bbox-latitude-first")
def _(env: Env) -> Cli:
    recipe = good_recipe(env)
    recipe["grid"]["bbox"] = [45, -125, 50, -116]
    return env.build(recipe)


@builds("recipe-resolution-in-metres-on-degrees")
def _(env: Env) -> Cli:
    recipe = good_recipe(env)
    recipe["grid"]["resolution"] = 5000
    return env.build(recipe)


@builds("recipe-message-square-brackets")
def _(env: Env) -> Cli:
    recipe = good_recipe(env)
    recipe["grid"]["bbox"] = [4, 0, 0, 4]
    return env.build(recipe)


@builds("recipe-name-path-traversal")
def _(env: Env) -> Cli:
    recipe = good_recipe(env)
    recipe["name"] = "../../etc/evil"
    return Cli(["build", str(env.recipe(recipe)), "--no-fetch"])


# ------------------------------------------------------------------ source files
@builds("source-truncated-netcdf4")
def _(env: Env) -> Cli:
    data = write_netcdf(env.ws / "whole.nc").read_bytes()
    (env.ws / "truncated.nc").write_bytes(data[: len(data) // 2])
    return env.build(recipe_for(env.ws / "truncated.nc"))


@builds("source-truncated-netcdf3")
def _(env: Env) -> Cli:
    data = write_netcdf(env.ws / "whole3.nc", format="NETCDF3_CLASSIC").read_bytes()
    (env.ws / "truncated3.nc").write_bytes(data[:-20])
    return env.build(recipe_for(env.ws / "truncated3.nc"))


@builds("source-png-as-netcdf")
def _(env: Env) -> Cli:
    (env.ws / "data.nc").write_bytes(png_bytes())
    return env.build(recipe_for(env.ws / "data.nc"))


@builds("source-png-as-geotiff")
def _(env: Env) -> Cli:
    (env.ws / "data.tif").write_bytes(png_bytes())
    return env.build(recipe_for(env.ws / "data.tif", "geotiff", bands=["t2m"]))


def write_geotiff(path: Path, crs: str, bounds: tuple[float, float, float, float],
                  n: int) -> Path:
    """A GeoTIFF of ``n`` x ``n`` ones (float32, one band) over ``bounds`` in ``crs``."""
    import rasterio
    from rasterio.transform import from_bounds

    with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=1, dtype="float32",
                       crs=crs, transform=from_bounds(*bounds, n, n)) as f:
        f.write(np.ones((1, n, n), "float32"))
    return path


@builds("source-wrong-crs-geotiff")
def _(env: Env) -> Cli:
    path = write_geotiff(env.ws / "merc.tif", "EPSG:3857", (0, 0, 445_000, 445_000), 8)
    return env.build(recipe_for(path, "geotiff", bands=["t2m"],
                                georeference={"crs": "EPSG:4326", "bbox": [0, 0, 4, 4]}))


@builds("source-wrong-crs-netcdf")
def _(env: Env) -> Cli:
    path = write_netcdf(env.ws / "latlon.nc")
    return env.build(recipe_for(path, georeference={"crs": "EPSG:32633", "bbox": [0, 0, 4, 4],
                                                    "dims": ["lat", "lon"]}))


@builds("source-enormous-netcdf")
def _(env: Env) -> Cli:
    import netCDF4

    with netCDF4.Dataset(env.ws / "huge.nc", "w") as nc:
        nc.createDimension("lat", 100_000)
        nc.createDimension("lon", 100_000)
        var = nc.createVariable("t2m", "f4", ("lat", "lon"), chunksizes=(1000, 1000))
        var.units = "K"
    assert (env.ws / "huge.nc").stat().st_size < 100_000
    return env.build(recipe_for(env.ws / "huge.nc"))


@builds("source-enormous-geotiff")
def _(env: Env) -> Cli:
    import rasterio
    from rasterio.transform import from_bounds

    n = 100_000
    path = env.ws / "huge.tif"
    with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=from_bounds(-180, -90, 180, 90, n, n),
                       tiled=True, blockxsize=1024, blockysize=1024, SPARSE_OK=True):
        pass  # nothing written: every tile is sparse
    assert path.stat().st_size < 1_000_000
    return env.build(recipe_for(path, "geotiff", bands=["t2m"]))


@builds("source-all-nan-coordinates")
def _(env: Env) -> Cli:
    nan = np.full((6, 5), np.nan)
    xr.Dataset({"t2m": (("y", "x"), np.ones((6, 5), "float32"), {"units": "K"})},
               coords={"lat": (("y", "x"), nan, {"units": "degrees_north"}),
                       "lon": (("y", "x"), nan, {"units": "degrees_east"})}
               ).to_netcdf(env.ws / "swath.nc")
    return env.build(recipe_for(env.ws / "swath.nc"))


@builds("source-all-nan-data")
def _(env: Env) -> Cli:
    nan = np.full((4, 4), np.nan, "float32")
    return env.build(recipe_for(write_netcdf(env.ws / "nan.nc", nan)))


@builds("source-checksum-mismatch")
def _(env: Env) -> Cli:
    recipe = good_recipe(env)
    recipe["sources"][0]["sha256"] = hashlib.sha256(b"another file").hexdigest()
    return env.build(recipe)


@builds("source-declared-bbox-disagrees")
def _(env: Env) -> Cli:
    path = write_netcdf(env.ws / "own.nc")
    return env.build(recipe_for(path, georeference={"crs": "EPSG:4326", "bbox": [0.5, 0, 4.5, 4],
                                                    "dims": ["lat", "lon"]}))


@builds("source-projected-without-grid-mapping")
def _(env: Env) -> Cli:
    metres = np.arange(4) * 100_000.0 + 50_000.0
    xr.Dataset({"t2m": (("y", "x"), np.zeros((4, 4), "float32"))},
               coords={"y": ("y", metres[::-1], {"units": "m"}),
                       "x": ("x", metres, {"units": "m"})}).to_netcdf(env.ws / "metres.nc")
    return env.build(recipe_for(env.ws / "metres.nc"))


def _with_far_source(env: Env, path: Path, fmt: str = "netcdf", **source: Any) -> Cli:
    """The good recipe plus a source ``far`` (variable ``t2far``) read from ``path``."""
    recipe = good_recipe(env)
    far = recipe_for(path, fmt, **source)["sources"][0]
    far.update(name="far")
    far["variables"][0]["name"] = "t2far"
    recipe["sources"].append(far)
    return env.build(recipe)


@builds("source-misses-grid")
def _(env: Env) -> Cli:
    path = env.ws / "far.nc"
    xr.Dataset({"t2m": (("lat", "lon"), np.ones((4, 4), "float32"), {"units": "K"})},
               coords={"lat": ("lat", np.arange(43.5, 40, -1.0), {"units": "degrees_north"}),
                       "lon": ("lon", np.arange(40.5, 44, 1.0), {"units": "degrees_east"})}
               ).to_netcdf(path)
    return _with_far_source(env, path)


@builds("source-misses-grid-projected")
def _(env: Env) -> Cli:
    path = write_geotiff(env.ws / "utm.tif", "EPSG:32633",
                         (500_000, 5_000_000, 540_000, 5_040_000), 4)
    return _with_far_source(env, path, "geotiff", bands=["t2m"])


@builds("recipe-bucket-onto-finer-grid")
def _(env: Env) -> Cli:
    recipe = good_recipe(env)
    recipe["grid"]["resolution"] = 0.5
    recipe["sources"][0]["variables"][0]["resampling"] = "bucket_average"
    return env.build(recipe)


# ------------------------------------------------------------------ CLI arguments
def _search(env: Env, *extra: str) -> Cli:
    return Cli(["search", str(env.cube), *extra])


@builds("cli-search-lat-not-a-number")
def _(env: Env) -> Cli:
    return _search(env, "--lat", "abc", "--lon", "0")


@builds("cli-search-unknown-option")
def _(env: Env) -> Cli:
    return _search(env, "--lat", "0", "--lon", "0", "--colour", "red")


@builds("cli-search-k-zero")
def _(env: Env) -> Cli:
    return _search(env, "--lat", "0", "--lon", "0", "-k", "0")


@builds("cli-search-huge-k")
def _(env: Env) -> Cli:
    return _search(env, "--lat", "0", "--lon", "0", "-k", str(10**23))


for _id, _extra in [("cli-search-scales-not-held", ("--scales", "8,64")),
                    ("cli-search-scale-not-held", ("--scale", "16")),
                    ("cli-search-scales-malformed", ("--scales", "eight"))]:
    builds(_id)(lambda env, extra=_extra: _search(env, "--lat", "0", "--lon", "0", *extra))


@builds("cli-search-bbox-three-numbers")
def _(env: Env) -> Cli:
    return _search(env, "--lat", "0", "--lon", "0", "--bbox", "1,2,3")


@builds("cli-search-bbox-nan")
def _(env: Env) -> Cli:
    return _search(env, "--lat", "0", "--lon", "0", "--bbox", "0,nan,10,40")


@builds("cli-search-quicklook-missing-folder")
def _(env: Env) -> Cli:
    return _search(env, "--lat", "0", "--lon", "0", "--quicklook",
                   str(env.ws / "no" / "such" / "folder" / "q.png"))


@builds("cli-search-missing-cube")
def _(env: Env) -> Cli:
    return Cli(["search", str(env.ws / "missing.zarr"), "--lat", "0", "--lon", "0"])


@builds("cli-search-file-as-cube")
def _(env: Env) -> Cli:
    (env.ws / "cube.png").write_bytes(png_bytes())
    return Cli(["search", str(env.ws / "cube.png"), "--lat", "0", "--lon", "0"])


@builds("cli-index-unknown-kind")
def _(env: Env) -> Cli:
    return Cli(["index", str(env.cube), "--kind", "bogus"])


@builds("cli-embed-tile-zero")
def _(env: Env) -> Cli:
    return Cli(["embed", str(env.cube), "--model", "0123456789abcdef", "--tile", "0"])


@builds("cli-plot-unknown-variable")
def _(env: Env) -> Cli:
    return Cli(["plot", str(env.cube), "no_such_var", "--out", str(env.ws / "p.png")])


@builds("cli-plot-out-missing-folder")
def _(env: Env) -> Cli:
    return Cli(["plot", str(env.cube), "bmng_red", "--out",
                str(env.ws / "no" / "such" / "folder" / "p.png")])


@builds("cli-plot-rgb-channel-did-you-mean")
def _(env: Env) -> Cli:
    return Cli(["plot", str(env.cube), "--rgb", "bmng_red,bmng_green,bmng_blu", "--out",
                str(env.ws / "p.png")])


@builds("cli-plot-rgb-without-blue-marble")
def _(env: Env) -> Cli:
    import esdc.testing

    esdc.testing.new_cube(shape=(8, 16), times=0, variables=("a", "b")).to_zarr(
        env.ws / "plain.zarr", zarr_format=3, consolidated=True)
    return Cli(["plot", str(env.ws / "plain.zarr"), "rgb", "--out", str(env.ws / "p.png")])


@builds("cli-export-unknown-extension")
def _(env: Env) -> Cli:
    return Cli(["export", str(env.cube), str(env.ws / "out.csv")])


@builds("cli-export-variable-did-you-mean")
def _(env: Env) -> Cli:
    return Cli(["export", str(env.cube), str(env.ws / "out.nc"), "--variables", "bmng_rd"])


@builds("cli-export-bbox-outside")
def _(env: Env) -> Cli:
    return Cli(["export", str(env.cube), str(env.ws / "out.nc"), "--bbox", "200,0,210,10"])


@builds("cli-export-time-of-static-cube")
def _(env: Env) -> Cli:
    return Cli(["export", str(env.cube), str(env.ws / "out.nc"), "--time", "2020-01"])


@builds("cli-export-existing-file")
def _(env: Env) -> Cli:
    (env.ws / "out.nc").write_bytes(b"someone's file")
    return Cli(["export", str(env.cube), str(env.ws / "out.nc")])


@builds("cli-export-antimeridian-bbox")
def _(env: Env) -> Cli:
    return Cli(["export", str(env.cube), str(env.ws / "out.nc"), "--bbox", "170,-10,-170,10"])


@builds("cli-point-outside-the-cube")
def _(env: Env) -> Cli:
    return Cli(["point", str(env.cube), "95", "0"])


@builds("cli-point-json-and-csv")
def _(env: Env) -> Cli:
    return Cli(["point", str(env.cube), "0", "0", "--json", "--csv"])


@builds("cli-verify-missing-cube")
def _(env: Env) -> Cli:
    return Cli(["verify", str(env.ws / "missing.zarr")])


@builds("cli-serve-port-out-of-range")
def _(env: Env) -> Cli:
    return Cli(["serve", str(env.cube), "--port", "70000"])


@builds("cli-train-config-python-tag")
def _(env: Env) -> Cli:
    (env.ws / "train.yaml").write_text(
        'name: !!python/object/apply:os.system ["touch pwned"]\nframework: sklearn\n')
    return Cli(["train", str(env.cube), "--config", str(env.ws / "train.yaml")])


@builds("cli-train-config-not-utf8")
def _(env: Env) -> Cli:
    (env.ws / "train.yaml").write_bytes(b"\xff\xfe\x00name: t\n")
    return Cli(["train", str(env.cube), "--config", str(env.ws / "train.yaml")])


@builds("cli-train-config-deep-nesting")
def _(env: Env) -> Cli:
    (env.ws / "train.yaml").write_text("name: " + "[" * 100_000 + "]" * 100_000 + "\n")
    return Cli(["train", str(env.cube), "--config", str(env.ws / "train.yaml")])


@builds("cli-train-config-is-a-folder")
def _(env: Env) -> Cli:
    return Cli(["train", str(env.cube), "--config", str(env.ws)])


@builds("cli-build-append-with-overwrite")
def _(env: Env) -> Cli:
    return env.build(good_recipe(env), "--append", "--overwrite")


# ------------------------------------------------------------------ embeddings / index
def _index_file(env: Env, suffix: str) -> Path:
    """The copy's manifest (``json``) or the index file it names (``faiss``)."""
    folder = env.ws / "cube.zarr.index"
    if suffix == "json":
        return folder / "embedding_t8.json"
    name = json.loads((folder / "embedding_t8.json").read_text()).get("index_file")
    return folder / (name or "embedding_t8.faiss")


def _update_manifest(env: Env, **changes: Any) -> None:
    path = _index_file(env, "json")
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest, indent=2))


def _resum(env: Env) -> None:
    """Make the manifest's SHA-256 match whatever the index file now holds."""
    _update_manifest(env, index_sha256=hashlib.sha256(
        _index_file(env, "faiss").read_bytes()).hexdigest())


@builds("index-missing")
def _(env: Env) -> Cli:
    env.copy_cube()
    shutil.rmtree(env.ws / "cube.zarr.index")
    return env.search_copy()


@builds("index-missing-serve")
def _(env: Env) -> Cli:
    env.copy_cube()
    shutil.rmtree(env.ws / "cube.zarr.index")
    return Cli(["serve", str(env.ws / "cube.zarr"), "--port", "0"])


@builds("index-truncated")
def _(env: Env) -> Cli:
    env.copy_cube()
    path = _index_file(env, "faiss")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return env.search_copy()


@builds("index-garbage")
def _(env: Env) -> Cli:
    env.copy_cube()
    _index_file(env, "faiss").write_bytes(np.random.default_rng(0).bytes(4096))
    _resum(env)
    return env.search_copy()


@builds("index-wrong-kind")
def _(env: Env) -> Cli:
    import faiss

    env.copy_cube()
    other = faiss.IndexFlatIP(4)
    other.add(np.random.default_rng(0).random((8, 4), dtype="float32"))
    faiss.write_index(other, str(_index_file(env, "faiss")))
    _resum(env)
    return env.search_copy()


@builds("index-manifest-not-json")
def _(env: Env) -> Cli:
    env.copy_cube()
    _index_file(env, "json").write_text("{{{")
    return env.search_copy()


@builds("index-manifest-extra-key")
def _(env: Env) -> Cli:
    env.copy_cube()
    _update_manifest(env, evil="__import__('os').system('touch pwned')")
    return env.search_copy()


@builds("index-manifest-altered")
def _(env: Env) -> Cli:
    env.copy_cube()
    _update_manifest(env, index_sha256="0" * 64)
    return env.search_copy()


@builds("index-lineage-mismatch")
def _(env: Env) -> Cli:
    import zarr

    cube = env.copy_cube()
    group = zarr.open_group(cube, mode="r+")
    group["embedding_t8"].attrs["esdc_model_run"] = "another-run"
    zarr.consolidate_metadata(cube)
    return env.search_copy()


@builds("cube-chunk-truncated")
def _(env: Env) -> Cli:
    cube = env.copy_cube()
    chunk = sorted(p for p in (cube / "bmng_red" / "c").rglob("*") if p.is_file())[0]
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    return Cli(["plot", str(cube), "bmng_red", "--out", str(env.ws / "plot.png")])


@builds("cube-metadata-garbage")
def _(env: Env) -> Cli:
    cube = env.copy_cube()
    (cube / "zarr.json").write_text("{garbage")
    return Cli(["info", str(cube)])


@builds("cube-metadata-enormous-shape")
def _(env: Env) -> Cli:
    cube = env.copy_cube()
    array = cube / "bmng_red" / "zarr.json"
    meta = json.loads(array.read_text())
    meta["shape"] = [10**12, 10**12]
    array.write_text(json.dumps(meta))
    root = json.loads((cube / "zarr.json").read_text())
    root["consolidated_metadata"]["metadata"]["bmng_red"]["shape"] = [10**12, 10**12]
    (cube / "zarr.json").write_text(json.dumps(root))
    return env.search_copy()


@builds("embeddings-all-nan")
def _(env: Env) -> Cli:
    import zarr

    cube = env.copy_cube()
    arr = zarr.open_group(cube, mode="r+")["embedding_t8"]
    arr[...] = np.nan
    return Cli(["index", str(cube)])


@builds("embeddings-none")
def _(env: Env) -> Cli:
    from esdc.testing import new_cube

    new_cube(shape=(16, 32), times=0).to_zarr(env.ws / "plain.zarr", zarr_format=3,
                                               consolidated=True)
    return Cli(["index", str(env.ws / "plain.zarr")])


# ------------------------------------------------------------------ HTTP requests
def _get(url: str) -> Callable[[Env], Http]:
    return lambda env: Http("GET", url)


for _id, _url in [
    ("http-k-zero", "/search/tile?lat=0&lon=0&k=0"),
    ("http-k-huge", "/search/tile?lat=0&lon=0&k=99999999999999999999999999"),
    ("http-bbox-letters", "/search/tile?lat=0&lon=0&bbox=a,b,c,d"),
    ("http-bbox-nan", "/search/tile?lat=0&lon=0&bbox=0,nan,10,40"),
    ("http-lat-overflow", "/search/tile?lat=1e309&lon=0"),
    ("http-path-traversal", "/tiles/../../etc/passwd.png"),
    ("http-path-traversal-encoded", "/tiles/%2e%2e/%2e%2e/etc/passwd.png"),
    ("http-tile-huge-index", "/tiles/99999999999999999999999/0.png"),
    ("http-tile-negative-time", "/tiles/0/0.png?t=-1"),
    ("http-scales-not-held", "/search/tile?lat=0&lon=0&scales=8,64"),
    ("http-scale-not-held", "/search/tile?lat=0&lon=0&scale=32"),
]:
    builds(_id)(_get(_url))

VEC = [0.1] * 16


def _post(body: Any = None, raw: bytes | None = None,
          content_type: str = "application/json") -> Callable[[Env], Http]:
    if raw is None:
        raw = json.dumps(body).encode()
    return lambda env: Http("POST", "/search/vector", content=raw,
                            headers={"content-type": content_type})


for _id, _fn in [
    ("http-vector-wrong-dim", _post({"vector": [0.1] * 15})),
    ("http-vector-nan", _post(raw=b'{"vector": [NaN' + b", 0.1" * 15 + b"]}")),
    ("http-vector-float32-overflow", _post({"vector": [1e300] * 16})),
    ("http-vector-too-long", _post({"vector": [0.1] * 70_000})),
    ("http-non-json-body", _post(raw=b"this is not json")),
    ("http-body-is-array", _post(VEC)),
    ("http-unknown-field", _post({"vector": VEC, "colour": "red"})),
    ("http-start-after-end", _post({"vector": VEC, "start": "2020-01", "end": "2019"})),
]:
    builds(_id)(_fn)


@builds("http-refine-scale-not-held")
def _(env: Env) -> Http:
    return Http("POST", "/search/refine", content=json.dumps(
        {"positive": [{"lat": 0, "lon": 0, "scale": 64}]}).encode(),
        headers={"content-type": "application/json"})


# --------------------------------------------------------------------------- checks
def snapshot(*roots: Path) -> dict[str, tuple[str, int]]:
    """``{path: (sha256, mtime_ns)}`` of every file and ``(dir, 0)`` of every folder.

    Folder modification times are left out: ``esdc build`` checks that the output
    folder is writable by creating and removing a probe file, which leaves the folder's
    listing as it was but touches its mtime.
    """
    snap = {}
    for root in roots:
        for p in sorted([root, *root.rglob("*")]):
            if p.is_dir() and not p.is_symlink():
                snap[str(p)] = ("dir", 0)
            else:
                snap[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.lstat().st_mtime_ns)
    return snap


def flat(text: str) -> str:
    """Text with rich's box characters removed and whitespace collapsed (wrapped lines)."""
    for ch in "│╭╮╰╯─":
        text = text.replace(ch, " ")
    return " ".join(text.split())


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile-shared")
    make_embedded_cube(folder)
    return folder


@pytest.fixture(scope="module")
def api(shared: Path) -> Any:
    with warnings.catch_warnings():  # starlette 1.x: "install httpx2 instead"
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient
    from esdc.search.http import create_app

    return TestClient(create_app(shared / "cube.zarr"), raise_server_exceptions=False)


def test_catalogue_is_complete() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids are unique"
    assert len(CASES) >= 30
    assert set(ids) == set(BUILDERS), set(ids) ^ set(BUILDERS)
    assert {c.category for c in CASES} == set(CATEGORIES)
    for c in CASES:
        assert c.needles, c.id
        assert c.expect in (2, 404, 422), c.id


def test_docs_table_is_current() -> None:
    doc = ROOT / "docs" / "HOSTILE_INPUTS.md"
    assert doc.read_text(encoding="utf-8") == markdown(), (
        "docs/HOSTILE_INPUTS.md is stale: run "
        "`python -m tests.reliability.catalogue > docs/HOSTILE_INPUTS.md`")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, tmp_path: Path, shared: Path, api: Any,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)  # anything written to the working directory shows in the snapshot
    env = Env(ws, shared)
    action = BUILDERS[case.id](env)
    before = snapshot(ws, shared)
    needles = [n.format(ws=ws, recipe=env.recipe_path) for n in case.needles]
    start = time.monotonic()
    if isinstance(action, Cli):
        result = runner.invoke(app, action.args)
        text = result.output
        assert result.exit_code == case.expect, (result.exit_code, text, result.exception)
        assert isinstance(result.exception, SystemExit), result.exception
    else:
        r = api.request(action.method, action.url, content=action.content,
                        headers=action.headers)
        text = r.text
        assert r.status_code == case.expect, (r.status_code, text)
        assert r.headers["content-type"] == "application/json"
    # Bombs (billion laughs, huge grids or time axes, enormous files) are refused, not
    # expanded: every case answers in seconds.
    assert time.monotonic() - start < 30
    assert "Traceback" not in text
    for needle in needles:
        assert needle in text or flat(needle) in flat(text), f"{needle!r} not in:\n{text}"
    assert snapshot(ws, shared) == before, "something on disk changed"
    assert not os.path.exists(ws / "pwned")


def test_a_real_process_exits_2_without_traceback(tmp_path: Path) -> None:
    """The first case through ``python -m esdc.cli``: exit status, stderr, no side effect."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text('name: !!python/object/apply:os.system ["touch pwned"]\n')
    proc = subprocess.run([sys.executable, "-m", "esdc.cli", "build", str(recipe), "--out",
                           str(tmp_path / "out.zarr"), "--no-fetch"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert str(recipe) in proc.stderr and "python/object/apply:os.system" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]
