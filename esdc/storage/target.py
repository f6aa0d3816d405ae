"""Where a cube is stored: the :class:`Target` interface, and :func:`resolve` that picks one.

Modelled on zarr-python's abstract ``Store`` (``zarr/abc/store.py``: a few methods and
capability flags) and pangeo-forge's ``storage.AbstractTarget``: a caller never asks
whether a location is a folder or a URL; it holds a target and calls its methods.

=================  ==========================================================
``exists``         a cube (a root ``zarr.json``) is there; ``require`` raises
                   :class:`~esdc.errors.CubeNotFoundError` ("no cube at ...")
``check``          fail before any work when a build cannot write there
``is_current``     the stored cube has the planned cube's fingerprint
``write``          build a planned cube there (journaled, resumable, committed
                   only when complete)
``open``           the cube as a lazy ``xarray.Dataset``
``list_chunks``,   the chunk keys and their bytes; ``checksums`` compares them
``read_bytes``     with the record the build left
``update``         add or replace arrays, set attributes of an existing cube
=================  ==========================================================

Targets: :class:`esdc.storage.local.LocalTarget` (a folder) and
:class:`esdc.storage.object.ObjectTarget` (any fsspec URL: ``s3://``, ``gs://``, ...).
:data:`TARGETS` maps a URL scheme to a target class by module path; the module is
imported when a location of that scheme is resolved (xarray's ``BACKEND_ENTRYPOINTS``).

Shaped for a versioned target (Icechunk): a write happens in a session that commits
(the partial build and its rename for a folder, the staging folder and the root
``zarr.json`` uploaded last for an object store, ``session.commit()`` for a repository),
and ``open(version=...)`` names a snapshot, branch or tag; targets without versions
(``is_versioned = False``) refuse a version.
"""

from __future__ import annotations

import abc
import hashlib
import importlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import xarray as xr

from esdc.conventions import ATTR_RECIPE_SHA256
from esdc.errors import BuildConflictError, CubeNotFoundError, StorageError
from esdc.recipe import CompressorSpec
from esdc.storage.codecs import checked_reads
from esdc.storage.fingerprint import complete_digest, digest, fingerprint
from esdc.storage.integrity import MANIFEST_GROUP, ROOT_META, ChecksumReport, record_of
from esdc.storage.shards import locate_damage

__all__ = ["STORES", "TARGETS", "Target", "check_checksums", "is_url", "open_cube",
           "local_path", "register_target", "resolve", "storage_options", "store_kind",
           "verify_checksums"]

TARGETS: dict[str, str] = {
    "": "esdc.storage.local:LocalTarget",
    "*": "esdc.storage.object:ObjectTarget",
    "icechunk+s3": "esdc.storage.icechunk:IcechunkTarget",
}
"""URL scheme -> ``"module:Class"`` of its target; ``""`` is a local path, ``"*"`` any
other scheme (fsspec)."""

STORES: dict[str, tuple[str, tuple[str, ...]]] = {
    "icechunk": ("esdc.storage.icechunk:IcechunkTarget", ("snapshots",)),
}
"""Store kind (the recipe's ``output.store``, ``--store``) -> ``("module:Class", folders
that mark an existing store of that kind)``; ``"zarr"`` (the default) is not listed: a
plain Zarr store's target follows the location's scheme (:data:`TARGETS`)."""


def register_target(scheme: str, path: str) -> None:
    """Name the target class (``"package.module:Class"``) that stores URLs of ``scheme``."""
    TARGETS[scheme.lower()] = path


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
    StorageError
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
            raise StorageError(f"ESDC_STORAGE_OPTIONS must be a JSON object such as "
                               f'{{"endpoint_url": "http://127.0.0.1:9000"}} ({exc}).') from None
        out.update(doc)
    out.update(base or {})
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise StorageError(f"storage_options={pair!r}: give KEY=VALUE, e.g. "
                               "endpoint_url=http://127.0.0.1:9000 or anon=true.")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


class Target(abc.ABC):
    """Where a cube is stored, and what can be done there.

    Subclasses implement the abstract methods; everything else (``require``, ``is_current``,
    ``open``, ``checksums``, ``check``) is written once, here, on top of them.

    Attributes
    ----------
    supports_writes : bool
        A cube can be built here.
    supports_rename : bool
        The store renames atomically (a commit is one rename); else the commit is the
        last object written.
    supports_append : bool
        ``write(..., append=True)`` grows a cube in place.
    supports_update : bool
        :meth:`update` adds arrays or attributes to an existing cube.
    is_versioned : bool
        Writes make versions that :meth:`open` can name.
    consolidates : bool
        The store keeps consolidated metadata in its root ``zarr.json``.
    kind : str
        ``"path"`` or ``"URL"``, for messages.
    """

    supports_writes: ClassVar[bool] = True
    supports_rename: ClassVar[bool] = False
    supports_append: ClassVar[bool] = False
    supports_update: ClassVar[bool] = False
    is_versioned: ClassVar[bool] = False
    consolidates: ClassVar[bool] = True
    kind: ClassVar[str] = "path"

    @classmethod
    @abc.abstractmethod
    def from_location(cls, location: str | os.PathLike[str], *,
                      storage_options: dict[str, Any] | None = None,
                      pairs: list[str] | None = None, cwd: Path | None = None) -> Target:
        """The target of a path or URL (see :func:`resolve` for the parameters)."""

    @property
    @abc.abstractmethod
    def location(self) -> Path | str:
        """The folder (``pathlib.Path``) or the URL (``str``)."""

    def __str__(self) -> str:
        return str(self.location)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.location)!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and str(other) == str(self)

    def __hash__(self) -> int:
        return hash((type(self).__name__, str(self)))

    # ------------------------------------------------------------------ reading
    @abc.abstractmethod
    def missing_reason(self) -> str | None:
        """Why there is no cube here (``"no zarr.json"``, ...), or None when there is one.

        Raises
        ------
        StorageError
            If the store cannot be reached.
        """

    @abc.abstractmethod
    def read_bytes(self, key: str) -> bytes | None:
        """The bytes of the object or file ``key`` (``"sst/c/0/1/2"``), None when absent.

        Raises
        ------
        StorageError
            If the store cannot be reached.
        """

    @abc.abstractmethod
    def list_arrays(self) -> list[str]:
        """Paths of the cube's arrays (``["lat", "lon", "sst"]``), the record's group left out."""

    @abc.abstractmethod
    def list_chunks(self, arrays: Iterable[str] | None = None) -> list[str]:
        """Keys of the chunk files of ``arrays`` (all when omitted), sorted."""

    def hash_chunks(self, keys: list[str]) -> Iterator[tuple[str, str | None]]:
        """``(key, SHA-256 hex)`` of each chunk, None for one that is gone.

        Targets override this to read several chunks at a time.
        """
        for key in keys:
            data = self.read_bytes(key)
            yield key, None if data is None else hashlib.sha256(data).hexdigest()

    @abc.abstractmethod
    def open_dataset(self, **kwargs: Any) -> xr.Dataset:
        """``xarray.open_zarr`` of the store with ``kwargs``; errors become StorageError."""

    def exists(self) -> bool:
        """Whether a cube (a Zarr store with a root ``zarr.json``) is here."""
        return self.missing_reason() is None

    def require(self, purpose: str = "") -> None:
        """Raise unless a cube is here.

        Parameters
        ----------
        purpose : str
            What the cube was wanted for, for the message (``"to append to"``).

        Raises
        ------
        CubeNotFoundError
            ``"no cube at {location}: {why}"``.
        """
        why = self.missing_reason()
        if why is not None:
            raise CubeNotFoundError(f"no cube at {self}{' ' + purpose if purpose else ''}: "
                                    f"{why}")

    def read_json(self, key: str) -> dict[str, Any] | None:
        """A JSON document of the store (None when absent, ``{}`` when not a JSON object)."""
        data = self.read_bytes(key)
        if data is None:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def root_metadata(self) -> dict[str, Any] | None:
        """The parsed root ``zarr.json`` (None when there is none)."""
        return self.read_json(ROOT_META)

    def manifest(self) -> dict[str, Any] | None:
        """The checksum record of the cube (:mod:`esdc.storage.integrity`), or None."""
        return record_of(self.read_json(f"{MANIFEST_GROUP}/{ROOT_META}"))

    def current_digest(self) -> str | None:
        """The fingerprint SHA-256 of the complete cube here, else None (metadata only)."""
        return complete_digest(self.root_metadata(), self.manifest())

    def is_current(self, ds: xr.Dataset, *, chunks: dict[str, int], compressor: CompressorSpec,
                   shards: dict[str, int] | None = None) -> bool:
        """Whether a complete cube built with the fingerprint of ``ds`` is here.

        Reads only metadata (not chunks: :meth:`checksums` reads those).

        Parameters
        ----------
        ds : xarray.Dataset
            The planned cube (:func:`esdc.build.plan`).
        chunks, shards : dict
            Chunk (and, optionally, shard) length per dim.
        compressor : CompressorSpec
            Compressor settings.

        Returns
        -------
        bool
            True when building again would write the same chunks: nothing to do.
        """
        return self.current_digest() == digest(fingerprint(ds, chunks, compressor, shards))

    def open(self, *, version: str | None = None, **kwargs: Any) -> xr.Dataset:
        """Open the cube lazily (consolidated metadata, Dask chunks = Zarr chunks).

        Parameters
        ----------
        version : str, optional
            A version of a versioned target (snapshot, branch, tag).
        **kwargs
            Passed to :func:`xarray.open_zarr`.

        Returns
        -------
        xarray.Dataset
            Nothing is read but metadata and the 1-D coordinates. A chunk that cannot be
            decoded when read raises :class:`~esdc.errors.ChunkDecodeError`.

        Raises
        ------
        CubeNotFoundError
            If there is no cube here.
        StorageError
            If the metadata cannot be read, or ``version`` is given to a target without
            versions.
        """
        if version is not None:
            return self.at(version).open(**kwargs)
        self.require()
        kwargs.setdefault("consolidated", True)
        kwargs.setdefault("chunks", {})
        with checked_reads():
            ds = self.open_dataset(**kwargs)
        # CF cell bounds (e.g. the embeddings' tile bounds) are coordinates, not data.
        bounds = {c.attrs["bounds"] for c in ds.coords.values() if "bounds" in c.attrs}
        return ds.set_coords([b for b in bounds if b in ds.data_vars])

    def checksums(self) -> ChecksumReport:
        """Hash every recorded chunk and compare with the build's record.

        Returns
        -------
        ChecksumReport
            Mismatched, missing and unexpected chunk files (of the arrays the record
            covers), the arrays it does not cover; ``error`` if there is no record.

        Raises
        ------
        StorageError
            If the store cannot be reached.
        """
        rec = self.manifest()
        if rec is None:
            return ChecksumReport(error=f"{self} has no chunk checksum record ({MANIFEST_GROUP} "
                                  "group); it was not built by this esdc version. Rebuild it "
                                  "to record checksums.")
        recorded: dict[str, str] = rec["chunks"]
        arrays = rec.get("arrays") or sorted({k.split("/c/")[0] for k in recorded})
        present = set(self.list_chunks(arrays))
        report = ChecksumReport()
        report.uncovered = [a for a in self.list_arrays() if a not in set(arrays)]
        report.missing = [k for k in recorded if k not in present]
        report.unexpected = sorted(k for k in present if k not in recorded)
        for key, found in self.hash_chunks([k for k in recorded if k in present]):
            if found is None:
                report.missing.append(key)
                continue
            report.checked += 1
            if found != recorded[key]:
                report.mismatched[key] = (recorded[key], found)
        return locate_damage(self.read_bytes, rec, report)  # the chunks in a damaged shard

    # ------------------------------------------------------------------ versions
    def at(self, version: str | None) -> Target:
        """The cube as it was at ``version`` (a tag or snapshot id); None: as it is now.

        Raises
        ------
        StorageError
            If ``version`` is given to a target without versions (or names nothing).
        """
        if version is None:
            return self
        raise StorageError(f"{self} is not versioned (version={version!r}): a plain Zarr "
                           "cube has only its current state. Leave version out, or build "
                           "with store='icechunk' to keep versions.")

    def zarr_store(self) -> Any:
        """What :func:`zarr.open_group` opens the cube from (a path or URL; a store)."""
        return str(self.location)

    def current_version(self) -> str | None:
        """The id of the version read here (a snapshot id), None for a target without versions."""
        return None

    def is_ancestor(self, version: str) -> bool:
        """Whether snapshot ``version`` is in the history of the cube's newest version."""
        return False

    def log(self) -> list[dict[str, Any]]:
        """The cube's versions, newest first; a target without versions has one.

        Returns
        -------
        list of dict
            ``{"id", "time" (ISO 8601 UTC), "message", "tags", "metadata"}``; here one
            entry, the current build (``id`` ``"current"``, ``time`` the cube's
            ``date_created``).

        Raises
        ------
        CubeNotFoundError
            If there is no cube here.
        """
        self.require()
        attrs = (self.root_metadata() or {}).get("attributes") or {}
        rec = self.manifest() or {}
        sha = rec.get("recipe_sha256") or attrs.get(ATTR_RECIPE_SHA256)
        return [{"id": "current", "time": attrs.get("date_created"),
                 "message": f"esdc build: recipe SHA-256 {sha} (a plain Zarr cube keeps only "
                            "its current state)",
                 "tags": [], "metadata": {"recipe_sha256": sha}}]

    def tag(self, name: str, version: str | None = None) -> str:
        """Name a version of a versioned target (see ``IcechunkTarget.tag``).

        Raises
        ------
        StorageError
            Always here: a target without versions has nothing to tag.
        """
        raise StorageError(f"{self} is not versioned: tag {name!r} cannot be set. Build the "
                           "cube with store='icechunk' to keep versions.")

    # ------------------------------------------------------------------ writing
    def check(self, *, overwrite: bool = False, resume: bool = False,
              append: bool = False) -> None:
        """Fail before any work when a build cannot write its cube here.

        Parameters
        ----------
        overwrite : bool
            An existing cube may be replaced.
        resume : bool
            An unfinished build (or upload) of the same inputs may be continued.
        append : bool
            The existing cube is to grow along time.

        Raises
        ------
        BuildConflictError
            For ``append`` with ``overwrite``, or ``append`` where it is not supported.
        CubeNotFoundError
            For ``append`` where there is no cube.
        CubeExistsError
            If a cube is here and none of the three is given.
        OutputPathError
            If the location cannot be written.
        StorageError
            If the store cannot be reached.
        """
        if append and overwrite:
            raise BuildConflictError("append=True grows the existing cube; it does not go "
                                     "with overwrite=True.")
        if append and not self.supports_append:
            raise BuildConflictError(
                f"append=True works on local cubes only; append to a local copy and build it "
                f"to {self} with overwrite=True, or rebuild with overwrite=True.")
        if not self.supports_writes:
            raise StorageError(f"{self} is read-only: no cube can be built there.")
        if append:
            self.require("to append to (build it first, without append=True)")
        self.check_writable(overwrite=overwrite or resume or append, resume=resume)

    @abc.abstractmethod
    def check_writable(self, *, overwrite: bool, resume: bool) -> None:
        """The target's own checks of :meth:`check` (``overwrite``: a cube may be there)."""

    @abc.abstractmethod
    def write(self, ds: xr.Dataset, *, chunks: dict[str, int], compressor: CompressorSpec,
              overwrite: bool = False, resume: bool = False, append: bool = False,
              client: Any = None, on_region: Callable[[int, int], None] | None = None,
              report: Callable[[str], None] | None = None, shards: dict[str, int] | None = None,
              tables: Mapping[str, xr.Dataset] | None = None) -> Path | str:
        """Build the planned cube ``ds`` here; readers see it only once it is complete.

        Parameters
        ----------
        ds : xarray.Dataset
            The planned cube, Dask-backed; dims ``time``, ``lat|y``, ``lon|x``.
        chunks, shards : dict
            Chunk length per dim; shard length (whole chunks: Zarr v3 sharding) per dim.
        compressor : CompressorSpec
            Compressor settings.
        overwrite : bool
            Replace an existing cube (only once the new one is complete).
        resume : bool
            Continue an unfinished build of the same fingerprint; do nothing when a
            complete, current cube is here.
        append : bool
            Grow the cube here along time (where ``supports_append``).
        client : distributed.Client, optional
            Where to compute; the current Dask scheduler when omitted.
        on_region : callable, optional
            Called as ``on_region(done, total)`` before the first region and after each.
        report : callable, optional
            Called with one-line messages on what is done (resumed, up to date, ...).
        tables : mapping of str to xarray.Dataset, optional
            Tables stored as groups of the cube with it (``esdc_granules``:
            :mod:`esdc.storage.tables`), replacing older ones.

        Returns
        -------
        pathlib.Path or str
            :attr:`location`.

        Raises
        ------
        CubeExistsError, OutputPathError, BuildConflictError, StorageError
            See :meth:`check`; also when a cube of other inputs is here and neither
            ``overwrite`` nor ``append`` is given.
        """

    def update(self, ds: xr.Dataset | None = None, *,
               attrs: dict[str, dict[str, Any]] | None = None) -> None:
        """Add or replace arrays and set variable attributes of the existing cube here.

        Parameters
        ----------
        ds : xarray.Dataset, optional
            Variables (with their coordinates) to write; existing arrays of the same
            names are replaced only once the new ones are written.
        attrs : dict, optional
            ``{variable: {attribute: value}}`` to set.

        Raises
        ------
        StorageError
            Where the target cannot update a cube in place (``supports_update``).
        """
        raise StorageError(f"{self}: a cube in this kind of store cannot be updated in "
                           "place; update a local copy and build or upload it again.")


def local_path(location: str | os.PathLike[str], cwd: Path | None = None) -> Path:
    """The folder of a local ``location`` (``file://`` and ``local://`` URLs included).

    Parameters
    ----------
    location : str or path-like
        A path, or a ``file://`` URL.
    cwd : pathlib.Path, optional
        Folder a relative path is taken from (default: kept relative).

    Returns
    -------
    pathlib.Path
    """
    text = os.fspath(location)
    for scheme in ("file://", "local://"):
        if isinstance(text, str) and text.lower().startswith(scheme):
            text = text[len(scheme):]
    path = Path(text)
    return Path(cwd) / path if cwd is not None and not path.is_absolute() else path


def store_kind(location: str | os.PathLike[str], cwd: Path | None = None) -> str:
    """The kind of store at a local ``location`` (a :data:`STORES` key), else ``"zarr"``."""
    if is_url(location):
        return "zarr"
    path = local_path(location, cwd)
    for kind, (_cls, marks) in STORES.items():
        if not (path / ROOT_META).exists() and all((path / m).is_dir() for m in marks):
            return kind
    return "zarr"


def _target_class(location: Any, store: str | None, cwd: Path | None) -> type[Target]:
    kind = store if store not in (None, "zarr") else store_kind(location, cwd)
    if kind != "zarr" and kind not in STORES:
        raise StorageError(f"store={store!r} is not a kind of store; choose one of "
                           f"{', '.join(['zarr', *STORES])}.")
    scheme = str(location).split("://", 1)[0].lower() if is_url(location) else ""
    path = STORES[kind][0] if kind != "zarr" else TARGETS.get(scheme) or TARGETS["*"]
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def resolve(path_or_url: str | os.PathLike[str] | Target,
            storage_options: dict[str, Any] | None = None, *,
            pairs: list[str] | None = None, cwd: Path | None = None,
            store: str | None = None) -> Target:
    """The storage target of a cube's path or URL: the one place a location is interpreted.

    Parameters
    ----------
    path_or_url : str, path-like or Target
        A folder, a URL (``s3://bucket/cube.zarr``), or a target (returned as it is).
    storage_options : dict, optional
        fsspec options of a URL (ignored for a folder).
    pairs : list of str, optional
        ``KEY=VALUE`` options (the CLI's ``--storage-option``); when given (even empty),
        a URL's options also come from ``ESDC_STORAGE_OPTIONS`` (:func:`storage_options`).
    cwd : pathlib.Path, optional
        Folder a relative path is taken from (default: kept relative).
    store : str, optional
        ``"zarr"`` (a plain Zarr store) or a :data:`STORES` kind such as ``"icechunk"``
        (a versioned repository). An existing store of a listed kind at a local path is
        recognised whatever ``store`` says.

    Returns
    -------
    Target
        :class:`~esdc.storage.local.LocalTarget` or
        :class:`~esdc.storage.object.ObjectTarget` (:data:`TARGETS`), or the
        :data:`STORES` class (:class:`~esdc.storage.icechunk.IcechunkTarget`).

    Raises
    ------
    StorageError
        If ``store`` names no kind of store.
    """
    if isinstance(path_or_url, Target):
        return path_or_url
    return _target_class(path_or_url, store, cwd).from_location(
        path_or_url, storage_options=storage_options, pairs=pairs, cwd=cwd)


def open_cube(cube: str | os.PathLike[str] | Target, *,
              storage_options: dict[str, Any] | None = None, version: str | None = None,
              **kwargs: Any) -> xr.Dataset:
    """Open a cube lazily (consolidated metadata, Dask chunks = Zarr chunks).

    Parameters
    ----------
    cube : str, path-like or Target
        The Zarr store: a folder, or a URL such as ``s3://bucket/cube.zarr``.
    storage_options : dict, optional
        fsspec options of a URL (:func:`storage_options`); ignored for a folder.
    version : str, optional
        A version of a versioned target.
    **kwargs
        Passed to :func:`xarray.open_zarr`.

    Returns
    -------
    xarray.Dataset
        Dims ``(time, lat|y, lon|x)``; nothing is read but metadata and the 1-D
        coordinates.

    Raises
    ------
    CubeNotFoundError
        If there is no cube at ``cube``.
    StorageError
        If its metadata cannot be read or its store cannot be reached.
    """
    return resolve(cube, storage_options).open(version=version, **kwargs)


def check_checksums(cube: str | os.PathLike[str] | Target, *,
                    storage_options: dict[str, Any] | None = None) -> ChecksumReport:
    """:meth:`Target.checksums` of a cube given by path, URL or target.

    Parameters
    ----------
    cube : str, path-like or Target
        The cube.
    storage_options : dict, optional
        fsspec options of a URL.

    Returns
    -------
    ChecksumReport
        Mismatched, missing and unexpected chunk files; ``error`` if there is no record.
    """
    return resolve(cube, storage_options).checksums()


def verify_checksums(cube: str | os.PathLike[str] | Target, *,
                     storage_options: dict[str, Any] | None = None) -> list[str]:
    """Problems of a cube's chunk files against its checksum record.

    Parameters
    ----------
    cube, storage_options
        As for :func:`check_checksums`.

    Returns
    -------
    list of str
        One message per corrupted (``sst/c/3/1/2: checksum mismatch ...``), missing or
        unrecorded chunk file; empty when every chunk matches.
    """
    return check_checksums(cube, storage_options=storage_options).problems
