"""The fetch layer (esdc.storage.fetch) against a real HTTP server on 127.0.0.1 and moto S3.

The granules are the real OSTIA monthly sample cut into one netCDF file per month
(plus the whole file, for transfers long enough to interrupt); esdc.loopback serves
them and injects 503s, stalls, truncated bodies and resets, and logs every request.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import xarray as xr

from esdc.errors import FetchError, GranuleNotFoundError, SourceError, SourceNotFoundError
from esdc.loopback import Fault, LoopbackServer
from esdc.storage import fetch as fetch_module
from esdc.storage.fetch import (
    RETRY_AFTER_CAP,
    FetchedGranule,
    SkippedGranule,
    backoff_delay,
    cached_path,
    fetch_granules,
)
from tests.conftest import ROOT, need_sample
from tests.storage.conftest import BUCKET

MONTHS = 12


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ostia/ostia_YYYYMM.nc``: the sample's first 12 months, one granule each, and the
    whole sample as ``ostia_all.nc`` (1.7 MB)."""
    src = need_sample("ostia-monthly")
    root = tmp_path_factory.mktemp("archive")
    (root / "ostia").mkdir()
    with xr.open_dataset(src) as ds:
        for i in range(MONTHS):
            step = ds.isel(time=slice(i, i + 1))
            stamp = step["time"].dt.strftime("%Y%m").item()
            step.to_netcdf(root / "ostia" / f"ostia_{stamp}.nc")
    (root / "ostia_all.nc").write_bytes(src.read_bytes())
    return root


def months(archive: Path) -> list[str]:
    return sorted(p.relative_to(archive).as_posix() for p in (archive / "ostia").glob("*.nc"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def gets(server: LoopbackServer) -> list[Any]:
    return server.requests("GET")


def size_of(path: Path) -> int:
    """Bytes of a file, 0 when it is gone (a .part renamed meanwhile)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def check_equal(results: list[Any], archive: Path, names: list[str]) -> None:
    """Every result is the served file, byte for byte and by SHA-256."""
    assert len(results) == len(names)
    for res, name in zip(results, names, strict=True):
        assert isinstance(res, FetchedGranule), res
        assert res.url.endswith(name)
        assert res.path.read_bytes() == (archive / name).read_bytes()
        assert res.sha256 == sha(archive / name) == sha(res.path)
        assert res.size == (archive / name).stat().st_size


def test_parallel_fetch_equals_the_files_and_respects_concurrency(archive: Path,
                                                                  tmp_path: Path) -> None:
    names = months(archive)
    random.Random(3).shuffle(names)
    seen: list[tuple[int, int, int]] = []
    with LoopbackServer(archive, latency=0.1) as server:
        t0 = time.perf_counter()
        res = fetch_granules([server.url(n) for n in names], concurrency=3,
                             cache_dir=tmp_path, progress=lambda *a: seen.append(a))
        elapsed = time.perf_counter() - t0
        check_equal(res, archive, names)
        assert all(r.downloaded and r.etag for r in res)
        assert server.max_in_flight == 3  # the bound, reached and never passed
        assert len(gets(server)) == MONTHS and not server.requests("HEAD")
        assert elapsed < MONTHS * 0.1  # in parallel: 4 rounds of 0.1 s, not 12
    assert seen[-1] == (MONTHS, MONTHS, sum(r.size for r in res))
    assert [s[0] for s in seen] == sorted(s[0] for s in seen)
    # each granule's record in the cache: url, etag, size, sha256, fetched_at
    rec = json.loads((res[0].path.parent / ".record.json").read_text())
    assert rec == {"url": res[0].url, "etag": res[0].etag, "size": res[0].size,
                   "sha256": res[0].sha256, "fetched_at": res[0].fetched_at}
    assert res[0].path == cached_path(res[0].url, cache_dir=tmp_path)
    assert res[0].path.name == Path(names[0]).name


def test_progress_bar(archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with LoopbackServer(archive) as server:
        fetch_granules([server.url(n) for n in months(archive)[:3]], cache_dir=tmp_path,
                       progress=True, what="sources.ostia")
    err = capsys.readouterr().err
    assert "fetch sources.ostia" in err and "3/3" in err and "granules" in err


def test_rerun_sends_one_head_each_and_no_get(archive: Path, tmp_path: Path) -> None:
    names = months(archive)
    with LoopbackServer(archive) as server:
        urls = [server.url(n) for n in names]
        first = fetch_granules(urls, cache_dir=tmp_path)
        server.clear_log()
        again = fetch_granules(urls + urls[:2], cache_dir=tmp_path)  # repeats: fetched once
        assert not gets(server)
        assert sorted(r.path for r in server.requests("HEAD")) == sorted(
            "/" + n for n in names)
    assert len(again) == MONTHS + 2 and again[-2:] == again[:2]
    assert not any(r.downloaded for r in again)
    assert [(r.path, r.sha256, r.fetched_at) for r in again[:MONTHS]] == [
        (r.path, r.sha256, r.fetched_at) for r in first]


def test_changed_upstream_is_downloaded_again(archive: Path, tmp_path: Path) -> None:
    names = months(archive)[:3]
    served = tmp_path / "served"
    for n in names:
        (served / n).parent.mkdir(parents=True, exist_ok=True)
        (served / n).write_bytes((archive / n).read_bytes())
    with LoopbackServer(served) as server:
        urls = [server.url(n) for n in names]
        old = fetch_granules(urls, cache_dir=tmp_path / "cache")
        # a reprocessed granule: other bytes (another real month), other ETag
        (served / names[1]).write_bytes((archive / months(archive)[5]).read_bytes())
        server.clear_log()
        new = fetch_granules(urls, cache_dir=tmp_path / "cache")
        assert [r.path for r in gets(server)] == ["/" + names[1]]
    assert [r.downloaded for r in new] == [False, True, False]
    assert new[1].etag != old[1].etag and new[1].sha256 == sha(archive / months(archive)[5])
    assert new[1].path.read_bytes() == (served / names[1]).read_bytes()


def test_503_with_retry_after_is_obeyed(archive: Path, tmp_path: Path) -> None:
    names = months(archive)[:4]
    with LoopbackServer(archive) as server:
        server.inject("/" + names[0], "503", times=2, retry_after="1")
        when = email.utils.formatdate(time.time() + 2, usegmt=True)
        server.inject("/" + names[1], "503", status=429, retry_after=when)
        t0 = time.perf_counter()
        res = fetch_granules([server.url(n) for n in names], cache_dir=tmp_path)
        elapsed = time.perf_counter() - t0
        check_equal(res, archive, names)
        assert [r.status for r in server.requests("GET", "/" + names[0])] == [503, 503, 200]
        assert [r.status for r in server.requests("GET", "/" + names[1])] == [429, 200]
    assert elapsed >= 2.0  # two waits of Retry-After: 1 (the date: at least 1 s)
    assert backoff_delay(1, retry_after=1e6) == RETRY_AFTER_CAP


def test_backoff_is_exponential_capped_and_jittered() -> None:
    rng = random.Random(0)
    for n in range(1, 12):
        d = min(fetch_module.BACKOFF_CAP, fetch_module.BACKOFF_BASE * 2 ** (n - 1))
        delays = [backoff_delay(n, rng=rng) for _ in range(50)]
        assert all(d / 2 <= x <= d for x in delays) and len(set(delays)) > 1


def test_stalls_truncations_and_resets_are_retried(archive: Path, tmp_path: Path) -> None:
    big = "ostia_all.nc"
    size = (archive / big).stat().st_size
    names = [big, *months(archive)[:3]]
    with LoopbackServer(archive) as server:
        server.inject("/" + big, "truncate", times=2, fraction=0.4)
        server.inject("/" + names[1], "stall", seconds=10)
        server.inject("/" + names[2], "reset", times=2)
        server.inject("/" + names[3], "stall", method="GET", seconds=10)
        t0 = time.perf_counter()
        res = fetch_granules([server.url(n) for n in names], cache_dir=tmp_path, timeout=0.5)
        assert time.perf_counter() - t0 < 8  # a stall costs the timeout, not its 10 s
        check_equal(res, archive, names)
        log = server.requests("GET", "/" + big)
        # each attempt continues where the truncated one stopped: no byte sent twice
        assert [r.range for r in log] == [None, f"bytes={log[0].sent}-",
                                          f"bytes={log[0].sent + log[1].sent}-"]
        assert [r.status for r in log] == [200, 206, 206]
        assert sum(r.sent for r in log) == size
        assert [r.fault for r in server.requests("GET", "/" + names[1])] == ["stall", None]
        assert [r.fault for r in server.requests("GET", "/" + names[2])] == [
            "reset", "reset", None]


def test_random_faults_still_give_the_exact_files(archive: Path, tmp_path: Path) -> None:
    names = [*months(archive), "ostia_all.nc"]
    faults = ("503", "stall", "truncate", "reset")
    with LoopbackServer(archive, latency=0.02, chaos=0.3, chaos_kinds=faults, seed=2,
                        fault=Fault("503", retry_after=None, seconds=5)) as server:
        res = fetch_granules([server.url(n) for n in names], cache_dir=tmp_path,
                             concurrency=4, timeout=0.5)
        injected = {r.fault for r in server.log} - {None}
    check_equal(res, archive, names)
    assert injected == set(faults)


def test_a_part_is_resumed_with_range(archive: Path, tmp_path: Path) -> None:
    big = archive / "ostia_all.nc"
    data = big.read_bytes()
    with LoopbackServer(archive) as server:
        url = server.url(big.name)
        part = cached_path(url, cache_dir=tmp_path).with_name(big.name + ".part")
        part.parent.mkdir(parents=True)
        part.write_bytes(data[:700_000])  # left by a killed process
        res = fetch_granules([url], cache_dir=tmp_path)
        (get,) = gets(server)
        assert (get.range, get.status, get.sent) == ("bytes=700000-", 206, len(data) - 700_000)
    assert res[0].path.read_bytes() == data and res[0].sha256 == sha(big)
    assert not part.exists()


def test_a_part_of_an_older_version_is_not_continued(archive: Path, tmp_path: Path) -> None:
    big = archive / "ostia_all.nc"
    with LoopbackServer(archive) as server:
        url = server.url(big.name)
        part = cached_path(url, cache_dir=tmp_path).with_name(big.name + ".part")
        part.parent.mkdir(parents=True)
        part.write_bytes(b"\0" * 500_000)  # of an upstream version with another ETag
        (part.parent / ".part.json").write_text(json.dumps({"etag": '"old"', "size": 9}))
        res = fetch_granules([url], cache_dir=tmp_path)
        (get,) = gets(server)
        assert get.range == "bytes=500000-" and get.status == 200  # If-Range: whole file
    assert res[0].sha256 == sha(big)


def test_missing_granule_error_names_the_first_url(archive: Path, tmp_path: Path) -> None:
    names = months(archive)[:4]
    with LoopbackServer(archive) as server:
        urls = [server.url(n) for n in names]
        urls[1], urls[3] = server.url("ostia/ostia_190001.nc"), server.url("gone.nc")
        with pytest.raises(GranuleNotFoundError) as err:
            fetch_granules(urls, cache_dir=tmp_path, what="sources.ostia")
    assert isinstance(err.value, SourceNotFoundError) and isinstance(err.value, FileNotFoundError)
    msg = str(err.value)
    assert msg.startswith("sources.ostia: ") and urls[1] in msg and urls[3] not in msg
    assert "HTTP 404 Not Found" in msg and "give `missing: skip` in the source's files:" in \
        msg.lower()


def test_missing_granules_skipped(archive: Path, tmp_path: Path) -> None:
    names = months(archive)[:3]
    with LoopbackServer(archive) as server:
        urls = [server.url(n) for n in names]
        server.inject("/" + names[2], "404")  # gone upstream (410 reads the same)
        res = fetch_granules([*urls, str(tmp_path / "nope.nc")], missing="skip",
                             cache_dir=tmp_path)
    check_equal(res[:2], archive, names[:2])
    assert res[2] == SkippedGranule(urls[2], "HTTP 404 Not Found")
    assert isinstance(res[3], SkippedGranule) and "no such file" in res[3].reason


def test_fetch_error_after_retries_names_url_attempts_and_failure(archive: Path,
                                                                   tmp_path: Path) -> None:
    name, other = months(archive)[:2]
    with LoopbackServer(archive) as server:
        url = server.url(name)
        server.inject("/" + name, "503", times=10, retry_after=None)
        with pytest.raises(FetchError) as err:
            fetch_granules([url], cache_dir=tmp_path, retries=2)
        assert len(gets(server)) == 3
        assert url in str(err.value) and "3 attempts" in str(err.value)
        assert "HTTP 503 Service Unavailable" in str(err.value)
        server.clear_log()
        server.inject("/" + other, "503", status=403)  # not worth retrying
        with pytest.raises(FetchError, match="1 attempt; last failure: HTTP 403 Forbidden"):
            fetch_granules([server.url(other)], cache_dir=tmp_path)
        assert len(gets(server)) == 1


def test_unknown_scheme_is_refused_before_any_request(archive: Path, tmp_path: Path) -> None:
    with LoopbackServer(archive) as server:
        urls = [server.url(n) for n in months(archive)]
        with pytest.raises(SourceError) as err:
            fetch_granules([*urls, "nosuch://bucket/ostia_200601.nc"], cache_dir=tmp_path)
        assert not server.log
    assert "'nosuch'" in str(err.value) and "nosuch://bucket/ostia_200601.nc" in str(err.value)
    with pytest.raises(SourceError, match="concurrency=0"):
        fetch_granules(urls, concurrency=0, cache_dir=tmp_path)


def test_local_paths_are_hashed_once(archive: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    names = months(archive)[:2]
    hashed: list[Path] = []
    real = fetch_module.file_sha256
    monkeypatch.setattr(fetch_module, "file_sha256", lambda p: hashed.append(p) or real(p))
    local = tmp_path / "local.nc"
    local.write_bytes((archive / names[0]).read_bytes())
    given = [str(local), (archive / names[1]).as_uri()]
    res = fetch_granules(given, cache_dir=tmp_path / "cache")
    assert [r.path for r in res] == [local, archive / names[1]]
    assert [r.url for r in res] == given and not any(r.downloaded for r in res)
    assert [r.sha256 for r in res] == [sha(local), sha(archive / names[1])]
    assert len(hashed) == 2
    fetch_granules(given, cache_dir=tmp_path / "cache")
    assert len(hashed) == 2  # remembered by path, size and mtime
    local.write_bytes((archive / names[1]).read_bytes())
    os.utime(local, ns=(time.time_ns(), time.time_ns() + 10**9))
    again = fetch_granules(given, cache_dir=tmp_path / "cache")
    assert len(hashed) == 3 and again[0].sha256 == sha(archive / names[1])


def test_s3_through_fsspec(s3: Any, archive: Path, tmp_path: Path) -> None:
    names = months(archive)[:3]
    for n in names:
        s3.put_file(str(archive / n), f"{BUCKET}/granules/{n}")
    urls = [f"s3://{BUCKET}/granules/{n}" for n in names]
    res = fetch_granules([*urls, f"s3://{BUCKET}/granules/absent.nc"], missing="skip",
                         cache_dir=tmp_path)
    check_equal(res[:3], archive, names)
    assert all(r.downloaded and r.etag for r in res[:3])
    assert isinstance(res[3], SkippedGranule) and "not found" in res[3].reason
    again = fetch_granules(urls, cache_dir=tmp_path)
    assert not any(r.downloaded for r in again)
    s3.put_file(str(archive / months(archive)[7]), f"{BUCKET}/granules/{names[0]}")
    changed = fetch_granules(urls, cache_dir=tmp_path)
    assert [r.downloaded for r in changed] == [True, False, False]
    assert changed[0].sha256 == sha(archive / months(archive)[7]) != res[0].sha256


KILLED = """
import sys
from esdc.storage.fetch import fetch_granules
urls = sys.argv[2:]
fetch_granules(urls, cache_dir=sys.argv[1], concurrency=2,
               progress=lambda done, total, nbytes: print(done, nbytes, flush=True))
"""


def test_a_killed_fetch_resumes_only_unfinished_granules(archive: Path, tmp_path: Path) -> None:
    names = months(archive)
    cache = tmp_path / "cache"
    with LoopbackServer(archive, rate=200_000) as server:  # ~0.35 s a granule
        urls = [server.url(n) for n in names]
        proc = subprocess.Popen([sys.executable, "-c", KILLED, str(cache), *urls], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:  # kill it in the middle of the fetch ...
            if int(line.split()[0]) >= 3:
                break
        half = (archive / names[0]).stat().st_size // 2  # the same for every month
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(  # ... in the middle of a transfer
                0 < size_of(p) < half for p in cache.glob("*/*/*.part")):
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        time.sleep(0.5)  # the server finishes writing into the closed connections
        done = {n for n, u in zip(names, urls, strict=True)
                if (cached_path(u, cache_dir=cache).parent / ".record.json").exists()}
        parts = {n: p.stat().st_size for n, u in zip(names, urls, strict=True)
                 if (p := cached_path(u, cache_dir=cache).with_name(Path(n).name + ".part"))
                 .exists()}
        assert 3 <= len(done) < MONTHS and parts and not set(parts) & done
        server.clear_log()
        res = fetch_granules(urls, cache_dir=cache)
        check_equal(res, archive, names)
        assert {r.path.lstrip("/") for r in gets(server)} == set(names) - done
        assert {r.path.lstrip("/") for r in server.requests("HEAD")} == done
        for n, size in parts.items():  # a partial download continues where it stopped
            (get,) = server.requests("GET", "/" + n)
            assert (get.range, get.status) == ((f"bytes={size}-", 206) if size else (None, 200))
    assert [r.downloaded for r in res] == [n not in done for n in names]
