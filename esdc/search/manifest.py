"""Index manifests and generations: what an index was built from, committed atomically.

A variable's index lives beside the cube in ``NAME.zarr.index/`` (:func:`index_dir`):
``VARIABLE.SHA16.faiss`` files (named by their content) and the manifest
``VARIABLE.json`` naming the current one. :func:`commit_generation` writes a new
generation (the index file first, then the manifest moved over the old one: the single
commit point a running ``esdc serve`` reloads on) and records what it did in the
manifest's ``generations`` (:func:`generation_entry`): a build from all embedded
vectors (:func:`esdc.search.index.build_index`) or an update that added the vectors of
new time steps (:func:`esdc.search.live.update_index`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import xarray as xr

from esdc.conventions import TIME_DIM
from esdc.errors import EsdcError
from esdc.hashing import file_sha256

__all__ = ["Manifest", "commit_generation", "generation_entry", "index_dir", "indexed_version",
           "read_manifest", "require_faiss", "time_range_of"]


@dataclass(frozen=True)
class Manifest:
    """What an index was built from (its lineage) and how."""

    cube: str
    variable: str
    model_run: str
    model_sha256: str
    count: int
    dim: int
    metric: str
    centre: list[float]
    kind: str
    params: dict[str, Any]
    index_sha256: str
    ids_sha256: str
    faiss_version: str
    created: str
    #: File of the index in the index folder ("": ``VARIABLE.faiss``, older manifests).
    index_file: str = ""
    #: Build counter of this variable's index (0: manifest of an older esdc).
    generation: int = 0
    #: :func:`esdc.search.index.vectors_sha256` of the embedding array indexed ("": not recorded).
    vectors_sha256: str = ""
    #: Version (snapshot id) of a versioned cube the embeddings were read at ("": none).
    cube_version: str = ""
    #: Time steps of the embedding indexed, the first N (0: static embeddings, or all of
    #: them for a manifest of an older esdc); ids are flat indices into ``(tile_y, tile_x,
    #: time_steps)``.
    time_steps: int = 0
    #: First and last date of the time steps indexed ([]: static embeddings).
    time_range: list[str] = field(default_factory=list)
    #: What each generation of this index did, oldest first (:func:`generation_entry`).
    generations: list[dict[str, Any]] = field(default_factory=list)
    #: Tile size (cells) of the embedding indexed: its scale (0: manifest of an older esdc).
    scale: int = 0
    #: Scales (tile sizes, cells) of the cube's embeddings when it was built: each has
    #: its own index beside this one (``esdc index`` indexes them all) and a search
    #: merges them by distance ([]: older esdc, one scale).
    scales: list[int] = field(default_factory=list)

    def file_name(self) -> str:
        """The index file of this generation in the index folder."""
        return self.index_file or f"{self.variable}.faiss"


def require_faiss() -> Any:
    """The ``faiss`` module, imported on first use (an optional dependency).

    Returns
    -------
    module
        ``faiss`` (faiss-cpu, or faiss-gpu with ``esdc[gpu]``).

    Raises
    ------
    EsdcError
        If FAISS is not installed (the message names the extra to install).
    """
    try:
        import faiss
    except ImportError:
        raise EsdcError("FAISS is not installed: pip install 'esdc[search]' (faiss-cpu).") \
            from None
    return faiss


def index_dir(cube: str | Path) -> Path:
    """Folder beside the cube that holds its indexes: ``NAME.zarr.index/``.

    Parameters
    ----------
    cube : str or path-like
        The cube's folder (``.../NAME.zarr``).

    Returns
    -------
    pathlib.Path
        ``.../NAME.zarr.index`` (it may not exist yet).
    """
    cube = Path(cube)
    return cube.parent / f"{cube.name}.index"


def time_range_of(ds: xr.Dataset, steps: int) -> list[str]:
    """First and last date of a cube's first ``steps`` time steps ([] if none).

    Parameters
    ----------
    ds : xarray.Dataset
        The cube.
    steps : int
        Time steps covered.

    Returns
    -------
    list of str
        ``[first, last]`` as ``YYYY-MM-DD``.
    """
    if steps < 1 or TIME_DIM not in ds.coords:
        return []
    t = pd.DatetimeIndex(ds[TIME_DIM].values[:steps])
    return [str(t[0].date()), str(t[-1].date())]


def generation_entry(mode: str, added: int, steps: tuple[int, int],
                     version: str | None) -> dict[str, Any]:
    """What one index generation did, for the manifest's ``generations`` list.

    Parameters
    ----------
    mode : {"build", "update"}
        A build from all embedded vectors, or an update that added new ones.
    added : int
        Vectors added.
    steps : (int, int)
        Time steps ``start .. stop - 1`` whose vectors were added ((0, 0): static).
    version : str or None
        Cube version (snapshot id) read.

    Returns
    -------
    dict
        ``{"mode", "added", "time_steps": [start, stop], "cube_version", "created"}``
        (``generation`` is set when it is committed).
    """
    return {"mode": mode, "added": int(added), "time_steps": [int(steps[0]), int(steps[1])],
            "cube_version": version or "",
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def commit_generation(cube: str | Path, variable: str, index: Any, fields: dict[str, Any],
                      entry: dict[str, Any]) -> Manifest:
    """Store an index as the next generation of a variable's index (module docstring).

    The index file is written under a temporary name and moved to its content-named
    file, then the manifest is moved over the old one (the commit); the previous
    generation's file is kept for readers that just read the old manifest, older ones
    are removed.

    Parameters
    ----------
    cube : str or path-like
        The cube.
    variable : str
        Its embedding variable.
    index : faiss.IndexIDMap2
        The index (on the CPU).
    fields : dict
        :class:`Manifest` fields but ``index_sha256``, ``faiss_version``, ``created``,
        ``index_file``, ``generation`` and ``generations``, which are set here.
    entry : dict
        :func:`generation_entry` of this generation, appended to ``generations``.

    Returns
    -------
    Manifest
        The manifest committed.
    """
    faiss = require_faiss()
    folder = index_dir(cube)
    folder.mkdir(exist_ok=True)
    tmp = folder / f".{variable}.faiss.{os.getpid()}.tmp"
    faiss.write_index(index, str(tmp))
    sha = file_sha256(tmp)
    target = folder / f"{variable}.{sha[:16]}.faiss"  # one name, one content: never rewritten
    os.replace(tmp, target)
    mpath = folder / f"{variable}.json"
    previous = read_manifest(mpath)
    generation = (previous.generation if previous else 0) + 1
    history = list(previous.generations) if previous and fields.get("model_sha256") == \
        previous.model_sha256 else []
    manifest = Manifest(**fields, index_sha256=sha, faiss_version=faiss.__version__,
                        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                        index_file=target.name, generation=generation,
                        generations=[*history, {"generation": generation, **entry}])
    mtmp = folder / f".{variable}.json.{os.getpid()}.tmp"
    mtmp.write_text(json.dumps(asdict(manifest), indent=2))
    os.replace(mtmp, mpath)  # the commit: readers now see this generation
    keep = {target.name, previous.file_name() if previous else ""}
    pattern = re.compile(rf"{re.escape(variable)}(\.[0-9a-f]{{16}})?\.faiss")
    for old in folder.iterdir():
        if pattern.fullmatch(old.name) and old.name not in keep:
            old.unlink(missing_ok=True)
    return manifest


def read_manifest(path: Path) -> Manifest | None:
    """The index manifest at ``path``, or None if missing or unreadable.

    Parameters
    ----------
    path : pathlib.Path
        ``NAME.zarr.index/VARIABLE.json``.

    Returns
    -------
    Manifest or None
    """
    try:
        return Manifest(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def indexed_version(cube: str | Path, variable: str) -> str:
    """The cube version (snapshot id) the index of ``variable`` was built from.

    Parameters
    ----------
    cube : str or path-like
        The cube.
    variable : str
        Its embedding variable.

    Returns
    -------
    str
        The manifest's ``cube_version``; ``""`` for a cube without versions, or no index.
    """
    manifest = read_manifest(index_dir(cube) / f"{variable}.json")
    return manifest.cube_version if manifest else ""
