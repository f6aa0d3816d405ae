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
    cube's statistics as the encoder saw them, flattened) reduced by PCA to the
    embedding's dimension and searched the same way (exact FAISS index of centred,
    L2-normalised vectors). An embedding worth its training beats this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from esdc.conventions import (
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
from esdc.search.feedback import NEGATIVE_WEIGHT, rocchio
from esdc.search.index import (
    gpu_count,
    normalise,
    read_embeddings,
    require_faiss,
    select_device,
)

__all__ = ["evaluate_refinement", "evaluate_search", "held_out_tiles", "precision_at_k",
           "tile_labels"]


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
    """``(len(ids), C * T * T)`` normalised input pixels of the tiles ``ids`` (flat ids)."""
    emb = ds[variable]
    tile = int(emb.attrs[ATTR_TILE_SIZE])
    inputs = [str(v) for v in emb.attrs[ATTR_INPUTS]]
    stream = PatchStream(str(cube), inputs, patch=(tile, tile), shuffle=False,
                         version=version)
    shape = tuple(int(s) for s in emb.shape[:-1])
    pos = np.full(int(np.prod(shape)), -1, dtype="int64")
    pos[ids] = np.arange(len(ids))
    out = np.zeros((len(ids), len(inputs) * tile * tile), dtype="float32")
    for b in stream.batches(512):
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
    }


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
