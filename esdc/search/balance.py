"""Class-balanced samples of an unlabelled archive: cluster the embeddings, sample evenly.

Archives of Earth imagery are imbalanced (two thirds of the globe is ocean); a
random sample of tiles repeats the common scenes and misses the rare ones. With no
labels, clusters of the embeddings stand in for classes: the tiles are grouped by
spherical k-means (FAISS ``Kmeans``, cosine on the centred, L2-normalised vectors of
:func:`esdc.search.index.embedding_matrix`) and the same number of tiles is drawn
from every cluster (all of a smaller cluster). This is the balancing of unlabelled
satellite imagery by the SpaceML team (Patel, Gao, Koul, Ganju and Kasam 2021,
"Scalable Data Balancing for Unlabeled Satellite Imagery", arXiv:2107.03227).

Clusters are numbered by decreasing size (ties: the cluster holding the smaller tile
id first), so the same seed gives the same clusters, numbers and sample.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from esdc.conventions import ATTR_TILE_DIMS, SPATIAL_DIMS, TIME_DIM
from esdc.errors import OutputPathError, SearchIndexError
from esdc.search.index import read_embeddings, require_faiss

__all__ = ["balanced_sample", "cluster_embeddings", "write_sample"]


def cluster_embeddings(vectors: np.ndarray, clusters: int, seed: int = 0,
                       niter: int = 25) -> np.ndarray:
    """Spherical k-means of ``(N, F)`` unit vectors; the cluster of each, numbered by size.

    Parameters
    ----------
    vectors : numpy.ndarray
        ``(N, F)`` centred, L2-normalised vectors.
    clusters : int
        Number of clusters, ``1 <= clusters <= N``.
    seed : int
        Seed of FAISS's initialisation and subsampling.
    niter : int
        k-means iterations.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` int64 cluster of each vector; 0 is the largest cluster.

    Raises
    ------
    SearchIndexError
        If ``clusters`` is out of range.
    """
    faiss = require_faiss()
    vec = np.ascontiguousarray(vectors, dtype="float32")
    n, d = vec.shape
    if not 1 <= clusters <= n:
        raise SearchIndexError(f"clusters={clusters} must be between 1 and {n} (embedded "
                               "tiles).")
    km = faiss.Kmeans(d, int(clusters), niter=int(niter), seed=int(seed), spherical=True,
                      verbose=False, min_points_per_centroid=1)
    km.train(vec)
    _, assign = km.index.search(vec, 1)
    assign = assign[:, 0].astype("int64")
    sizes = np.bincount(assign, minlength=clusters)
    first = np.full(clusters, n, dtype="int64")
    np.minimum.at(first, assign, np.arange(n))
    order = np.lexsort((first, -sizes))  # by size descending, then first member
    rank = np.empty(clusters, dtype="int64")
    rank[order] = np.arange(clusters)
    return rank[assign]


def balanced_sample(cube: str | Path, variable: str | None = None, clusters: int = 20,
                    per_cluster: int = 50, seed: int = 0) -> dict[str, Any]:
    """Cluster a cube's embeddings and draw the same number of tiles from each cluster.

    Parameters
    ----------
    cube : str or path-like
        Cube with embeddings.
    variable : str, optional
        Embedding variable (default: the smallest tile size).
    clusters : int
        k-means clusters (stand-ins for the unknown classes).
    per_cluster : int
        Tiles drawn from each cluster, without replacement; a smaller cluster gives
        all its tiles.
    seed : int
        Seed of the clustering and of the draw.

    Returns
    -------
    dict
        ``{"cube", "variable", "clusters", "per_cluster", "seed", "tiles", "count",
        "dims", "cluster_sizes", "sample_sizes", "sample": [{"id", "tile_y", "tile_x",
        "t", <y name>, <x name>, "time", "cluster"}, ...]}``: ``cluster_sizes[c]`` tiles
        are in cluster ``c``, ``sample_sizes[c] = min(per_cluster, cluster_sizes[c])``
        of them are in the sample; coordinates are tile centres in grid units
        (``lat``/``lon`` or ``y``/``x``), ``id`` the flat tile id used by the index.

    Raises
    ------
    CubeNotFoundError
        If there is no cube at ``cube``.
    SearchIndexError
        If the cube has no embeddings (or no valid vector), or ``clusters``/
        ``per_cluster`` are out of range.
    """
    if per_cluster < 1:
        raise SearchIndexError(f"per_cluster={per_cluster} must be at least 1.")
    ds, var, vec, ids, _ = read_embeddings(cube, variable)
    assign = cluster_embeddings(vec, clusters, seed)
    rng = np.random.default_rng(seed)
    emb = ds[var]
    names = [str(n) for n in emb.attrs.get(ATTR_TILE_DIMS, SPATIAL_DIMS[0])]
    ydim, xdim = str(emb.dims[0]), str(emb.dims[1])
    yc = np.asarray(ds[ydim].values, dtype=float)
    xc = np.asarray(ds[xdim].values, dtype=float)
    times = pd.DatetimeIndex(ds[TIME_DIM].values) if emb.ndim == 4 else None
    shape = tuple(int(s) for s in emb.shape[:-1])
    sizes = np.bincount(assign, minlength=clusters)
    sample: list[dict[str, Any]] = []
    for c in range(clusters):
        members = np.flatnonzero(assign == c)
        take = np.sort(rng.choice(members, size=min(per_cluster, len(members)),
                                  replace=False)) if len(members) else members
        for pos in take:
            idx = np.unravel_index(int(ids[pos]), shape)
            ty, tx = int(idx[0]), int(idx[1])
            t = int(idx[2]) if times is not None else None
            sample.append({"id": int(ids[pos]), "tile_y": ty, "tile_x": tx, "t": t,
                           names[0]: float(yc[ty]), names[1]: float(xc[tx]),
                           "time": None if t is None or times is None
                           else str(times[t].date()), "cluster": c})
    return {"cube": str(cube), "variable": var, "clusters": int(clusters),
            "per_cluster": int(per_cluster), "seed": int(seed), "tiles": int(len(ids)),
            "count": len(sample), "dims": names,
            "cluster_sizes": [int(s) for s in sizes],
            "sample_sizes": [int(min(per_cluster, s)) for s in sizes], "sample": sample}


def write_sample(result: dict[str, Any], path: str | Path) -> Path:
    """Write a :func:`balanced_sample` result as JSON (to a temporary name, then moved).

    Parameters
    ----------
    result : dict
        What :func:`balanced_sample` returned.
    path : str or path-like
        The JSON file; its folder must exist.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OutputPathError
        If the folder does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputPathError(f"{path}: folder {path.parent} does not exist.")
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)
    return path
