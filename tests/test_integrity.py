"""Per-chunk checksums: recorded at build time, and ``esdc verify --checksums`` names every
corrupted, missing or unrecorded chunk file.

The fast tests use a small synthetic cube written by :meth:`esdc.storage.Target.write` (local
Dask scheduler, no samples); the slow one corrupts a real floods cube built by the CLI.
"""

from __future__ import annotations

import json
import random
import shutil
import warnings
from pathlib import Path

import pytest
import xarray as xr
import zarr
from typer.testing import CliRunner

from esdc.cli import app
from esdc.hashing import file_sha256
from esdc.storage import check_checksums, verify_checksums
from esdc.storage.integrity import (
    MANIFEST_GROUP,
    chunk_files,
    chunk_key,
    read_manifest,
    remove_temp_files,
)
from esdc.verify import verify_store
from tests.storage.conftest import synthetic, write

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture
def cube(tmp_path: Path) -> Path:
    return write(synthetic(), tmp_path / "cube.zarr")


def flip_byte(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    i = rng.randrange(len(data))
    data[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- the record
def test_record_covers_every_chunk_file(cube: Path) -> None:
    rec = read_manifest(cube)
    assert rec is not None and rec["algorithm"] == "sha256"
    files = chunk_files(cube)
    assert set(rec["chunks"]) == set(files)
    assert all(rec["chunks"][k] == file_sha256(p) for k, p in files.items())
    # 3 time chunks x 2 x 2 tiles of sst, 2 x 2 of mask, and the coordinates
    assert sum(k.startswith("sst/c/") for k in files) == 12
    assert sum(k.startswith("mask/c/") for k in files) == 4
    assert {"lat/c/0", "lon/c/0", "time/c/0"} <= set(files)
    assert {"sst", "mask", "lat", "lon", "time", "crs"} <= set(rec["arrays"])
    assert len(rec["fingerprint_sha256"]) == 64


def test_record_is_invisible_to_readers(cube: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not recognized as a component" warning
        for consolidated in (True, False):
            ds = xr.open_zarr(cube, consolidated=consolidated)
            assert MANIFEST_GROUP not in ds.variables
            assert set(ds.data_vars) == {"sst", "mask"}
        members = dict(zarr.open_group(str(cube), mode="r", use_consolidated=False).members())
    assert isinstance(members[MANIFEST_GROUP], zarr.Group)
    root = json.loads((cube / "zarr.json").read_text())
    assert MANIFEST_GROUP in root["consolidated_metadata"]["metadata"]
    assert verify_store(cube) == []


def test_chunk_key_encodings() -> None:
    assert chunk_key("sst", (3, 1, 2)) == "sst/c/3/1/2"
    assert chunk_key("crs", ()) == "crs/c"
    assert chunk_key("a", (1, 2), {"name": "default", "configuration": {"separator": "."}}) \
        == "a/c.1.2"
    assert chunk_key("a", (1, 2), {"name": "v2", "configuration": {"separator": "."}}) == "a/1.2"


# --------------------------------------------------------------------------- verify --checksums
def test_cli_verify_checksums_ok(cube: Path) -> None:
    res = runner.invoke(app, ["verify", str(cube), "--checksums"])
    assert res.exit_code == 0, res.output
    n = len(read_manifest(cube)["chunks"])
    assert f"OK ({n} chunk checksums match)" in res.output


def test_cli_names_flipped_and_deleted_chunks(cube: Path) -> None:
    rng = random.Random(1)
    flip_byte(cube / "sst/c/1/0/1", rng)
    (cube / "mask/c/1/0").unlink()
    res = runner.invoke(app, ["verify", str(cube), "--checksums"])
    assert res.exit_code == 1, res.output
    assert "- sst/c/1/0/1: checksum mismatch (recorded " in res.output
    assert "- mask/c/1/0: chunk file missing" in res.output
    assert "2 problem(s)" in res.output
    # without --checksums the conventions alone are checked (and still hold)
    assert runner.invoke(app, ["verify", str(cube)]).exit_code == 0


def test_every_injected_corruption_is_detected(cube: Path) -> None:
    """Flip a random bit of, truncate, empty and delete every chunk file in turn."""
    rng = random.Random(20240607)
    files = chunk_files(cube)
    injected = detected = 0
    for key, path in files.items():
        original = path.read_bytes()
        for kind in ("flip", "truncate", "empty", "delete"):
            if kind == "flip":
                flip_byte(path, rng)
            elif kind == "truncate":
                path.write_bytes(original[: len(original) // 2])
            elif kind == "empty":
                path.write_bytes(b"")
            else:
                path.unlink()
            injected += 1
            report = check_checksums(cube)
            expected = ([f"{key}: chunk file missing"] if kind == "delete" else [])
            if kind == "delete":
                ok = report.missing == [key] and not report.mismatched
            else:
                ok = list(report.mismatched) == [key] and not report.missing
                expected = [p for p in report.problems if p.startswith(f"{key}: checksum")]
            detected += ok and report.problems == expected and len(expected) == 1
            path.write_bytes(original)
        assert check_checksums(cube).problems == []
    print(f"\ncorruptions injected: {injected}, detected and named: {detected} "
          f"({len(files)} chunk files x flip/truncate/empty/delete)")
    assert injected == detected == 4 * len(files)


def test_unrecorded_chunk_file_is_reported(cube: Path) -> None:
    shutil.copy(cube / "sst/c/0/0/0", cube / "sst/c/0/0/5")
    assert verify_checksums(cube) == ["sst/c/0/0/5: chunk file not in the checksum record"]


def test_zarr_temporary_files_are_ignored_and_removed(cube: Path) -> None:
    leftover = cube / "sst/c/0/0" / f"1.{'ab' * 16}.partial"
    leftover.write_bytes(b"half a chunk")
    assert verify_checksums(cube) == []
    assert remove_temp_files(cube) == 1 and not leftover.exists()


def test_arrays_added_later_are_not_problems(cube: Path) -> None:
    g = zarr.open_group(str(cube), mode="r+", use_consolidated=False)
    g.create_array("extra", shape=(4,), dtype="float32")[:] = 1.0
    report = check_checksums(cube)
    assert report.problems == [] and report.uncovered == ["extra"]
    res = runner.invoke(app, ["verify", str(cube), "--checksums"])
    assert "not covered by the checksum record" in res.output and "extra" in res.output


def test_cube_without_record(tmp_path: Path) -> None:
    plain = tmp_path / "plain.zarr"
    synthetic().to_zarr(plain, zarr_format=3)
    problems = verify_checksums(plain)
    assert len(problems) == 1 and "no chunk checksum record" in problems[0]
    res = runner.invoke(app, ["verify", str(plain), "--checksums"])
    assert res.exit_code == 1


def test_verify_store_with_checksums(cube: Path) -> None:
    flip_byte(cube / "sst/c/2/1/1", random.Random(3))
    problems = verify_store(cube, checksums=True)
    assert len(problems) == 1 and problems[0].startswith("sst/c/2/1/1: checksum mismatch")
    assert verify_store(cube) == []


# --------------------------------------------------------------------------- a real cube
@pytest.mark.slow
def test_real_cube_flip_and_delete(tmp_path: Path) -> None:
    """The floods cube (real Stage IV data) built by the CLI: corrupt one chunk, delete one."""
    out = tmp_path / "floods.zarr"
    res = runner.invoke(app, ["build", str(ROOT / "recipes" / "floods.yaml"), "--out",
                              str(out), "--no-fetch"])
    assert res.exit_code == 0, res.output
    ok = runner.invoke(app, ["verify", str(out), "--checksums"])
    assert ok.exit_code == 0 and "chunk checksums match" in ok.output, ok.output
    flip_byte(out / "precipitation/c/0/1/0", random.Random(5))
    (out / "elevation/c/0/1").unlink()
    bad = runner.invoke(app, ["verify", str(out), "--checksums"])
    assert bad.exit_code == 1
    assert "- precipitation/c/0/1/0: checksum mismatch" in bad.output
    assert "- elevation/c/0/1: chunk file missing" in bad.output
    assert "2 problem(s)" in bad.output
