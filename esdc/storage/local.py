"""A cube in a local folder: :class:`LocalTarget`.

Writes are journaled and committed by an atomic rename (:mod:`esdc.storage.write`,
:mod:`esdc.storage.journal`); reads go through zarr's ``LocalStore``.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import xarray as xr
import zarr

from esdc.errors import CubeExistsError, OutputPathError, StorageError
from esdc.hashing import file_sha256
from esdc.recipe import CompressorSpec
from esdc.storage.integrity import array_dirs, chunk_files
from esdc.storage.shards import open_by_shards
from esdc.storage.target import Target, local_path
from esdc.storage.write import consolidate, write_store

__all__ = ["LocalTarget"]


class LocalTarget(Target):
    """A cube stored in a local folder (a Zarr v3 directory store).

    Parameters
    ----------
    path : str or path-like
        The store's folder (``cubes/earth.zarr``).
    workers : int
        Chunk files hashed in parallel by :meth:`checksums` (hashlib releases the GIL).
    """

    supports_rename: ClassVar[bool] = True
    supports_append: ClassVar[bool] = True
    supports_update: ClassVar[bool] = True
    kind: ClassVar[str] = "path"

    def __init__(self, path: str | os.PathLike[str], *, workers: int = 4) -> None:
        self.path = Path(path)
        self.workers = max(1, workers)

    @classmethod
    def from_location(cls, location: str | os.PathLike[str], *,
                      storage_options: dict[str, Any] | None = None,
                      pairs: list[str] | None = None, cwd: Path | None = None) -> LocalTarget:
        """The target of a local path (``file://`` URLs included); options are ignored."""
        return cls(local_path(location, cwd))

    @property
    def location(self) -> Path:
        """The store's folder."""
        return self.path

    # ------------------------------------------------------------------ reading
    def missing_reason(self) -> str | None:
        """Why there is no cube in the folder, or None when there is one."""
        p = self.path
        if (p / "zarr.json").is_file() or (p / ".zgroup").is_file():
            return None
        if not p.exists():
            return "nothing is at that path"
        if not p.is_dir():
            return "it is a file, not a Zarr cube (a folder with a zarr.json)"
        return "no Zarr cube at that path (no zarr.json)"

    def read_bytes(self, key: str) -> bytes | None:
        """The bytes of the file ``key`` under the folder, None when absent."""
        try:
            return (self.path / key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def list_arrays(self) -> list[str]:
        """Paths of the cube's arrays (nested groups included), the record's group left out."""
        return list(array_dirs(self.path)) if self.path.is_dir() else []

    def list_chunks(self, arrays: Iterable[str] | None = None) -> list[str]:
        """Keys of the chunk files of ``arrays`` (zarr's temporary files left out)."""
        return list(chunk_files(self.path, arrays)) if self.path.is_dir() else []

    def hash_chunks(self, keys: list[str]) -> Iterator[tuple[str, str | None]]:
        """SHA-256 of each chunk file, ``workers`` files at a time; None for one that is gone."""

        def one(key: str) -> tuple[str, str | None]:
            try:
                return key, file_sha256(self.path / key)
            except FileNotFoundError:
                return key, None

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            yield from pool.map(one, keys)

    def open_dataset(self, **kwargs: Any) -> xr.Dataset:
        """``xarray.open_zarr`` of the folder (Dask chunks = shards of a sharded cube).

        Raises
        ------
        StorageError
            If the metadata cannot be read (corrupt or edited).
        """
        try:
            return open_by_shards(functools.partial(xr.open_zarr, self.path), **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure to read the metadata: a bad store
            raise StorageError(
                f"{self.path} is not a readable Zarr cube ({type(exc).__name__}: "
                f"{str(exc)[:200]}); its metadata is corrupt or was edited. Rebuild the cube "
                "(verify_store lists what it can).") from None

    # ------------------------------------------------------------------ writing
    def check_writable(self, *, overwrite: bool, resume: bool) -> None:
        """Refuse an existing path without ``overwrite``; probe that the folder takes a file.

        Raises
        ------
        CubeExistsError
            If something is at the path and ``overwrite`` is false.
        OutputPathError
            If the parent folder cannot be created or written.
        """
        target = self.path
        if target.exists() and not overwrite:
            raise CubeExistsError(
                f"{target} exists; pass overwrite=True to replace it (the old cube is kept "
                "until the new one is complete) or choose another out=PATH.")
        parent = target.parent
        blocker = next((p for p in (parent, *parent.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise OutputPathError(f"cannot write the cube into {parent}: {blocker} is a file, "
                                  "not a folder. Choose a writable out=PATH.")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            probe = parent / f".esdc-probe-{uuid.uuid4().hex[:8]}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise OutputPathError(f"cannot write the cube into {parent}: "
                                  f"{exc.strerror or exc}. Choose a writable out=PATH.") from None

    def write(self, ds: xr.Dataset, *, chunks: dict[str, int], compressor: CompressorSpec,
              overwrite: bool = False, resume: bool = False, append: bool = False,
              client: Any = None, on_region: Callable[[int, int], None] | None = None,
              report: Callable[[str], None] | None = None,
              tables: Mapping[str, xr.Dataset] | None = None,
              shards: dict[str, int] | None = None) -> Path:
        """Build ``ds`` into the folder: journaled, resumable, committed by a rename.

        See :meth:`esdc.storage.target.Target.write` and :func:`esdc.storage.write.write_store`
        for the parameters, the result and the errors.
        """
        self.check(overwrite=overwrite, resume=resume, append=append)
        return write_store(ds, self.path, chunks=chunks, compressor=compressor,
                           overwrite=overwrite, client=client, on_region=on_region,
                           resume=resume, append=append, report=report, tables=tables,
                           shards=shards)

    def update(self, ds: xr.Dataset | None = None, *,
               attrs: dict[str, dict[str, Any]] | None = None) -> None:
        """Add or replace arrays and set variable attributes, then reconsolidate.

        The new arrays are written first into a temporary store beside the cube and moved
        in; an old array of the same name is removed only then, so a failure leaves it
        in place.

        Parameters
        ----------
        ds : xarray.Dataset, optional
            Variables and coordinates to write (every variable of ``ds`` becomes an array).
        attrs : dict, optional
            ``{variable: {attribute: value}}`` to set on existing arrays.

        Raises
        ------
        CubeNotFoundError
            If there is no cube in the folder.
        """
        self.require("to update")
        if ds is not None:
            names = [str(n) for n in ds.variables]
            with tempfile.TemporaryDirectory(dir=self.path.parent,
                                             prefix=f".{self.path.name}.update-") as tmp:
                staged = Path(tmp) / "update.zarr"
                ds.to_zarr(staged, zarr_format=3, consolidated=False)
                for n in names:  # move the new arrays into place, replacing old ones
                    old = self.path / n
                    if old.exists():
                        shutil.rmtree(old)
                    shutil.move(str(staged / n), str(old))
        if attrs:
            group = zarr.open_group(str(self.path), mode="r+")
            for name, values in attrs.items():
                group[name].attrs.update(values)
        consolidate(self.path, zarr_format=None)
