r"""How good is the search? Precision@k of neighbours that share the query tile's class.

A tile's label is the most frequent class of a label variable (e.g. ``koppen_class``,
``land_sea_mask``) over the tile's cells. For ``Q`` query tiles drawn at random (seeded)
among the indexed, labelled tiles, the ``k`` nearest other tiles are found by exact
cosine search and

.. math::

    P@k = \frac{1}{Q} \sum_{q=1}^{Q} \frac{1}{k} \sum_{j=1}^{k}
          \mathbf{1}[\ell(n_{q,j}) = \ell(q)]

where :math:`n_{q,j}` is the query's :math:`j`-th neighbour (the query itself excluded)
and :math:`\ell` the tile label. The same is measured for two baselines:

``random``
    ``k`` tiles drawn uniformly without replacement; its expectation is
    :math:`\sum_c p_c^2`, with :math:`p_c` the share of class :math:`c` among the
    labelled indexed tiles (reported as ``random_expected``).
``pca_pixels``
    the tiles' raw input pixels (the embedding's ``esdc_inputs``, normalised with the
    cube's statistics as the encoder saw them, flattened; the same context window
    when the embedding was made from one, ``esdc_context``) reduced by PCA to the
    embedding's dimension and searched the same way (exact FAISS index of centred,
    L2-normalised vectors). An embedding worth its training beats this.

Multi-scale (:func:`evaluate_scales`, part of :func:`evaluate_search`'s answer): for
every scale (tile size) the cube holds, P@k of queries of that scale searched within
their scale (``embedding``) and across every scale (``all_scales``: each scale
searched in its own index space, the answers merged by distance, as
:meth:`esdc.search.query.SearchEngine.search_tile` with ``scales="all"``; a neighbour
counts when its own label, the mode over its own cells, is the query's); and the
*scale consistency*: how often a query tile's parent (the tile of the next larger
scale that holds its centre) is among its ``k`` nearest when searching every scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from esdc.conventions import (
    ATTR_CONTEXT,
    ATTR_INPUTS,
    ATTR_ROLE,
    ATTR_TILE_DIMS,
    ATTR_TILE_SIZE,
    SPATIAL_DIMS,
    TIME_DIM,
)
from esdc.errors import SearchIndexError
from esdc.ml.config import SplitSpec
from esdc.ml.patches import PatchStream, block_splits
from esdc.ml.windows import tile_windows
from esdc.search.feedback import NEGATIVE_WEIGHT, rocchio
from esdc.search.index import (
    embedding_variables,
    gpu_count,
    normalise,
    read_embeddings,
    require_faiss,
    select_device,
)
from esdc.storage import open_cube

__all__ = ["evaluate_refinement", "evaluate_scales", "evaluate_search", "held_out_tiles",
           "precision_at_k", "tile_labels"]


def _classes(lab: xr.DataArray, values: np.ndarray) -> tuple[np.ndarray, list[str] | None]:
    """Class values (from ``flag_values`` or the data) and their names, if any."""
    flags = lab.attrs.get("flag_values")
    if flags is not None:
        classes = np.atleast_1d(np.asarray(flags, dtype="float64"))
        names = str(lab.attrs.get("flag_meanings", "")).split()
        return classes, names if len(names) == len(classes) else None
    finite = values[np.isfinite(values)]
    classes = np.unique(finite)
    if classes.size and (np.any(classes != np.round(classes)) or classes.size > 1000):
        raise SearchIndexError(f"label={lab.name!r} is not a class variable (no flag_values "
                               "and non-integer or too many distinct values); use a "
                               "categorical variable such as koppen_class or land_sea_mask.")
    return classes, None


def tile_labels(ds: xr.Dataset, label: str, variable: str,
                min_valid_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                          list[str] | None]:
    """Label of every tile of an embedding variable: the mode of ``label`` over its cells.

    Tiles are the embedding's non-overlapping ``T x T`` blocks of cells (``T`` =
    ``esdc_tile_size``). A label that varies in time gives one label per time step
    when the embedding does too, else the mode is taken over all time steps; a static
    label is repeated over the embedding's time steps. Cells that are NaN or (with
    ``flag_values``) hold no listed class are missing; ties go to the smaller class.

    Parameters
    ----------
    ds : xarray.Dataset
        The cube.
    label : str
        Categorical variable on the cube's grid.
    variable : str
        Embedding variable.
    min_valid_fraction : float
        Tiles with a smaller fraction of labelled cells get no label.

    Returns
    -------
    labels : numpy.ndarray
        ``(N,)`` float64 class value per tile id (flat C-order index into the
        embedding's leading dims, as in :func:`esdc.search.index.embedding_matrix`).
    ok : numpy.ndarray
        ``(N,)`` bool, True where the tile has a label.
    classes : numpy.ndarray
        The class values.
    names : list of str or None
        Class names from ``flag_meanings``.

    Raises
    ------
    SearchIndexError
        If ``label`` is missing, not on the embedding's grid or not categorical.
    """
    if label not in ds.data_vars:
        raise SearchIndexError(f"label={label!r} is not a variable of the cube; it has "
                               f"{sorted(str(n) for n in ds.data_vars)}.")
    lab = ds[label]
    if lab.attrs.get(ATTR_ROLE) == "embedding":
        raise SearchIndexError(f"label={label!r} is an embedding, not a class variable.")
    emb = ds[variable]
    tile = int(emb.attrs[ATTR_TILE_SIZE])
    ydim, xdim = (str(d) for d in emb.attrs.get(ATTR_TILE_DIMS, SPATIAL_DIMS[0]))
    if tuple(lab.dims[-2:]) != (ydim, xdim) or lab.ndim not in (2, 3) or (
            lab.ndim == 3 and lab.dims[0] != TIME_DIM):
        raise SearchIndexError(f"label={label!r} has dims {lab.dims}; it must be ([time,] "
                               f"{ydim}, {xdim}) like the embedding's inputs.")
    nty, ntx = int(emb.shape[0]), int(emb.shape[1])
    emb_time = emb.ndim == 4
    values = np.asarray(lab.values, dtype="float64")
    classes, names = _classes(lab, values)
    cells = values[..., : nty * tile, : ntx * tile]
    lead = cells.shape[:-2]
    cells = cells.reshape(*lead, nty, tile, ntx, tile)
    cells = np.moveaxis(cells, -3, -2).reshape(*lead, nty, ntx, tile * tile)
    if lab.ndim == 3:
        if emb_time:  # (time, ty, tx, c) -> (ty, tx, time, c)
            cells = np.moveaxis(cells, 0, 2)
        else:  # pool time steps into the tile's cells
            cells = np.moveaxis(cells, 0, 2).reshape(nty, ntx, -1)
    elif emb_time:
        cells = np.broadcast_to(cells[:, :, None], (nty, ntx, int(emb.shape[2]),
                                                    cells.shape[-1]))
    counts = np.stack([(cells == c).sum(axis=-1) for c in classes], axis=-1) \
        if classes.size else np.zeros((*cells.shape[:-1], 1), dtype=int)
    labelled = counts.sum(axis=-1)
    ok = labelled >= min_valid_fraction * cells.shape[-1]
    ok &= labelled > 0
    labels = classes[np.argmax(counts, axis=-1)] if classes.size else np.zeros(ok.shape)
    return labels.reshape(-1), ok.reshape(-1), classes, names


def held_out_tiles(ds: xr.Dataset, variable: str, split: SplitSpec) -> np.ndarray:
    """Which tiles of an embedding an encoder trained with ``split`` never saw.

    A training config's ``split`` cuts the grid into blocks and gives each to train,
    validation or test (:func:`esdc.ml.patches.block_splits`); the encoder trains on
    patches inside train blocks only. A tile is held out when it lies wholly inside a
    validation or test block.

    Parameters
    ----------
    ds : xarray.Dataset
        The cube.
    variable : str
        Embedding variable, ``(tile_y, tile_x, [time,] feature)``.
    split : SplitSpec
        The encoder's training split (``block`` in cells, ``fractions``, ``seed``).

    Returns
    -------
    numpy.ndarray
        ``(N,)`` bool per tile id (flat C-order index into the embedding's leading dims,
        as :func:`tile_labels`).

    Raises
    ------
    SearchIndexError
        If the tiles are larger than the split's blocks (none can be held out).
    """
    emb = ds[variable]
    tile = int(emb.attrs[ATTR_TILE_SIZE])
    ydim, xdim = (str(d) for d in emb.attrs.get(ATTR_TILE_DIMS, SPATIAL_DIMS[0]))
    bh, bw = split.block
    if tile > bh or tile > bw:
        raise SearchIndexError(f"held_out: tiles of {tile} cells are larger than the split's "
                               f"blocks {list(split.block)}; no tile lies inside one block.")
    blocks = block_splits((ds.sizes[ydim], ds.sizes[xdim]), (tile, tile), split.block,
                          split.fractions, split.seed)
    nty, ntx = int(emb.shape[0]), int(emb.shape[1])
    y0, x0 = np.arange(nty) * tile, np.arange(ntx) * tile
    by, bx = y0 // bh, x0 // bw
    inside = ((y0 + tile - 1) // bh == by)[:, None] & ((x0 + tile - 1) // bw == bx)[None, :]
    held = inside & (blocks[by[:, None], bx[None, :]] != 0)
    if emb.ndim == 4:  # one vector per time step: (ty, tx, t)
        held = np.broadcast_to(held[:, :, None], emb.shape[:3])
    return np.ascontiguousarray(held).reshape(-1)


def precision_at_k(vectors: np.ndarray, labels: np.ndarray, queries: np.ndarray,
                   k: int) -> np.ndarray:
    r"""Per-query precision@k of an exact inner-product search, the query excluded.

    Parameters
    ----------
    vectors : numpy.ndarray
        ``(N, F)`` centred, L2-normalised vectors (inner product = cosine).
    labels : numpy.ndarray
        ``(N,)`` class of each vector.
    queries : numpy.ndarray
        ``(Q,)`` positions of the query vectors.
    k : int
        Neighbours per query, ``1 <= k <= N - 1``. The exact search runs on a GPU when
        FAISS sees one (:func:`esdc.search.index.gpu_count`).

    Returns
    -------
    numpy.ndarray
        ``(Q,)`` fraction of each query's ``k`` nearest other vectors with its label:
        :math:`\frac{1}{k}\sum_{j=1}^{k} \mathbf{1}[\ell(n_{q,j}) = \ell(q)]`.
    """
    vec = np.ascontiguousarray(vectors, dtype="float32")
    _, nn = _exact_index(vec, k + 1).search(vec[queries], k + 1)
    keep = nn != queries[:, None]
    missing = keep.all(axis=1)  # the query tied with others and fell off the list
    keep[missing, -1] = False
    nn = nn[keep].reshape(len(queries), k)
    return (labels[nn] == labels[queries][:, None]).mean(axis=1)


def _exact_index(vec: np.ndarray, k: int) -> Any:
    """Exact inner-product FAISS index of ``vec`` ``(N, F)`` (on a GPU when FAISS sees one).

    ``k`` is the number of neighbours asked per query: above the GPU's limit (2048) the
    index stays on the CPU.
    """
    faiss = require_faiss()
    index = faiss.IndexFlatIP(vec.shape[1])
    if select_device("auto", "flat", gpu_count())[1] == "gpu" and k <= 2048:  # GPU k limit
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(np.ascontiguousarray(vec, dtype="float32"))
    return index


def _random_precision(labels: np.ndarray, queries: np.ndarray, k: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Per-query precision of ``k`` other tiles drawn uniformly without replacement."""
    n = len(labels)
    out = np.empty(len(queries))
    for i, q in enumerate(queries):
        pick = rng.choice(n - 1, size=k, replace=False)
        pick = pick + (pick >= q)  # skip the query itself
        out[i] = np.mean(labels[pick] == labels[q])
    return out


def _tile_pixels(cube: str | Path, ds: xr.Dataset, variable: str,
                 ids: np.ndarray, version: str | None = None) -> np.ndarray:
    """``(len(ids), C * W * W)`` normalised input pixels of the tiles ``ids`` (flat ids).

    ``W`` is the tile, or its context window (``tile + 2 * esdc_context``,
    :func:`esdc.ml.windows.tile_windows`) when the embedding was made from one.
    """
    emb = ds[variable]
    tile = int(emb.attrs[ATTR_TILE_SIZE])
    margin = int(emb.attrs.get(ATTR_CONTEXT, 0))
    inputs = [str(v) for v in emb.attrs[ATTR_INPUTS]]
    stream = PatchStream(str(cube), inputs, patch=(tile, tile), shuffle=False,
                         version=version)
    shape = tuple(int(s) for s in emb.shape[:-1])
    pos = np.full(int(np.prod(shape)), -1, dtype="int64")
    pos[ids] = np.arange(len(ids))
    out = np.zeros((len(ids), len(inputs) * (tile + 2 * margin) ** 2), dtype="float32")
    for b in tile_windows(stream, tile, margin, 512):
        ty, tx = b.index[:, 1] // tile, b.index[:, 2] // tile
        inside = (ty < shape[0]) & (tx < shape[1])
        if len(shape) == 3:
            flat = np.ravel_multi_index((ty[inside], tx[inside], b.index[inside, 0]), shape)
        else:
            flat = np.ravel_multi_index((ty[inside], tx[inside]), shape)
        p = pos[flat]
        sel = p >= 0
        if sel.any():  # a batch may hold only tiles left out (e.g. unlabelled polar tiles)
            out[p[sel]] = b.x[inside][sel].reshape(int(sel.sum()), -1)
    return out


def evaluate_search(cube: str | Path, label: str, variable: str | None = None, k: int = 10,
                    queries: int = 1000, seed: int = 0, version: str | None = None,
                    held_out: SplitSpec | None = None) -> dict[str, Any]:
    r"""Precision@k of the embedding search against a class label, with two baselines.

    Parameters
    ----------
    cube : str or path-like
        Cube with embeddings (no index is needed: the search here is exact).
    label : str
        Categorical variable giving each tile a class (mode over its cells,
        :func:`tile_labels`); tiles with mostly missing labels are left out.
    variable : str, optional
        Embedding variable (default: the smallest tile size).
    k : int
        Neighbours per query, ``1 <= k < N`` (``N`` labelled indexed tiles).
    queries : int
        Query tiles drawn without replacement (all tiles if fewer).
    seed : int
        Seed of the query sample, the random baseline and the PCA.
    version : str, optional
        Version of a versioned cube (a tag or snapshot id) whose embeddings and pixels
        are read (default: the newest).
    held_out : SplitSpec, optional
        The encoder's training ``split``: query tiles are drawn only among the tiles
        it never saw (:func:`held_out_tiles`); their neighbours are still searched among
        all tiles, and the PCA is fitted on all tiles as before.

    Returns
    -------
    dict
        ``{"label", "variable", "k", "queries", "held_out", "tiles", "seed", "precision_at_k":
        {"embedding", "pca_pixels", "random", "random_expected"}, "per_class": {class:
        {"name", "tiles", "share", "queries", "embedding", "pca_pixels", "random",
        "random_expected"}}, "macro_precision_at_k": {...}}``; ``macro_precision_at_k``
        is the mean of the per-class figures over the classes queried, which the
        majority class cannot dominate. Precision@k is
        :math:`\frac{1}{Q}\sum_q \frac{1}{k}\sum_{j\le k}\mathbf{1}[\ell(n_{q,j})=\ell(q)]`;
        ``random_expected`` is :math:`\sum_c p_c^2` overall and :math:`p_c` per class
        (the chance that a random other tile shares class :math:`c`).

    Raises
    ------
    CubeNotFoundError
        If there is no cube at ``cube``.
    StorageError
        If ``version`` names nothing, or the cube has no versions.
    SearchIndexError
        If the cube has no embeddings (or no valid vector), the label is unusable,
        ``k``/``queries`` are out of range, or ``held_out`` leaves no labelled tile.
    """
    from sklearn.decomposition import PCA

    ds, var, vec, ids, y, classes, names, q, rng = _labelled_sample(
        cube, label, variable, k, queries, seed, version, held_out)
    n = len(ids)
    emb_p = precision_at_k(vec, y, q, k)
    pixels = _tile_pixels(cube, ds, var, ids, version)
    ncomp = int(min(vec.shape[1], n, pixels.shape[1]))
    pcs = PCA(n_components=ncomp, random_state=seed).fit_transform(pixels)
    pca_vec = normalise(pcs, pcs.mean(axis=0).astype("float32"))
    pca_p = precision_at_k(pca_vec, y, q, k)
    rnd_p = _random_precision(y, q, k, rng)

    per_class, macro = _per_class(y, q, classes, names, {
        "embedding": emb_p, "pca_pixels": pca_p, "random": rnd_p})
    for c in per_class.values():
        c["random_expected"] = c["share"]
    macro["random_expected"] = float(np.mean([c["share"] for c in per_class.values()
                                              if c["queries"]]))
    share = np.unique(y, return_counts=True)[1] / n
    return {
        "label": label, "variable": var, "k": int(k), "queries": int(len(q)),
        "held_out": None if held_out is None else held_out.model_dump(mode="json"),
        "tiles": int(n), "seed": int(seed),
        "precision_at_k": {"embedding": float(emb_p.mean()), "pca_pixels": float(pca_p.mean()),
                           "random": float(rnd_p.mean()),
                           "random_expected": float(np.sum(share ** 2))},
        "macro_precision_at_k": macro,
        "per_class": per_class,
        **evaluate_scales(cube, label, k, queries, seed, version, held_out),
    }


def _scale_tiles(cube: str | Path, label: str, variable: str, version: str | None,
                 held_out: SplitSpec | None) -> dict[str, Any]:
    """One scale's labelled tiles: raw and normalised vectors, ids, labels, query pool."""
    ds, var, vec, ids, centre = read_embeddings(cube, variable, version)
    labels, ok, _, _ = tile_labels(ds, label, var)
    keep = ok[ids]
    raw = np.asarray(ds[var].values, dtype="float32").reshape(-1, vec.shape[1])
    pool, held = np.arange(int(keep.sum())), False
    if held_out is not None:
        try:
            pool = np.flatnonzero(held_out_tiles(ds, var, held_out)[ids[keep]])
            held = True
        except SearchIndexError:  # tiles larger than the split's blocks: every tile
            pass
    return {"scale": int(ds[var].attrs[ATTR_TILE_SIZE]), "variable": var,
            "shape": tuple(int(n) for n in ds[var].shape[:-1]), "ids": ids[keep],
            "raw": raw[ids[keep]], "vec": vec[keep], "centre": centre,
            "labels": labels[ids[keep]], "pool": pool, "held_out": held}


def evaluate_scales(cube: str | Path, label: str, k: int = 10, queries: int = 1000,
                    seed: int = 0, version: str | None = None,
                    held_out: SplitSpec | None = None) -> dict[str, Any]:
    r"""P@k per scale, within it and across every scale, and the scale consistency.

    Parameters
    ----------
    cube : str or path-like
        Cube with embeddings of one or more scales (tile sizes).
    label : str
        Categorical variable (:func:`tile_labels`); only labelled tiles are queried and
        searched.
    k : int
        Neighbours per query.
    queries : int
        Query tiles drawn per scale (all if fewer).
    seed : int
        Seed of the samples.
    version : str, optional
        Version of a versioned cube to read.
    held_out : SplitSpec, optional
        Draw queries among the tiles the encoder never saw, at each scale whose tiles
        fit the split's blocks (``held_out`` says where it applied).

    Returns
    -------
    dict
        ``{"per_scale": {scale: {"variable", "tiles", "queries", "held_out",
        "embedding", "all_scales", "neighbour_scales": {scale: share}}},
        "scale_consistency": {"k", "overall", "random_expected", "pairs": {"8->16":
        {"queries", "parent_in_top_k"}}} or None}`` (None with one scale);
        ``random_expected`` is the chance that a given tile is among ``k`` drawn at
        random from all the others, ``k / (N - 1)``. ``embedding`` is P@k
        within the query's scale; ``all_scales`` P@k of the merged search over every
        scale; ``neighbour_scales`` the share of each scale among those neighbours;
        ``parent_in_top_k`` the fraction of queries whose parent tile is among the
        ``k`` nearest of the merged search.

    Raises
    ------
    SearchIndexError
        If the cube has no embeddings or the label is unusable.
    """
    ds = open_cube(Path(cube), version=version)
    levels = [_scale_tiles(cube, label, v, version, held_out) for v in embedding_variables(ds)]
    levels = [lv for lv in levels if len(lv["ids"]) > k]
    indexes = [_exact_index(lv["vec"], k + 1) for lv in levels]
    rng = np.random.default_rng(seed)
    per_scale: dict[str, Any] = {}
    pairs: dict[str, Any] = {}
    for i, lv in enumerate(levels):
        q = np.sort(rng.choice(lv["pool"], size=min(queries, len(lv["pool"])), replace=False))
        if not len(q):
            continue
        within = precision_at_k(lv["vec"], lv["labels"], q, k)
        hits: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (sims, level, pos)
        for j, (other, index) in enumerate(zip(levels, indexes, strict=True)):
            sims, nn = index.search(normalise(lv["raw"][q], other["centre"]), k + 1)
            if j == i:
                sims = np.where(nn == q[:, None], -np.inf, sims)  # the query itself
            hits.append((sims, np.full(nn.shape, j), nn))
        sims, lev, pos = (np.concatenate([h[n] for h in hits], axis=1) for n in range(3))
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        lev, pos = np.take_along_axis(lev, top, 1), np.take_along_axis(pos, top, 1)
        lab = np.array([[levels[a]["labels"][b] for a, b in zip(ra, rb, strict=True)]
                        for ra, rb in zip(lev, pos, strict=True)])
        across = (lab == lv["labels"][q][:, None]).mean(axis=1)
        per_scale[str(lv["scale"])] = {
            "variable": lv["variable"], "tiles": int(len(lv["ids"])), "queries": int(len(q)),
            "held_out": lv["held_out"], "embedding": float(within.mean()),
            "all_scales": float(across.mean()),
            "neighbour_scales": {str(o["scale"]): float(np.mean(lev == j))
                                 for j, o in enumerate(levels)}}
        if i + 1 < len(levels):
            pairs[f"{lv['scale']}->{levels[i + 1]['scale']}"] = _parents_found(
                lv, levels[i + 1], q, lev == i + 1, pos)
    if len(levels) < 2:
        return {"per_scale": per_scale, "scale_consistency": None}
    n = sum(p["queries"] for p in pairs.values())
    overall = sum(p["parent_in_top_k"] * p["queries"] for p in pairs.values()) / max(n, 1)
    chance = k / max(1, sum(len(lv["ids"]) for lv in levels) - 1)
    return {"per_scale": per_scale,
            "scale_consistency": {"k": int(k), "overall": float(overall),
                                  "random_expected": float(chance), "pairs": pairs}}


def _parents_found(lv: dict[str, Any], up: dict[str, Any], q: np.ndarray,
                   at_up: np.ndarray, pos: np.ndarray) -> dict[str, Any]:
    """How often the parent (next scale's tile holding the centre) is among the results."""
    tile = np.unravel_index(lv["ids"][q], lv["shape"])
    centre = [(np.asarray(a) * lv["scale"] + lv["scale"] // 2) // up["scale"] for a in tile[:2]]
    inside = (centre[0] < up["shape"][0]) & (centre[1] < up["shape"][1])
    where = np.full(int(np.prod(up["shape"])), -1, dtype="int64")
    where[up["ids"]] = np.arange(len(up["ids"]))
    parent = np.full(len(q), -1, dtype="int64")
    flat = np.ravel_multi_index((centre[0][inside], centre[1][inside], *(
        [np.asarray(tile[2])[inside]] if len(tile) == 3 else [])), up["shape"])
    parent[inside] = where[flat]
    has = parent >= 0
    found = (at_up & (pos == parent[:, None])).any(axis=1)
    return {"queries": int(has.sum()),
            "parent_in_top_k": float(found[has].mean()) if has.any() else 0.0}


def _labelled_sample(cube: str | Path, label: str, variable: str | None, k: int, queries: int,
                     seed: int, version: str | None = None, held_out: SplitSpec | None = None
                     ) -> tuple[xr.Dataset, str, np.ndarray, np.ndarray, np.ndarray,
                                np.ndarray, list[str] | None, np.ndarray, np.random.Generator]:
    """The labelled tiles of an embedding and a seeded sample of query positions.

    Returns ``(ds, variable, vectors (N, F), ids (N,), labels (N,), classes, names,
    queries (Q,) sorted positions into the N tiles, rng)``; with ``held_out`` the
    queries are drawn among the tiles :func:`held_out_tiles` gives. Raises
    SearchIndexError as :func:`evaluate_search`.
    """
    if queries < 1:
        raise SearchIndexError(f"queries={queries} must be at least 1.")
    ds, var, vec, ids, _ = read_embeddings(cube, variable, version)
    labels, ok, classes, names = tile_labels(ds, label, var)
    keep = ok[ids]
    vec, ids = vec[keep], ids[keep]
    y = labels[ids]
    n = len(ids)
    if n < 2:
        raise SearchIndexError(f"only {n} tile(s) of {var!r} have both an embedding and a "
                               f"{label!r} label; nothing to evaluate.")
    if not 1 <= k <= n - 1:
        raise SearchIndexError(f"k = {k} must be between 1 and {n - 1} (labelled indexed "
                               "tiles minus the query).")
    pool = np.arange(n) if held_out is None else \
        np.flatnonzero(held_out_tiles(ds, var, held_out)[ids])
    if held_out is not None and not len(pool):
        raise SearchIndexError(f"held_out: no labelled tile of {var!r} lies in a validation "
                               f"or test block of the split {held_out.model_dump()}.")
    rng = np.random.default_rng(seed)
    q = np.sort(rng.choice(pool, size=min(queries, len(pool)), replace=False))
    return ds, var, vec, ids, y, classes, names, q, rng


def _per_class(y: np.ndarray, q: np.ndarray, classes: np.ndarray, names: list[str] | None,
               figures: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-class and macro means of per-query figures ``(Q,)`` (or ``(Q, R)``: a list of R).

    Returns ``(per_class, macro)``: ``per_class[key]`` holds ``name``, ``tiles``,
    ``share``, ``queries`` and each figure's mean over the class's queries (None when
    none); ``macro`` each figure's mean over the classes queried.
    """
    def mean(a: np.ndarray) -> Any:
        m = np.asarray(a, dtype="float64").mean(axis=0)
        return float(m) if m.ndim == 0 else [float(v) for v in m]

    present, counts = np.unique(y, return_counts=True)
    per_class: dict[str, Any] = {}
    for c, cnt in zip(present, counts, strict=True):
        m = y[q] == c
        key = str(int(c)) if float(c).is_integer() else str(c)
        idx = np.flatnonzero(classes == c)
        per_class[key] = {
            "name": names[int(idx[0])] if names is not None and idx.size else None,
            "tiles": int(cnt), "share": float(cnt / len(y)), "queries": int(m.sum()),
            **{f: mean(v[m]) if m.any() else None for f, v in figures.items()}}
    asked = [c for c in per_class.values() if c["queries"]]
    macro = {f: mean(np.asarray([c[f] for c in asked])) for f in figures}
    return per_class, macro


def evaluate_refinement(cube: str | Path, label: str, variable: str | None = None,
                        k: int = 10, rounds: int = 2, clicks: int = 5, queries: int = 1000,
                        seed: int = 0, negative_weight: float = NEGATIVE_WEIGHT,
                        version: str | None = None,
                        held_out: SplitSpec | None = None) -> dict[str, Any]:
    r"""Precision@k after rounds of simulated relevance feedback, against no refinement.

    For each query tile (drawn as in :func:`evaluate_search`, among the labelled
    tiles) a simulated user reads the ranking shown (the ``k`` nearest tiles not yet
    judged, first by exact cosine search from the query tile) from the top and clicks
    the first ``clicks`` tiles: *more like this* when a tile has the query's label,
    *not this* otherwise. The query tile and the tiles clicked so far are the
    positives and negatives of a Rocchio query (:func:`esdc.search.feedback.rocchio`,
    what :meth:`esdc.search.query.SearchEngine.refine` searches), and the new
    ranking shows the ``k`` nearest tiles not yet judged. After each round:

    ``refined``
        :math:`P@k` of the refined ranking (judged tiles left out).
    ``none_residual``
        :math:`P@k` of the first, unrefined ranking with the same judged tiles left
        out (what paging on through the first answer shows): the fair comparison,
        since the refined ranking may not show judged tiles either ("residual
        collection", Salton and Buckley 1990, *JASIS* 41(4), 288-297).
    ``none``
        :math:`P@k` of the first ranking, the query left out (no refinement; the
        ``embedding`` figure of :func:`evaluate_search` for the same sample).

    Parameters
    ----------
    cube : str or path-like
        Cube with embeddings (no index is needed: the searches are exact).
    label : str
        Categorical variable giving each tile a class (:func:`tile_labels`).
    variable : str, optional
        Embedding variable (default: the smallest tile size).
    k : int
        Ranking length; ``clicks <= k`` and ``k + 1 + rounds * clicks`` at most the
        labelled tiles.
    rounds : int
        Rounds of feedback, >= 1.
    clicks : int
        Tiles judged per round, >= 1.
    queries : int
        Query tiles drawn without replacement (all tiles if fewer).
    seed : int
        Seed of the query sample.
    negative_weight : float
        Rocchio weight of the negatives (:data:`esdc.search.feedback.NEGATIVE_WEIGHT`).
    version : str, optional
        Version of a versioned cube (a tag or snapshot id) to read (default: the newest).
    held_out : SplitSpec, optional
        The encoder's training ``split``: query tiles only among those it never saw
        (:func:`held_out_tiles`).

    Returns
    -------
    dict
        ``{"label", "variable", "k", "rounds", "clicks", "queries", "tiles", "seed",
        "negative_weight", "precision_at_k": {"none", "none_residual": [per round],
        "refined": [per round]}, "positive_clicks": [mean positives clicked per round],
        "macro_precision_at_k": {...}, "per_class": {class: {"name", "tiles", "share",
        "queries", "none", "none_residual", "refined"}}}``; macro figures are means over
        the classes queried.

    Raises
    ------
    CubeNotFoundError
        If there is no cube at ``cube``.
    SearchIndexError
        If the cube has no embeddings, the label is unusable, or ``k``, ``rounds``,
        ``clicks``, ``queries`` or ``negative_weight`` are out of range.
    """
    if rounds < 1 or clicks < 1 or clicks > k:
        raise SearchIndexError(f"rounds={rounds} and clicks={clicks} must be at least 1, and "
                               f"clicks at most k = {k} (the tiles shown).")
    ds, var, vec, ids, y, classes, names, q, _ = _labelled_sample(cube, label, variable, k,
                                                                  queries, seed, version,
                                                                  held_out)
    depth = k + 1 + rounds * clicks  # enough to show k tiles after every judged one
    if depth > len(ids):
        raise SearchIndexError(f"k + 1 + rounds x clicks = {depth} is more than the "
                               f"{len(ids)} labelled tiles.")
    index = _exact_index(vec, depth)
    _, first = index.search(vec[q], depth)
    judged = [[int(i)] for i in q]
    marked = [([int(i)], []) for i in q]  # (positives, negatives) per query
    shown = [_unjudged(row, j, k) for row, j in zip(first, judged, strict=True)]
    target = y[q]
    none = np.array([np.mean(y[s] == c) for s, c in zip(shown, target, strict=True)])
    refined = np.zeros((len(q), rounds))
    residual = np.zeros((len(q), rounds))
    positives = np.zeros(rounds)
    for r in range(rounds):
        qv = np.empty((len(q), vec.shape[1]), dtype="float32")
        for j, (pos, neg) in enumerate(marked):
            for i in shown[j][:clicks]:
                hit = bool(y[i] == target[j])
                (pos if hit else neg).append(int(i))
                judged[j].append(int(i))
                positives[r] += hit
            qv[j] = rocchio(vec[pos], vec[neg], negative_weight)
        _, nn = index.search(qv, k + len(judged[0]))
        for j in range(len(q)):
            shown[j] = _unjudged(nn[j], judged[j], k)
            refined[j, r] = np.mean(y[shown[j]] == target[j])
            residual[j, r] = np.mean(y[_unjudged(first[j], judged[j], k)] == target[j])
    figures = {"none": none, "none_residual": residual, "refined": refined}
    per_class, macro = _per_class(y, q, classes, names, figures)
    return {
        "label": label, "variable": var, "k": int(k), "rounds": int(rounds),
        "clicks": int(clicks), "queries": int(len(q)), "tiles": int(len(ids)),
        "seed": int(seed), "negative_weight": float(negative_weight),
        "precision_at_k": {"none": float(none.mean()),
                           "none_residual": [float(v) for v in residual.mean(axis=0)],
                           "refined": [float(v) for v in refined.mean(axis=0)]},
        "positive_clicks": [float(v) for v in positives / len(q)],
        "macro_precision_at_k": macro, "per_class": per_class,
    }


def _unjudged(row: np.ndarray, judged: list[int], k: int) -> np.ndarray:
    """The first ``k`` entries of a ranking ``row`` that are not ``judged`` (nor -1)."""
    skip = set(judged)
    return np.asarray([int(i) for i in row if i >= 0 and int(i) not in skip][:k], dtype="int64")
