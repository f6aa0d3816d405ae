"""scikit-learn fitter: random forests and SGD models on the pixels of the patches.

A random forest is fitted in memory on at most ``max_train_pixels`` valid training pixels;
an SGD model is fitted with ``partial_fit`` over the streamed training batches, epoch by
epoch. With a ``search`` block the estimator is chosen by spatial-block cross-validation
on the Dask cluster (:mod:`esdc.ml.tuning`) and the best candidate refitted. Models are
saved with skops (loads without executing code after a check of its types).

scikit-learn and skops are an optional extra: ``pip install 'esdc[ml]'``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from skops.io import dump

from esdc.ml.config import SearchSpec, TrainConfig
from esdc.ml.estimators import make_estimator
from esdc.ml.fit import FitContext, FitResult, Fitter
from esdc.ml.metrics import baseline, metric_name, score
from esdc.ml.patches import PatchStream
from esdc.ml.pixels import batch_pixels, valid_pixels
from esdc.ml.tracking import log_search
from esdc.ml.tuning import block_ids, run_search

__all__ = ["FITTER", "fit"]


def fit(cfg: TrainConfig, ctx: FitContext) -> FitResult:
    """Fit the config's scikit-learn model on the train split; test it; save it.

    Parameters
    ----------
    cfg : TrainConfig
        ``framework: sklearn``; ``model.kind`` ``random_forest`` or ``sgd``; optional
        ``search``.
    ctx : FitContext
        Splits, output folder and epoch logger.

    Returns
    -------
    FitResult
        Accuracy or RMSE on the test pixels, the baseline's, ``model.skops``; after a
        search also its best parameters and spatial-CV score.

    Raises
    ------
    TrainConfigError
        Without valid pixels in a split, or (``sgd`` classification) without classes.
    """
    streams = ctx.streams
    x_te, y_te = valid_pixels(streams["test"], cfg.max_train_pixels, cfg.seed + 1)
    est = make_estimator(cfg.model_kind, cfg.task, cfg.model_params, cfg.seed)
    extra: dict[str, Any] = {}
    if cfg.search is not None:
        x_tr, y_tr, rows, cols = valid_pixels(streams["train"], cfg.max_train_pixels,
                                              cfg.seed, coords=True)
        est, extra = _search(cfg, cfg.search, est, streams["train"], x_tr, y_tr, rows,
                             cols)
    else:
        x_tr, y_tr = valid_pixels(streams["train"], cfg.max_train_pixels, cfg.seed)
        if cfg.model_kind == "random_forest":
            est.fit(x_tr, y_tr)
        else:  # sgd: partial_fit over the streamed batches, epoch by epoch
            _partial_fit(cfg, ctx, est, x_tr, y_tr)
    test = score(cfg.task, y_te, est.predict(x_te))
    path = ctx.out / "model.skops"
    dump(est, path)
    return FitResult(metric_name(cfg.task), test, baseline(cfg.task, y_tr, y_te),
                     model_file=path, **extra)


def _partial_fit(cfg: TrainConfig, ctx: FitContext, est: Any, x_tr: np.ndarray,
                 y_tr: np.ndarray) -> None:
    """``partial_fit`` over the training batches, ``cfg.epochs`` times; log the train score."""
    classes = ctx.classes(cfg)
    for epoch in range(cfg.epochs):
        for b in ctx.streams["train"].batches(cfg.batch_size, epoch):
            x, y, keep = batch_pixels(b)
            if keep.any():
                if classes is not None:
                    est.partial_fit(x[keep], y[keep], classes=classes)
                else:
                    est.partial_fit(x[keep], y[keep])
        ctx.log(epoch, {"train_score": float(est.score(x_tr, y_tr))})


def _search(cfg: TrainConfig, spec: SearchSpec, est: Any, stream: PatchStream, x: np.ndarray,
            y: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """Spatial-block CV search on the Dask cluster, logged to MLflow; the best estimator."""
    block = cfg.split.block
    res = run_search(est, spec, cfg.task, x, y,
                     block_ids(rows, cols, block, stream.nx), -(-stream.nx // block[1]),
                     cfg.seed)
    log_search(res)
    return res.estimator, {"cv_score": res.best_score, "cv_scoring": res.scoring,
                           "best_params": res.best_params}


FITTER = Fitter("sklearn", fit)
