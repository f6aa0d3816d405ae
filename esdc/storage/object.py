"""A cube in object storage (``s3://``, any fsspec URL): :class:`ObjectTarget`.

Object stores have no atomic rename, so a cube bound for a URL is built the usual way
(journaled, resumable, checksummed: :func:`esdc.storage.write.write_store`) into a local
**staging** folder, then uploaded in an order that makes the root ``zarr.json`` the
commit point::

    1. with overwrite, delete the old root zarr.json   readers: no cube (not a mix)
    2. upload every chunk object                        still no root zarr.json
    3. delete objects of the old cube the new one lacks
    4. upload the arrays' and groups' zarr.json (the esdc_integrity checksum record too)
    5. compare every uploaded object's size with the staged file
    6. upload the root zarr.json (it holds the consolidated metadata)

A reader opens a cube by reading the root ``zarr.json`` (consolidated metadata), so it
finds the old cube, nothing, or the complete new one; never a half-uploaded one. A
failed upload keeps the staged cube; ``resume=True`` uploads it again without
recomputing it. See ``docs/RELIABILITY.md`` for what this does not cover.

Where the store is and who may write it come from the usual places: the ``AWS_*``
environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL`` for an S3-compatible server, ``AWS_PROFILE``), ``~/.aws``, fsspec's
configuration (``FSSPEC_S3_ENDPOINT_URL``, ``~/.config/fsspec``), plus the storage
options (:func:`esdc.storage.target.storage_options`: ``ESDC_STORAGE_OPTIONS`` and the
CLI's ``--storage-option KEY=VALUE``), handed to the fsspec filesystem (s3fs for ``s3://``).

The staging folder is ``$ESDC_STAGING`` (default: ``staging/`` in the esdc cache)
``/<SHA-256 of the URL, 16 hex>/NAME``; it must be writable by the Dask workers, as a
local target must be.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import xarray as xr

from esdc.errors import (
    BuildConflictError,
    CubeExistsError,
    EsdcError,
    OutputPathError,
    StorageError,
)
from esdc.recipe import CompressorSpec
from esdc.samples import cache_dir
from esdc.storage.fingerprint import digest, fingerprint
from esdc.storage.integrity import MANIFEST_GROUP, ROOT_META
from esdc.storage.local import LocalTarget
from esdc.storage.shards import open_by_shards
from esdc.storage.target import Target
from esdc.storage.target import storage_options as storage_options_fn

__all__ = ["ObjectTarget", "staging_path"]


def staging_path(url: str) -> Path:
    """Local folder where the cube bound for ``url`` is built before its upload.

    ``$ESDC_STAGING`` (default ``<esdc cache>/staging``) ``/<16 hex of SHA-256(url)>/NAME``.
    """
    base = Path(os.environ.get("ESDC_STAGING") or cache_dir() / "staging").expanduser()
    name = url.rstrip("/").rsplit("/", 1)[-1] or "cube.zarr"
    return base / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def _hint(url: str) -> str:
    return ("Check the URL, the endpoint (AWS_ENDPOINT_URL or storage_options="
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
        raise StorageError(f"{doing} {url} needs the filesystem of its scheme ({exc}); install "
                           "esdc with the s3 extra (pip install 'esdc[s3]') for s3:// URLs."
                           ) from None
    except PermissionError as exc:
        raise OutputPathError(f"{doing} {url}: access denied ({exc}). {_hint(url)}") from None
    except FileNotFoundError as exc:
        raise StorageError(f"{doing} {url}: not found ({exc}). {_hint(url)}") from None
    except Exception as exc:  # noqa: BLE001 - botocore, aiohttp and OS errors alike
        text = str(exc).strip() or type(exc).__name__
        raise StorageError(f"{doing} {url} failed: {text}. {_hint(url)}") from None


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
            raise BuildConflictError(f"another esdc build on this machine is writing {url} "
                                     f"(its staging folder {folder} is locked); wait for it to "
                                     "end or stop it.") from None
        yield
    finally:
        os.close(fd)


class ObjectTarget(Target):
    """A cube in an object store, reached through fsspec (s3fs for ``s3://``).

    Parameters
    ----------
    url : str
        E.g. ``s3://bucket/cubes/earth.zarr``.
    options : dict, optional
        Storage options: keyword arguments of the fsspec filesystem.
    batch : int
        Objects fetched per request batch by :meth:`hash_chunks`.
    """

    supports_rename: ClassVar[bool] = False
    kind: ClassVar[str] = "URL"

    def __init__(self, url: str, options: dict[str, Any] | None = None, *,
                 batch: int = 64) -> None:
        self.url = url.rstrip("/")
        self.options = dict(options or {})
        self.batch = max(1, batch)

    @classmethod
    def from_location(cls, location: str | os.PathLike[str], *,
                      storage_options: dict[str, Any] | None = None,
                      pairs: list[str] | None = None, cwd: Path | None = None) -> ObjectTarget:
        """The target of a URL; with ``pairs``, options also from ``ESDC_STORAGE_OPTIONS``."""
        options = (storage_options_fn(pairs, storage_options) if pairs is not None
                   else storage_options)
        return cls(str(location), options)

    @property
    def location(self) -> str:
        """The URL."""
        return self.url

    def filesystem(self) -> tuple[Any, str]:
        """The fsspec filesystem and the store's root path in it (listings not cached).

        Raises
        ------
        StorageError
            If the scheme's filesystem is not installed or the options are invalid.
        """
        import fsspec

        with _errors(self.url, "opening"):
            fs, root = fsspec.core.url_to_fs(self.url, **self.options)
        fs.invalidate_cache()
        return fs, root.rstrip("/")

    def _state(self, fs: Any, root: str) -> tuple[dict[str, Any] | None, list[str]]:
        """The root ``zarr.json`` (or None) and every object key under the root."""
        meta = self.read_json(ROOT_META)
        try:
            keys = [k[len(root) + 1:] for k in fs.find(root) if k.startswith(root + "/")]
        except FileNotFoundError:
            keys = []
        return meta, keys

    @staticmethod
    def _bucket_exists(fs: Any, bucket: str) -> bool:
        """Whether the bucket exists; unlike ``fs.exists``, a connection error raises."""
        try:
            fs.info(bucket)
        except FileNotFoundError:
            return False
        return True

    # ------------------------------------------------------------------ reading
    def missing_reason(self) -> str | None:
        """Why there is no cube at the URL (no root ``zarr.json``, no bucket), or None."""
        fs, root = self.filesystem()
        with _errors(self.url, "opening"):
            if fs.exists(f"{root}/{ROOT_META}"):
                return None
            bucket = root.split("/", 1)[0]
            why = ("no Zarr cube at that URL (no zarr.json)" if self._bucket_exists(fs, bucket)
                   else f"bucket {bucket!r} does not exist")
        return f"{why}. {_hint(self.url)}"

    def read_bytes(self, key: str) -> bytes | None:
        """The bytes of the object ``key`` under the URL, None when absent."""
        fs, root = self.filesystem()
        with _errors(self.url, "reading"):
            try:
                return bytes(fs.cat_file(f"{root}/{key}"))
            except FileNotFoundError:
                return None

    def list_arrays(self) -> list[str]:
        """The cube's arrays, from its consolidated metadata."""
        nodes = ((self.root_metadata() or {}).get("consolidated_metadata") or {}).get(
            "metadata") or {}
        return sorted(n for n, m in nodes.items() if isinstance(m, dict)
                      and m.get("node_type") == "array" and not n.startswith(MANIFEST_GROUP))

    def list_chunks(self, arrays: Iterable[str] | None = None) -> list[str]:
        """Keys of the chunk objects of ``arrays`` (all arrays when omitted)."""
        fs, root = self.filesystem()
        names = list(self.list_arrays() if arrays is None else arrays)
        with _errors(self.url, "listing"):
            _meta, keys = self._state(fs, root)
        return sorted(k for k in keys if not k.endswith("/" + ROOT_META)
                      and any(k.startswith(a + "/") for a in names))

    def hash_chunks(self, keys: list[str]) -> Iterator[tuple[str, str | None]]:
        """SHA-256 of each chunk object, ``batch`` objects fetched at a time."""
        fs, root = self.filesystem()
        for i in range(0, len(keys), self.batch):
            part = keys[i:i + self.batch]
            with _errors(self.url, "verifying"):
                got = fs.cat([f"{root}/{k}" for k in part], on_error="return")
            for k in part:
                data = got.get(f"{root}/{k}")
                yield k, (hashlib.sha256(data).hexdigest() if isinstance(data, bytes)
                          else None)

    def open_dataset(self, **kwargs: Any) -> xr.Dataset:
        """``xarray.open_zarr`` of the URL with the storage options (Dask chunks = shards)."""
        with _errors(self.url, "opening"):
            return open_by_shards(functools.partial(
                xr.open_zarr, self.url, storage_options=dict(self.options)), **kwargs)

    # ------------------------------------------------------------------ writing
    def check_writable(self, *, overwrite: bool, resume: bool) -> None:
        """Check that the bucket exists and takes a write, and that no cube is there.

        A probe object beside the cube is written and deleted; a cube (or objects of an
        unfinished upload) may be there only with ``overwrite``.

        Raises
        ------
        CubeExistsError
            If a cube (or an unfinished upload, without ``resume``) is at the URL.
        OutputPathError
            If the bucket is missing or refuses writes.
        StorageError
            If the store cannot be reached.
        """
        url = self.url
        fs, root = self.filesystem()
        with _errors(url, "writing the cube to"):
            bucket = root.split("/", 1)[0]
            if "/" not in root:
                raise OutputPathError(f"{url}: name the cube inside the bucket, e.g. "
                                      f"s3://{bucket}/cube.zarr.")
            if not self._bucket_exists(fs, bucket):
                raise OutputPathError(f"cannot write the cube to {url}: bucket {bucket!r} "
                                      f"does not exist (or is not visible with these "
                                      f"credentials). {_hint(url)}")
            meta, keys = self._state(fs, root)
            if meta is not None and not overwrite:
                raise CubeExistsError(f"{url} exists; pass overwrite=True to replace it or "
                                      "choose another out=PATH.")
            if meta is None and keys and not overwrite:
                raise CubeExistsError(f"{url} holds {len(keys)} object(s) but no cube (an "
                                      "unfinished upload?); pass resume=True to finish the "
                                      "upload of the same recipe, overwrite=True to replace "
                                      "them, or choose another out=PATH.")
            probe = f"{root.rsplit('/', 1)[0]}/.esdc-probe-{uuid.uuid4().hex[:8]}"
            try:
                fs.pipe_file(probe, b"")
            except Exception as exc:  # noqa: BLE001
                raise OutputPathError(f"cannot write the cube to {url}: writing a probe "
                                      f"object was refused ({exc}). {_hint(url)}") from None
            with contextlib.suppress(Exception):
                fs.rm_file(probe)

    def write(self, ds: xr.Dataset, *, chunks: dict[str, int], compressor: CompressorSpec,
              overwrite: bool = False, resume: bool = False, append: bool = False,
              client: Any = None, on_region: Callable[[int, int], None] | None = None,
              report: Callable[[str], None] | None = None,
              tables: Mapping[str, xr.Dataset] | None = None,
              shards: dict[str, int] | None = None) -> str:
        """Build the cube into local staging, then upload it with the root metadata last.

        With ``overwrite`` the old root ``zarr.json`` is deleted before the upload starts,
        so between then and the end of the upload there is no cube at the URL (never a
        mixed one). ``resume`` continues an interrupted staging build or uploads again a
        staged cube whose upload failed. ``append`` is refused. See
        :meth:`esdc.storage.target.Target.write` for the parameters.

        Returns
        -------
        str
            The URL.

        Raises
        ------
        CubeExistsError, OutputPathError, BuildConflictError
            See :meth:`check_writable`; also when a cube of other inputs is at the URL and
            ``overwrite`` is not given.
        BuildConflictError
            If another build on this machine holds the staging folder.
        StorageError
            For a failed upload (the staged cube is kept; ``resume=True`` uploads it).
        """
        say = report or (lambda _msg: None)
        self.check(overwrite=overwrite, resume=resume, append=append)
        current = self.current_digest()
        if resume and current == digest(fingerprint(ds, chunks, compressor, shards)):
            say(f"{self.url} is up to date")
            return self.url
        if current is not None and not overwrite:
            raise CubeExistsError(f"{self.url} exists and was built from other inputs; pass "
                                  "overwrite=True to replace it or choose another out=PATH.")
        staged = staging_path(self.url)
        with _locked(staged.parent, self.url):
            LocalTarget(staged).write(ds, chunks=chunks, compressor=compressor, overwrite=True,
                                      client=client, on_region=on_region, resume=resume,
                                      report=lambda msg: say(f"staging: {msg}"),
                                      tables=tables, shards=shards)
            try:
                self.upload(staged, say)
            except BaseException:
                say(f"the built cube is kept in {staged}; `esdc build ... --resume` uploads it "
                    "again (resume=True in Python)")
                raise
        shutil.rmtree(staged.parent, ignore_errors=True)
        return self.url

    def upload(self, store: Path, say: Callable[[str], None] | None = None) -> None:
        """Upload a complete local store to the URL, the root ``zarr.json`` last.

        Parameters
        ----------
        store : pathlib.Path
            A complete cube (consolidated metadata).
        say : callable, optional
            Called with a one-line message.

        Raises
        ------
        StorageError
            If an upload fails or an uploaded object's size differs (no root ``zarr.json``
            is written then: there is no cube at the URL).
        """
        url = self.url
        fs, root = self.filesystem()
        local = {p.relative_to(store).as_posix(): p for p in sorted(store.rglob("*"))
                 if p.is_file()}
        if ROOT_META not in local:
            raise StorageError(f"{store} is not a complete cube (no zarr.json); build again.")
        meta = [k for k in local if k != ROOT_META and k.rsplit("/", 1)[-1] == ROOT_META]
        data = sorted(set(local) - set(meta) - {ROOT_META})
        size = sum(p.stat().st_size for p in local.values())
        (say or (lambda _msg: None))(
            f"uploading {len(local)} objects ({size / 1e6:.1f} MB) to {url}")
        with _errors(url, "uploading the cube to"):
            if fs.exists(f"{root}/{ROOT_META}"):
                fs.rm_file(f"{root}/{ROOT_META}")  # from here on: no cube at url, not a mix
            fs.invalidate_cache()

            def put(keys: list[str]) -> None:
                if keys:
                    fs.put([str(local[k]) for k in keys], [f"{root}/{k}" for k in keys])

            put(data)
            _meta, remote = self._state(fs, root)
            stale = sorted(set(remote) - set(local))
            if stale:
                fs.rm([f"{root}/{k}" for k in stale])
            put(meta)
            fs.invalidate_cache()
            sizes = {k[len(root) + 1:]: int(v.get("size") or 0)
                     for k, v in fs.find(root, detail=True).items()}
            wrong = [k for k in local if k != ROOT_META
                     and sizes.get(k) != local[k].stat().st_size]
            if wrong:
                raise OSError(f"{len(wrong)} uploaded object(s) differ in size from the built "
                              f"cube (e.g. {wrong[0]}); the cube was not committed")
            put([ROOT_META])
            fs.invalidate_cache()
