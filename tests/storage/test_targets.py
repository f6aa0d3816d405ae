"""The storage target contract, after zarr-python's ``zarr/testing/store.py``.

:class:`TargetContract` holds the tests every :class:`esdc.storage.Target` must pass; a
target kind subclasses it and says where an empty location is and how to damage or
remove one of its objects. Here: a local folder, and an S3 bucket served by moto on
127.0.0.1 (the object-store target, staged and uploaded as for a real bucket).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import xarray as xr

from esdc.errors import (
    BuildConflictError,
    ChunkDecodeError,
    CubeExistsError,
    CubeNotFoundError,
    EsdcError,
    StorageError,
)
from esdc.recipe import CompressorSpec
from esdc.storage import LocalTarget, ObjectTarget, Target, open_cube, resolve
from esdc.verify import verify_cube, verify_store
from tests.storage.conftest import BUCKET, CHUNKS, synthetic, write


class TargetContract:
    """Tests every storage target passes. Subclasses define the three hooks below."""

    kind: type[Target]

    @pytest.fixture
    def target(self, tmp_path: Path) -> Target:
        """An empty location of this kind."""
        raise NotImplementedError

    def replace_bytes(self, target: Target, key: str, data: bytes) -> None:
        """Overwrite the object or file ``key`` of the stored cube (to damage it)."""
        raise NotImplementedError

    def remove(self, target: Target, key: str) -> None:
        """Delete the object or file ``key`` of the stored cube."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the contract
    def test_resolve_gives_this_kind(self, target: Target) -> None:
        assert isinstance(target, self.kind)
        assert resolve(target) is target
        assert type(resolve(str(target.location))) is self.kind
        assert str(target) == str(target.location)
        assert isinstance(target.supports_writes, bool) and target.is_versioned is False

    def test_no_cube_yet(self, target: Target) -> None:
        assert not target.exists()
        assert isinstance(target.missing_reason(), str)
        with pytest.raises(CubeNotFoundError, match=f"no cube at {target.location}"):
            target.require()
        with pytest.raises(CubeNotFoundError, match="no cube at"):
            target.open()
        with pytest.raises(FileNotFoundError):  # CubeNotFoundError is one
            open_cube(target)
        assert target.read_bytes("zarr.json") is None
        assert target.root_metadata() is None and target.manifest() is None
        assert target.current_digest() is None
        assert target.list_chunks() == [] and target.list_arrays() == []

    def test_write_then_read(self, target: Target) -> None:
        ds = synthetic()
        assert write(ds, target) == target.location
        assert target.exists() and target.missing_reason() is None
        target.require()
        opened = target.open()
        assert verify_cube(opened) == []
        assert opened["sst"].chunks == ((4, 4, 2), (6, 6), (8, 8))  # Dask chunks = Zarr chunks
        xr.testing.assert_identical(opened["sst"].load().drop_attrs(),
                                    ds["sst"].compute().drop_attrs())
        np.testing.assert_array_equal(opened["mask"].values, ds["mask"].values)
        assert opened.attrs["title"] == "synthetic"
        # metadata, arrays, chunks and their bytes agree with the checksum record
        root = target.root_metadata()
        assert root is not None and root["zarr_format"] == 3
        assert root["consolidated_metadata"] is not None
        rec = target.manifest()
        assert rec is not None and rec["algorithm"] == "sha256"
        assert {"sst", "mask", "lat", "lon", "time", "crs"} <= set(target.list_arrays())
        chunks = target.list_chunks()
        assert chunks == sorted(rec["chunks"])
        assert sum(k.startswith("sst/c/") for k in chunks) == 12  # 3 x 2 x 2
        assert target.list_chunks(["mask"]) == [f"mask/c/{i}/{j}" for i in (0, 1)
                                                for j in (0, 1)]
        key = "sst/c/1/0/1"
        data = target.read_bytes(key)
        assert data is not None and hashlib.sha256(data).hexdigest() == rec["chunks"][key]
        report = target.checksums()
        assert report.problems == [] and report.checked == len(chunks)
        assert report.uncovered == []
        assert verify_store(target, checksums=True) == []

    def test_is_current_reads_the_fingerprint(self, target: Target) -> None:
        assert not target.is_current(synthetic(), chunks=CHUNKS, compressor=CompressorSpec())
        write(synthetic(), target)
        assert target.is_current(synthetic(), chunks=CHUNKS, compressor=CompressorSpec())
        assert len(target.current_digest() or "") == 64
        assert not target.is_current(synthetic(label="other"), chunks=CHUNKS,
                                     compressor=CompressorSpec())
        assert not target.is_current(synthetic(), chunks={**CHUNKS, "time": 5},
                                     compressor=CompressorSpec())
        assert not target.is_current(synthetic(), chunks=CHUNKS,
                                     compressor=CompressorSpec(clevel=9))

    def test_a_cube_is_replaced_only_with_overwrite(self, target: Target) -> None:
        write(synthetic(label="old"), target)
        before = {k: target.read_bytes(k) for k in target.list_chunks()}
        for kwargs in ({}, {"resume": True}):
            with pytest.raises(CubeExistsError, match="overwrite=True"):
                write(synthetic(label="new"), target, **kwargs)
        assert {k: target.read_bytes(k) for k in target.list_chunks()} == before
        assert target.open().attrs["title"] == "old"
        write(synthetic(label="new"), target, overwrite=True)
        assert target.open().attrs["title"] == "new"
        assert target.checksums().problems == []

    def test_resume_of_a_current_cube_writes_nothing(self, target: Target) -> None:
        write(synthetic(), target)
        before = {k: target.read_bytes(k) for k in ["zarr.json", *target.list_chunks()]}
        said: list[str] = []
        assert write(synthetic(), target, resume=True, report=said.append) == target.location
        assert said == [f"{target} is up to date"]
        assert {k: target.read_bytes(k) for k in before} == before

    def test_check(self, target: Target) -> None:
        target.check()  # an empty location takes a cube
        with pytest.raises(BuildConflictError, match="does not go with overwrite=True"):
            target.check(append=True, overwrite=True)
        write(synthetic(), target)
        with pytest.raises(CubeExistsError, match="overwrite=True"):
            target.check()
        target.check(overwrite=True)
        target.check(resume=True)

    def test_append_where_supported(self, target: Target) -> None:
        write(synthetic(nt=10), target)
        if not target.supports_append:
            with pytest.raises(BuildConflictError, match="append=True"):
                write(synthetic(nt=14), target, append=True)
            assert target.open().sizes["time"] == 10
            return
        said: list[str] = []
        write(synthetic(nt=14), target, append=True, report=said.append)
        assert said == [f"appending time steps 10..13 to {target}; 12 chunk files of the "
                        "cube are kept as they are"]
        ds = target.open()
        assert ds.sizes["time"] == 14
        xr.testing.assert_identical(ds["sst"].load().drop_attrs(),
                                    synthetic(nt=14)["sst"].compute().drop_attrs())
        assert target.checksums().problems == []

    def test_a_damaged_chunk_is_named(self, target: Target) -> None:
        write(synthetic(), target)
        data = target.read_bytes("sst/c/2/1/1")
        assert data is not None
        self.replace_bytes(target, "sst/c/2/1/1", data[: len(data) // 2])
        self.remove(target, "mask/c/1/0")
        problems = target.checksums().problems
        assert len(problems) == 2
        assert problems[0].startswith("sst/c/2/1/1: checksum mismatch (recorded ")
        assert problems[1] == "mask/c/1/0: chunk file missing"
        assert verify_store(target, checksums=True) == problems
        assert verify_store(target) == []  # the conventions still hold
        ds = target.open()
        np.testing.assert_array_equal(ds["sst"][:8].values, synthetic()["sst"][:8].values)
        with pytest.raises(ChunkDecodeError, match="sst/c/2/1/1") as exc:
            ds["sst"].load()
        assert isinstance(exc.value, EsdcError) and isinstance(exc.value, OSError)
        assert exc.value.key.endswith("sst/c/2/1/1")  # type: ignore[attr-defined]
        assert "could not be decoded" in str(exc.value)

    def test_versions_are_refused(self, target: Target) -> None:
        write(synthetic(), target)
        with pytest.raises(StorageError, match="not versioned"):
            target.open(version="v1")
        with pytest.raises(StorageError, match="not versioned"):
            open_cube(target, version="main")

    def test_update_where_supported(self, target: Target) -> None:
        write(synthetic(), target)
        extra = xr.Dataset({"extra": (("n",), np.arange(4.0), {"units": "1"})})
        if not target.supports_update:
            with pytest.raises(StorageError, match="cannot be updated in place"):
                target.update(extra)
            return
        target.update(extra, attrs={"sst": {"esdc_statistics": {"mean": 290.0}}})
        ds = target.open()
        np.testing.assert_array_equal(ds["extra"].values, np.arange(4.0))
        assert ds["sst"].attrs["esdc_statistics"] == {"mean": 290.0}
        report = target.checksums()
        assert report.problems == [] and report.uncovered == ["extra"]
        target.update(xr.Dataset({"extra": (("n",), np.zeros(4))}))  # replaced, not added
        np.testing.assert_array_equal(target.open()["extra"].values, np.zeros(4))


class TestLocalTarget(TargetContract):
    kind = LocalTarget

    @pytest.fixture
    def target(self, tmp_path: Path) -> Target:
        return resolve(tmp_path / "cubes" / "cube.zarr")

    def replace_bytes(self, target: Target, key: str, data: bytes) -> None:
        (Path(target.location) / key).write_bytes(data)

    def remove(self, target: Target, key: str) -> None:
        (Path(target.location) / key).unlink()

    def test_capabilities(self, target: Target) -> None:
        assert target.supports_rename and target.supports_append and target.supports_update

    def test_missing_reasons(self, tmp_path: Path) -> None:
        assert LocalTarget(tmp_path / "none").missing_reason() == "nothing is at that path"
        (tmp_path / "file.png").write_bytes(b"\x89PNG")
        with pytest.raises(CubeNotFoundError, match="a file, not a Zarr cube"):
            LocalTarget(tmp_path / "file.png").require()
        with pytest.raises(CubeNotFoundError, match=r"no Zarr cube at that path \(no zarr"):
            LocalTarget(tmp_path).require("to append to")

    def test_a_file_in_the_way_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / "afile").write_text("x")
        target = resolve(tmp_path / "afile" / "cube.zarr")
        with pytest.raises(EsdcError, match="is a file, not a folder"):
            target.check()

    def test_unreadable_metadata(self, target: Target) -> None:
        write(synthetic(), target)
        (Path(target.location) / "zarr.json").write_text("{garbage")
        with pytest.raises(StorageError, match="not a readable Zarr cube"):
            target.open()


@pytest.mark.usefixtures("s3")
class TestObjectTarget(TargetContract):
    kind = ObjectTarget

    @pytest.fixture
    def target(self, s3: Any, request: pytest.FixtureRequest) -> Target:
        name = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:12]
        return resolve(f"s3://{BUCKET}/contract/{name}.zarr")

    @pytest.fixture(autouse=True)
    def threads(self) -> Any:
        """Reads in this process: a session's Dask workers may predate the AWS_* variables."""
        with dask.config.set(scheduler="threads"):
            yield

    def replace_bytes(self, target: Target, key: str, data: bytes) -> None:
        fs, root = target.filesystem()  # type: ignore[attr-defined]
        fs.pipe_file(f"{root}/{key}", data)

    def remove(self, target: Target, key: str) -> None:
        fs, root = target.filesystem()  # type: ignore[attr-defined]
        fs.rm_file(f"{root}/{key}")

    def test_capabilities(self, target: Target) -> None:
        assert not target.supports_rename and not target.supports_append
        assert not target.supports_update

    def test_staging_is_removed_after_the_upload(self, target: Target) -> None:
        write(synthetic(), target)
        assert not list(Path(os.environ["ESDC_STAGING"]).iterdir())

    def test_missing_bucket(self, s3: Any) -> None:
        with pytest.raises(CubeNotFoundError, match="bucket 'no-such-bucket' does not exist"):
            resolve("s3://no-such-bucket/c.zarr").require()
        with pytest.raises(EsdcError, match="bucket 'no-such-bucket' does not exist"):
            resolve("s3://no-such-bucket/c.zarr").check()
