"""Zarr v3 sharding (issue 14, item 4) on every storage target: a folder, an Icechunk
repository and an S3 bucket (moto on 127.0.0.1).

A sharded cube holds the same values as the unsharded one in fewer files; a region, a
journaled file and a checksum are a shard; the checksum record also holds the chunks
inside each shard, so a damaged chunk is named with its shard; append rewrites only the
last, partial shard; resume continues per shard; shards that are not whole chunks are
refused before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

from esdc.cli import app
from esdc.errors import ChunkDecodeError, RecipeError, StorageError
from esdc.recipe import CompressorSpec, Recipe
from esdc.storage import Target, open_cube, resolve
from esdc.verify import verify_store
from tests.storage.conftest import BUCKET, CHUNKS, synthetic

ROOT = Path(__file__).resolve().parents[2]
SHARDS = {"time": 8, "lat": 12, "lon": 16}  # 2 x 2 x 2 chunks of CHUNKS per shard
runner = CliRunner()


def write(ds: xr.Dataset, target: Target, shards: dict[str, int] | None = SHARDS,
          **kwargs: Any) -> Any:
    return target.write(ds, chunks=CHUNKS, compressor=CompressorSpec(), shards=shards,
                        **kwargs)


def stored(target: Target, key: str, data: bytes) -> None:
    """Overwrite the stored object ``key`` of the cube (to damage it)."""
    location = target.location
    if target.is_versioned:  # a plain Icechunk commit on main
        import icechunk
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(location)))
        session = repo.writable_session("main")
        sync(session.store.set(key, default_buffer_prototype().buffer.from_bytes(data)))
        session.commit("damage", metadata={"esdc": {"action": "damage"}})
    elif isinstance(location, Path):
        (location / key).write_bytes(data)
    else:
        fs, root = target.filesystem()  # type: ignore[attr-defined]
        fs.pipe_file(f"{root}/{key}", data)


@pytest.fixture(params=["zarr", "icechunk", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """An empty location of each kind."""
    if request.param == "icechunk":
        pytest.importorskip("icechunk")
        yield resolve(tmp_path / "cube.icechunk", store="icechunk")
    elif request.param == "zarr":
        yield resolve(tmp_path / "cube.zarr")
    else:
        request.getfixturevalue("s3")
        name = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:12]
        with dask.config.set(scheduler="threads"):  # reads in this process (AWS_* variables)
            yield resolve(f"s3://{BUCKET}/sharding/{name}.zarr")


def test_a_sharded_cube_holds_the_same_values_in_fewer_files(target: Target,
                                                            tmp_path: Path) -> None:
    ds = synthetic()
    plain = resolve(tmp_path / "plain.zarr")
    write(ds, plain, shards=None)
    write(ds, target)
    # sst (10 x 12 x 16): 3 x 2 x 2 chunk files unsharded, 2 x 1 x 1 shard files sharded
    assert sum(k.startswith("sst/c/") for k in plain.list_chunks()) == 12
    assert [k for k in target.list_chunks() if k.startswith("sst/")] == ["sst/c/0/0/0",
                                                                         "sst/c/1/0/0"]
    meta = json.loads(target.read_bytes("sst/zarr.json") or b"{}")
    codec = meta["codecs"][0]
    assert codec["name"] == "sharding_indexed"
    assert codec["configuration"]["chunk_shape"] == [4, 6, 8]
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [8, 12, 16]
    assert [c["name"] for c in codec["configuration"]["codecs"]] == ["bytes", "blosc"]
    opened = target.open()
    # readers decode chunks, and Dask reads whole shards (one read per shard file)
    assert opened["sst"].encoding["chunks"] == (4, 6, 8)
    assert opened["sst"].encoding["shards"] == (8, 12, 16)
    assert opened["sst"].chunks == ((8, 2), (12,), (16,))
    for name in ("sst", "mask"):
        xr.testing.assert_identical(opened[name].load(), open_cube(plain)[name].load())
    # the checksum record: every shard file, and every chunk inside it
    rec = target.manifest()
    assert rec is not None and rec["shards"] == {"mask": [2, 2], "sst": [2, 2, 2]}
    assert sorted(rec["inner"]) == ["mask/c/0/0", "sst/c/0/0/0", "sst/c/1/0/0"]
    assert len(rec["inner"]["sst/c/0/0/0"]) == 8 and None not in rec["inner"]["sst/c/0/0/0"]
    report = target.checksums()
    assert report.problems == [] and report.checked == len(target.list_chunks())
    assert verify_store(target, checksums=True) == []
    # a build of the same inputs with other shards is another build
    assert target.is_current(ds, chunks=CHUNKS, compressor=CompressorSpec(), shards=SHARDS)
    assert not target.is_current(ds, chunks=CHUNKS, compressor=CompressorSpec())


def _inner_range(data: bytes, n: int, position: int) -> tuple[int, int]:
    """Byte range of chunk ``position`` inside a shard file (index: n x (offset, length))."""
    values = struct.unpack(f"<{2 * n}Q", data[-(16 * n + 4):-4])
    return values[2 * position], values[2 * position + 1]


def test_a_damaged_chunk_is_named_with_its_shard(target: Target) -> None:
    write(synthetic(), target)
    data = bytearray(target.read_bytes("sst/c/1/0/0") or b"")
    off, length = _inner_range(bytes(data), 8, 3)  # chunk (0, 1, 1) of the shard
    data[off:off + length] = bytes(length)  # zeroed: no Blosc frame any more
    stored(target, "sst/c/1/0/0", bytes(data))
    problems = target.checksums().problems
    # shard (1, 0, 0) holds time chunks 2..3, lat 0..1, lon 0..1: its 4th chunk is (2, 1, 1)
    assert len(problems) == 1
    assert problems[0].startswith("sst/c/1/0/0: checksum mismatch (recorded ")
    assert problems[0].endswith("; changed inside the shard: chunk (2, 1, 1)")
    assert verify_store(target, checksums=True) == problems
    ds = target.open()
    np.testing.assert_array_equal(ds["sst"][:8].values, synthetic()["sst"][:8].values)
    with pytest.raises(ChunkDecodeError, match=r"chunk \(0, 1, 1\) inside shard \S*sst/c/1/0/0"
                       ) as exc:
        ds["sst"].load()
    assert exc.value.chunk == (0, 1, 1)  # type: ignore[attr-defined]
    # a damaged shard index is said as such
    data = bytearray(target.read_bytes("sst/c/0/0/0") or b"")
    data[-10] ^= 0xFF
    stored(target, "sst/c/0/0/0", bytes(data))
    problems = target.checksums().problems
    assert problems[0].startswith("sst/c/0/0/0: checksum mismatch")
    assert problems[0].endswith("; the shard's index is damaged")


def test_append_rewrites_only_the_last_partial_shard(tmp_path: Path) -> None:
    path = tmp_path / "cube.zarr"
    target = resolve(path)
    write(synthetic(nt=10), target)  # time shards: steps 0..7 and 8..9 (partial)
    first = path / "sst" / "c" / "0" / "0" / "0"
    before = (first.read_bytes(), first.stat().st_ino, first.stat().st_mtime_ns)
    said: list[str] = []
    write(synthetic(nt=14), target, append=True, report=said.append)
    assert said == [f"appending time steps 10..13 to {path}; 2 chunk files of the cube are "
                    "kept as they are"]  # sst's first shard and mask's only shard
    assert (first.read_bytes(), first.stat().st_ino, first.stat().st_mtime_ns) == before
    ds = open_cube(path)
    assert ds["sst"].chunks == ((8, 6), (12,), (16,))
    xr.testing.assert_identical(ds["sst"].load().drop_attrs(),
                                synthetic(nt=14)["sst"].compute().drop_attrs())
    assert target.checksums().problems == []
    rec = target.manifest()
    assert rec is not None and sorted(rec["inner"]) == ["mask/c/0/0", "sst/c/0/0/0",
                                                        "sst/c/1/0/0"]


def test_append_to_a_sharded_repository_shares_the_full_shards(tmp_path: Path) -> None:
    pytest.importorskip("icechunk")
    target = resolve(tmp_path / "cube.icechunk", store="icechunk")
    write(synthetic(nt=10), target)
    said: list[str] = []
    write(synthetic(nt=14), target, append=True, report=said.append)
    assert said == [f"appending time steps 10..13 to {target}; 2 chunk files of the cube are "
                    "kept as they are"]
    log = target.log()
    assert [v["metadata"]["action"] for v in log] == ["append", "build"]
    xr.testing.assert_identical(target.open()["sst"].load().drop_attrs(),
                                synthetic(nt=14)["sst"].compute().drop_attrs())
    old = target.at(log[1]["id"])
    assert old.read_bytes("sst/c/0/0/0") == target.read_bytes("sst/c/0/0/0")
    assert old.read_bytes("sst/c/1/0/0") != target.read_bytes("sst/c/1/0/0")
    assert old.open().sizes["time"] == 10
    assert target.checksums().problems == [] and old.checksums().problems == []


class Stop(Exception):
    pass


def test_resume_continues_per_shard(target: Target) -> None:
    """Two regions (shards of 12 x 8 cells); killed after the first, resumed."""
    shards = {"time": 8, "lat": 12}

    def stop(done: int, total: int) -> None:
        if done:  # the first call, before any region, gives the total
            raise Stop(f"{done} of {total}")

    with pytest.raises(Stop, match="1 of 2"):
        write(synthetic(), target, shards=shards, on_region=stop)
    assert not target.exists()
    said: list[str] = []
    calls: list[int] = []
    write(synthetic(), target, shards=shards, resume=True, report=said.append,
          on_region=lambda done, total: calls.append(done))
    assert calls == [1, 2]
    assert len(said) >= 1 and " 1 of 2 regions already " in said[0]
    xr.testing.assert_identical(target.open()["sst"].load().drop_attrs(),
                                synthetic()["sst"].compute().drop_attrs())
    assert target.checksums().problems == []


def test_shards_that_are_not_whole_chunks_are_refused(tmp_path: Path) -> None:
    doc = yaml.safe_load((ROOT / "recipes" / "floods.yaml").read_text(encoding="utf-8"))
    chunks = doc["output"].setdefault("chunks", {"time": 6, "lat": 64, "lon": 64})
    doc["output"]["chunks"] = chunks
    dim = next(d for d in chunks if d != "time")
    doc["output"]["shards"] = {dim: chunks[dim] * 2}
    assert Recipe.from_dict(doc).output.shards == {dim: chunks[dim] * 2}
    doc["output"]["shards"] = {dim: chunks[dim] + 1}
    with pytest.raises(RecipeError, match=rf"shards.{dim} = {chunks[dim] + 1} is not a whole "
                       rf"multiple of chunks.{dim} = {chunks[dim]}"):
        Recipe.from_dict(doc)
    doc["output"]["shards"] = {"time": 4}
    del doc["output"]["chunks"]["time"]
    with pytest.raises(RecipeError, match="shards.time: give chunks.time too"):
        Recipe.from_dict(doc)
    bad = tmp_path / "bad.yaml"
    doc["output"]["chunks"]["time"] = 3
    bad.write_text(yaml.safe_dump(doc), encoding="utf-8")
    out = tmp_path / "out.zarr"
    res = runner.invoke(app, ["build", str(bad), "--out", str(out), "--no-fetch"])
    assert res.exit_code == 2, res.output
    assert "shards.time = 4 is not a whole multiple of chunks.time = 3" in res.output
    assert not out.exists()
    # the Python API checks the same before writing anything
    target = resolve(tmp_path / "api.zarr")
    with pytest.raises(StorageError, match=r"shards=\{'lat': 9\} is not a whole multiple of "
                       "the chunk length 6"):
        write(synthetic(), target, shards={"lat": 9})
    with pytest.raises(StorageError, match="give the chunk length of 'nv' too"):
        write(synthetic(), target, shards={"nv": 2})
    assert not target.exists() and not (tmp_path / "api.zarr").exists()


def test_info_prints_chunks_and_shards(tmp_path: Path) -> None:
    path = tmp_path / "cube.zarr"
    write(synthetic(), resolve(path))
    res = runner.invoke(app, ["info", str(path), "--json"])
    assert res.exit_code == 0, res.output
    sst = json.loads(res.stdout)["variables"]["sst"]
    assert sst["chunks"] == [4, 6, 8] and sst["shards"] == [8, 12, 16]
    res = runner.invoke(app, ["info", str(path)])
    assert res.exit_code == 0 and "chunks (4, 6, 8) in shards (8, 12, 16)" in res.stdout


def test_patch_streams_read_whole_shards(tmp_path: Path) -> None:
    from esdc.ml.patches import PatchStream

    plain, sharded = tmp_path / "plain.zarr", tmp_path / "sharded.zarr"
    write(synthetic(), resolve(plain), shards=None)
    write(synthetic(), resolve(sharded))
    a = PatchStream(str(plain), ["sst"], patch=(4, 4), shuffle=False, normalize=False)
    b = PatchStream(str(sharded), ["sst"], patch=(4, 4), shuffle=False, normalize=False)
    assert (a.tchunk, a.band) == (4, 6)  # a unit: one chunk band ...
    assert (b.tchunk, b.band) == (8, 12)  # ... or one shard band: one read per shard file

    def patches(stream: PatchStream) -> tuple[np.ndarray, np.ndarray]:
        batches = list(stream.batches(16))
        index = np.concatenate([x.index for x in batches])
        x = np.concatenate([x.x for x in batches])
        order = np.lexsort(index.T[::-1])
        return index[order], x[order]

    for got, want in zip(patches(b), patches(a), strict=True):
        np.testing.assert_array_equal(got, want)


def test_checksum_store_hashes_what_it_stores() -> None:
    import pickle

    import zarr

    from esdc.storage.shards import ChecksumStore, inner_checksums

    inner_store = zarr.storage.MemoryStore()
    store = ChecksumStore(inner_store, {"s": [2, 2]})
    plain = zarr.create_array(store, name="a", shape=(4, 4), chunks=(2, 2), dtype="f4",
                              fill_value=np.nan)
    sharded = zarr.create_array(store, name="s", shape=(4, 4), chunks=(2, 2), shards=(4, 4),
                                dtype="f4", fill_value=np.nan)
    values = np.arange(16, dtype="f4").reshape(4, 4)
    plain[:] = values
    sharded[:] = values
    stored = {k: v.to_bytes() for k, v in inner_store._store_dict.items()}
    assert {k for k in store.sums if "/c/" in k} == {k for k in stored if "/c/" in k}
    assert all(store.sums[k] == hashlib.sha256(stored[k]).hexdigest() for k in store.sums)
    assert store.inner == {"s/c/0/0": inner_checksums(stored["s/c/0/0"], 4)}
    # a chunk written empty is deleted from the store (zarr's write_empty_chunks=False)
    plain[:2, :2] = np.nan
    assert "a/c/0/0" not in inner_store._store_dict and "a/c/0/0" not in store.sums
    # a fork sent to a worker takes its own record along, and back
    copy = pickle.loads(pickle.dumps(store))
    assert copy.sums == store.sums and copy.layout == store.layout
