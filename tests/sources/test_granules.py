"""Multi-file sources: real samples cut into granules, local and over a loopback HTTP server.

A build from granules equals the build from the same data in one file, value for value;
the granule table lands inside the cube; a missing granule stops the build (or is
skipped and recorded); an append fetches only new granules and keeps old chunks.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from esdc.build import build, fetch_sources, plan
from esdc.cli import app
from esdc.conventions import GRANULE_TABLE
from esdc.errors import GranuleNotFoundError, RecipeError, SourceError
from esdc.loopback import LoopbackServer
from esdc.recipe import Recipe
from esdc.sources.granules import list_granules
from esdc.storage import resolve
from esdc.storage.tables import read_table
from esdc.verify import store_report
from tests.conftest import need_sample

MONTHS = 12  # 2006-04 .. 2007-03 of the OSTIA sample


@pytest.fixture(scope="module")
def ostia_granules(tmp_path_factory) -> Path:
    """The OSTIA monthly sample cut into one NetCDF file per month (``ostia_YYYYMM.nc``)."""
    folder = tmp_path_factory.mktemp("granules")
    with xr.open_dataset(need_sample("ostia-monthly")) as ds:
        for i in range(ds.sizes["time"]):
            one = ds.isel(time=[i])
            stamp = np.datetime_as_string(one.time.values[0], "M").replace("-", "")
            one.to_netcdf(folder / f"ostia_{stamp}.nc")
    return folder


def ostia_recipe(source: dict[str, Any], end: str = "2007-03-01") -> dict[str, Any]:
    return {
        "name": "ostia_granules", "title": "OSTIA from granules",
        "grid": {"body": "earth", "bbox": [0, -5, 60, 4], "resolution": 1.0,
                 "time": {"start": "2006-04-01", "end": end, "freq": "MS"}},
        "output": {"chunks": {"time": 4, "lat": 9, "lon": 60}},
        "sources": [{"name": "ostia", "format": "netcdf", "time": "series", **source,
                     "variables": [{"name": "sst", "source": "surface_temperature",
                                    "resampling": "bucket_average", "units": "K"}]}],
    }


def pattern(folder: Path | str) -> dict[str, Any]:
    return {"files": {"pattern": f"{folder}/ostia_{{time:%Y%m}}.nc"}}


def values(cube: Path | str) -> np.ndarray:
    with xr.open_zarr(cube) as ds:
        return ds["sst"].values


@pytest.fixture(scope="module")
def one_file_cube(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "c.zarr"
    build(Recipe.from_dict(ostia_recipe({"sample": "ostia-monthly"})), out)
    return out


def test_granules_equal_one_file(ostia_granules, one_file_cube, tmp_path):
    out = build(Recipe.from_dict(ostia_recipe(pattern(ostia_granules))), tmp_path / "g.zarr")
    ref = values(one_file_cube)
    assert ref.shape == (MONTHS, 9, 60) and np.isfinite(ref).mean() > 0.3
    np.testing.assert_array_equal(values(out), ref)
    table = read_table(resolve(out))
    assert table is not None and table.sizes["granule"] == MONTHS
    assert set(table["status"].values) == {"fetched"}
    first = ostia_granules / "ostia_200604.nc"
    assert table["url"].values[0] == str(first)
    assert table["sha256"].values[0] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert int(table["size"].values[0]) == first.stat().st_size
    with xr.open_zarr(out) as ds:
        prov = json.loads(ds.attrs["esdc_sources"])[0]
    assert prov["granules"] == MONTHS and prov["granule_table"] == GRANULE_TABLE
    # the table is part of the cube: its chunks are checksummed and verify passes
    report = store_report(resolve(out), checksums=True)
    assert not report.problems and report.checked and not report.uncovered


def test_http_granules_with_faults_equal_one_file(ostia_granules, one_file_cube, tmp_path,
                                                  monkeypatch):
    monkeypatch.setenv("ESDC_GRANULE_CACHE", str(tmp_path / "cache"))
    recipe = Recipe.from_dict(ostia_recipe(pattern("https://archive.example/ostia")))
    with LoopbackServer(ostia_granules) as server:
        server.inject("/ostia_200605.nc", "503", times=2)
        server.inject("/ostia_200607.nc", "truncate")
        server.inject("/ostia_200609.nc", "reset")
        mirrors = {"https://archive.example/ostia": server.base_url.rstrip("/")}
        out = build(recipe, tmp_path / "h.zarr", mirrors=mirrors)
        np.testing.assert_array_equal(values(out), values(one_file_cube))
        # a re-run of the fetch phase downloads nothing: only revalidation requests
        server.clear_log()
        fetch_sources(recipe, mirrors=mirrors)
        assert not server.requests("GET")
    table = read_table(resolve(out))
    assert all(u.startswith("http://127.0.0.1:") for u in table["url"].values)


def test_planning_sends_no_request(ostia_granules, tmp_path):
    recipe = Recipe.from_dict(ostia_recipe(pattern("https://archive.example/ostia")))
    with LoopbackServer(ostia_granules) as server:
        granules = list_granules(recipe.sources[0], recipe.grid.to_grid().time,
                                 mirrors={"https://archive.example/ostia": server.base_url})
        assert len(granules) == MONTHS and not server.requests()
    assert granules[0].time.strftime("%Y-%m") == "2006-04"


def test_missing_granule_error_and_skip(ostia_granules, tmp_path, monkeypatch):
    monkeypatch.setenv("ESDC_GRANULE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "holes"
    folder.mkdir()
    for f in sorted(ostia_granules.glob("ostia_2006*.nc")):
        if "200606" not in f.name:
            (folder / f.name).write_bytes(f.read_bytes())
    src = pattern("https://archive.example/o")
    with LoopbackServer(folder) as server:
        mirrors = {"https://archive.example/o": server.base_url.rstrip("/")}
        recipe = Recipe.from_dict(ostia_recipe(src, end="2006-09-01"))
        with pytest.raises(GranuleNotFoundError, match="ostia_200606.nc"):
            build(recipe, tmp_path / "e.zarr", mirrors=mirrors)
        assert not (tmp_path / "e.zarr").exists()
        skip = copy.deepcopy(src)
        skip["files"]["missing"] = "skip"
        out = build(Recipe.from_dict(ostia_recipe(skip, end="2006-09-01")), tmp_path / "s.zarr",
                    mirrors=mirrors)
    table = read_table(resolve(out))
    status = dict(zip(table["url"].values, table["status"].values, strict=True))
    gone = [u for u, s in status.items() if s == "skipped"]
    assert len(gone) == 1 and gone[0].endswith("ostia_200606.nc")
    assert "404" in str(table["reason"].values[list(status).index(gone[0])])
    sst = values(out)
    assert np.isnan(sst[2]).all() and np.isfinite(sst[[0, 1, 3, 4]]).any(axis=(1, 2)).all()


def test_append_fetches_only_new_granules(ostia_granules, one_file_cube, tmp_path,
                                          monkeypatch):
    monkeypatch.setenv("ESDC_GRANULE_CACHE", str(tmp_path / "cache"))
    src = pattern("https://archive.example/ostia")
    out = tmp_path / "a.zarr"
    with LoopbackServer(ostia_granules) as server:
        mirrors = {"https://archive.example/ostia": server.base_url.rstrip("/")}
        build(Recipe.from_dict(ostia_recipe(src, end="2006-11-01")), out, mirrors=mirrors)
        before = {p.relative_to(out): p.read_bytes() for p in (out / "sst").rglob("*")
                  if p.is_file() and p.name != "zarr.json"}
        server.clear_log()
        build(Recipe.from_dict(ostia_recipe(src)), out, append=True, mirrors=mirrors)
        got = sorted(r.path for r in server.requests("GET"))
    assert got == [f"/ostia_{m}.nc" for m in ("200612", "200701", "200702", "200703")]
    np.testing.assert_array_equal(values(out), values(one_file_cube))
    # 8 old months filled two whole chunks of 4 time steps: both kept byte for byte
    assert len(before) == 2 and all(rel.parts[2] in ("0", "1") for rel in before)
    for rel, data in before.items():
        assert (out / rel).read_bytes() == data, rel
    table = read_table(resolve(out))
    assert table.sizes["granule"] == MONTHS


def test_cli_info_lists_granules(ostia_granules, tmp_path):
    recipe = tmp_path / "r.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump(ostia_recipe(pattern(ostia_granules), end="2006-06-01")))
    out = tmp_path / "c.zarr"
    runner = CliRunner()
    res = runner.invoke(app, ["build", str(recipe), "--out", str(out), "--no-fetch"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["info", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert [g["url"].rsplit("/", 1)[-1] for g in doc["granules"]] == [
        "ostia_200604.nc", "ostia_200605.nc", "ostia_200606.nc"]
    res = runner.invoke(app, ["info", str(out)])
    assert "3 granules" in res.output


@pytest.mark.parametrize(("files", "match"), [
    ({"pattern": "data/{time:%Y%m%d.nc"}, "malformed"),
    ({"pattern": "data/{time}.nc"}, "strftime"),
    ({"pattern": "data/{0}.nc"}, "must be a name"),
    ({"pattern": "data/{band}_{time:%Y}.nc"}, "values"),
    ({"pattern": "data/{time:%Y%m%d%H%M}.nc",
      "time": {"start": "1900-01-01", "end": "2000-01-01", "freq": "min"}}, "granules"),
    ({"pattern": "a/{time:%Y}.nc", "urls": ["b.nc"]}, "exactly one"),
])
def test_bad_files_are_refused_before_any_request(files, match):
    doc = ostia_recipe({"files": files})
    with pytest.raises(RecipeError, match=match):
        Recipe.from_dict(doc)


def test_ten_million_granules_refused_with_the_count():
    files = {"pattern": "https://h/{time:%Y%m%d%H%M%S}.nc",
             "time": {"start": "2000-01-01", "end": "2000-04-26", "freq": "s"}}
    with pytest.raises(RecipeError, match=r"10,\d{3},\d{3} granules"):
        Recipe.from_dict(ostia_recipe({"files": files}))


def test_unknown_scheme_and_empty_glob(tmp_path, monkeypatch):
    monkeypatch.setenv("ESDC_GRANULE_CACHE", str(tmp_path / "cache"))
    bad = Recipe.from_dict(ostia_recipe({"files": {"urls": ["nosuch://host/a.nc"]}}))
    with pytest.raises(SourceError, match="nosuch"):
        plan(bad)
    empty = Recipe.from_dict(ostia_recipe({"files": {"glob": f"{tmp_path}/none_*.nc"}}))
    with pytest.raises(SourceError, match="matches no file"):
        plan(empty)


@pytest.mark.slow
def test_oisst_recipe_through_a_mirror(tmp_path, monkeypatch, one_file_cube):
    """recipes/oisst.yaml (NCEI HTTPS) built from a loopback mirror of OISST-format days."""
    from esdc.mirror import OISST_PREFIX, write_oisst_granules
    from esdc.recipe import load_recipe
    from tests.conftest import ROOT

    monkeypatch.setenv("ESDC_GRANULE_CACHE", str(tmp_path / "cache"))
    recipe = load_recipe(ROOT / "recipes" / "oisst.yaml")
    files = write_oisst_granules(tmp_path / "ncei", "2007-01-01", "2007-03-31")
    assert len(files) == 90
    with LoopbackServer(tmp_path / "ncei", latency=0.01) as server:
        server.inject("/200702/oisst-avhrr-v02r01.20070203.nc", "503", times=1)
        out = build(recipe, tmp_path / "oisst.zarr",
                    mirrors={OISST_PREFIX: server.base_url.rstrip("/")})
    with xr.open_zarr(out) as ds:
        sst = ds["sst"].values
        assert ds["sst"].dims == ("time", "lat", "lon") and sst.shape == (3, 8, 360)
    # every day of a month holds that month's OSTIA field: the monthly mean is the field
    ref = Recipe.from_dict({**ostia_recipe({"sample": "ostia-monthly"}),
                            "grid": recipe.grid.model_dump(mode="json", exclude_none=True)})
    expected = values(build(ref, tmp_path / "ref.zarr")) - 273.15
    np.testing.assert_allclose(sst, expected, atol=0.006, equal_nan=True)
    assert np.isfinite(sst).mean() > 0.5
    assert read_table(resolve(out)).sizes["granule"] == 90


from tests.storage.conftest import BUCKET, moto_s3  # noqa: E402

s3_server = pytest.fixture(scope="module", name="s3")(moto_s3)


def test_zarr_store_source_local_and_s3(one_file_cube, tmp_path, s3):
    """``format: zarr``: a store opened where it is, locally and on S3 (moto)."""
    store = tmp_path / "ostia.zarr"
    with xr.open_dataset(need_sample("ostia-monthly")) as ds:
        ds.chunk({"time": 6}).to_zarr(store, zarr_format=3, consolidated=False)
    local = build(Recipe.from_dict(ostia_recipe({"format": "zarr", "path": str(store)})),
                  tmp_path / "l.zarr")
    np.testing.assert_array_equal(values(local), values(one_file_cube))
    s3.put(str(store), f"{BUCKET}/ostia.zarr", recursive=True)
    remote = {"format": "zarr", "files": {"urls": [f"s3://{BUCKET}/ostia.zarr"]}}
    # threads of this process: they see the moto credentials set by the fixture (workers of
    # a cluster started earlier in the session would not)
    with dask.config.set(scheduler="threads"):
        out = build(Recipe.from_dict(ostia_recipe(remote)), tmp_path / "r.zarr")
    np.testing.assert_array_equal(values(out), values(one_file_cube))
    table = read_table(resolve(out))
    assert list(table["status"].values) == ["in_place"]


def test_s3_glob_granules(ostia_granules, one_file_cube, tmp_path, s3, monkeypatch):
    monkeypatch.setenv("ESDC_GRANULE_CACHE", str(tmp_path / "cache"))
    for f in sorted(ostia_granules.glob("ostia_20*.nc")):
        s3.put(str(f), f"{BUCKET}/granules/{f.name}")
    src = {"files": {"glob": f"s3://{BUCKET}/granules/ostia_200[67]*.nc"}}
    out = build(Recipe.from_dict(ostia_recipe(src)), tmp_path / "g.zarr")
    np.testing.assert_array_equal(values(out), values(one_file_cube))
    table = read_table(resolve(out))
    assert table["url"].values[0] == f"s3://{BUCKET}/granules/ostia_200604.nc"


def test_value_fields_are_source_variables(ostia_granules, one_file_cube, tmp_path):
    """``{name}`` fields: each value is a source variable (two copies of the archive)."""
    for kind in ("day", "night"):
        (tmp_path / kind).mkdir()
        for f in ostia_granules.glob("ostia_*.nc"):
            (tmp_path / kind / f.name).symlink_to(f)
    doc = ostia_recipe({"files": {"pattern": f"{tmp_path}/{{pass_}}/ostia_{{time:%Y%m}}.nc",
                                  "values": {"pass_": ["day", "night"]},
                                  "variable": "surface_temperature"}})
    var = doc["sources"][0]["variables"][0]
    doc["sources"][0]["variables"] = [{**var, "name": "sst", "source": "day"},
                                      {**var, "name": "sst_night", "source": "night"}]
    out = build(Recipe.from_dict(doc), tmp_path / "v.zarr")
    with xr.open_zarr(out) as ds:
        np.testing.assert_array_equal(ds["sst"].values, values(one_file_cube))
        np.testing.assert_array_equal(ds["sst_night"].values, values(one_file_cube))
    assert read_table(resolve(out)).sizes["granule"] == 2 * MONTHS


def test_cli_update_is_append(ostia_granules, one_file_cube, tmp_path):
    import yaml

    recipe = tmp_path / "r.yaml"
    out = tmp_path / "u.zarr"
    runner = CliRunner()
    recipe.write_text(yaml.safe_dump(ostia_recipe(pattern(ostia_granules), end="2006-11-01")))
    assert runner.invoke(app, ["build", str(recipe), "--out", str(out)]).exit_code == 0
    recipe.write_text(yaml.safe_dump(ostia_recipe(pattern(ostia_granules))))
    res = runner.invoke(app, ["update", str(recipe), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "appended to" in res.output
    np.testing.assert_array_equal(values(out), values(one_file_cube))
    res = runner.invoke(app, ["build", str(recipe), "--out", str(out), "--mirror", "nonsense"])
    assert res.exit_code == 2 and "PREFIX=REPLACEMENT" in res.output


@pytest.mark.slow
def test_sigkill_in_fetch_phase_then_resume(ostia_granules, one_file_cube, tmp_path):
    """``esdc build`` killed while fetching; ``--resume`` fetches only unverified granules."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(ostia_recipe(pattern("https://archive.example/ostia"))))
    cache = tmp_path / "cache"
    out = tmp_path / "k.zarr"
    env = {**os.environ, "ESDC_GRANULE_CACHE": str(cache)}
    with LoopbackServer(ostia_granules, latency=0.05, rate=40_000) as server:
        mirror = f"https://archive.example/ostia={server.base_url.rstrip('/')}"
        proc = subprocess.Popen([sys.executable, "-m", "esdc.cli", "build", str(recipe),
                                 "--out", str(out), "--mirror", mirror, "--no-fetch"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while len(list(cache.rglob(".record.json"))) < 3:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        verified = {json.loads(p.read_text())["url"].rsplit("/", 1)[-1]
                    for p in cache.rglob(".record.json")}
        assert 3 <= len(verified) < MONTHS and not out.exists()
        server.clear_log()
        res = CliRunner(env={"ESDC_GRANULE_CACHE": str(cache)}).invoke(
            app, ["build", str(recipe), "--out", str(out), "--mirror", mirror, "--resume",
                  "--no-fetch"])
        assert res.exit_code == 0, res.output
        again = {r.path.rsplit("/", 1)[-1] for r in server.requests("GET")}
    every = {p.name for p in ostia_granules.glob("ostia_*.nc")
             if "200604" <= p.name[6:12] <= "200703"}
    assert again == every - verified, (again, verified)
    np.testing.assert_array_equal(values(out), values(one_file_cube))
