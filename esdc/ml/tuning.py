"""Hyperparameter search for the scikit-learn trainers, fitted in parallel on Dask workers.

A ``search:`` block in a training config (:class:`~esdc.ml.config.SearchSpec`) turns the
single fit of :func:`esdc.ml.train.train` into a cross-validated search: scikit-learn's
:class:`~sklearn.model_selection.GridSearchCV` or
:class:`~sklearn.model_selection.RandomizedSearchCV` over the pixels of the *train*
split, with folds made of whole **spatial blocks** (the blocks of the config's
``split.block`` that also separate train, validation and test), so that neighbouring,
autocorrelated pixels never sit on both sides of a fold (Roberts et al. 2017,
Ecography 40, 913-929). Every (candidate, fold) fit is a task on the Dask cluster
through joblib's ``dask`` backend (``joblib.parallel_config(backend="dask")``); inside
a Dask task the client is the worker's own (joblib secedes from the worker's thread
pool while it waits). The best candidate is refitted on all training pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from esdc.errors import TrainConfigError
from esdc.ml.config import SearchSpec, TrainConfig
from esdc.ml.patches import block_splits

__all__ = ["DEFAULT_SCORING", "SearchOutcome", "block_ids", "check_search_blocks",
           "run_search", "spatial_folds"]

DEFAULT_SCORING = {"classification": "accuracy", "regression": "neg_root_mean_squared_error"}


def block_ids(rows: np.ndarray, cols: np.ndarray, block: tuple[int, int],
              nx: int) -> np.ndarray:
    """Spatial block id of each pixel.

    Parameters
    ----------
    rows, cols : numpy.ndarray
        ``(N,)`` integer row and column indices of pixels in the cube's grid.
    block : (int, int)
        Block size ``(by, bx)`` in cells (``split.block`` of the config).
    nx : int
        Columns of the grid.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` int64 ids ``(row // by) * ceil(nx / bx) + col // bx``, the blocks of
        :func:`esdc.ml.patches.block_splits` in row-major order.
    """
    nbx = -(-nx // block[1])
    return (np.asarray(rows, dtype=np.int64) // block[0]) * nbx + (
        np.asarray(cols, dtype=np.int64) // block[1])


def spatial_folds(groups: np.ndarray, n_splits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation folds made of whole spatial blocks.

    :class:`sklearn.model_selection.GroupKFold` with the block ids as groups: each block
    is in the validation part of exactly one fold and never in its training part;
    folds are balanced by pixel count.

    Parameters
    ----------
    groups : numpy.ndarray
        ``(N,)`` block id of each pixel (:func:`block_ids`).
    n_splits : int
        Number of folds (``search.cv``).

    Returns
    -------
    list of (numpy.ndarray, numpy.ndarray)
        ``(train_index, validation_index)`` per fold, indices into ``groups``.

    Raises
    ------
    TrainConfigError
        If there are fewer blocks than folds.
    """
    from sklearn.model_selection import GroupKFold

    n_blocks = len(np.unique(groups))
    if n_splits > n_blocks:
        raise TrainConfigError(f"search.cv: {n_splits} folds need at least {n_splits} spatial "
                               f"blocks with valid training pixels, but the train split has "
                               f"{n_blocks}; lower search.cv or make split.block smaller.")
    return list(GroupKFold(n_splits=n_splits).split(np.zeros(len(groups)), groups=groups))


def check_search_blocks(cfg: TrainConfig, shape: tuple[int, int]) -> None:
    """Fail early when ``search.cv`` exceeds the spatial blocks of the train split.

    Counts the train blocks of :func:`esdc.ml.patches.block_splits` for a grid of
    ``shape`` (``(ny, nx)`` cells); blocks without valid pixels are found later, on the
    worker, by :func:`spatial_folds`.

    Raises
    ------
    TrainConfigError
        Naming ``search.cv`` when there are more folds than train blocks.
    """
    if cfg.search is None:
        return
    labels = block_splits(shape, cfg.patch, cfg.split.block, cfg.split.fractions,
                          cfg.split.seed)
    n = int((labels == 0).sum())
    if cfg.search.cv > n:
        raise TrainConfigError(f"search.cv: {cfg.search.cv} folds need at least "
                               f"{cfg.search.cv} spatial blocks, but the train split of this "
                               f"{shape[0]}x{shape[1]} grid has {n} blocks of "
                               f"{list(cfg.split.block)} cells; lower search.cv or make "
                               "split.block smaller.")


@dataclass
class SearchOutcome:
    """Result of :func:`run_search`.

    Attributes
    ----------
    estimator : object
        The best candidate refitted on all training pixels.
    best_params : dict
        Its parameters (those searched).
    best_score, best_score_std : float
        Mean and standard deviation of its validation score over the folds (in units
        of ``scoring``; ``neg_*`` scorers are negated so that higher is better).
    scoring : str
        The scikit-learn scorer name.
    cv_results : pandas.DataFrame
        One row per candidate: ``param_<name>`` columns, ``mean_test_score``,
        ``std_test_score``, ``rank_test_score``, ``split<k>_test_score``, fit times.
    folds : pandas.DataFrame
        One row per spatial block: ``block``, ``block_y``, ``block_x`` (block indices),
        ``fold`` (the fold it validates), ``pixels``.
    backend : str
        joblib backend that ran the fits (``dask`` or ``loky`` without a Dask client).
    """

    estimator: Any
    best_params: dict[str, Any]
    best_score: float
    best_score_std: float
    scoring: str
    cv_results: pd.DataFrame
    folds: pd.DataFrame
    backend: str


def _distributions(spec: SearchSpec) -> dict[str, Any]:
    from scipy import stats

    out: dict[str, Any] = {}
    for name, d in (spec.distributions or {}).items():
        if isinstance(d, list):
            out[name] = d
        elif d.dist == "randint":
            out[name] = stats.randint(int(d.low), int(d.high) + 1)
        elif d.dist == "uniform":
            out[name] = stats.uniform(d.low, d.high - d.low)
        else:
            out[name] = stats.loguniform(d.low, d.high)
    return out


def _dask_client() -> Any | None:
    try:
        from distributed import get_client
    except ImportError:  # pragma: no cover - distributed is a core dependency
        return None
    try:
        return get_client()
    except ValueError:
        return None


def run_search(estimator: Any, spec: SearchSpec, task: str, x: np.ndarray, y: np.ndarray,
               groups: np.ndarray, nx_blocks: int, seed: int = 0) -> SearchOutcome:
    """Cross-validated hyperparameter search over spatial-block folds, fits on Dask.

    Parameters
    ----------
    estimator : object
        Unfitted scikit-learn estimator carrying the fixed parameters.
    spec : SearchSpec
        The config's ``search`` block (grid, or distributions and ``n_iter``; scoring;
        number of folds).
    task : {"classification", "regression"}
        Chooses the default scoring (``accuracy`` / ``neg_root_mean_squared_error``).
    x : numpy.ndarray
        ``(N, C)`` float32 training pixels (normalised channels).
    y : numpy.ndarray
        ``(N,)`` targets.
    groups : numpy.ndarray
        ``(N,)`` spatial block id of each pixel (:func:`block_ids`).
    nx_blocks : int
        Blocks per row of the grid (to report block rows and columns).
    seed : int
        Seed of the random sampler of ``distributions``.

    Returns
    -------
    SearchOutcome

    Raises
    ------
    TrainConfigError
        With fewer spatial blocks than folds.

    Notes
    -----
    With a Dask client (inside a Dask task: the worker's client) every batch of
    (candidate, fold) fits is a Dask task named ``batch_of__fit_and_score_<n>_calls-…``
    (joblib's ``dask`` backend). Without one, joblib's default (loky) backend runs
    them on local processes.
    """
    import joblib
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV

    folds = spatial_folds(groups, spec.cv)
    scoring = spec.scoring or DEFAULT_SCORING[task]
    common = dict(scoring=scoring, cv=folds, n_jobs=-1, refit=True, error_score="raise")
    if spec.grid is not None:
        searcher = GridSearchCV(estimator, spec.grid, **common)
    else:
        searcher = RandomizedSearchCV(estimator, _distributions(spec), n_iter=spec.n_iter or 10,
                                      random_state=seed, **common)
    client = _dask_client()
    backend = "dask" if client is not None else "loky"
    if client is not None:
        # broadcast the pixels once to every worker: tasks need not queue where data is
        with joblib.parallel_config(backend="dask", client=client, scatter=[x, y]):
            searcher.fit(x, y)
    else:
        searcher.fit(x, y)
    res = pd.DataFrame(searcher.cv_results_)
    keep = [c for c in res.columns if c.startswith("param_")] + [
        c for c in res.columns if c.endswith(("_test_score", "_time"))]
    res = res[keep].astype({c: object for c in keep if c.startswith("param_")})
    best = int(searcher.best_index_)
    fold_of = np.empty(len(groups), dtype=np.int64)
    for k, (_, val) in enumerate(folds):
        fold_of[val] = k
    blocks = pd.DataFrame({"block": groups, "fold": fold_of})
    table = blocks.groupby("block").agg(fold=("fold", "first"), pixels=("fold", "size"))
    table = table.reset_index()
    table.insert(1, "block_y", table["block"] // nx_blocks)
    table.insert(2, "block_x", table["block"] % nx_blocks)
    best_params = {k: v.item() if isinstance(v, np.generic) else v  # JSON-safe
                   for k, v in searcher.best_params_.items()}
    return SearchOutcome(searcher.best_estimator_, best_params,
                         float(searcher.best_score_), float(res["std_test_score"][best]),
                         scoring, res, table, backend)
