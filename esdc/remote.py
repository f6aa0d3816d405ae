"""Cubes in object storage (``s3://``, any fsspec URL): build, open, verify.

Object stores have no atomic rename, so a cube bound for a URL is built the usual way
(journaled, resumable, checksummed: :func:`esdc.store.write_cube`) into a local
**staging** folder, then uploaded in an order that makes the root ``zarr.json`` the
commit point::

    1. on --overwrite, delete the old root zarr.json   readers: no cube (not a mix)
    2. upload every chunk object                        still no root zarr.json
    3. delete objects of the old cube the new one lacks
    4. upload the arrays' and groups' zarr.json (the esdc_integrity checksum record too)
    5. compare every uploaded object's size with the staged file
    6. upload the root zarr.json (it holds the consolidated metadata)

A reader opens a cube by reading the root ``zarr.json`` (consolidated metadata), so it
finds the old cube, nothing, or the complete new one; never a half-uploaded one. A
failed upload keeps the staged cube; ``esdc build ... --resume`` uploads it again
without recomputing it. See ``docs/RELIABILITY.md`` for what this does not cover.

Where the store is and who may write it come from the usual places: the ``AWS_*``
environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL`` for an S3-compatible server, ``AWS_PROFILE``), ``~/.aws``, fsspec's
configuration (``FSSPEC_S3_ENDPOINT_URL``, ``~/.config/fsspec``), plus
:func:`storage_options`: ``ESDC_STORAGE_OPTIONS`` (a JSON object) and the CLI's
``--storage-option KEY=VALUE``, handed to the fsspec filesystem (s3fs for ``s3://``).

The staging folder is ``$ESDC_STAGING`` (default: ``staging/`` in the esdc cache)
``/<SHA-256 of the URL, 16 hex>/NAME``; it must be writable by the Dask workers, as a
local target must be.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import xarray as xr

from esdc.errors import (
    CubeExistsError,
    EsdcError,
    OutputPathError,
    SourceNotFoundError,
)
from esdc.integrity import MANIFEST_GROUP, ChecksumReport
from esdc.recipe import CompressorSpec

__all__ = [
    "check_remote_checksums",
    "check_remote_target",
    "filesystem",
    "is_url",
    "open_remote",
    "remote_is_current",
    "require_cube",
    "staging_path",
    "storage_options",
    "verify_remote",
    "write_remote",
]

_ROOT_META = "zarr.json"
_ATTR = "esdc_checksums"


def is_url(path: object) -> bool:
    """Whether ``path`` names a remote store (``s3://bucket/cube.zarr``, ``gs://...``).

    ``file://`` URLs and plain paths are local. :class:`pathlib.Path` objects are never
    URLs (a Path cannot hold ``//``).
    """
    if not isinstance(path, str) or "://" not in path:
        return False
    scheme = path.split("://", 1)[0]
    return bool(scheme) and scheme.replace("+", "").replace("-", "").isalnum() and (
        scheme.lower() not in ("file", "local"))


def storage_options(pairs: list[str] | None = None,
                    base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Storage options (fsspec) from ``ESDC_STORAGE_OPTIONS``, ``base`` and ``KEY=VALUE`` pairs.

    Later sources win: the environment variable (a JSON object), then ``base``, then
    ``pairs``. A VALUE that parses as JSON is used as such (``anon=true``,
    ``client_kwargs={"region_name": "eu-central-1"}``), else as a string
    (``endpoint_url=http://127.0.0.1:9000``).

    Parameters
    ----------
    pairs : list of str, optional
        ``KEY=VALUE`` strings (the CLI's ``--storage-option``).
    base : dict, optional
        Options given in code.

    Returns
    -------
    dict
        Keyword arguments of the fsspec filesystem (s3fs: ``key``, ``secret``,
        ``endpoint_url``, ``anon``, ``client_kwargs``, ...).

    Raises
    ------
    EsdcError
        If ``ESDC_STORAGE_OPTIONS`` is not a JSON object or a pair has no ``=``.
    """
    out: dict[str, Any] = {}
    env = os.environ.get("ESDC_STORAGE_OPTIONS", "").strip()
    if env:
        try:
            doc = json.loads(env)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise EsdcError(f"ESDC_STORAGE_OPTIONS must be a JSON object such as "
                            f'{{"endpoint_url": "http://127.0.0.1:9000"}} ({exc}).') from None
        out.update(doc)
    out.update(base or {})
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise EsdcError(f"--storage-option {pair!r}: give KEY=VALUE, e.g. "
                            "endpoint_url=http://127.0.0.1:9000 or anon=true.")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def _hint(url: str) -> str:
    return ("Check the URL, the endpoint (AWS_ENDPOINT_URL or --storage-option "
            "endpoint_url=...), the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
            f"AWS_PROFILE) and that the bucket of {url} exists.")


@contextlib.contextmanager
def _errors(url: str, doing: str) -> Iterator[None]:
    """Turn the store's exceptions (no bucket, no access, no connection) into EsdcError."""
    try:
        yield
    except EsdcError:
        raise
    except ImportError as exc:
        raise EsdcError(f"{doing} {url} needs the filesystem of its scheme ({exc}); install "
                        "esdc with the s3 extra (pip install 'esdc[s3]') for s3:// URLs."
                        ) from None
    except PermissionError as exc:
        raise OutputPathError(f"{doing} {url}: access denied ({exc}). {_hint(url)}") from None
    except FileNotFoundError as exc:
        raise SourceNotFoundError(f"{doing} {url}: not found ({exc}). {_hint(url)}") from None
    except Exception as exc:  # noqa: BLE001 - botocore, aiohttp and OS errors alike
        text = str(exc).strip() or type(exc).__name__
        raise EsdcError(f"{doing} {url} failed: {text}. {_hint(url)}") from None


def filesystem(url: str, options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the store's root path in it.

    Parameters
    ----------
    url : str
        E.g. ``s3://bucket/cubes/earth.zarr``.
    options : dict, optional
        Storage options (:func:`storage_options`).

    Returns
    -------
    (fsspec.AbstractFileSystem, str)
        Listings cached by the filesystem are dropped, so each call sees the store now.

    Raises
    ------
    EsdcError
        If the scheme's filesystem is not installed or the options are invalid.
    """
    import fsspec

    with _errors(url, "opening"):
        fs, root = fsspec.core.url_to_fs(url, **(options or {}))
    fs.invalidate_cache()
    return fs, root.rstrip("/")


def _read_json(fs: Any, path: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _bucket(root: str) -> str:
    return root.split("/", 1)[0]


def _bucket_exists(fs: Any, bucket: str) -> bool:
    """Whether the bucket exists; unlike ``fs.exists``, a connection error raises."""
    try:
        fs.info(bucket)
    except FileNotFoundError:
        return False
    return True


def _state(fs: Any, root: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The root ``zarr.json`` of ``root`` (or None) and every object key under it."""
    meta = _read_json(fs, f"{root}/{_ROOT_META}")
    try:
        keys = [k[len(root) + 1:] for k in fs.find(root) if k.startswith(root + "/")]
    except FileNotFoundError:
        keys = []
    return meta, keys


def staging_path(url: str) -> Path:
    """Local folder where the cube bound for ``url`` is built before its upload.

    ``$ESDC_STAGING`` (default ``<esdc cache>/staging``) ``/<16 hex of SHA-256(url)>/NAME``.
    """
    from esdc.samples import cache_dir

    base = Path(os.environ.get("ESDC_STAGING") or cache_dir() / "staging").expanduser()
    name = url.rstrip("/").rsplit("/", 1)[-1] or "cube.zarr"
    return base / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def check_remote_target(url: str, overwrite: bool, *, resume: bool = False,
                        options: dict[str, Any] | None = None) -> None:
    """Fail early when the cube cannot be written at ``url``.

    Checks that the bucket exists and takes a write (a probe object beside the cube is
    written and deleted), and that no cube is there unless ``overwrite``.

    Parameters
    ----------
    url : str
        Target store URL.
    overwrite : bool
        An existing cube may be replaced.
    resume : bool
        An unfinished upload (objects, no root ``zarr.json``) may be completed.
    options : dict, optional
        Storage options.

    Raises
    ------
    CubeExistsError
        If a cube (or an unfinished upload, without ``resume``) is at ``url``.
    OutputPathError
        If the bucket is missing or refuses writes.
    EsdcError
        If the store cannot be reached.
    """
    fs, root = filesystem(url, options)
    with _errors(url, "writing the cube to"):
        bucket = _bucket(root)
        if "/" not in root:
            raise OutputPathError(f"{url}: name the cube inside the bucket, e.g. "
                                  f"s3://{bucket}/cube.zarr.")
        if not _bucket_exists(fs, bucket):
            raise OutputPathError(f"cannot write the cube to {url}: bucket {bucket!r} does not "
                                  f"exist (or is not visible with these credentials). "
                                  f"{_hint(url)}")
        meta, keys = _state(fs, root)
        if meta is not None and not overwrite:
            raise CubeExistsError(f"{url} exists; pass --overwrite to replace it or choose "
                                  "another --out.")
        if meta is None and keys and not (overwrite or resume):
            raise CubeExistsError(f"{url} holds {len(keys)} object(s) but no cube (an "
                                  "unfinished upload?); pass --resume to finish the upload "
                                  "of the same recipe, --overwrite to replace them, or choose "
                                  "another --out.")
        probe = f"{root.rsplit('/', 1)[0]}/.esdc-probe-{uuid.uuid4().hex[:8]}"
        try:
            fs.pipe_file(probe, b"")
        except Exception as exc:  # noqa: BLE001
            raise OutputPathError(f"cannot write the cube to {url}: writing a probe object "
                                  f"was refused ({exc}). {_hint(url)}") from None
        with contextlib.suppress(Exception):
            fs.rm_file(probe)


def _remote_digest(fs: Any, root: str) -> str | None:
    """Fingerprint SHA-256 of a complete esdc cube at ``root``, else None."""
    meta = _read_json(fs, f"{root}/{_ROOT_META}")
    if not meta or meta.get("consolidated_metadata") is None:
        return None
    rec = (_read_json(fs, f"{root}/{MANIFEST_GROUP}/{_ROOT_META}") or {}).get(
        "attributes", {}).get(_ATTR)
    return rec.get("fingerprint_sha256") if isinstance(rec, dict) else None


def remote_is_current(ds: xr.Dataset, url: str, *, chunks: dict[str, int],
                      compressor: CompressorSpec,
                      options: dict[str, Any] | None = None) -> bool:
    """Whether ``url`` holds a complete cube with the fingerprint of ``ds`` (metadata only).

    Parameters
    ----------
    ds : xarray.Dataset
        The planned cube.
    url : str
        The remote store.
    chunks, compressor
        As for :func:`esdc.store.write_cube`.
    options : dict, optional
        Storage options.

    Returns
    -------
    bool
    """
    from esdc.store import _digest, fingerprint

    fs, root = filesystem(url, options)
    with _errors(url, "reading"):
        return _remote_digest(fs, root) == _digest(fingerprint(ds, chunks, compressor))


@contextlib.contextmanager
def _locked(folder: Path, url: str) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EsdcError(f"another esdc build on this machine is writing {url} (its "
                            f"staging folder {folder} is locked); wait for it to end or stop "
                            "it.") from None
        yield
    finally:
        os.close(fd)


def write_remote(
    ds: xr.Dataset,
    url: str,
    *,
    chunks: dict[str, int],
    compressor: CompressorSpec,
    overwrite: bool = False,
    client: Any = None,
    on_region: Callable[[int, int], None] | None = None,
    resume: bool = False,
    append: bool = False,
    report: Callable[[str], None] | None = None,
    options: dict[str, Any] | None = None,
) -> str:
    """Build a cube into local staging, then upload it with the root metadata last.

    Parameters
    ----------
    ds : xarray.Dataset
        The planned cube (:func:`esdc.build.plan`).
    url : str
        Target store, e.g. ``s3://bucket/cubes/earth.zarr``.
    chunks, compressor, client, on_region
        As for :func:`esdc.store.write_cube`.
    overwrite : bool
        Replace an existing remote cube. Its root ``zarr.json`` is deleted before the
        upload starts, so between then and the end of the upload there is no cube at
        ``url`` (never a mixed one).
    resume : bool
        Continue an interrupted staging build, or upload again a staged cube whose upload
        failed; do nothing when ``url`` holds a complete cube of the same fingerprint.
    append : bool
        Not supported for URLs (raises).
    report : callable, optional
        Called with one-line messages.
    options : dict, optional
        Storage options (:func:`storage_options`).

    Returns
    -------
    str
        ``url``.

    Raises
    ------
    CubeExistsError, OutputPathError
        See :func:`check_remote_target`; also when ``url`` holds a cube of other inputs
        and ``overwrite`` is not given.
    EsdcError
        For ``append``, a locked staging folder or a failed upload (the staged cube is
        kept; ``--resume`` uploads it).
    """
    from esdc.store import _digest, fingerprint, write_cube

    say = report or (lambda _msg: None)
    if append:
        raise EsdcError(f"--append works on local cubes only; append to a local copy and "
                        f"build it to {url} with --overwrite, or rebuild with --overwrite.")
    check_remote_target(url, overwrite or resume, resume=resume, options=options)
    fs, root = filesystem(url, options)
    digest = _digest(fingerprint(ds, chunks, compressor))
    with _errors(url, "reading"):
        current = _remote_digest(fs, root)
    if resume and current == digest:
        say(f"{url} is up to date")
        return url
    if current is not None and not overwrite:
        raise CubeExistsError(f"{url} exists and was built from other inputs; pass "
                              "--overwrite to replace it or choose another --out.")
    staged = staging_path(url)
    with _locked(staged.parent, url):
        write_cube(ds, staged, chunks=chunks, compressor=compressor, overwrite=True,
                   client=client, on_region=on_region, resume=resume,
                   report=lambda msg: say(f"staging: {msg}"))
        try:
            _upload(staged, fs, root, url, say)
        except BaseException:
            say(f"the built cube is kept in {staged}; `esdc build ... --resume` uploads it "
                "again")
            raise
    shutil.rmtree(staged.parent, ignore_errors=True)
    return url


def _upload(store: Path, fs: Any, root: str, url: str, say: Callable[[str], None]) -> None:
    """Upload a complete local store to ``root``, the root ``zarr.json`` last."""
    local = {p.relative_to(store).as_posix(): p for p in sorted(store.rglob("*"))
             if p.is_file()}
    if _ROOT_META not in local:
        raise EsdcError(f"{store} is not a complete cube (no zarr.json); build again.")
    meta = [k for k in local if k != _ROOT_META and k.rsplit("/", 1)[-1] == _ROOT_META]
    data = sorted(set(local) - set(meta) - {_ROOT_META})
    size = sum(p.stat().st_size for p in local.values())
    say(f"uploading {len(local)} objects ({size / 1e6:.1f} MB) to {url}")
    with _errors(url, "uploading the cube to"):
        if fs.exists(f"{root}/{_ROOT_META}"):
            fs.rm_file(f"{root}/{_ROOT_META}")  # from here on: no cube at url, not a mix
        fs.invalidate_cache()

        def put(keys: list[str]) -> None:
            if keys:
                fs.put([str(local[k]) for k in keys], [f"{root}/{k}" for k in keys])

        put(data)
        _meta, remote = _state(fs, root)
        stale = sorted(set(remote) - set(local))
        if stale:
            fs.rm([f"{root}/{k}" for k in stale])
        put(meta)
        fs.invalidate_cache()
        sizes = {k[len(root) + 1:]: int(v.get("size") or 0)
                 for k, v in fs.find(root, detail=True).items()}
        wrong = [k for k in local if k != _ROOT_META
                 and sizes.get(k) != local[k].stat().st_size]
        if wrong:
            raise OSError(f"{len(wrong)} uploaded object(s) differ in size from the built "
                          f"cube (e.g. {wrong[0]}); the cube was not committed")
        put([_ROOT_META])
        fs.invalidate_cache()


def require_cube(url: str, options: dict[str, Any] | None = None) -> None:
    """Raise unless ``url`` holds a Zarr store (a root ``zarr.json``).

    Raises
    ------
    SourceNotFoundError
        If there is no cube at ``url`` (or its bucket does not exist).
    EsdcError
        If the store cannot be reached.
    """
    fs, root = filesystem(url, options)
    with _errors(url, "opening"):
        if not fs.exists(f"{root}/{_ROOT_META}"):
            bucket = _bucket(root)
            why = ("no zarr.json" if _bucket_exists(fs, bucket)
                   else f"bucket {bucket!r} does not exist")
            raise SourceNotFoundError(f"no Zarr cube at {url} ({why}). {_hint(url)}")


def open_remote(url: str, options: dict[str, Any] | None = None, **kwargs: Any) -> xr.Dataset:
    """Open a remote cube lazily (consolidated metadata; :func:`esdc.store.open_cube`).

    Parameters
    ----------
    url : str
        The store's URL.
    options : dict, optional
        Storage options.
    **kwargs
        Passed to :func:`xarray.open_zarr`.

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    SourceNotFoundError
        If there is no cube at ``url``.
    EsdcError
        If the store cannot be reached.
    """
    require_cube(url, options)
    with _errors(url, "opening"):
        kwargs.setdefault("consolidated", True)
        kwargs.setdefault("chunks", {})
        ds = xr.open_zarr(url, storage_options=dict(options or {}), **kwargs)
    bounds = {c.attrs["bounds"] for c in ds.coords.values() if "bounds" in c.attrs}
    return ds.set_coords([b for b in bounds if b in ds.data_vars])


def verify_remote(url: str, *, checksums: bool = False,
                  options: dict[str, Any] | None = None) -> list[str]:
    """Problems of a remote cube: :func:`esdc.verify.verify_store` for a URL.

    Parameters
    ----------
    url : str
        The store's URL.
    checksums : bool
        Also hash every recorded chunk object (:func:`check_remote_checksums`).
    options : dict, optional
        Storage options.

    Returns
    -------
    list of str
        Empty when the cube conforms.

    Raises
    ------
    EsdcError
        If the store cannot be reached.
    """
    from esdc.verify import store_problems

    fs, root = filesystem(url, options)
    with _errors(url, "verifying"):
        meta = _read_json(fs, f"{root}/{_ROOT_META}")
    problems = store_problems(url, meta, lambda consolidated: open_remote(
        url, options, consolidated=consolidated))
    if meta is None:
        return problems
    if checksums:
        problems += check_remote_checksums(url, options=options).problems
    return problems


def check_remote_checksums(url: str, *, options: dict[str, Any] | None = None,
                           batch: int = 64) -> ChecksumReport:
    """Hash every recorded chunk object of a remote cube and compare with the build's record.

    The objects are fetched ``batch`` at a time (concurrently, by the filesystem).

    Parameters
    ----------
    url : str
        The store's URL.
    options : dict, optional
        Storage options.
    batch : int
        Objects fetched per request batch.

    Returns
    -------
    ChecksumReport
        As :func:`esdc.integrity.check_checksums`: mismatched, missing, unexpected chunk
        objects; ``error`` if there is no record.

    Raises
    ------
    EsdcError
        If the store cannot be reached.
    """
    fs, root = filesystem(url, options)
    with _errors(url, "verifying"):
        node = _read_json(fs, f"{root}/{MANIFEST_GROUP}/{_ROOT_META}") or {}
        rec = node.get("attributes", {}).get(_ATTR)
        if not isinstance(rec, dict) or not isinstance(rec.get("chunks"), dict):
            return ChecksumReport(error=f"{url} has no chunk checksum record ({MANIFEST_GROUP} "
                                  "group); it was not built by this esdc version. Rebuild it "
                                  "to record checksums.")
        recorded: dict[str, str] = rec["chunks"]
        meta, keys = _state(fs, root)
        nodes = ((meta or {}).get("consolidated_metadata") or {}).get("metadata") or {}
        stored = sorted(n for n, m in nodes.items() if isinstance(m, dict)
                        and m.get("node_type") == "array" and not n.startswith(MANIFEST_GROUP))
        arrays = rec.get("arrays") or sorted({k.split("/c/")[0] for k in recorded})
        present = {k for k in keys if not k.endswith("/" + _ROOT_META)
                   and any(k.startswith(a + "/") for a in arrays)}
        report = ChecksumReport()
        report.uncovered = [a for a in stored if a not in set(arrays)]
        report.missing = [k for k in recorded if k not in present]
        report.unexpected = sorted(k for k in present if k not in recorded)
        todo = [k for k in recorded if k in present]
        for i in range(0, len(todo), max(1, batch)):
            part = todo[i:i + batch]
            got = fs.cat([f"{root}/{k}" for k in part], on_error="return")
            for k in part:
                data = got.get(f"{root}/{k}")
                if not isinstance(data, bytes):
                    report.missing.append(k)
                    continue
                report.checked += 1
                found = hashlib.sha256(data).hexdigest()
                if found != recorded[k]:
                    report.mismatched[k] = (recorded[k], found)
    return report
