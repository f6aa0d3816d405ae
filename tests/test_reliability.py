"""Crash-safe, resumable and appendable builds.

Fast tests drive :meth:`esdc.storage.Target.write` on a small synthetic cube (local Dask
scheduler) and interrupt it from its progress callback. Slow tests run the real CLI
(``python -m esdc.cli build``) in its own process group on the floods recipe with small
chunks (4 x 6 = 24 regions, so kills land between region writes), kill it with SIGKILL
at seeded random points, resume it, and compare every chunk's SHA-256 with an
uninterrupted build.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import xarray as xr
import yaml

from esdc.errors import CubeExistsError, EsdcError
from esdc.recipe import CompressorSpec
from esdc.storage import check_checksums, open_cube, partial_path, resolve
from esdc.storage import journal as journal_mod
from esdc.storage import write as write_mod
from esdc.storage.integrity import chunk_files, read_manifest
from tests.storage.conftest import CHUNKS, synthetic, write

ROOT = Path(__file__).resolve().parents[1]


class Stop(Exception):
    """Raised from a progress callback: the build stops there, as if interrupted."""


def chunk_sums(cube: Path) -> dict[str, str]:
    """``{chunk key: sha256}`` recomputed from the files (not read from the record)."""
    return {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in chunk_files(cube).items()}


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """``{path: (sha256, mtime_ns, inode)}`` of every file and folder under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(root))] = (digest, st.st_mtime_ns, st.st_ino)
    return out


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial" in p.name or ".old-" in p.name)


def stop_after(n: int) -> Callable[[int, int], None]:
    def on_region(done: int, total: int) -> None:
        if done >= n:
            raise Stop(f"stopped after {done} of {total} regions")

    return on_region


@pytest.fixture
def reference(tmp_path: Path) -> dict[str, str]:
    """Chunk checksums of an uninterrupted build of the synthetic cube."""
    return chunk_sums(write(synthetic(), tmp_path / "reference.zarr"))


# --------------------------------------------------------------------------- resume
def test_interrupted_build_resumes_where_it_stopped(tmp_path: Path,
                                                    reference: dict[str, str]) -> None:
    target = tmp_path / "cube.zarr"
    with pytest.raises(Stop):
        write(synthetic(), target, on_region=stop_after(2))
    assert not target.exists()
    part = partial_path(target)
    assert (part / "build.json").exists()
    assert len((part / "regions.done").read_text().splitlines()) == 2
    msgs: list[str] = []
    seen: list[int] = []
    write(synthetic(), target, resume=True, report=msgs.append,
          on_region=lambda done, total: seen.append(done))
    assert f"resuming {target}: 2 of 4 regions already written" in msgs
    assert seen == [2, 3, 4]  # the total first (2 of 4 journaled), then each region
    assert chunk_sums(target) == reference
    assert read_manifest(target)["chunks"] == reference
    assert leftovers(tmp_path) == []


def test_resume_redoes_a_journaled_region_whose_file_is_gone(
        tmp_path: Path, reference: dict[str, str]) -> None:
    target = tmp_path / "cube.zarr"
    with pytest.raises(Stop):
        write(synthetic(), target, on_region=stop_after(3))
    store = partial_path(target) / "cube.zarr"
    (store / "sst/c/0/0/0").unlink()  # lost after it was journaled (e.g. power loss)
    (store / "sst/c/1/1/1.0123456789abcdef0123456789abcdef.partial").write_bytes(b"half")
    msgs: list[str] = []
    write(synthetic(), target, resume=True, report=msgs.append)
    assert any("2 of 4 regions already written" in m for m in msgs), msgs
    assert chunk_sums(target) == reference


def test_a_chunk_file_lost_as_its_region_ends_is_written_again(
        tmp_path: Path, reference: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The region's end (on a worker) finds a chunk file gone: the region is rewritten."""
    real = write_mod._hashed
    flag = tmp_path / "lost"  # a file: the end may run in a Dask worker process

    def lose_once(store: Path, keys: list[str], per_shard: Any, parts: Any) -> Any:
        if not flag.exists():
            flag.write_text(keys[0])
            (store / keys[0]).unlink()
        return real(store, keys, per_shard, parts)

    monkeypatch.setattr(write_mod, "_hashed", lose_once)
    target = tmp_path / "cube.zarr"
    write(synthetic(), target)
    assert flag.read_text() in reference  # a chunk file was lost, then written again
    assert chunk_sums(target) == reference
    assert read_manifest(target)["chunks"] == reference


def test_without_resume_an_unfinished_build_is_discarded(tmp_path: Path,
                                                         reference: dict[str, str]) -> None:
    target = tmp_path / "cube.zarr"
    with pytest.raises(Stop):
        write(synthetic(), target, on_region=stop_after(1))
    msgs: list[str] = []
    write(synthetic(), target, report=msgs.append)
    assert any(m.startswith("discarding the unfinished build") for m in msgs)
    assert not any(m.startswith("resuming") for m in msgs)
    assert chunk_sums(target) == reference and leftovers(tmp_path) == []


def test_resume_refuses_an_unfinished_build_of_other_inputs(tmp_path: Path) -> None:
    target = tmp_path / "cube.zarr"
    with pytest.raises(Stop):
        write(synthetic(label="first"), target, on_region=stop_after(1))
    before = snapshot(partial_path(target))
    with pytest.raises(EsdcError, match="is of other inputs") as exc:
        write(synthetic(label="second"), target, resume=True)
    assert "build without resume=True" in str(exc.value) and "first-10" in str(exc.value)
    assert snapshot(partial_path(target)) == before  # kept for the user to decide
    assert not target.exists()


def test_resume_of_a_complete_build_is_a_no_op(tmp_path: Path) -> None:
    target = write(synthetic(), tmp_path / "cube.zarr")
    before = snapshot(target)
    msgs: list[str] = []
    for _ in range(2):
        assert write(synthetic(), target, resume=True, report=msgs.append) == target
    assert msgs == [f"{target} is up to date"] * 2
    assert snapshot(target) == before and leftovers(tmp_path) == []
    assert resolve(target).is_current(synthetic(), chunks=CHUNKS, compressor=CompressorSpec())


def test_resume_over_a_different_cube_needs_overwrite(tmp_path: Path) -> None:
    target = write(synthetic(label="old"), tmp_path / "cube.zarr")
    before = snapshot(target)
    with pytest.raises(CubeExistsError, match="overwrite=True"):
        write(synthetic(label="new"), target, resume=True)
    assert snapshot(target) == before and leftovers(tmp_path) == []
    write(synthetic(label="new"), target, resume=True, overwrite=True)
    assert open_cube(target).attrs["title"] == "new"


def test_a_locked_build_is_not_touched(tmp_path: Path) -> None:
    import fcntl

    target = tmp_path / "cube.zarr"
    with pytest.raises(Stop):
        write(synthetic(), target, on_region=stop_after(1))
    part = partial_path(target)
    before = snapshot(part)
    fd = os.open(part, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running build holds it
        for resume in (True, False):
            with pytest.raises(EsdcError, match="another esdc build is writing"):
                write(synthetic(), target, resume=resume)
        assert snapshot(part) == before
    finally:
        os.close(fd)
    write(synthetic(), target, resume=True)
    assert check_checksums(target).problems == []


def test_crash_during_the_commit_is_finished_by_resume(
        tmp_path: Path, reference: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between moving the old cube aside and moving the new one in."""
    target = write(synthetic(label="old"), tmp_path / "cube.zarr")
    real_commit = journal_mod.commit_store

    def crash_after_first_rename(store: Path, target: Path) -> None:
        os.replace(target, target.with_name(f".{target.name}.old-deadbeef"))
        raise Stop("killed between the two renames")

    monkeypatch.setattr(journal_mod, "commit_store", crash_after_first_rename)
    with pytest.raises(Stop):
        write(synthetic(label="new"), target, overwrite=True)
    monkeypatch.setattr(journal_mod, "commit_store", real_commit)
    assert not target.exists()  # the old cube is aside, the new one complete
    assert (partial_path(target) / "complete").exists()
    monkeypatch.setattr(write_mod, "_write_regions",
                        lambda *a, **k: pytest.fail("a complete build was written again"))
    write(synthetic(label="new"), target, resume=True, overwrite=True)
    assert open_cube(target).attrs["title"] == "new"
    assert chunk_sums(target) == reference and leftovers(tmp_path) == []


def test_readers_see_the_old_cube_until_the_new_one_is_complete(tmp_path: Path) -> None:
    target = write(synthetic(label="old"), tmp_path / "cube.zarr")
    old = chunk_sums(target)
    seen = []

    def look(done: int, total: int) -> None:
        ds = open_cube(target)
        seen.append(ds.attrs["title"])
        assert chunk_sums(target) == old and check_checksums(target).problems == []

    write(synthetic(label="new"), target, overwrite=True, on_region=look)
    assert seen == ["old"] * 5  # before the first region, then after each of 4
    assert open_cube(target).attrs["title"] == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["cube.zarr"]


def test_a_failed_build_keeps_the_old_cube_and_can_resume(tmp_path: Path) -> None:
    target = write(synthetic(label="old"), tmp_path / "cube.zarr")
    before = snapshot(target)
    msgs: list[str] = []
    with pytest.raises(Stop):
        write(synthetic(label="new"), target, overwrite=True, on_region=stop_after(3),
              report=msgs.append)
    assert snapshot(target) == before
    assert any("--resume` continues it" in m for m in msgs)
    write(synthetic(label="new"), target, overwrite=True, resume=True)
    assert open_cube(target).attrs["title"] == "new"


# --------------------------------------------------------------------------- append
def test_append_writes_only_new_time_steps(tmp_path: Path) -> None:
    target = write(synthetic(nt=10), tmp_path / "cube.zarr")
    old = snapshot(target)
    old_sums = read_manifest(target)["chunks"]
    msgs: list[str] = []
    write(synthetic(nt=17), target, append=True, report=msgs.append)
    assert msgs == [f"appending time steps 10..16 to {target}; 12 chunk files of the cube "
                    "are kept as they are"]
    new_sums = read_manifest(target)["chunks"]
    # time chunks 0 and 1 (steps 0..7) and the static mask: same file (inode), bytes, mtime
    kept = [k for k in old_sums if k.startswith("mask/") or k.startswith(("sst/c/0/", "sst/c/1/"))]
    assert len(kept) == 12
    for k in kept:
        assert new_sums[k] == old_sums[k]
        assert snapshot(target)[k] == old[k]
    # the last, partly filled time chunk (steps 8, 9) was written again with steps 8..11
    assert all(k in new_sums for k in ("sst/c/2/0/0", "sst/c/3/1/1", "sst/c/4/1/1"))
    assert len(new_sums) == len(chunk_sums(target))
    # identical, chunk for chunk, to an uninterrupted build of the longer cube
    clean = write(synthetic(nt=17), tmp_path / "clean.zarr")
    assert chunk_sums(target) == chunk_sums(clean)
    ds = open_cube(target)
    assert ds.sizes["time"] == 17 and ds.attrs["date_created"] == "2020-01-01T00:00:00+00:00"
    assert "appended time steps 10..16" in ds.attrs["history"].splitlines()[-1]
    xr.testing.assert_identical(ds.sst.load(), open_cube(clean).sst.load())
    assert check_checksums(target).problems == []
    assert leftovers(tmp_path) == []
    # appending again finds nothing to do
    msgs.clear()
    write(synthetic(nt=17), target, append=True, report=msgs.append)
    assert msgs == [f"{target} is up to date"]


def test_an_interrupted_append_resumes(tmp_path: Path) -> None:
    target = write(synthetic(nt=8), tmp_path / "cube.zarr")
    before = snapshot(target)
    with pytest.raises(Stop):
        write(synthetic(nt=20), target, append=True, on_region=stop_after(2))
    assert snapshot(target) == before  # untouched until the append is complete
    msgs: list[str] = []
    write(synthetic(nt=20), target, append=True, resume=True, report=msgs.append)
    assert any("2 of 4 regions already written" in m for m in msgs)
    clean = write(synthetic(nt=20), tmp_path / "clean.zarr")
    assert chunk_sums(target) == chunk_sums(clean)


@pytest.mark.parametrize(("change", "match"), [
    (lambda ds: ds.isel(lat=slice(0, 6)), "only the time axis can grow"),
    (lambda ds: ds.assign_coords(time=ds.time + np.timedelta64(1, "h")), "coordinate 'time'"),
    (lambda ds: ds.isel(time=slice(0, 10)), "nothing to append"),
    (lambda ds: ds.assign(sst=ds.sst.assign_attrs(units="degC")), r"attributes \['units'\]"),
    (lambda ds: ds.drop_vars("mask"), "arrays"),
])
def test_append_refuses_what_is_not_a_longer_cube(tmp_path: Path, change: Callable[..., Any],
                                                  match: str) -> None:
    target = write(synthetic(nt=10), tmp_path / "cube.zarr")
    before = snapshot(target)
    with pytest.raises(EsdcError, match=match):
        write(change(synthetic(nt=14)), target, append=True)
    assert snapshot(target) == before and leftovers(tmp_path) == []


def test_append_needs_a_cube(tmp_path: Path) -> None:
    with pytest.raises(EsdcError, match="no cube at"):
        write(synthetic(), tmp_path / "none.zarr", append=True)
    with pytest.raises(EsdcError, match="does not go with overwrite=True"):
        write(synthetic(), tmp_path / "none.zarr", append=True, overwrite=True)
    assert leftovers(tmp_path) == []


# =========================================================================== real processes
def small_floods(path: Path) -> Path:
    """recipes/floods.yaml with chunks of 8 h x 27 x 20 cells: 4 x 6 = 24 regions."""
    recipe = yaml.safe_load((ROOT / "recipes" / "floods.yaml").read_text(encoding="utf-8"))
    recipe["output"]["chunks"] = {"time": 8, "lat": 27, "lon": 20}
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def esdc(*args: str) -> list[str]:
    return [sys.executable, "-m", "esdc.cli", *args]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(esdc(*args), capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)


def group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


def kill_group(proc: subprocess.Popen[bytes]) -> list[int]:
    """SIGKILL a process group; return what is left of it after 15 s (should be nothing)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while (alive := group_alive(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def journal_lines(target: Path) -> int:
    try:
        return len((partial_path(target) / "regions.done").read_text().splitlines())
    except OSError:
        return -1


def phase(target: Path, total: int) -> str:
    part = partial_path(target)
    if target.exists() and not part.exists():
        return "committed"
    if (part / "complete").exists():
        return "committing"
    if not part.exists():
        return "startup (no partial build yet)"
    if not (part / "build.json").exists():
        return "metadata write"
    n = max(journal_lines(target), 0)
    return "checksums/consolidation" if n >= total else f"regions {n}/{total}"


def assert_complete_or_absent(target: Path) -> None:
    """What a reader can see at the target: nothing, or a complete, consolidated cube."""
    if target.exists():
        assert read_manifest(target) is not None
        assert json.loads((target / "zarr.json").read_text())["consolidated_metadata"]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_floods(tmp_path_factory.mktemp("recipe") / "floods_small.yaml")


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, recipe: Path) -> Path:
    """An uninterrupted build of the small floods recipe by the real CLI."""
    out = tmp_path_factory.mktemp("clean") / "floods.zarr"
    res = run_cli("build", str(recipe), "--out", str(out), "--no-fetch")
    assert res.returncode == 0, res.stdout + res.stderr
    return out


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(tmp_path: Path, recipe: Path,
                                              clean: Path) -> None:
    """12 SIGKILLs of `esdc build --resume`, each run killed later in the build.

    Kill points (seeded): a random delay in the start-up (imports, plan, cluster), just
    after the journal header (metadata written), after a random number of regions in
    eight runs, after the last region (checksums, consolidation, commit) and just after
    the commit. After each kill nothing of the process group survives and the target
    is either absent or complete; a last `--resume` completes the build, which must be
    identical chunk for chunk to the uninterrupted one.
    """
    rng = random.Random(20240607)
    target = tmp_path / "floods.zarr"
    total = 24
    # regions journaled before the kill: spread over 2..17 of 24, so that the jitter (and
    # the regions the resumed runs write meanwhile) leaves the last ones to later kills
    marks = [2 + 2 * i + rng.randint(0, 1) for i in range(8)]
    plan: list[tuple[str, float]] = [("delay", rng.uniform(0.5, 3.0)),
                                     ("header", rng.uniform(0.0, 0.3))]
    # a short jitter: regions that share their upstream work land in quick bursts, so a
    # longer wait after the mark would let a resumed run finish the build
    plan += [(f"regions>={m}", rng.uniform(0.0, 0.25) / 8) for m in marks]
    plan += [("all regions", 0.0), ("committed", 0.0)]
    log = []
    for what, jitter in plan:
        start_lines = journal_lines(target)
        t0 = time.monotonic()
        proc = subprocess.Popen(esdc("build", str(recipe), "--out", str(target), "--no-fetch",
                                     "--resume"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        while proc.poll() is None and time.monotonic() - t0 < 240:
            n = journal_lines(target)
            if what == "delay":
                reached = time.monotonic() - t0 >= jitter
            elif what == "header":
                reached = (partial_path(target) / "build.json").exists()
            elif what.startswith("regions"):
                reached = n >= max(int(what.split(">=")[1]), start_lines + 1)
            elif what == "all regions":
                reached = n >= total or target.exists()
            else:
                reached = target.exists() and not partial_path(target).exists()
            if reached:
                if what != "delay":
                    time.sleep(jitter)
                break
            time.sleep(0.005)
        exited_before = proc.poll() is not None
        at = time.monotonic() - t0
        alive = kill_group(proc)
        landed = phase(target, total)
        log.append({"kill": what, "at_s": round(at, 2), "landed": landed,
                    "journaled": journal_lines(target), "exited_first": exited_before})
        assert alive == [], f"processes left after killing the build: {alive}"
        assert_complete_or_absent(target)
    res = run_cli("build", str(recipe), "--out", str(target), "--no-fetch", "--resume")
    assert res.returncode == 0, res.stdout + res.stderr
    print("\nkill log:\n" + "\n".join(json.dumps(e) for e in log))
    print(res.stdout)
    survived = sum(not e["exited_first"] for e in log)
    print(f"kill points: {len(log)}, landed while running: {survived}")
    assert survived >= 10
    assert chunk_sums(target) == chunk_sums(clean)
    assert read_manifest(target)["chunks"] == read_manifest(clean)["chunks"]
    assert check_checksums(target).problems == []
    assert leftovers(tmp_path) == []
    xr.testing.assert_identical(open_cube(target).load().drop_attrs(),
                                open_cube(clean).load().drop_attrs())


@pytest.mark.slow
def test_workers_exit_when_only_the_cli_is_killed(tmp_path: Path, recipe: Path,
                                                  clean: Path) -> None:
    """SIGKILL of the CLI process alone (as `kill -9 PID` would): its LocalCluster worker
    processes notice that their parent is gone and exit; a `--resume` then completes."""
    target = tmp_path / "floods.zarr"
    proc = subprocess.Popen(esdc("build", str(recipe), "--out", str(target), "--no-fetch"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        while proc.poll() is None and journal_lines(target) < 2:
            time.sleep(0.01)
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert workers, "the build has no worker processes"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs(workers, timeout=30)
        print(f"\n{len(gone)} worker processes exited after the CLI was killed")
        assert alive == [], f"orphaned workers: {alive}"
    finally:
        kill_group(proc)
    res = run_cli("build", str(recipe), "--out", str(target), "--no-fetch", "--resume")
    assert res.returncode == 0, res.stdout + res.stderr
    assert chunk_sums(target) == chunk_sums(clean)


@pytest.mark.slow
def test_rerunning_a_complete_build_is_a_no_op(tmp_path: Path, recipe: Path,
                                               clean: Path) -> None:
    before = snapshot(clean)
    res = run_cli("build", str(recipe), "--out", str(clean), "--no-fetch", "--resume")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{clean} is up to date"  # no cluster was even started
    assert snapshot(clean) == before


@pytest.mark.slow
def test_resume_refuses_a_partial_build_of_another_recipe(tmp_path: Path, recipe: Path,
                                                          clean: Path) -> None:
    target = tmp_path / "floods.zarr"
    part = partial_path(target)
    (part / "cube.zarr").mkdir(parents=True)
    (part / "build.json").write_text(json.dumps({
        "mode": "build", "fingerprint_sha256": "0" * 64, "base": None,
        "fingerprint": {"recipe_sha256": "f" * 64}}))
    res = run_cli("build", str(recipe), "--out", str(target), "--no-fetch", "--resume")
    assert res.returncode == 2, res.stdout + res.stderr
    text = " ".join(res.stderr.split())
    assert "is of other inputs" in text and "f" * 64 in text and "Traceback" not in text
    assert (part / "build.json").exists() and not target.exists()


@pytest.mark.slow
def test_reader_sees_the_old_cube_or_nothing_during_a_build(tmp_path: Path, recipe: Path,
                                                            clean: Path) -> None:
    """Poll-read the target while `--overwrite` rebuilds it (new title), kill that build
    half-way, resume it; every read sees the complete old cube or the complete new one."""
    import shutil

    target = tmp_path / "floods.zarr"
    shutil.copytree(clean, target)
    old_title = open_cube(target).attrs["title"]
    ref = {k: v.values for k, v in open_cube(clean).load().data_vars.items()}
    variant = tmp_path / "variant.yaml"
    doc = yaml.safe_load(recipe.read_text())
    doc["title"] = "rebuilt floods cube"
    variant.write_text(yaml.safe_dump(doc, sort_keys=False))
    reads: dict[str, int] = {}
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                ds = open_cube(target)
            except FileNotFoundError:
                reads["nothing"] = reads.get("nothing", 0) + 1
                continue
            title = ds.attrs["title"]
            for k, v in ref.items():  # every chunk is there and holds the expected data
                np.testing.assert_array_equal(ds[k].values, v)
            key = "old" if title == old_title else "new"
            assert title in (old_title, "rebuilt floods cube")
            reads[key] = reads.get(key, 0) + 1
            time.sleep(0.02)

    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            reader()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=guarded, daemon=True)
    thread.start()
    try:
        proc = subprocess.Popen(esdc("build", str(variant), "--out", str(target), "--no-fetch",
                                     "--overwrite"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        # killed once its first region is written (prioritised regions land in bursts)
        while proc.poll() is None and journal_lines(target) < 1:
            time.sleep(0.005)
        assert kill_group(proc) == []
        assert open_cube(target).attrs["title"] == old_title
        assert check_checksums(target).problems == []
        res = run_cli("build", str(variant), "--out", str(target), "--no-fetch", "--overwrite",
                      "--resume")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "regions already written" in res.stdout
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors
    print(f"\nreads during the build: {reads}")
    assert reads.get("old", 0) > 0 and reads.get("new", 0) > 0
    assert open_cube(target).attrs["title"] == "rebuilt floods cube"
    assert chunk_sums(target) == chunk_sums(clean)  # the title is not in any chunk
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_append_new_time_steps_from_a_new_source_file(tmp_path: Path, clean: Path) -> None:
    """Build the first 12 hours from a 12-hour Stage IV file, then `--append` the rest
    from the full file: old chunks are kept (same inode, bytes, mtime) and the cube
    equals the uninterrupted 23-hour build chunk for chunk."""
    from esdc.samples import sample_path

    full = sample_path("stageiv-florence")
    short = tmp_path / "stageiv_12h.nc"
    with xr.open_dataset(full, decode_times=False) as src:
        src.isel(time=slice(0, 12)).to_netcdf(short)
    recipes = {}
    for name, path, end in (("old", short, "2018-09-14T06:00"),
                            ("new", full, "2018-09-14T17:00")):
        recipes[name] = small_floods(tmp_path / f"{name}.yaml")
        doc = yaml.safe_load(recipes[name].read_text())
        doc["grid"]["time"]["end"] = end
        src = doc["sources"][0]
        src.pop("sample")
        src["path"] = str(path)
        recipes[name].write_text(yaml.safe_dump(doc, sort_keys=False))
    target = tmp_path / "floods.zarr"
    res = run_cli("build", str(recipes["old"]), "--out", str(target), "--no-fetch")
    assert res.returncode == 0, res.stdout + res.stderr
    before = snapshot(target)
    old_sums = read_manifest(target)["chunks"]
    res = run_cli("build", str(recipes["new"]), "--out", str(target), "--no-fetch", "--append")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "appending time steps 12..22" in res.stdout and f"appended to {target}" in res.stdout
    after = snapshot(target)
    # time chunk 0 (hours 0..7) of the 2 hourly layers and the 3 static layers are kept
    # (24 tiles each); time chunk 1 held hours 8..11 and is written again with 8..15
    static = ("elevation", "land_sea_mask", "koppen_class")
    kept = [k for k in old_sums if k.split("/")[0] in static or (
        k.startswith("precipitation") and k.split("/")[2] == "0")]
    assert len(kept) == 2 * 24 + 3 * 24
    assert f"{len(kept)} chunk files of the cube are kept as they are" in res.stdout
    for k in kept:
        assert after[k] == before[k], k  # same bytes, mtime and inode: not rewritten
    for k in ("lat/c/0", "lon/c/0"):
        assert after[k][0] == before[k][0]  # coordinates are written anew, same bytes
    assert chunk_sums(target) == chunk_sums(clean)
    assert check_checksums(target).problems == []
    res = run_cli("build", str(recipes["new"]), "--out", str(target), "--no-fetch", "--append")
    assert res.returncode == 0 and res.stdout.strip() == f"{target} is up to date"
