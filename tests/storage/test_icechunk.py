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
    assert calls == [3, 4]
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
