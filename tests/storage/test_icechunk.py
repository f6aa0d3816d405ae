"""Versioned cubes in a real Icechunk repository (tmp_path): commits, log, tags, time travel,
kill-safety and resume, the storage target contract, and the CLI (issue 14).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from esdc.cli import app
from esdc.errors import BuildConflictError, CubeExistsError, StorageError
from esdc.storage import LocalTarget, Target, open_cube, resolve
from esdc.verify import verify_store
from tests.storage.conftest import BUCKET, synthetic, write
from tests.storage.test_targets import TargetContract

icechunk = pytest.importorskip("icechunk")
from esdc.storage.icechunk import IcechunkTarget  # noqa: E402

runner = CliRunner()


class Stop(Exception):
    pass


def stop_after(n: int) -> Any:
    def on_region(done: int, total: int) -> None:
        if done >= n:
            raise Stop(f"stopped after {done} of {total} regions")

    return on_region


def commit(target: Target, change: Any) -> None:
    """Change the cube on ``main`` with a plain Icechunk commit (to damage it)."""
    from zarr.core.sync import sync

    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(target.location)))
    session = repo.writable_session("main")
    sync(change(session.store))
    session.commit("damage", metadata={"esdc": {"action": "damage"}})


def native(path: Path, **session: Any) -> xr.Dataset:
    """The cube as Icechunk itself opens it, without esdc."""
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
    return xr.open_zarr(repo.readonly_session(**(session or {"branch": "main"})).store,
                        consolidated=False)


class TestIcechunkTarget(TargetContract):
    kind = IcechunkTarget

    @pytest.fixture
    def target(self, tmp_path: Path) -> Target:
        return resolve(tmp_path / "cubes" / "cube.icechunk", store="icechunk")

    def replace_bytes(self, target: Target, key: str, data: bytes) -> None:
        from zarr.core.buffer import default_buffer_prototype

        commit(target, lambda s: s.set(key, default_buffer_prototype().buffer.from_bytes(data)))

    def remove(self, target: Target, key: str) -> None:
        commit(target, lambda s: s.delete(key))

    # the contract's checks of an unversioned store, replaced by their versioned forms
    def test_resolve_gives_this_kind(self, target: Target) -> None:
        assert isinstance(target, IcechunkTarget) and target.is_versioned
        assert resolve(target) is target
        assert not target.consolidates and target.supports_append and target.supports_update
        write(synthetic(), target)
        again = resolve(str(target.location))  # an existing repository is recognised
        assert type(again) is IcechunkTarget and again == target
        assert type(resolve(target.location, store="zarr")) is IcechunkTarget

    def test_write_then_read(self, target: Target) -> None:
        ds = synthetic()
        assert write(ds, target) == target.location
        opened = target.open()
        assert opened["sst"].chunks == ((4, 4, 2), (6, 6), (8, 8))
        xr.testing.assert_identical(opened["sst"].load().drop_attrs(),
                                    ds["sst"].compute().drop_attrs())
        rec = target.manifest()
        assert rec is not None and rec["algorithm"] == "sha256"
        chunks = target.list_chunks()
        assert chunks == sorted(rec["chunks"])
        assert sum(k.startswith("sst/c/") for k in chunks) == 12
        report = target.checksums()
        assert report.problems == [] and report.checked == len(chunks)
        assert verify_store(target, checksums=True) == []
        # Icechunk itself opens what esdc wrote
        plain = native(Path(target.location))
        np.testing.assert_array_equal(plain["sst"].values, ds["sst"].values)
        assert plain.attrs["title"] == "synthetic"

    def test_versions_are_refused(self, target: Target) -> None:
        write(synthetic(), target)
        with pytest.raises(StorageError, match="names no tag and no snapshot"):
            target.open(version="v1")
        with pytest.raises(StorageError, match="names no tag and no snapshot"):
            open_cube(target, version="NOSUCHSNAPSHOT0000000")


def test_each_write_is_one_version_on_main(tmp_path: Path) -> None:
    path = tmp_path / "cube.icechunk"
    target = resolve(path, store="icechunk")
    write(synthetic(nt=10), target)
    said: list[str] = []
    write(synthetic(nt=14), target, append=True, report=said.append)
    assert said == [f"appending time steps 10..13 to {target}; 12 chunk files of the cube "
                    "are kept as they are"]
    target.update(xr.Dataset({"extra": (("n",), np.arange(3.0))}))
    log = target.log()
    assert [v["metadata"]["action"] for v in log] == ["update", "append", "build"]
    assert log[2]["message"] == ("esdc build: recipe SHA-256 synthetic-10, time "
                                 "2020-01-01T00:00:00..2020-01-10T00:00:00")
    assert log[1]["message"] == ("esdc append: recipe SHA-256 synthetic-14, new time steps "
                                 "2020-01-11T00:00:00..2020-01-14T00:00:00")
    assert log[1]["metadata"]["recipe_sha256"] == "synthetic-14"
    assert log[0]["message"] == "esdc update: arrays extra"
    assert all(v["time"].endswith("Z") and v["tags"] == [] for v in log)
    # no branch is left over; main's tip is the newest version
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
    assert repo.list_branches() == {"main"}
    assert str(repo.lookup_branch("main")) == log[0]["id"]
    # time travel: by snapshot id and by tag; Icechunk opens the same snapshot
    build_id = log[2]["id"]
    assert open_cube(path, version=build_id).sizes["time"] == 10
    assert open_cube(path).sizes["time"] == 14
    assert native(path, snapshot_id=build_id).sizes["time"] == 10
    assert target.tag("first", build_id) == build_id
    old = open_cube(path, version="first")
    xr.testing.assert_identical(old["sst"].load().drop_attrs(),
                                synthetic(nt=10)["sst"].compute().drop_attrs())
    assert "extra" not in old and "extra" in open_cube(path)
    assert target.log()[2]["tags"] == ["first"]
    with pytest.raises(StorageError, match="tag 'first' exists already"):
        target.tag("first")
    # the old version's checksum record still matches its chunks
    assert target.at("first").checksums().problems == []


def test_an_overwrite_leaves_out_the_arrays_the_new_build_lacks(tmp_path: Path) -> None:
    # the metadata of a build is written into a fork of main's tip, cleared first
    path = tmp_path / "cube.icechunk"
    target = resolve(path, store="icechunk")
    write(synthetic(label="old"), target)
    first = target.log()[0]["id"]
    write(synthetic(label="new").drop_vars("mask"), target, overwrite=True)
    ds = open_cube(path)
    assert "mask" not in ds and ds.attrs["title"] == "new"
    assert "mask" not in target.list_arrays() and "mask/zarr.json" not in target._keys()
    xr.testing.assert_identical(ds["sst"].load().drop_attrs(),
                                synthetic()["sst"].compute().drop_attrs())
    assert target.checksums().problems == []
    assert "mask" in open_cube(path, version=first)  # the version before keeps it
    assert target.at(first).checksums().problems == []


@pytest.mark.parametrize("shards", [None, {"time": 8, "lat": 12, "lon": 16}])
def test_region_checksums_are_taken_as_the_workers_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client: Any,
        shards: dict[str, int] | None) -> None:
    import esdc.storage.icechunk as ice

    calls: list[list[str]] = []
    real = ice.stored_checksums

    def spy(store: Any, keys: list[str], layout: Any) -> Any:
        calls.append(list(keys))
        return real(store, keys, layout)

    monkeypatch.setattr(ice, "stored_checksums", spy)
    target = resolve(tmp_path / "cube.icechunk", store="icechunk")
    write(synthetic(), target, client=client, shards=shards)  # pickled to worker processes
    [last] = calls  # nothing read back as the regions are committed
    assert last and not any(k.startswith(("sst/", "mask/")) for k in last)  # coordinates
    record = target.manifest()["chunks"]
    assert any(k.startswith("sst/") for k in record)
    assert record == dict(target.hash_chunks(sorted(record)))
    if shards:  # and the chunks inside each shard
        inner = target.manifest()["inner"]
        assert sorted(inner) == sorted(k for k in record if k.startswith(("sst/", "mask/")))
        assert {len(v) for k, v in inner.items()} == {2 * 2 * 2, 2 * 2}  # sst's, mask's
    assert target.checksums().problems == []


def test_a_killed_build_leaves_main_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "cube.icechunk"
    target = resolve(path, store="icechunk")
    write(synthetic(label="old"), target)
    before = target.log()
    with pytest.raises(Stop):
        write(synthetic(label="new"), target, overwrite=True, on_region=stop_after(2))
    assert target.log() == before  # main did not move
    assert open_cube(path).attrs["title"] == "old"
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
    assert repo.list_branches() == {"main", "build-new-10"}
    said: list[str] = []
    calls: list[int] = []
    write(synthetic(label="new"), target, overwrite=True, resume=True, report=said.append,
          on_region=lambda done, total: calls.append(done))
    assert said == [f"resuming {target}: 2 of 4 regions already committed"]
    assert calls == [2, 3, 4]  # the total first, then each region
    ds = open_cube(path)
    assert ds.attrs["title"] == "new"
    xr.testing.assert_identical(ds["sst"].load().drop_attrs(),
                                synthetic()["sst"].compute().drop_attrs())
    assert target.checksums().problems == []
    assert len(target.log()) == 2 and repo.list_branches() == {"main"}


def test_without_resume_an_unfinished_build_is_discarded(tmp_path: Path) -> None:
    target = resolve(tmp_path / "c.icechunk", store="icechunk")
    with pytest.raises(Stop):
        write(synthetic(), target, on_region=stop_after(1))
    assert not target.exists() and target.log() == []
    said: list[str] = []
    write(synthetic(), target, report=said.append)
    assert said == ["discarding the unfinished build on branch build-synthetic-10 "
                    "(resume=True continues one)"]
    assert target.checksums().problems == []


def test_plain_zarr_cubes_have_one_version(tmp_path: Path) -> None:
    path = tmp_path / "cube.zarr"
    write(synthetic(), path)
    target = resolve(path)
    assert type(target) is LocalTarget
    log = target.log()
    assert len(log) == 1 and log[0]["id"] == "current"
    assert "synthetic-10" in log[0]["message"]
    with pytest.raises(StorageError, match="not versioned"):
        target.tag("v1")
    with pytest.raises(StorageError, match="not versioned"):
        open_cube(path, version="v1")
    # an Icechunk build over a plain Zarr cube is refused, the cube unchanged
    with pytest.raises(CubeExistsError, match="not an Icechunk repository"):
        write(synthetic(), resolve(path, store="icechunk"), overwrite=True)
    assert type(resolve(path)) is LocalTarget and open_cube(path).sizes["time"] == 10
    with pytest.raises(StorageError, match="store='parquet' is not a kind of store"):
        resolve(tmp_path / "x", store="parquet")


def test_the_recipe_and_the_cli_choose_the_store(tmp_path: Path) -> None:
    import yaml

    from esdc.build import build
    from esdc.recipe import parse_recipe

    root = Path(__file__).resolve().parents[2]
    doc = yaml.safe_load((root / "recipes" / "floods.yaml").read_text(encoding="utf-8"))
    doc["output"]["store"] = "icechunk"
    recipe = parse_recipe(yaml.safe_dump(doc), "floods.yaml")
    assert recipe.output.store == "icechunk"
    plain = tmp_path / "plain.zarr"
    write(synthetic(), plain)
    before = sorted(p.name for p in plain.rglob("*"))
    # checked before any input is read: the recipe's store, then --store over it
    with pytest.raises(CubeExistsError, match="not an Icechunk repository"):
        build(recipe, plain, overwrite=True, fetch=False)
    res = runner.invoke(app, ["build", str(root / "recipes" / "floods.yaml"), "--out",
                              str(plain), "--store", "icechunk", "--overwrite", "--no-fetch"])
    assert res.exit_code == 2 and "not an Icechunk repository" in res.output
    assert "--out PATH for --store 'icechunk'" in res.output
    res = runner.invoke(app, ["build", str(root / "recipes" / "floods.yaml"), "--out",
                              str(tmp_path / "x"), "--store", "parquet", "--no-fetch"])
    assert res.exit_code == 2 and "--store 'parquet' is not a kind of store" in res.output
    assert sorted(p.name for p in plain.rglob("*")) == before


def test_append_refuses_what_does_not_extend(tmp_path: Path) -> None:
    target = resolve(tmp_path / "c.icechunk", store="icechunk")
    write(synthetic(nt=10), target)
    with pytest.raises(BuildConflictError, match="nothing to append"):
        write(synthetic(nt=8, label="x"), target, append=True)
    assert len(target.log()) == 1


def test_cli_log_tag_and_version(tmp_path: Path) -> None:
    path = tmp_path / "cube.icechunk"
    target = resolve(path, store="icechunk")
    write(synthetic(nt=10), target)
    write(synthetic(nt=14), target, append=True)
    res = runner.invoke(app, ["log", str(path), "--json"])
    assert res.exit_code == 0, res.output
    versions = json.loads(res.stdout)
    assert [sorted(v) for v in versions] == [["id", "message", "tags", "time"]] * 2
    assert versions[0]["message"].startswith("esdc append:")
    old = versions[1]["id"]
    res = runner.invoke(app, ["tag", str(path), "v1", "--version", old])
    assert res.exit_code == 0 and f"tagged {old} as v1" in res.stdout
    res = runner.invoke(app, ["tag", str(path), "v1"])
    assert res.exit_code == 2 and "tag 'v1' exists already" in res.output
    res = runner.invoke(app, ["info", str(path), "--json", "--version", "v1"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["dims"]["time"] == 10
    res = runner.invoke(app, ["info", str(path), "--json"])
    assert json.loads(res.stdout)["dims"]["time"] == 14
    res = runner.invoke(app, ["verify", str(path), "--checksums", "--version", "v1"])
    assert res.exit_code == 0 and "OK" in res.stdout, res.output
    res = runner.invoke(app, ["info", str(path), "--version", "nope"])
    assert res.exit_code == 2 and "--version 'nope' names no tag and no snapshot" in res.output
    res = runner.invoke(app, ["log", str(path)])
    assert res.exit_code == 0 and "[v1]" in res.stdout
    plain = tmp_path / "plain.zarr"
    write(synthetic(), plain)
    res = runner.invoke(app, ["info", str(plain), "--version", "v1"])
    assert res.exit_code == 2 and "is not versioned" in res.output
    res = runner.invoke(app, ["log", str(plain), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["id"] == "current"


def test_training_records_and_reads_the_cube_version(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    pytest.importorskip("sklearn")
    import mlflow

    from esdc.ml.config import TrainConfig
    from esdc.ml.patches import PatchStream
    from esdc.ml.train import train

    monkeypatch.chdir(tmp_path)  # MLflow's artifact root defaults to ./mlruns
    target = resolve(tmp_path / "c.icechunk", store="icechunk")
    write(synthetic(nt=10, ny=48, nx=48), target)
    first = target.current_version()
    write(synthetic(nt=14, ny=48, nx=48), target, append=True)
    assert target.current_version() != first
    old = PatchStream(str(target.location), ["sst"], patch=(8, 8), version=first)
    assert old.nt == 10
    assert PatchStream(str(target.location), ["sst"], patch=(8, 8)).nt == 14
    np.testing.assert_array_equal(
        next(iter(PatchStream(str(target.location), ["sst"], patch=(8, 8), shuffle=False,
                              normalize=False, version=first))).data,
        next(iter(PatchStream(str(target.location), ["sst"], patch=(8, 8), shuffle=False,
                              normalize=False))).data)
    cfg = TrainConfig.model_validate({
        "name": "lineage", "framework": "sklearn", "task": "regression", "inputs": ["mask"],
        "target": "sst", "model": {"kind": "random_forest", "n_estimators": 5, "max_depth": 4},
        "patch": [8, 8], "split": {"block": [16, 16], "fractions": [0.6, 0.2, 0.2], "seed": 0}})
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    res = train(str(target.location), cfg, tracking)
    mlflow.set_tracking_uri(tracking)
    tags = mlflow.get_run(res.run_id).data.tags
    assert tags["esdc.cube_version"] == target.current_version() == target.log()[0]["id"]
    target.tag("v1", first)
    res = train(str(target.location), cfg, tracking, version="v1")  # an older version
    assert mlflow.get_run(res.run_id).data.tags["esdc.cube_version"] == first
    from esdc.cards import data_card, model_card

    assert f"| cube version | `{first}` (Icechunk snapshot trained on) |" in model_card(
        res.run_id, tracking)
    assert f"| cube version | `{target.current_version()}` (Icechunk snapshot" in data_card(
        target.location)


def test_embeddings_are_one_commit_and_the_index_records_the_version(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("faiss")
    import torch

    import esdc.testing
    from esdc.embed import EncoderBundle, compute_embeddings, write_embeddings
    from esdc.ml.ssl import Encoder
    from esdc.recipe import CompressorSpec
    from esdc.search import build_index

    inputs = ["bmng_red", "bmng_green", "bmng_blue"]
    ds = esdc.testing.new_cube(shape=(64, 128), times=0, variables=tuple(inputs)).chunk()
    target = resolve(tmp_path / "cube.icechunk", store="icechunk")
    target.write(ds, chunks={"lat": 32, "lon": 64}, compressor=CompressorSpec())
    torch.manual_seed(0)
    meta = {"class": "esdc.ml.ssl.Encoder", "in_channels": 3, "inputs": inputs,
            "params": {"dim": 16, "width": 8}, "tile": [8, 8]}
    torch.save(Encoder(3, **meta["params"]).state_dict(), tmp_path / "encoder.pt")
    bundle = EncoderBundle(tmp_path / "encoder.pt", meta, run_id="run123")
    write_embeddings(target.location, compute_embeddings(str(target.location), bundle, 8))
    log = target.log()
    assert [v["metadata"]["action"] for v in log] == ["update", "build"]
    assert log[0]["message"].startswith("esdc update: arrays embedding_t8")
    assert log[0]["message"].endswith("(run run123)") and log[0]["metadata"]["run_id"] == "run123"
    manifest = build_index(target.location, kind="flat")
    assert manifest.cube_version == log[0]["id"] == target.current_version()
    assert "embedding_t8" not in open_cube(target.location, version=log[1]["id"])
    # a later commit does not move what search reads: the cube at the version indexed
    from esdc.errors import SearchIndexError
    from esdc.search.query import SearchEngine

    target.update(attrs={"bmng_red": {"comment": "a later commit"}})
    engine = SearchEngine(target.location)
    assert engine.version == manifest.cube_version != target.current_version()
    assert "comment" not in engine.ds["bmng_red"].attrs
    # an index of a version that is not in the history of main is refused
    import shutil

    shutil.rmtree(target.location)
    target.write(ds, chunks={"lat": 32, "lon": 64}, compressor=CompressorSpec())
    write_embeddings(target.location, compute_embeddings(str(target.location), bundle, 8))
    with pytest.raises(SearchIndexError, match="not in the history of its newest version"):
        SearchEngine(target.location)


@pytest.mark.usefixtures("s3")
def test_a_repository_in_s3(tmp_path: Path) -> None:
    """An Icechunk repository in a bucket of moto's S3 server on 127.0.0.1."""
    import os

    url = f"s3://{BUCKET}/versioned/cube.icechunk"
    target = resolve(url, store="icechunk")
    assert type(target) is IcechunkTarget and target.location == url
    assert not target.present() and not target.exists()
    write(synthetic(nt=10), target)
    write(synthetic(nt=14), target, append=True)
    log = target.log()
    assert [v["metadata"]["action"] for v in log] == ["append", "build"]
    assert target.checksums().problems == [] and verify_store(target, checksums=True) == []
    # the scheme icechunk+s3:// names the repository without store=
    again = resolve(f"icechunk+{url}")
    assert type(again) is IcechunkTarget and again.log() == log
    assert open_cube(f"icechunk+{url}", version=log[1]["id"]).sizes["time"] == 10
    xr.testing.assert_identical(open_cube(f"icechunk+{url}")["sst"].load().drop_attrs(),
                                synthetic(nt=14)["sst"].compute().drop_attrs())
    # Icechunk itself opens it
    storage = icechunk.s3_storage(bucket=BUCKET, prefix="versioned/cube.icechunk",
                                  endpoint_url=os.environ["AWS_ENDPOINT_URL"], allow_http=True,
                                  from_env=True, force_path_style=True)
    repo = icechunk.Repository.open(storage)
    plain = xr.open_zarr(repo.readonly_session(branch="main").store, consolidated=False)
    assert plain.sizes["time"] == 14


# =========================================================================== real processes
@pytest.mark.slow
def test_sigkill_during_a_cli_build_never_changes_main(tmp_path: Path) -> None:
    """`esdc build --store icechunk` of recipes/floods.yaml (24 regions) SIGKILLed once two
    regions are committed: main keeps the previous version; --resume finishes the build."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.test_reliability import kill_group, small_floods

    recipe = small_floods(tmp_path / "floods.yaml")
    repo_path = tmp_path / "floods.icechunk"
    cmd = [sys.executable, "-m", "esdc.cli", "build", str(recipe), "--out", str(repo_path),
           "--store", "icechunk"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    regions = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if (repo_path / "refs").is_dir():
            repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(repo_path)))
            branches = [b for b in repo.list_branches() if b.startswith("build-")]
            if branches:
                regions = sum("tile" in (s.metadata.get("esdc") or {})
                              for s in repo.ancestry(branch=branches[0]))
                if regions >= 2:
                    break
        time.sleep(0.2)
    assert proc.poll() is None, "the build ended before it could be killed"
    assert kill_group(proc) == []
    assert proc.wait(30) == -signal.SIGKILL or os.name != "posix"
    target = resolve(repo_path)
    assert type(target) is IcechunkTarget
    assert target.log() == [] and not target.exists()  # main never moved
    res = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "regions already committed" in res.stdout
    done = int(res.stdout.split("resuming ")[1].split(": ")[1].split(" of ")[0])
    assert done >= regions
    log = target.log()
    assert len(log) == 1 and log[0]["metadata"]["action"] == "build"
    assert target.checksums().problems == [] and verify_store(target) == []
    assert bool(native(repo_path)["precipitation"].notnull().any())


def test_search_serve_and_evaluate_read_the_version_asked(tmp_path: Path) -> None:
    """--version on search, serve and evaluate-search: the index's version, else refused."""
    pytest.importorskip("torch")
    pytest.importorskip("faiss")
    pytest.importorskip("sklearn")
    pytest.importorskip("fastapi")
    import torch
    from fastapi.testclient import TestClient

    import esdc.testing
    from esdc.embed import EncoderBundle, compute_embeddings, write_embeddings
    from esdc.errors import SearchIndexError
    from esdc.ml.ssl import Encoder
    from esdc.recipe import CompressorSpec
    from esdc.search import build_index
    from esdc.search.evaluate import evaluate_search
    from esdc.search.http import create_app
    from esdc.search.query import SearchEngine

    inputs = ["bmng_red", "bmng_green", "bmng_blue"]
    ds = esdc.testing.new_cube(shape=(64, 128), times=0, variables=tuple(inputs))
    cls = np.kron(np.random.default_rng(3).choice(2, size=(8, 16)),
                  np.ones((8, 8), dtype=int)).astype("uint8")
    for v in inputs:
        ds[v].data[...] += 3.0 * cls
    ds["surface_class"] = (("lat", "lon"), cls, {
        "units": "1", "long_name": "surface class", "flag_values": [0, 1],
        "flag_meanings": "water land", "grid_mapping": "crs"})
    path = tmp_path / "cube.icechunk"
    target = resolve(path, store="icechunk")
    target.write(ds.chunk(), chunks={"lat": 32, "lon": 64}, compressor=CompressorSpec())
    torch.manual_seed(0)
    meta = {"class": "esdc.ml.ssl.Encoder", "in_channels": 3, "inputs": inputs,
            "params": {"dim": 16, "width": 8}, "tile": [8, 8]}
    torch.save(Encoder(3, **meta["params"]).state_dict(), tmp_path / "encoder.pt")
    bundle = EncoderBundle(tmp_path / "encoder.pt", meta, run_id="run1")
    write_embeddings(path, compute_embeddings(str(path), bundle, 8))
    manifest = build_index(path, kind="flat")
    indexed = manifest.cube_version
    build_id = target.log()[1]["id"]
    target.tag("indexed", indexed)
    target.update(attrs={"bmng_red": {"comment": "a later commit"}})
    newest = target.current_version()
    assert newest != indexed
    # Python: the version indexed, by tag or id; another one is refused naming both
    assert SearchEngine(path, version="indexed").version == indexed
    assert SearchEngine(path, version=indexed).version == indexed
    with pytest.raises(SearchIndexError) as exc:
        SearchEngine(path, version=newest)
    assert f"is snapshot {newest}" in str(exc.value)
    assert f"was built from version {indexed}" in str(exc.value)
    with pytest.raises(StorageError, match="version='nope' names no tag and no snapshot"):
        SearchEngine(path, version="nope")
    # the CLI
    res = runner.invoke(app, ["search", str(path), "--lat", "10", "--lon", "20", "-k", "3",
                              "--version", "indexed", "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["neighbours"]) == 3
    res = runner.invoke(app, ["search", str(path), "--lat", "10", "--lon", "20",
                              "--version", newest])
    assert res.exit_code == 2 and f"--version '{newest}' of" in res.output
    assert indexed in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["serve", str(path), "--version", "nope"])
    assert res.exit_code == 2 and "--version 'nope' names no tag" in res.output
    # HTTP: the service of a version asked serves that version (its manifest says which)
    with TestClient(create_app(path, watch=None, version="indexed")) as client:
        health = client.get("/health").json()
        assert health["manifest"]["cube_version"] == indexed
        assert client.get("/search/tile", params={"lat": 10, "lon": 20, "k": 2}).status_code \
            == 200
    with pytest.raises(SearchIndexError, match="was built from version"):
        create_app(path, watch=None, version=build_id)
    # evaluate-search reads the embeddings of the version asked
    now = evaluate_search(path, "surface_class", k=5, queries=50)
    assert evaluate_search(path, "surface_class", k=5, queries=50, version="indexed") == now
    with pytest.raises(SearchIndexError, match="no embedding"):
        evaluate_search(path, "surface_class", k=5, queries=50, version=build_id)
    res = runner.invoke(app, ["evaluate-search", str(path), "--label", "surface_class", "-k",
                              "5", "--queries", "50", "--json", "--version", "indexed"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["precision_at_k"] == now["precision_at_k"]


def _tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_repository_of_another_format_version_is_refused(tmp_path: Path) -> None:
    """Icechunk 2 writes format version 2 (byte 36 of every file's header, and a ``repo``
    object instead of ``refs/``); icechunk 1.1.21 cannot read it: exit 2, naming the path
    and the version, nothing changed."""
    from esdc.storage.icechunk_format import MAGIC, format_version

    path = tmp_path / "cube.icechunk"
    write(synthetic(nt=10), resolve(path, store="icechunk"))
    assert format_version(path) == 1
    for snap in (path / "snapshots").iterdir():  # the header of a format-2 file
        data = bytearray(snap.read_bytes())
        assert data[:12] == MAGIC and data[36] == 1
        data[36] = 2
        snap.write_bytes(bytes(data))
    assert format_version(path) == 2
    before = _tree(path)
    want = f"{path} is an Icechunk repository of format version 2"
    for args in (["info", str(path)], ["log", str(path)], ["verify", str(path)],
                 ["tag", str(path), "v1"], ["info", str(path), "--version", "v1"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert want in res.output and "reads format version 1 only" in res.output, res.output
        assert "Traceback" not in res.output
    target = resolve(path)
    with pytest.raises(StorageError, match="format version 2"):
        open_cube(path)
    with pytest.raises(StorageError, match="format version 2"):
        write(synthetic(nt=14), target, append=True)
    with pytest.raises(StorageError, match="format version 2"):
        write(synthetic(nt=10, label="other"), target, overwrite=True)
    assert _tree(path) == before
    # Icechunk 2's own layout: a `repo` object at the root, no refs/ folder
    v2 = tmp_path / "v2.icechunk"
    (v2 / "snapshots").mkdir(parents=True)
    (v2 / "repo").write_bytes(MAGIC + b"ic-2.0.0".ljust(24) + bytes([2, 5, 1]) + b"\0" * 8)
    assert type(resolve(v2)) is IcechunkTarget and format_version(v2) == 2
    res = runner.invoke(app, ["log", str(v2), "--json"])
    assert res.exit_code == 2 and f"{v2} is an Icechunk repository of format version 2" \
        in res.output, res.output


def test_other_bad_paths_exit_2_and_change_nothing(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    # --store icechunk over a plain Zarr cube, without --overwrite
    plain = tmp_path / "plain.zarr"
    write(synthetic(), plain)
    before = _tree(plain)
    res = runner.invoke(app, ["build", str(root / "recipes" / "floods.yaml"), "--out",
                              str(plain), "--store", "icechunk", "--no-fetch"])
    assert res.exit_code == 2 and "not an Icechunk repository" in res.output, res.output
    assert _tree(plain) == before
    # a folder of something else, read as a repository
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("x")
    with pytest.raises(StorageError, match=f"{other} is not an Icechunk repository"):
        resolve(other, store="icechunk").log()
    # refs/ and snapshots/ that Icechunk cannot read
    broken = tmp_path / "broken.icechunk"
    (broken / "refs" / "branch.main").mkdir(parents=True)
    (broken / "snapshots").mkdir()
    (broken / "refs" / "branch.main" / "ref.json").write_text('{"snapshot": "NOPE"}')
    res = runner.invoke(app, ["log", str(broken)])
    assert res.exit_code == 2 and f"{broken}" in res.output, res.output
    assert "Traceback" not in res.output
    assert _tree(broken) == {"refs/branch.main/ref.json": b'{"snapshot": "NOPE"}'}


@pytest.mark.slow
def test_the_versioned_workflow_on_a_real_cube(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """recipes/floods.yaml (real Stage IV, ETOPO5, GSHHG and Köppen samples), sharded, into
    a repository: build the first 12 hours -> tag -> append the other 11 -> train on the
    tag -> embed and index -> search the version indexed -> time travel to the tag gives
    the first build's data, byte for byte."""
    pytest.importorskip("mlflow")
    pytest.importorskip("sklearn")
    pytest.importorskip("torch")
    pytest.importorskip("faiss")
    import mlflow
    import torch
    import yaml

    from esdc.build import build
    from esdc.embed import EncoderBundle, compute_embeddings, write_embeddings
    from esdc.ml.config import TrainConfig
    from esdc.ml.ssl import Encoder
    from esdc.ml.train import train
    from esdc.recipe import Recipe
    from esdc.search import build_index

    monkeypatch.chdir(tmp_path)  # MLflow's artifact root defaults to ./mlruns
    root = Path(__file__).resolve().parents[2]
    doc = yaml.safe_load((root / "recipes" / "floods.yaml").read_text(encoding="utf-8"))
    doc["output"].update(chunks={"time": 4, "lat": 27, "lon": 30},
                         shards={"time": 8, "lat": 54, "lon": 60}, store="icechunk")
    full = Recipe.from_dict(doc)
    doc["grid"]["time"]["end"] = "2018-09-14T06:00"  # the first 12 hours
    first = Recipe.from_dict(doc)
    path = tmp_path / "floods.icechunk"
    build(first, path, base_dir=root / "recipes")
    target = resolve(path)
    assert type(target) is IcechunkTarget
    v1 = open_cube(path)
    assert v1.sizes["time"] == 12
    old = {v: v1[v].load() for v in ("precipitation", "precipitation_accumulated",
                                     "elevation", "koppen_class")}
    # the recipe's shards: whole shards are stored, read and checksummed
    assert v1["precipitation"].encoding["shards"] == (8, 54, 60)
    assert v1["precipitation"].encoding["chunks"] == (4, 27, 30)
    res = runner.invoke(app, ["tag", str(path), "first-12h"])
    assert res.exit_code == 0, res.output
    said: list[str] = []
    build(full, path, append=True, base_dir=root / "recipes", report=said.append)
    assert any("appending time steps 12..22" in m for m in said), said
    res = runner.invoke(app, ["log", str(path), "--json"])
    log = json.loads(res.stdout)
    assert [v["message"].split(":")[0] for v in log] == ["esdc append", "esdc build"]
    assert log[1]["tags"] == ["first-12h"]
    now = open_cube(path)
    assert now.sizes["time"] == 23
    # the appended cube's old hours are the first build's; the full shards were kept
    xr.testing.assert_identical(now["precipitation"].isel(time=slice(0, 12)).load(),
                                old["precipitation"])
    assert target.at("first-12h").read_bytes("precipitation/c/0/0/0") == \
        target.read_bytes("precipitation/c/0/0/0")
    assert target.checksums().problems == [] and verify_store(target, checksums=True) == []
    # train on the tagged version: the run records the snapshot id it read
    cfg = TrainConfig.model_validate({
        "name": "floods_v1", "framework": "sklearn", "task": "regression",
        "inputs": ["elevation"], "target": "precipitation",
        "model": {"kind": "random_forest", "n_estimators": 5, "max_depth": 4},
        "patch": [8, 8], "split": {"block": [32, 32], "fractions": [0.6, 0.2, 0.2],
                                   "seed": 0}})
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    run = train(str(path), cfg, tracking, version="first-12h")
    mlflow.set_tracking_uri(tracking)
    assert mlflow.get_run(run.run_id).data.tags["esdc.cube_version"] == log[1]["id"]
    # embeddings: one commit on main; the index records it; search reads that version
    torch.manual_seed(0)
    inputs = ["elevation", "land_sea_mask"]
    meta = {"class": "esdc.ml.ssl.Encoder", "in_channels": 2, "inputs": inputs,
            "params": {"dim": 8, "width": 8}, "tile": [8, 8]}
    torch.save(Encoder(2, **meta["params"]).state_dict(), tmp_path / "encoder.pt")
    bundle = EncoderBundle(tmp_path / "encoder.pt", meta, run_id=run.run_id)
    write_embeddings(path, compute_embeddings(str(path), bundle, 8))
    manifest = build_index(path, kind="flat")
    assert manifest.cube_version == target.current_version() == target.log()[0]["id"]
    res = runner.invoke(app, ["search", str(path), "--lat", "35", "--lon", "-78", "-k", "3",
                              "--json", "--version", manifest.cube_version])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["neighbours"]) == 3
    res = runner.invoke(app, ["search", str(path), "--lat", "35", "--lon", "-78",
                              "--version", "first-12h"])
    assert res.exit_code == 2 and "was built from version" in res.output
    # time travel: the tag still reads the first build, identical to what it was
    again = open_cube(path, version="first-12h")
    assert again.sizes["time"] == 12 and not any(v.startswith("embedding") for v in again)
    for name, values in old.items():
        xr.testing.assert_identical(again[name].load(), values)
    assert target.at("first-12h").checksums().problems == []


def test_append_grows_arrays_written_after_the_build(tmp_path: Path) -> None:
    """Embeddings written after a build get the appended steps (as fill) in the new version."""
    target = resolve(tmp_path / "c.icechunk", store="icechunk")
    write(synthetic(nt=10), target)
    ds = target.open()
    emb = xr.Dataset({"embedding_t8": (("time", "lat", "lon"),
                                       np.arange(ds["sst"].size, dtype="float32").reshape(
                                           ds["sst"].shape))}, coords={"time": ds["time"]})
    target.update(emb[["embedding_t8"]].drop_vars("time"))
    before = target.open()["embedding_t8"].values
    write(synthetic(nt=14), target, append=True)
    grown = target.open()
    assert grown.sizes["time"] == 14 and grown["embedding_t8"].shape[0] == 14
    np.testing.assert_array_equal(grown["embedding_t8"].values[:10], before)
    assert np.isnan(grown["embedding_t8"].values[10:]).all()


def test_stored_bytes_are_read_back_as_they_are_empty_ones_too(tmp_path: Path) -> None:
    """``read_bytes`` and ``hash_chunks`` read many keys at once: an empty value comes back
    as ``b""`` (not as zarr's buffer, which is falsy), a missing one as None."""
    import hashlib

    import zarr
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    target = IcechunkTarget(tmp_path / "repo")
    session = target.repository(create=True).writable_session("main")
    zarr.open_group(session.store, mode="w").create_array("v", shape=(70,), chunks=(1,),
                                                          dtype="uint8")
    values = {f"v/c/{i}": bytes([i % 251]) * i for i in range(70)}  # two batches of reads
    for key, data in values.items():  # raw bytes as the chunks' stored values
        sync(session.store.set(key, default_buffer_prototype().buffer.from_bytes(data)))
    session.commit("raw chunk values")
    assert target.read_bytes("v/c/0") == b"" and target.read_bytes("v/c/69") == values["v/c/69"]
    assert target.read_bytes("v/c/99") is None  # never written
    got = dict(target.hash_chunks([*values, "v/c/99"]))
    assert got == {**{k: hashlib.sha256(d).hexdigest() for k, d in values.items()},
                   "v/c/99": None}
