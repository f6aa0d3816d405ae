"""The scikit-learn estimators behind ``framework: sklearn`` model kinds.

Used by the config schema (:mod:`esdc.ml.config` checks searched parameters against the
estimator) and by the scikit-learn fitter (:mod:`esdc.ml.fit.sklearn`). scikit-learn is
imported inside the functions: loading a config never imports it unless it names a
scikit-learn model with a search.
"""

from __future__ import annotations

from typing import Any

from esdc.errors import EsdcError

__all__ = ["estimator_class", "make_estimator", "require_sklearn"]


def require_sklearn() -> None:
    """Check that scikit-learn can be imported.

    Raises
    ------
    EsdcError
        Naming the extra to install when it cannot.
    """
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise EsdcError("scikit-learn is not installed: pip install 'esdc[ml]'.") from None


def estimator_class(kind: str, task: str) -> type:
    """The scikit-learn estimator class of a model kind and task.

    Parameters
    ----------
    kind : {"random_forest", "sgd"}
        ``model.kind`` of a training config.
    task : {"classification", "regression"}
        The config's task.

    Returns
    -------
    type
        ``RandomForestClassifier``/``RandomForestRegressor`` or
        ``SGDClassifier``/``SGDRegressor``.

    Raises
    ------
    EsdcError
        If scikit-learn is not installed.
    """
    require_sklearn()
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.linear_model import SGDClassifier, SGDRegressor

    clf = task == "classification"
    if kind == "random_forest":
        return RandomForestClassifier if clf else RandomForestRegressor
    return SGDClassifier if clf else SGDRegressor


def make_estimator(kind: str, task: str, params: dict[str, Any], seed: int = 0) -> Any:
    """An unfitted estimator of a model kind with the config's ``model`` parameters.

    Random forests get ``n_jobs=1`` unless ``params`` says otherwise: parallelism comes
    from the cluster, one fit per task.

    Parameters
    ----------
    kind, task : str
        As in :func:`estimator_class`.
    params : dict
        Keyword parameters of the estimator (``model`` without ``kind``).
    seed : int
        ``random_state``.

    Returns
    -------
    sklearn.base.BaseEstimator
    """
    cls = estimator_class(kind, task)
    extra = {"n_jobs": 1} if kind == "random_forest" else {}
    return cls(random_state=seed, **{**extra, **params})
