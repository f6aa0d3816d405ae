"""A live archive: the index grows with the cube, one generation per update.

A cube that gains time steps (``esdc build --append`` / ``esdc update``) and has them
embedded (``esdc embed --append``, :func:`esdc.embed.embed_cube`) gets their vectors
into its index with :func:`update_index` (``esdc index --update``): the stored index is
loaded, the ids of its vectors are renumbered for the longer time axis (ids are flat
indices into ``(tile_y, tile_x, time_steps)``, :mod:`esdc.search.index`), the new
vectors are centred on the index's existing centre, L2-normalised and added with
FAISS ``add_with_ids``, and the result is committed as the next generation
(:func:`esdc.search.manifest.commit_generation`), which a running ``esdc serve`` swaps
in. Nothing is embedded again and nothing is retrained: a flat index stays exact, an
HNSW graph gets the new nodes inserted, and an IVF-PQ index keeps the coarse centroids
and PQ codebooks trained at its build (the new vectors are assigned to the existing
lists). The centre also stays that of the first build. After many updates, or when
the new data look unlike the old, a full rebuild (``esdc index`` without ``--update``)
re-centres and retrains.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from esdc.conventions import TIME_DIM
from esdc.embed import embedded_steps
from esdc.errors import SearchIndexError
from esdc.search.index import (
    embedding_variable,
    embedding_variables,
    load_index,
    normalise,
    require_faiss,
    vectors_sha256,
)
from esdc.search.manifest import (
    Manifest,
    commit_generation,
    generation_entry,
    index_dir,
    read_manifest,
    time_range_of,
)
from esdc.storage import open_cube, resolve

__all__ = ["update_index", "update_indexes"]


def _renumber(faiss: Any, index: Any, shape: tuple[int, int], old: int, new: int) -> None:
    """Ids of ``(tile_y, tile_x, old)`` flat indices -> those of ``(tile_y, tile_x, new)``."""
    ids = faiss.vector_to_array(index.id_map)
    tile = np.unravel_index(ids, (*shape, old))
    faiss.copy_array_to_vector(np.ravel_multi_index(tile, (*shape, new)).astype("int64"),
                               index.id_map)
    index.construct_rev_map()


def update_index(cube: str | Path, variable: str | None = None) -> Manifest:
    """Add the vectors of newly embedded time steps to an index, as its next generation.

    Parameters
    ----------
    cube : str or path-like
        The cube, with time-varying embeddings and an index built (or updated) by this
        esdc (its manifest records ``time_steps``).
    variable : str, optional
        Embedding variable (default: the smallest tile size).

    Returns
    -------
    Manifest
        The new generation's manifest (``count``, ``time_steps``, ``time_range`` grown;
        ``generations`` ends with this update), or the current one, unchanged, when no
        time step was embedded since (or the embeddings are static).

    Raises
    ------
    SearchIndexError
        If there is no index to update, it was built from another model than the
        embeddings now in the cube (lineage) or from vectors that have changed since
        (re-embedded), its manifest records no time steps (an older esdc), or the cube
        holds fewer embedded steps than it covers; rebuild it without ``update=True``.
    CubeNotFoundError
        If there is no cube at ``cube``.
    EsdcError
        If FAISS is not installed.
    """
    faiss = require_faiss()
    cube = Path(cube)
    version = resolve(cube).current_version()
    ds = open_cube(cube, version=version)
    var = embedding_variable(ds, variable)
    rebuild = f"rebuild it with `esdc index {cube}` (without update=True)"
    previous = read_manifest(index_dir(cube) / f"{var}.json")
    if previous is None:
        raise SearchIndexError(f"update=True: there is no index of {var!r} beside {cube} to "
                               f"update; build it with `esdc index {cube}` first.")
    emb = ds[var]
    steps = embedded_steps(emb)
    if steps is None:
        return previous  # static embeddings: nothing is ever appended
    old = previous.time_steps
    if old < 1 or steps < old:
        why = ("records no time steps (built by an older esdc)" if old < 1 else
               f"covers {old} time steps, but the cube holds {steps} embedded ones")
        raise SearchIndexError(f"update=True: the index of {var!r} {why}; {rebuild}.")
    index, _ = load_index(cube, var, ds)  # file integrity and model lineage
    kept = np.asarray(emb.isel({TIME_DIM: slice(0, old)}).values, dtype="float32")
    if vectors_sha256(kept) != previous.vectors_sha256:
        raise SearchIndexError(f"update=True: the vectors of the {old} time steps indexed are "
                               f"not those in the cube any more (re-embedded since); {rebuild}.")
    if steps == old:
        return previous
    added = np.asarray(emb.isel({TIME_DIM: slice(old, steps)}).values, dtype="float32")
    nty, ntx, nt_new, dim = added.shape
    _renumber(faiss, index, (nty, ntx), old, steps)
    flat = added.reshape(-1, dim)
    ok = np.flatnonzero(np.isfinite(flat).all(axis=1))
    iy, ix, it = np.unravel_index(ok, (nty, ntx, nt_new))
    new_ids = np.ravel_multi_index((iy, ix, it + old), (nty, ntx, steps)).astype("int64")
    index.add_with_ids(normalise(flat[ok], np.asarray(previous.centre, "float32")), new_ids)
    every = np.sort(faiss.vector_to_array(index.id_map))
    fields = {k: getattr(previous, k) for k in (
        "cube", "variable", "model_run", "model_sha256", "dim", "metric", "centre", "kind",
        "params", "scale", "scales")}
    return commit_generation(cube, var, index, fields | {
        "count": int(index.ntotal), "ids_sha256": hashlib.sha256(every.tobytes()).hexdigest(),
        "vectors_sha256": vectors_sha256(np.concatenate([kept, added], axis=2)),
        "cube_version": version or "", "time_steps": steps,
        "time_range": time_range_of(ds, steps),
    }, generation_entry("update", len(ok), (old, steps), version))


def update_indexes(cube: str | Path) -> list[Manifest]:
    """:func:`update_index` of every scale of a cube that has an index (``esdc index --update``).

    Parameters
    ----------
    cube : str or path-like
        The cube, with its embeddings of one or more scales indexed.

    Returns
    -------
    list of Manifest
        One per indexed scale, finest first (as :func:`update_index`).

    Raises
    ------
    SearchIndexError
        If no scale has an index, or as :func:`update_index`.
    CubeNotFoundError, EsdcError
        As :func:`update_index`.
    """
    cube = Path(cube)
    names = [v for v in embedding_variables(open_cube(cube))
             if (index_dir(cube) / f"{v}.json").exists()]
    if not names:
        return [update_index(cube)]  # raises: nothing to update
    return [update_index(cube, v) for v in names]
