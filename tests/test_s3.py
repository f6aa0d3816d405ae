"""Cubes in object storage: ``esdc build --out s3://...``, open, info, verify.

Runs against moto's S3 server (``moto.server.ThreadedMotoServer``) on 127.0.0.1, as
s3fs's own tests do; credentials and endpoint come from the ``AWS_*`` environment
variables as a user's would. The cube is a small real one (the pvlib surface altitude
HDF5 sample on a 1 degree grid, 9 chunks) built through the CLI on the session's Dask
cluster; a local build of the same recipe is the reference.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

import esdc
from esdc.cli import app
from esdc.errors import CubeNotFoundError
from esdc.storage.integrity import read_manifest
from tests.conftest import altitude_recipe
from tests.storage.conftest import BUCKET, moto_s3

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

runner = CliRunner()
s3_server = pytest.fixture(scope="module", name="s3")(moto_s3)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    doc = altitude_recipe()
    doc["name"] = "s3_altitude"
    doc["output"] = {"chunks": {"lat": 4, "lon": 4}}
    path = tmp_path_factory.mktemp("recipe") / "altitude.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def build(recipe: Path, out: str | None, client: Any, *extra: str) -> Any:
    """``esdc build RECIPE [--out OUT] --no-fetch`` on the session's Dask cluster."""
    where = ["--out", out] if out else []
    return runner.invoke(app, ["build", str(recipe), *where, "--no-fetch",
                               "--scheduler", client.scheduler.address, *extra])


def objects(fs: Any, url: str) -> dict[str, str]:
    """``{key: SHA-256}`` of every object under ``url``."""
    root = url.removeprefix("s3://")
    fs.invalidate_cache()
    keys = fs.find(root)
    return {k[len(root) + 1:]: hashlib.sha256(v).hexdigest() for k, v in fs.cat(keys).items()}


def assert_user_error(result: Any, *needles: str) -> str:
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is not None
    for needle in needles:
        assert needle in text, (needle, text)
    return text


@pytest.fixture(scope="module")
def cube(s3: Any, recipe: Path, client: Any) -> str:
    url = f"s3://{BUCKET}/cubes/altitude.zarr"
    res = build(recipe, url, client)
    assert res.exit_code == 0, res.output
    assert f"built {url}" in res.output
    assert "uploading" in res.output
    return url


@pytest.fixture(scope="module")
def local(recipe: Path, tmp_path_factory: pytest.TempPathFactory, client: Any) -> Path:
    out = tmp_path_factory.mktemp("local") / "altitude.zarr"
    res = build(recipe, str(out), client)
    assert res.exit_code == 0, res.output
    return out


def test_remote_cube_equals_the_local_build(s3: Any, cube: str, local: Path) -> None:
    remote = objects(s3, cube)
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert set(remote) == files  # the same store, object for file
    manifest = json.loads(s3.cat_file(f"{cube.removeprefix('s3://')}/esdc_integrity/zarr.json"))
    recorded = manifest["attributes"]["esdc_checksums"]["chunks"]
    assert len(recorded) >= 9
    assert recorded == read_manifest(local)["chunks"]  # chunk for chunk, the same bytes
    assert {k: remote[k] for k in recorded} == recorded
    ds, ref = esdc.open_cube(cube), esdc.open_cube(local)
    assert ds["altitude"].chunks == ((4, 4, 2), (4, 4, 2))
    # In this process: the session's Dask workers started before the AWS_* variables were set.
    ds, ref = ds.compute(scheduler="threads"), ref.compute(scheduler="threads")
    xr.testing.assert_equal(ds, ref)
    assert np.isfinite(ds["altitude"].values).any()
    for name in ds.variables:
        assert ds[name].attrs == ref[name].attrs
    assert ds.attrs["esdc_recipe_sha256"] == ref.attrs["esdc_recipe_sha256"]
    assert not list(Path(os.environ["ESDC_STAGING"]).iterdir())  # staging removed


def test_info_verify_and_plot_on_the_url(cube: str, tmp_path: Path) -> None:
    res = runner.invoke(app, ["info", cube, "--json"])
    assert res.exit_code == 0, res.output
    desc = json.loads(res.output)
    assert desc["path"] == cube and desc["dims"] == {"lat": 10, "lon": 10}
    assert desc["sources"][0]["source"] == "altitude"
    res = runner.invoke(app, ["verify", cube, "--checksums"])
    assert res.exit_code == 0, res.output
    assert f"{cube}: OK (" in res.output and "chunk checksums match" in res.output
    assert esdc.verify_cube(esdc.open_cube(cube)) == []
    pytest.importorskip("matplotlib")
    png = tmp_path / "altitude.png"
    with dask.config.set(scheduler="threads"):  # see test_remote_cube_equals_the_local_build
        res = runner.invoke(app, ["plot", cube, "altitude", "--out", str(png)])
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_verify_names_a_corrupted_and_a_deleted_chunk_object(s3: Any, cube: str) -> None:
    copy = f"s3://{BUCKET}/copies/altitude.zarr"
    s3.copy(cube.removeprefix("s3://"), copy.removeprefix("s3://"), recursive=True)
    root = copy.removeprefix("s3://")
    flipped, deleted = "altitude/c/1/1", "altitude/c/2/0"
    data = bytearray(s3.cat_file(f"{root}/{flipped}"))
    data[len(data) // 2] ^= 0x01
    s3.pipe_file(f"{root}/{flipped}", bytes(data))
    s3.rm_file(f"{root}/{deleted}")
    res = runner.invoke(app, ["verify", copy, "--checksums"])
    assert res.exit_code == 1, res.output
    text = " ".join(res.output.split())
    assert f"{flipped}: checksum mismatch" in text
    assert f"{deleted}: chunk file missing" in text
    assert "2 problem(s)" in text
    assert runner.invoke(app, ["verify", cube, "--checksums"]).exit_code == 0


def test_building_again_without_overwrite_is_refused(s3: Any, cube: str, recipe: Path,
                                                     client: Any) -> None:
    before = objects(s3, cube)
    res = build(recipe, cube, client)
    assert_user_error(res, f"{cube} exists", "--overwrite")
    assert objects(s3, cube) == before


def test_overwrite_and_a_failed_upload_resumed(s3: Any, recipe: Path, client: Any,
                                               tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"s3://{BUCKET}/cubes/overwritten.zarr"
    assert build(recipe, url, client).exit_code == 0
    old = objects(s3, url)
    # Another recipe (other chunks; the URL in its output.path) over it: the upload fails
    # after the chunk objects.
    doc = yaml.safe_load(recipe.read_text())
    doc["output"] = {"path": url, "chunks": {"lat": 5, "lon": 5}}
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(doc), encoding="utf-8")
    real_put = s3fs.S3FileSystem._put_file

    async def flaky_put(self: Any, lpath: str, rpath: str, **kwargs: Any) -> Any:
        if rpath.endswith("zarr.json"):  # chunks go up first, metadata after them
            raise ConnectionResetError("connection reset by peer")
        return await real_put(self, lpath, rpath, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", flaky_put)
    res = build(other, None, client, "--overwrite")
    assert_user_error(res, "uploading the cube to", "connection reset by peer")
    assert "--resume" in res.output  # the staged cube is kept
    with pytest.raises(CubeNotFoundError, match="no Zarr cube"):
        esdc.open_cube(url)  # no root zarr.json: no cube rather than a mix of two
    assert runner.invoke(app, ["info", url]).exit_code == 2
    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", real_put)
    assert_user_error(build(other, None, client), "no cube", "--resume")
    res = build(other, None, client, "--resume")
    assert res.exit_code == 0, res.output
    assert "is up to date" in res.output  # the staged cube, not rebuilt: only uploaded
    new = objects(s3, url)
    assert "altitude/c/1/1" in old and "altitude/c/1/1" in new and old != new
    assert not [k for k in new if k.startswith("altitude/c/2/")]  # 2x2 chunks now
    assert esdc.open_cube(url)["altitude"].chunks == ((5, 5), (5, 5))
    assert runner.invoke(app, ["verify", url, "--checksums"]).exit_code == 0
    res = build(other, None, client, "--resume")
    assert res.exit_code == 0 and f"{url} is up to date" in res.output
    assert "Dask dashboard" not in res.output  # decided from the remote metadata


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_missing_bucket_and_unreachable_endpoint(s3: Any, recipe: Path, client: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    assert_user_error(build(recipe, "s3://no-such-bucket/c.zarr", client),
                      "bucket 'no-such-bucket' does not exist", "AWS_ENDPOINT_URL")
    assert_user_error(runner.invoke(app, ["info", f"s3://{BUCKET}/nothing.zarr"]),
                      "no Zarr cube at", "no zarr.json")
    assert_user_error(runner.invoke(app, ["verify", "s3://no-such-bucket/c.zarr"]),
                      "bucket 'no-such-bucket' does not exist")
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("ESDC_STORAGE_OPTIONS", json.dumps(
        {"config_kwargs": {"retries": {"max_attempts": 1}}}))  # fail in 1 s, not 5
    text = assert_user_error(build(recipe, f"s3://{BUCKET}/c.zarr", client,
                                   "--storage-option", f"endpoint_url={dead}"),
                             "Could not connect to the endpoint URL", dead)
    assert "--storage-option endpoint_url" in text
    monkeypatch.setenv("ESDC_STORAGE_OPTIONS", "[1, 2]")
    assert_user_error(runner.invoke(app, ["info", f"s3://{BUCKET}/c.zarr"]),
                      "ESDC_STORAGE_OPTIONS must be a JSON object")
