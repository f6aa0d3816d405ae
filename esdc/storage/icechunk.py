"""A cube in an Icechunk repository: :class:`IcechunkTarget`, versioned.

Every build, append and :meth:`~IcechunkTarget.update` is one version on branch
``main`` (``esdc log``), with a message naming what changed and the same as JSON in the
commit metadata (key ``"esdc"``). Kill-safety and ``resume=True`` come from Icechunk
itself, without a journal of our own:

1. the metadata and coordinates are committed to a build branch ``build-<recipe-sha16>``
   (Icechunk refuses ``/`` in names) that starts at ``main``'s tip;
2. each region (a spatial tile of chunks, :mod:`esdc.storage.regions`) is written on the
   Dask workers into a forked session; all regions are computed together, so upstream
   work they share runs once (:mod:`esdc.storage.schedule`), each chunk is hashed as it
   is written, and each region's forks are merged and committed to the build branch as
   it ends;
3. the chunk checksums are recorded, then ``main`` is reset to the build branch's last
   snapshot (only if ``main`` has not moved) and the build branch deleted.

A process killed at any point leaves ``main`` as it was; ``resume=True`` continues from
the build branch's committed regions. :func:`esdc.storage.open_cube` with ``version=``
opens an older version (a tag, else a snapshot id).

Icechunk 1.1.21 (the last for Python 3.11) is an optional dependency (extra
``icechunk``), imported when a repository is used.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import xarray as xr
import zarr
from zarr.core.sync import sync as _sync

from esdc.conventions import ATTR_CHECKSUMS, ATTR_MODEL_RUN, SPATIAL_DIMS, TIME_DIM, spatial_dims
from esdc.errors import BuildConflictError, CubeExistsError, OutputPathError, StorageError
from esdc.recipe import CompressorSpec
from esdc.storage.append import append_attrs, grow_derived
from esdc.storage.fingerprint import digest, fingerprint
from esdc.storage.icechunk_format import SPEC_VERSION, format_error, format_version, is_repository
from esdc.storage.integrity import ALGORITHM, MANIFEST_GROUP
from esdc.storage.regions import encoding, prepare, tiles, write_metadata
from esdc.storage.schedule import (
    bind_arrays,
    encoded_variables,
    finish_region,
    run_regions,
    store_region,
)
from esdc.storage.shards import (
    ChecksumStore,
    block_lengths,
    open_by_shards,
    read_keys,
    shard_layout,
    stored_checksums,
)
from esdc.storage.tables import write_tables
from esdc.storage.target import Target, is_url, local_path
from esdc.storage.target import storage_options as merge_options

__all__ = ["META_KEY", "IcechunkTarget", "is_repository"]

META_KEY = "esdc"
"""Key of esdc's entry in a commit's metadata."""
MAIN = "main"
_QUIET: list[bool] = []


def _icechunk() -> Any:
    try:
        import icechunk
    except ImportError:  # pragma: no cover - the extra is part of the test environment
        raise StorageError("store='icechunk' needs the icechunk package: pip install "
                           "'esdc[icechunk]' (icechunk==1.1.21).") from None
    if not _QUIET and "ICECHUNK_LOG" not in os.environ:
        # each open of a local repository warns that local disks are not safe for
        # concurrent commits: esdc commits from one process; keep errors only
        icechunk.set_logs_filter("error")
        _QUIET.append(True)
    return icechunk


def _region_write(base: Any, encoded: dict[str, xr.Variable], arrays: list[Any],
                  tile: list[int], dims: tuple[str, str], trange: tuple[int, int] | None,
                  layout: dict[str, list[int]]) -> Any:
    """One region stored into a fork of ``base`` on the workers: a ``Delayed`` (_merge_forks).

    Each task stores its chunk (:func:`~esdc.storage.schedule.store_region`) into
    ``arrays`` bound to the region's fork through a
    :class:`~esdc.storage.shards.ChecksumStore` (``layout``: its shard layout) and
    returns it; one task merges the forks (``store_dask``'s tree of extract and merge
    tasks: two to three times the tasks). Not computed: all regions are computed
    together, so shared upstream work runs once.
    """
    sel = {dims[0]: slice(tile[0], tile[1]), dims[1]: slice(tile[2], tile[3])}
    if trange is not None:
        sel[TIME_DIM] = slice(*trange)
    into = bind_arrays(arrays, ChecksumStore(base.fork().store, layout))
    stored = store_region(encoded, into, sel, return_stored=True)
    return finish_region(stored, _merge_forks, "esdc-icechunk-region")


def _merge_forks(arrays: list[Any]) -> tuple[Any, dict[str, str], dict[str, Any]]:
    """``(fork, sums, inner)``: a region's forks merged, its checksums (on a worker)."""
    from icechunk.distributed import merge_sessions

    stores = list({id(a.store): a.store for a in arrays}.values())  # one if not pickled
    return (merge_sessions(*(st._store.session for st in stores)),
            {k: v for st in stores for k, v in st.sums.items()},
            {k: v for st in stores for k, v in st.inner.items()})


def _commit_region(repo: Any, fork: Any, tile: list[int], branch: str, fp_sha: str) -> None:
    """Merge a written region's fork into the build branch and commit it."""
    session = repo.writable_session(branch)
    session.merge(fork)
    session.commit(f"esdc: region {tile} of an unfinished build ({branch})",
                   metadata={META_KEY: {"partial": True, "tile": tile,
                                        "fingerprint_sha256": fp_sha}})


async def _collect(agen: Any) -> list[str]:
    return [k async for k in agen]


def _arrays(store: Any) -> list[str]:
    """Paths of the arrays of a zarr ``store`` (the record's group left out), sorted."""
    group = zarr.open_group(store, mode="r")
    return sorted(name for name, _ in group.arrays())


class IcechunkTarget(Target):
    """A cube in an Icechunk repository (a local folder), each write one commit on ``main``.

    Parameters
    ----------
    path : str or path-like
        The repository's folder.
    snapshot : str, optional
        Read this snapshot instead of ``main``'s tip (see :meth:`at`).
    """

    supports_append: ClassVar[bool] = True
    supports_update: ClassVar[bool] = True
    is_versioned: ClassVar[bool] = True
    consolidates: ClassVar[bool] = False
    kind: ClassVar[str] = "repository"

    def __init__(self, location: str | os.PathLike[str], *, snapshot: str | None = None,
                 options: dict[str, Any] | None = None) -> None:
        self.url = str(location) if is_url(location) else None
        self.path = Path(location) if self.url is None else None
        self.options = dict(options or {})
        self.snapshot = snapshot
        self._readable = False  # an object store's repository was found of our format

    @classmethod
    def from_location(cls, location: str | os.PathLike[str], *,
                      storage_options: dict[str, Any] | None = None,
                      pairs: list[str] | None = None, cwd: Path | None = None) -> IcechunkTarget:
        """The target of a local repository path or an ``s3://`` (``icechunk+s3://``) URL.

        Raises
        ------
        StorageError
            For a URL of another scheme.
        """
        if not is_url(location):
            return cls(local_path(location, cwd))
        scheme = str(location).split("://", 1)[0].lower()
        if scheme not in ("s3", "icechunk+s3"):
            raise StorageError(f"store='icechunk' takes a local path or an s3:// URL, not "
                               f"{location!r}.")
        opts = (merge_options(pairs, storage_options) if pairs is not None
                else dict(storage_options or {}))
        return cls(str(location), options=opts)

    @property
    def location(self) -> Path | str:
        """The repository's folder, or its URL."""
        return self.url if self.url is not None else self.path  # type: ignore[return-value]

    # ------------------------------------------------------------------ repository
    def storage(self) -> Any:
        """The ``icechunk.Storage`` of the location (a folder, or S3).

        S3 options are those of s3fs (``key``, ``secret``, ``endpoint_url``, ``anon``,
        ``client_kwargs.region_name``), else the ``AWS_*`` environment variables.
        """
        ic = _icechunk()
        if self.url is None:
            return ic.local_filesystem_storage(str(self.path))
        bucket, _, prefix = self.url.split("://", 1)[1].partition("/")
        o, env = self.options, os.environ
        client = o.get("client_kwargs") or {}
        endpoint = (o.get("endpoint_url") or client.get("endpoint_url")
                    or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"))
        # Credentials are read here, in the process that resolves the cube, and travel
        # with the storage to the Dask workers (whose environment may lack them).
        key = o.get("key") or env.get("AWS_ACCESS_KEY_ID")
        secret = o.get("secret") or env.get("AWS_SECRET_ACCESS_KEY")
        token = o.get("token") or env.get("AWS_SESSION_TOKEN")
        return ic.s3_storage(
            bucket=bucket, prefix=prefix.strip("/") or None,
            region=client.get("region_name") or env.get("AWS_DEFAULT_REGION"),
            endpoint_url=endpoint, allow_http=bool(endpoint and endpoint.startswith("http:")),
            access_key_id=key if secret else None, secret_access_key=secret if key else None,
            session_token=token if key and secret else None,
            anonymous=bool(o.get("anon")) or None,
            from_env=None if (key and secret) or o.get("anon") else True,
            force_path_style=bool(endpoint))

    def present(self) -> bool:
        """Whether an Icechunk repository is at the location.

        Raises
        ------
        StorageError
            If an object store cannot be reached.
        """
        if self.url is None:
            return is_repository(self.path)  # type: ignore[arg-type]
        try:
            return bool(_icechunk().Repository.exists(self.storage()))
        except Exception as exc:  # noqa: BLE001 - any failure to reach the store
            raise StorageError(f"cannot reach {self} ({type(exc).__name__}: "
                               f"{str(exc)[:200]}).") from None

    def repository(self, *, create: bool = False) -> Any:
        """The ``icechunk.Repository`` (created when ``create`` and absent).

        Raises
        ------
        StorageError
            If there is no repository (and ``create`` is false), it cannot be opened, or it
            is of another format version (:mod:`esdc.storage.icechunk_format`).
        """
        ic = _icechunk()
        found = format_version(self.path) if self.path is not None else SPEC_VERSION
        if found not in (None, SPEC_VERSION):
            raise format_error(self, found)
        try:
            if self.present():
                repo = ic.Repository.open(self.storage())
                if self.url is not None and not self._readable:  # fetch main's snapshot once
                    repo.lookup_snapshot(str(repo.lookup_branch(MAIN)))
                    self._readable = True
                return repo
            if create:
                return ic.Repository.create(self.storage())
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - any Icechunk failure: an unreadable repository
            if "more modern version" in str(exc):  # Icechunk's words for a newer format
                raise format_error(self, None, str(exc).strip().splitlines()[0]) from None
            raise StorageError(f"{self} is not a readable Icechunk repository "
                               f"({type(exc).__name__}: {str(exc)[:200]}).") from None
        raise StorageError(f"{self} is not an Icechunk repository.")

    def resolve_version(self, version: str | None) -> str | None:
        """The snapshot id a version names: a tag first, then a snapshot id; None for ``main``.

        Raises
        ------
        StorageError
            If ``version`` names no tag and no snapshot of the repository.
        """
        if version is None:
            return None
        repo = self.repository()
        if version in repo.list_tags():
            return str(repo.lookup_tag(version))
        try:
            return str(repo.lookup_snapshot(version).id)
        except Exception:  # noqa: BLE001 - Icechunk raises its own error type for an unknown id
            raise StorageError(f"version={version!r} names no tag and no snapshot of {self}; "
                               "esdc log lists its versions.") from None

    def at(self, version: str | None) -> IcechunkTarget:
        """The repository read at ``version`` (a tag or snapshot id; None: ``main``).

        Raises
        ------
        StorageError
            If ``version`` names no tag and no snapshot.
        """
        if version is None:
            return self
        return type(self)(self.location, snapshot=self.resolve_version(version),
                          options=self.options)

    def zarr_store(self) -> Any:
        """The read-only session's store at :attr:`snapshot` (``main``'s tip when None)."""
        return self.session().store

    def current_version(self) -> str | None:
        """The snapshot id read: :attr:`snapshot`, else main's tip (None: no repository)."""
        if self.snapshot is not None:
            return self.snapshot
        return str(self.repository().lookup_branch(MAIN)) if self.present() else None

    def is_ancestor(self, version: str) -> bool:
        """Whether snapshot ``version`` is in the history of ``main`` (its tip included)."""
        return any(str(snap.id) == version
                   for snap in self.repository().ancestry(branch=MAIN))

    def session(self) -> Any:
        """A read-only session at :attr:`snapshot` (``main``'s tip when None)."""
        repo = self.repository()
        if self.snapshot is not None:
            return repo.readonly_session(snapshot_id=self.snapshot)
        return repo.readonly_session(branch=MAIN)

    # ------------------------------------------------------------------ reading
    def missing_reason(self) -> str | None:
        """Why there is no cube on ``main`` here, or None when there is one."""
        if self.path is not None and not self.path.exists():
            return "nothing is at that path"
        if not self.present():
            return "it is not an Icechunk repository"
        if self.read_bytes("zarr.json") is None:
            return "the repository holds no cube yet (an empty main branch)"
        return None

    def read_bytes(self, key: str) -> bytes | None:
        """The bytes of ``key`` in the repository at :attr:`snapshot`, None when absent."""
        return next(read_keys(self.session().store, [key]))[1] if self.present() else None

    def _keys(self, prefix: str = "") -> list[str]:
        if not self.present() or (prefix and self.read_bytes(f"{prefix}/zarr.json")
                                             is None):
            return []
        return sorted(_sync(_collect(self.session().store.list_prefix(prefix))))

    def list_arrays(self) -> list[str]:
        """Paths of the cube's arrays, the record's group left out."""
        return _arrays(self.session().store) if self.present() else []

    def list_chunks(self, arrays: Iterable[str] | None = None) -> list[str]:
        """Keys of the chunks of ``arrays`` (all when omitted), sorted."""
        names = list(arrays) if arrays is not None else self.list_arrays()
        return sorted(k for a in names for k in self._keys(a) if k.startswith(f"{a}/c/"))

    def hash_chunks(self, keys: list[str]) -> Iterator[tuple[str, str | None]]:
        """``(key, SHA-256 hex)`` of each chunk, read in one session; None for one that is gone."""
        for key, data in read_keys(self.session().store, keys):
            yield key, None if data is None else hashlib.sha256(data).hexdigest()

    def current_digest(self) -> str | None:
        """The fingerprint SHA-256 of the cube read (``main`` only ever holds complete builds)."""
        rec = self.manifest()
        value = (rec or {}).get("fingerprint_sha256")
        return value if isinstance(value, str) else None

    def open_dataset(self, **kwargs: Any) -> xr.Dataset:
        """``xarray.open_zarr`` of the session's store (Dask chunks = shards of a sharded cube).

        Icechunk refuses consolidated metadata: it is not asked for.

        Raises
        ------
        StorageError
            If the metadata cannot be read.
        """
        kwargs["consolidated"] = False
        try:
            return open_by_shards(functools.partial(xr.open_zarr, self.session().store),
                                  **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure to read the metadata: a bad store
            raise StorageError(f"{self} holds no readable cube ({type(exc).__name__}: "
                               f"{str(exc)[:200]}).") from None

    # ------------------------------------------------------------------ versions
    def log(self) -> list[dict[str, Any]]:
        """The versions of ``main``, newest first.

        Returns
        -------
        list of dict
            ``{"id", "time" (ISO 8601 UTC), "message", "tags", "metadata"}``; the build
            branch's intermediate region commits and the repository's initial commit are
            left out.
        """
        repo = self.repository()
        tags: dict[str, list[str]] = {}
        for tag in sorted(repo.list_tags()):
            tags.setdefault(str(repo.lookup_tag(tag)), []).append(tag)
        out = []
        for snap in repo.ancestry(branch=MAIN):
            meta = (snap.metadata or {}).get(META_KEY)
            if snap.parent_id is None or not isinstance(meta, dict) or meta.get("partial"):
                continue
            when = snap.written_at.astimezone(dt.UTC)
            out.append({"id": str(snap.id), "time": when.isoformat().replace("+00:00", "Z"),
                        "message": snap.message, "tags": tags.get(str(snap.id), []),
                        "metadata": meta})
        return out

    def tag(self, name: str, version: str | None = None) -> str:
        """Tag ``version`` (``main``'s tip when omitted) as ``name``; return the snapshot id.

        Raises
        ------
        StorageError
            If the tag exists already (tags are immutable) or ``version`` names nothing.
        """
        repo = self.repository()
        if name in repo.list_tags():
            raise StorageError(f"tag {name!r} exists already in {self} (tags never move); "
                               "choose another name.")
        snap = self.resolve_version(version) or str(repo.lookup_branch(MAIN))
        repo.create_tag(name, snap)
        return snap

    # ------------------------------------------------------------------ writing
    def check_writable(self, *, overwrite: bool, resume: bool) -> None:
        """Refuse a path holding something else, or a cube without ``overwrite``.

        Raises
        ------
        CubeExistsError
            If a cube is on ``main`` (or something that is not a repository is at the path)
            and ``overwrite`` is false.
        OutputPathError
            If the parent folder cannot be created.
        """
        path = self.path
        if path is not None and path.exists() and not is_repository(path):
            if any(path.iterdir()) if path.is_dir() else True:
                raise CubeExistsError(
                    f"{path} exists and is not an Icechunk repository (a plain Zarr cube "
                    "or other files); remove it or choose another out=PATH for store='icechunk'.")
        elif not overwrite and self.exists():
            raise CubeExistsError(
                f"{self} holds a cube; pass overwrite=True to commit a new build on top "
                "(older versions stay readable), append=True, or choose another out=PATH.")
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputPathError(f"cannot write the repository {path}: "
                                  f"{exc.strerror or exc}. Choose a writable out=PATH.") from None

    def write(self, ds: xr.Dataset, *, chunks: dict[str, int], compressor: CompressorSpec,
              overwrite: bool = False, resume: bool = False, append: bool = False,
              client: Any = None, on_region: Callable[[int, int], None] | None = None,
              report: Callable[[str], None] | None = None,
              tables: Mapping[str, xr.Dataset] | None = None,
              shards: dict[str, int] | None = None) -> Path | str:
        """Build ``ds`` as one new version on ``main``: regions committed to a build branch.

        See :meth:`esdc.storage.target.Target.write` for the parameters, the result and the
        errors. ``append=True`` writes only the chunks that hold new time steps; the other
        chunks of the cube are shared with the version before.
        """
        self.check(overwrite=overwrite, resume=resume, append=append)
        blocks = block_lengths(chunks, shards)  # a region, a Dask chunk: whole shards
        say = report or (lambda _msg: None)
        fp = fingerprint(ds, chunks, compressor, shards)
        fp_sha = digest(fp)
        if (resume or append) and self.exists() and self.current_digest() == fp_sha:
            say(f"{self} is up to date")
            return self.location
        if not (append or overwrite) and self.exists():
            raise CubeExistsError(
                f"{self} holds a cube built from other inputs; pass overwrite=True to commit "
                "this build on top (older versions stay readable), append=True to add new time "
                "steps, or choose another out=PATH.")
        n_old = self._check_append(ds) if append else None
        repo = self.repository(create=True)
        ds = prepare(ds, blocks)
        if n_old is not None:
            attrs = (self.root_metadata() or {}).get("attributes") or {}
            ds = append_attrs(ds, SimpleNamespace(n_time=n_old, attrs=attrs))  # type: ignore[arg-type]
        enc = encoding(ds, chunks, compressor, shards)
        ydim, xdim = spatial_dims(ds.dims) or SPATIAL_DIMS[-1]
        names = [str(k) for k, v in ds.variables.items() if v.chunks is not None]
        trange = None
        if n_old is not None:
            names, trange = self._append_plan(ds, enc, names, n_old, ydim, say)
        recipe_sha = str(fp.get("recipe_sha256") or fp_sha)
        branch = f"build-{recipe_sha[:16]}"  # Icechunk refuses "/" in ref names
        main_tip = str(repo.lookup_branch(MAIN))
        done = self._start(repo, ds, enc, branch, main_tip, fp_sha, resume, n_old, say)
        todo_tiles = tiles(ds, ydim, xdim, blocks)
        total = len(todo_tiles)
        if done:
            say(f"resuming {self}: {len(done)} of {total} regions already committed")
        if on_region:  # the total is known before the first region is written
            on_region(len(done), total)
        todo = [t for t in todo_tiles if tuple(t) not in done]

        def committed(tile: list[int], result: tuple[Any, dict[str, Any], dict[str, Any]]
                      ) -> bool:
            _commit_region(repo, result[0], tile, branch, fp_sha)
            sums[0].update(result[1])  # hashed on the workers as they wrote the chunks
            sums[1].update(result[2])
            done.add(tuple(tile))
            if on_region:
                on_region(len(done), total)
            return True

        base = repo.writable_session(branch)  # every region forks the same snapshot
        group = zarr.open_group(base.store, mode="r")
        arrays = {n: group[n] for n in names}
        metas = {n: a.metadata.to_dict() for n, a in arrays.items()}
        layout, sums = shard_layout(metas), ({}, {})  # region checksums: sums, inner
        encoded = encoded_variables(ds, names, {n: a.dtype for n, a in arrays.items()})
        run_regions([_region_write(base, encoded, [*arrays.values()], tile, (ydim, xdim), trange,
                                   layout) for tile in todo], todo, client, committed)
        if tables:
            session = repo.writable_session(branch)
            write_tables(session.store, tables)
            session.commit(f"esdc: tables of an unfinished build ({branch})",
                           metadata={META_KEY: {"partial": True, "fingerprint_sha256": fp_sha}})
        snap = self._finish(repo, branch, fp, fp_sha, *self._describe(ds, fp, fp_sha, n_old),
                            known=sums)
        try:
            repo.reset_branch(MAIN, snap, from_snapshot_id=main_tip)
        except Exception as exc:  # noqa: BLE001 - Icechunk's conflict error
            raise BuildConflictError(
                f"{self}: main moved while this build ran ({type(exc).__name__}); the build "
                f"is kept on branch {branch}; build again with resume=True.") from None
        repo.delete_branch(branch)
        return self.location

    def _check_append(self, ds: xr.Dataset) -> int:
        """The cube's number of time steps; refuse a plan that does not extend it."""
        old = self.open()
        n_old = old.sizes.get(TIME_DIM, 0)
        if ds.sizes.get(TIME_DIM, 0) <= n_old:
            raise BuildConflictError(
                f"append=True: the recipe gives {ds.sizes.get(TIME_DIM, 0)} time steps and "
                f"{self} has {n_old} already: nothing to append. Extend the time axis, or "
                "rebuild with overwrite=True.")
        if not old[TIME_DIM].equals(ds[TIME_DIM].isel({TIME_DIM: slice(0, n_old)})):
            raise BuildConflictError(f"append=True: the recipe's first {n_old} time steps "
                                     f"are not those of {self}; rebuild with overwrite=True.")
        return int(n_old)

    def _append_plan(self, ds: xr.Dataset, enc: dict[str, Any], names: list[str], n_old: int,
                     ydim: str, say: Callable[[str], None]) -> tuple[list[str], tuple[int, int]]:
        """The time-varying arrays an append writes, and its time range (whole chunks)."""
        kept = set(self.list_chunks([n for n in names if ydim in ds[n].dims]))
        names = [n for n in names if TIME_DIM in ds[n].dims]
        if not names:
            raise BuildConflictError("append=True: the cube has no time-varying variable to "
                                     "append to.")
        ct = (enc[names[0]].get("shards") or enc[names[0]]["chunks"])[
            ds[names[0]].dims.index(TIME_DIM)]  # whole shards (of a sharded cube) are written
        first = n_old // ct
        for n in names:
            axis = ds[n].dims.index(TIME_DIM)
            kept -= {k for k in list(kept) if k.startswith(f"{n}/c/")
                     and int(k.split("/c/")[1].split("/")[axis]) >= first}
        say(f"appending time steps {n_old}..{ds.sizes[TIME_DIM] - 1} to {self}; "
            f"{len(kept)} chunk files of the cube are kept as they are")
        return names, (first * ct, ds.sizes[TIME_DIM])

    @staticmethod
    def _describe(ds: xr.Dataset, fp: dict[str, Any], fp_sha: str,
                  n_old: int | None) -> tuple[str, dict[str, Any]]:
        """The commit message and metadata of a build (``n_old``: an append's first step)."""
        times = ds[TIME_DIM].values if TIME_DIM in ds.coords else []
        span = [str(times[n_old or 0])[:19], str(times[-1])[:19]] if len(times) else None
        action = "build" if n_old is None else "append"
        meta = {"action": action, "recipe_sha256": fp.get("recipe_sha256"),
                "fingerprint_sha256": fp_sha, "time_range": span,
                "variables": sorted(str(v) for v in ds.data_vars)}
        what = "time" if n_old is None else "new time steps"
        message = f"esdc {action}: recipe SHA-256 {fp.get('recipe_sha256')}" + (
            f", {what} {span[0]}..{span[1]}" if span else "")
        return message, meta

    def _start(self, repo: Any, ds: xr.Dataset, enc: dict[str, Any], branch: str,
               main_tip: str, fp_sha: str, resume: bool, n_old: int | None,
               say: Callable[[str], None]) -> set[tuple[int, ...]]:
        """Commit metadata and coordinates to ``branch`` (or find what a resumed build did)."""
        if branch in repo.list_branches():
            first = self._branch_meta(repo, branch)
            if resume and first.get("fingerprint_sha256") == fp_sha and \
                    first.get("base") == main_tip:
                return {tuple(t) for t in first["tiles"]}
            if resume:
                raise BuildConflictError(
                    f"resume=True: the unfinished build on branch {branch} of {self} is of other "
                    "inputs or started from another version of main; build without "
                    "resume=True to start over.")
            say(f"discarding the unfinished build on branch {branch} (resume=True continues one)")
            repo.delete_branch(branch)
        repo.create_branch(branch, main_tip)
        session = repo.writable_session(branch)
        fork = session.fork()
        if n_old is None:
            write_metadata(ds, fork.store, enc, clear=True)
        else:  # grow the arrays along time; write the new time coordinates and attributes
            ds.isel({TIME_DIM: slice(n_old, None)}).to_zarr(
                fork.store, append_dim=TIME_DIM, compute=False, zarr_format=3,
                consolidated=False, safe_chunks=False)
            grow_derived(fork.store, ds)
        session.merge(fork)
        session.commit(f"esdc: metadata of an unfinished build ({branch})",
                       metadata={META_KEY: {"partial": True, "fingerprint_sha256": fp_sha,
                                            "base": main_tip}})
        return set()

    @staticmethod
    def _branch_meta(repo: Any, branch: str) -> dict[str, Any]:
        """The build branch's fingerprint, base and committed tiles."""
        out: dict[str, Any] = {"tiles": []}
        for snap in repo.ancestry(branch=branch):
            meta = (snap.metadata or {}).get(META_KEY) or {}
            if not meta.get("partial"):
                break
            if "tile" in meta:
                out["tiles"].append(meta["tile"])
            else:
                out.update(fingerprint_sha256=meta.get("fingerprint_sha256"),
                           base=meta.get("base"))
        return out

    def _finish(self, repo: Any, branch: str, fp: dict[str, Any], fp_sha: str, message: str,
                meta: dict[str, Any], known: tuple[dict[str, Any], dict[str, Any]]) -> str:
        """Record every chunk's checksum on ``branch``; commit as the version for ``main``.

        ``known``: the checksums (sums, inner) of the chunks the region tasks wrote, taken
        on the workers as they wrote them (:class:`~esdc.storage.shards.ChecksumStore`);
        the other chunks (a resumed build's, coordinates, tables) are read here.
        """
        session = repo.writable_session(branch)
        store = session.store
        keys = sorted(k for k in _sync(_collect(store.list_prefix("")))
                      if "/c/" in k and not k.startswith(f"{MANIFEST_GROUP}/"))
        arrays = _arrays(store)
        layout = shard_layout({k[:-len("/zarr.json")]: json.loads(m) for k, m in read_keys(
            store, [f"{a}/zarr.json" for a in arrays])})
        rest = stored_checksums(store, [k for k in keys if k not in known[0]], layout)
        sums, inner = ({**old, **new} for old, new in zip(known, rest, strict=True))
        sums, inner = {k: sums[k] for k in keys}, {k: inner[k] for k in keys if k in inner}
        record = {"algorithm": ALGORITHM, "fingerprint": fp, "fingerprint_sha256": fp_sha,
                  "recipe_sha256": fp.get("recipe_sha256"), "arrays": arrays, "chunks": sums,
                  **({"shards": layout, "inner": inner} if layout else {})}
        root = zarr.open_group(store, mode="r+")
        root.create_group(MANIFEST_GROUP, overwrite=True,
                          attributes={ATTR_CHECKSUMS: json.loads(json.dumps(record))})
        return str(session.commit(message, metadata={META_KEY: meta}))

    def update(self, ds: xr.Dataset | None = None, *,
               attrs: dict[str, dict[str, Any]] | None = None) -> None:
        """Add or replace arrays and set attributes, as one commit on ``main``.

        Parameters
        ----------
        ds : xarray.Dataset, optional
            Variables and coordinates to write (loaded into memory first).
        attrs : dict, optional
            ``{variable: {attribute: value}}`` to set on existing arrays.

        Raises
        ------
        CubeNotFoundError
            If there is no cube on ``main``.
        """
        self.require("to update")
        repo = self.repository()
        session = repo.writable_session(MAIN)
        group = zarr.open_group(session.store, mode="r+")
        written: list[str] = []
        if ds is not None:
            ds = ds.load()
            written = [str(n) for n in ds.variables]
            for n in written:
                if n in group:
                    del group[n]
            ds.to_zarr(session.store, mode="a", zarr_format=3, consolidated=False)
        for name, values in (attrs or {}).items():
            group[name].attrs.update(values)
        new = list(ds.variables.values()) if ds is not None else []
        runs = sorted({str(v.attrs[ATTR_MODEL_RUN]) for v in new if v.attrs.get(ATTR_MODEL_RUN)})
        run = ", ".join(runs) or None
        parts = ([f"arrays {', '.join(written)}"] if written else []) + (
            [f"attributes of {', '.join(sorted(attrs))}"] if attrs else [])
        meta = {"action": "update", "arrays": written, "attributes": sorted(attrs or {}),
                "run_id": run}
        session.commit(f"esdc update: {'; '.join(parts) or 'nothing'}"
                       + (f" (run {run})" if run else ""), metadata={META_KEY: meta})
