"""The pure parts of storage: chunk keys, fingerprint, encoding, regions, the decode pipeline."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr

from esdc.errors import ChunkDecodeError, SourceError
from esdc.recipe import CompressorSpec
from esdc.storage import encoding, open_cube
from esdc.storage.codecs import CheckedCodecPipeline, checked_reads
from esdc.storage.fingerprint import complete_digest, digest, fingerprint
from esdc.storage.integrity import ChecksumReport, chunk_index, chunk_key, record_of
from esdc.storage.journal import PartialBuild, partial_path
from esdc.storage.regions import check_not_empty, regions, tile_keys, tiles
from tests.storage.conftest import CHUNKS, synthetic, write


@pytest.mark.parametrize(("enc", "index", "key"), [
    (None, (3, 1, 2), "sst/c/3/1/2"),
    (None, (), "sst/c"),
    ({"name": "default", "configuration": {"separator": "."}}, (1, 2), "sst/c.1.2"),
    ({"name": "v2", "configuration": {"separator": "."}}, (1, 2), "sst/1.2"),
    ({"name": "v2", "configuration": {"separator": "/"}}, (0, 5), "sst/0/5"),
])
def test_chunk_keys_round_trip(enc: dict[str, Any] | None, index: tuple[int, ...],
                               key: str) -> None:
    assert chunk_key("sst", index, enc) == key
    assert chunk_index(key, "sst", enc) == index


def test_fingerprint_names_what_decides_the_chunks() -> None:
    ds = synthetic()
    fp = fingerprint(ds, CHUNKS, CompressorSpec())
    assert fp["recipe_sha256"] == "synthetic-10" and fp["sizes"] == {"lat": 12, "lon": 16,
                                                                    "time": 10}
    assert fp["variables"]["sst"] == {"dims": ["time", "lat", "lon"], "dtype": "float32"}
    assert digest(fp) == digest(fingerprint(synthetic(), CHUNKS, CompressorSpec()))
    shifted = ds.assign_coords(lat=ds.lat + 0.5)
    assert digest(fingerprint(shifted, CHUNKS, CompressorSpec())) != digest(fp)
    record = {"chunks": {}, "fingerprint_sha256": digest(fp)}
    assert complete_digest({"consolidated_metadata": {}}, record) == digest(fp)
    assert complete_digest({"consolidated_metadata": None}, record) is None  # not finished
    assert complete_digest(None, record) is None
    assert record_of({"attributes": {"esdc_checksums": record}}) == record
    assert record_of({"attributes": {"esdc_checksums": {"no": "chunks"}}}) is None


def test_encoding_and_regions() -> None:
    ds = synthetic()
    enc = encoding(ds, CHUNKS, CompressorSpec(cname="lz4", clevel=1))
    assert enc["sst"]["chunks"] == (4, 6, 8) and enc["mask"]["chunks"] == (6, 8)
    assert np.isnan(enc["sst"]["fill_value"]) and "fill_value" not in enc["mask"]
    assert enc["sst"]["compressors"][0].cname.value == "lz4"
    assert enc["time"]["units"] == "days since 1970-01-01"
    assert regions(ds, "lat", 5) == [slice(0, 5), slice(5, 10), slice(10, 12)]
    assert tiles(ds, "lat", "lon", CHUNKS) == [[0, 6, 0, 8], [0, 6, 8, 16], [6, 12, 0, 8],
                                               [6, 12, 8, 16]]
    key_encs = {"sst": None, "mask": None}
    keys = tile_keys(ds, key_encs, ["sst", "mask"], enc, [6, 12, 8, 16], "lat", "lon", None)
    assert keys == ["sst/c/0/1/1", "sst/c/1/1/1", "sst/c/2/1/1", "mask/c/1/1"]
    assert tile_keys(ds, key_encs, ["sst"], enc, [0, 6, 0, 8], "lat", "lon",
                     [8, 10]) == ["sst/c/2/0/0"]


def test_an_all_nan_layer_is_refused(tmp_path: Path) -> None:
    ds = synthetic().chunk({"time": 4, "lat": 6, "lon": 8})
    ds["sst"] = ds["sst"] * np.nan
    store = tmp_path / "s.zarr"
    ds.to_zarr(store, zarr_format=3, encoding=encoding(ds, CHUNKS, CompressorSpec()),
               write_empty_chunks=True)
    sizes = {"sst": [((store / k).stat().st_size, k) for k in ("sst/c/0/0/0", "sst/c/1/1/1")],
             "mask": [((store / "mask/c/0/0").stat().st_size, "mask/c/0/0")]}
    with pytest.raises(SourceError, match=r"no valid value anywhere in the grid for sst \("):
        check_not_empty(ds, store, sizes, tmp_path / "cube.zarr")
    check_not_empty(synthetic(), store.with_name("other"), {}, "x")  # nothing written: fine


def test_partial_build_journal(tmp_path: Path) -> None:
    target = tmp_path / "cube.zarr"
    assert partial_path(target) == tmp_path / ".cube.zarr.partial-build"
    part = PartialBuild(target)
    part.lock()
    try:
        assert part.header() is None and part.done() == {} and not part.is_complete()
        part.store.mkdir()
        part.write_header({"mode": "build"})
        part.record((0, 8), {"sst/c/0/0/1": ["ab", 12]})
        with open(part.done_path, "a") as f:
            f.write('{"tile": [6, ')  # a torn last line, as a kill leaves it
        assert part.header() == {"mode": "build"}
        assert part.done() == {(0, 8): {"sst/c/0/0/1": ["ab", 12]}}
        part.mark_complete("f" * 64)
        assert part.is_complete()
    finally:
        part.remove()
    assert not partial_path(target).exists()


def test_checksum_report_lines() -> None:
    report = ChecksumReport(mismatched={"a/c/1": ("0" * 64, "1" * 64)}, missing=["b/c/0"],
                            unexpected=["a/c/9"], error="no record")
    assert report.problems == [
        "no record", f"a/c/1: checksum mismatch (recorded {'0' * 16}..., found {'1' * 16}...)",
        "b/c/0: chunk file missing", "a/c/9: chunk file not in the checksum record"]


@pytest.fixture
def damaged(tmp_path: Path) -> Path:
    cube = write(synthetic(), tmp_path / "cube.zarr")
    assert isinstance(cube, Path)
    chunk = cube / "sst/c/1/1/0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    return cube


def test_the_pipeline_is_selected_for_esdc_opens_only(damaged: Path) -> None:
    ds = open_cube(damaged)
    assert isinstance(ds["sst"].encoding["preferred_chunks"], dict)
    with pytest.raises(ChunkDecodeError, match=r"chunk sst/c/1/1/0 of the cube could not be "
                                               r"decoded \(") as exc:
        ds["sst"].load()
    assert "checksums=True" in str(exc.value)
    err = pickle.loads(pickle.dumps(exc.value))  # travels from a Dask worker
    assert isinstance(err, ChunkDecodeError) and err.key == exc.value.key
    with checked_reads():
        arr = zarr.open_array(str(damaged / "sst"), mode="r")
    assert isinstance(arr.async_array.codec_pipeline, CheckedCodecPipeline)
    plain = zarr.open_array(str(damaged / "sst"), mode="r")  # zarr's own default is untouched
    assert not isinstance(plain.async_array.codec_pipeline, CheckedCodecPipeline)
    with pytest.raises(Exception) as raw:  # noqa: PT011 - whatever the codec raises
        xr.open_zarr(damaged)["sst"].load()
    assert not isinstance(raw.value, ChunkDecodeError)


def test_a_damaged_chunk_read_on_a_dask_worker(damaged: Path, client: Any) -> None:
    ds = open_cube(damaged)
    with pytest.raises(ChunkDecodeError, match="sst/c/1/1/0"):
        client.compute(ds["sst"].data).result()
    assert client.compute(ds["sst"][:4].data).result().shape == (4, 12, 16)


def test_prepare_rechunks_with_tasks_under_a_client(client: Any) -> None:
    """With a ``distributed`` client Dask may pick its P2P rechunk (for large rechunks, or
    by configuration); a build must not: P2P shuffles every input before any region can
    be written."""
    import dask
    import dask.array as da

    from esdc.storage.regions import prepare

    data = da.ones((54, 360, 720), dtype="float32", chunks=(12, 308, 360))
    ds = xr.Dataset({"v": (("time", "lat", "lon"), data)})
    with dask.config.set({"array.rechunk.method": "p2p"}):
        assert any("p2p" in n for n in da.rechunk(data, (6, 180, 360)).__dask_graph__().layers)
        out = prepare(ds, {"time": 6, "lat": 180, "lon": 360})
    # 12 steps are 2 whole write units of 6: kept; 308 rows end inside a unit of 180
    assert out["v"].chunks == ((12,) * 4 + (6,), (180,) * 2, (360,) * 2)
    assert not any("p2p" in name for name in out["v"].data.__dask_graph__().layers)
    assert float(out["v"].sum().compute()) == 54 * 360 * 720


def test_prepare_keeps_chunks_made_of_whole_write_units() -> None:
    """Chunks that are unions of write units are written as they are (no split tasks);
    a dim whose chunk ends inside a unit is rechunked to the units; one chunk over a
    whole dim shorter than its unit stays whole."""
    import dask.array as da

    from esdc.storage.regions import prepare

    big = da.ones((54, 360, 720), dtype="float32", chunks=(54, 360, 720))
    odd = da.ones((54, 360, 720), dtype="float32", chunks=(54, 100, 720))
    two = da.ones((4, 360, 720), dtype="float32", chunks=(2, 360, 720))
    ds = xr.Dataset({"big": (("time", "lat", "lon"), big), "odd": (("time", "lat", "lon"), odd),
                     "two": (("t4", "lat", "lon"), two)})
    out = prepare(ds, {"time": 6, "lat": 180, "lon": 360, "t4": 8})
    assert out["big"].chunks == ((54,), (360,), (720,))
    assert out["big"].data.name == big.name  # nothing added to its graph
    assert out["odd"].chunks == ((54,), (180, 180), (720,))
    assert out["two"].chunks == ((4,), (360,), (720,))  # a unit longer than the dim
