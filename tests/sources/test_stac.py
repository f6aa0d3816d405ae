"""STAC sources (``files: {stac: ...}``): a static catalog on disk and a small STAC API.

The real OSTIA monthly sample is cut into one NetCDF granule per month, each an item of
a STAC collection (its ``data`` asset, placed at the month's time). A build from the
catalog equals the build from the one file, value for value; only the items over the
grid's bbox and time span become granules.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

from esdc.build import build
from esdc.cli import app
from esdc.errors import SourceError, SourceNotFoundError
from esdc.loopback import LoopbackServer
from esdc.recipe import Recipe
from esdc.storage import resolve
from esdc.storage.tables import read_table
from tests.conftest import need_sample

pystac = pytest.importorskip("pystac")
fastapi = pytest.importorskip("fastapi")
# a module name: FastAPI resolves the handlers' (string) annotations in this module
Request = fastapi.Request

MONTHS = 12          # the grid: 2006-04 .. 2007-03
CUT = 14             # granules cut: two months past the grid's time span
COLLECTION = "ostia-monthly"
DATA = "https://data.example/ostia"   # where the API's assets say the granules are
API = "https://stac.example/v1"       # the STAC API's root (mirrored to 127.0.0.1)


def ostia_recipe(source: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "ostia_stac", "title": "OSTIA from a STAC catalog",
        "grid": {"body": "earth", "bbox": [0, -5, 60, 4], "resolution": 1.0,
                 "time": {"start": "2006-04-01", "end": "2007-03-01", "freq": "MS"}},
        "output": {"chunks": {"time": 4, "lat": 9, "lon": 60}},
        "sources": [{"name": "ostia", "format": "netcdf", "time": "series", **source,
                     "variables": [{"name": "sst", "source": "surface_temperature",
                                    "resampling": "bucket_average", "units": "K"}]}],
    }


def stac(catalog: str | Path, **more: Any) -> dict[str, Any]:
    return {"files": {"stac": {"catalog": str(catalog), "collection": COLLECTION,
                               "asset": "data", **more}}}


def values(cube: Path | str) -> np.ndarray:
    with xr.open_zarr(cube) as ds:
        return ds["sst"].values


@pytest.fixture(scope="module")
def granules(tmp_path_factory) -> Path:
    """The first 14 months of the OSTIA sample, one NetCDF file each."""
    folder = tmp_path_factory.mktemp("ostia")
    with xr.open_dataset(need_sample("ostia-monthly")) as ds:
        for i in range(CUT):
            one = ds.isel(time=[i])
            stamp = np.datetime_as_string(one.time.values[0], "M").replace("-", "")
            one.to_netcdf(folder / f"ostia_{stamp}.nc")
    return folder


def items(folder: Path, href: str) -> list[pystac.Item]:
    """One item per granule of ``folder``; its ``data`` asset at ``href/NAME``."""
    out = []
    for f in sorted(folder.glob("ostia_*.nc")):
        with xr.open_dataset(f) as ds:
            t = pd.Timestamp(ds.time.values[0]).to_pydatetime()
        item = pystac.Item(id=f.stem, geometry={
            "type": "Polygon", "coordinates": [[[-180, -5.28], [180, -5.28], [180, 4.72],
                                                [-180, 4.72], [-180, -5.28]]]},
            bbox=[-180, -5.28, 180, 4.72], datetime=t,
            properties={"platform": "ostia", "processing:level": "L4"})
        item.add_asset("data", pystac.Asset(f"{href}/{f.name}",
                                            media_type="application/x-netcdf", roles=["data"]))
        item.add_asset("metadata", pystac.Asset(f"{href}/{f.stem}.xml", roles=["metadata"]))
        out.append(item)
    return out


@pytest.fixture(scope="module")
def catalog(granules, tmp_path_factory) -> Path:
    """A static catalog on disk: catalog.json -> ostia-monthly -> one item per month."""
    root = tmp_path_factory.mktemp("stac")
    cat = pystac.Catalog("esdc-test", "OSTIA monthly granules cut from the esdc sample")
    coll = pystac.Collection(COLLECTION, "OSTIA monthly mean SST", pystac.Extent(
        pystac.SpatialExtent([[-180, -5.28, 180, 4.72]]),
        pystac.TemporalExtent([[None, None]])))
    cat.add_child(coll)
    for item in items(granules, str(granules)):
        coll.add_item(item)
    cat.normalize_hrefs(str(root))
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


@pytest.fixture(scope="module")
def one_file_cube(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "c.zarr"
    build(Recipe.from_dict(ostia_recipe({"sample": "ostia-monthly"})), out)
    return out


def test_static_catalog_equals_one_file(catalog, granules, one_file_cube, tmp_path):
    out = build(Recipe.from_dict(ostia_recipe(stac(catalog, query={"platform": "ostia"}))),
                tmp_path / "s.zarr")
    np.testing.assert_array_equal(values(out), values(one_file_cube))
    table = read_table(resolve(out))
    # the two months past the grid's time span are left out
    assert [Path(u).name for u in table["url"].values] == [
        f.name for f in sorted(granules.glob("ostia_*.nc"))[:MONTHS]]
    assert str(table["time"].values[0])[:10] == "2006-04-16"
    with xr.open_zarr(out) as ds:
        prov = json.loads(ds.attrs["esdc_sources"])[0]
    assert prov["files"] == f"STAC {catalog} asset data" and prov["granules"] == MONTHS


def test_search_without_items_names_the_query(catalog, tmp_path):
    doc = ostia_recipe(stac(catalog, query={"platform": {"eq": "nope"}}))
    with pytest.raises(SourceNotFoundError, match=r"no STAC item.*collection 'ostia-monthly'"
                                                  r".*bbox \[0\.0, -5\.0, 60\.0, 4\.0\].*"
                                                  r"2006-04-01T00:00:00Z/2007-03-31T23:59:59Z"
                                                  r'.*query \{"platform": \{"eq": "nope"\}\}'):
        build(Recipe.from_dict(doc), tmp_path / "n.zarr")
    assert not (tmp_path / "n.zarr").exists()


def test_missing_asset_names_the_assets_there(catalog, tmp_path):
    doc = ostia_recipe(stac(catalog))
    doc["sources"][0]["files"]["stac"]["asset"] = "B04"
    with pytest.raises(SourceError, match=r"item 'ostia_200604' has no asset 'B04'; it has "
                                          r"\['data', 'metadata'\]"):
        build(Recipe.from_dict(doc), tmp_path / "a.zarr")


def test_missing_collection_names_the_collections(catalog, tmp_path):
    doc = ostia_recipe(stac(catalog))
    doc["sources"][0]["files"]["stac"]["collection"] = "sentinel-2"
    with pytest.raises(SourceNotFoundError, match=r"no collection 'sentinel-2'; it has "
                                                  r"\['ostia-monthly'\]"):
        build(Recipe.from_dict(doc), tmp_path / "c.zarr")


# --------------------------------------------------------------------------- STAC API
def stac_api(features: list[dict[str, Any]], log: list[dict[str, Any]]) -> Any:
    """A minimal STAC API (core, item search, query) over ``features``, in FastAPI."""
    app = fastapi.FastAPI()
    conforms = ["https://api.stacspec.org/v1.0.0/core",
                "https://api.stacspec.org/v1.0.0/item-search",
                "https://api.stacspec.org/v1.0.0/item-search#query"]

    def t(text: str) -> pd.Timestamp:
        return pd.Timestamp(text).tz_localize(None) if pd.Timestamp(text).tzinfo else \
            pd.Timestamp(text)

    def keep(f: dict[str, Any], p: dict[str, Any]) -> bool:
        if p.get("collections") and f["collection"] not in p["collections"]:
            return False
        if p.get("bbox"):
            w, s, e, n = p["bbox"]
            fw, fs, fe, fn = f["bbox"]
            if fe < w or fw > e or fn < s or fs > n:
                return False
        if p.get("datetime"):
            a, b = p["datetime"].split("/")
            if not t(a) <= t(f["properties"]["datetime"]) <= t(b):
                return False
        for prop, cond in (p.get("query") or {}).items():
            if f["properties"].get(prop) != cond.get("eq"):
                return False
        return True

    @app.get("/")
    def landing(request: Request) -> dict[str, Any]:
        base = str(request.base_url)
        return {"type": "Catalog", "id": "esdc-test-api", "stac_version": "1.0.0",
                "description": "OSTIA granules", "conformsTo": conforms, "links": [
                    {"rel": "self", "href": base}, {"rel": "root", "href": base},
                    {"rel": "search", "href": f"{base}search", "method": "POST",
                     "type": "application/geo+json"},
                    {"rel": "search", "href": f"{base}search", "method": "GET",
                     "type": "application/geo+json"}]}

    @app.get("/conformance")
    def conformance() -> dict[str, Any]:
        return {"conformsTo": conforms}

    @app.post("/search")
    async def search(request: Request) -> dict[str, Any]:
        params = await request.json()
        log.append(params)
        found = [f for f in features if keep(f, params)]
        return {"type": "FeatureCollection", "features": found, "links": []}

    return app


class Uvicorn:
    """uvicorn serving ``app`` on a free port of 127.0.0.1 in a daemon thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> Uvicorn:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def test_stac_api_equals_one_file(granules, one_file_cube, tmp_path, monkeypatch):
    pytest.importorskip("pystac_client")
    pytest.importorskip("uvicorn")
    monkeypatch.setenv("ESDC_GRANULE_CACHE", str(tmp_path / "cache"))
    features = []
    for item in items(granules, DATA):
        d = item.to_dict()
        d["collection"] = COLLECTION
        features.append(d)
    log: list[dict[str, Any]] = []
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(ostia_recipe(stac(API, query={"platform": {"eq":
                                                                                "ostia"}}))))
    out = tmp_path / "api.zarr"
    with Uvicorn(stac_api(features, log)) as api, LoopbackServer(granules) as files:
        files.inject("/ostia_200605.nc", "503")
        res = CliRunner().invoke(app, [
            "build", str(recipe), "--out", str(out), "--no-fetch",
            "--mirror", f"{API}={api.base_url}", "--mirror", f"{DATA}={files.base_url}"])
        assert res.exit_code == 0, res.output
        # the grid's 12 months only (one 503 retried)
        assert sorted(r.path for r in files.requests("GET")) == sorted(
            [f"/{f.name}" for f in sorted(granules.glob("ostia_*.nc"))[:MONTHS]]
            + ["/ostia_200605.nc"])
    np.testing.assert_array_equal(values(out), values(one_file_cube))
    [params] = log
    assert params["bbox"] == [0.0, -5.0, 60.0, 4.0]
    assert params["datetime"] == "2006-04-01T00:00:00Z/2007-03-31T23:59:59Z"
    assert params["collections"] == [COLLECTION]
    assert params["query"] == {"platform": {"eq": "ostia"}}
    table = read_table(resolve(out))
    assert all(str(u).startswith(files.base_url) for u in table["url"].values)


def test_stac_api_without_items_exits_2_with_the_query(tmp_path):
    pytest.importorskip("pystac_client")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(ostia_recipe(stac(API))))
    with Uvicorn(stac_api([], [])) as api:
        res = CliRunner().invoke(app, ["build", str(recipe), "--out", str(tmp_path / "o.zarr"),
                                       "--no-fetch", "--mirror", f"{API}={api.base_url}"])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "no STAC item" in text and f"catalog {api.base_url}" in text
    assert "bbox [0.0, -5.0, 60.0, 4.0]" in text
    assert not (tmp_path / "o.zarr").exists()
