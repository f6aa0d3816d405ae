"""Held-out scores, trivial baselines and class lists shared by every fitter.

A leaf of :mod:`esdc.ml`: NumPy and :mod:`esdc.errors` only, so the fitters of
:mod:`esdc.ml.fit` (scikit-learn, PyTorch, Keras, SimSiam) score their models the same way
without importing one another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from esdc.errors import TrainConfigError

__all__ = ["METRICS", "Evaluation", "baseline", "class_values", "metric_name", "score"]

#: Held-out metric of each supervised task.
METRICS = {"classification": "accuracy", "regression": "rmse"}


def metric_name(task: str) -> str:
    """The held-out metric of a supervised ``task``: ``accuracy`` or ``rmse``.

    Raises
    ------
    TrainConfigError
        If the task is not ``classification`` or ``regression``.
    """
    try:
        return METRICS[task]
    except KeyError:
        raise TrainConfigError(f"task {task!r} has no held-out metric; supervised tasks are "
                               f"{sorted(METRICS)}.") from None


def score(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The task's metric of predictions.

    Parameters
    ----------
    task : {"classification", "regression"}
        Classification scores accuracy (fraction of equal values, 0..1); regression
        scores the root mean squared error (in the target's units).
    y_true, y_pred : numpy.ndarray
        ``(N,)`` true and predicted values of the same pixels.

    Returns
    -------
    float
    """
    if task == "classification":
        return float(np.mean(y_true == y_pred))
    return float(np.sqrt(np.mean((y_true - y_pred) ** 2)))


def baseline(task: str, y_train: np.ndarray, y_test: np.ndarray) -> float:
    """The metric of a trivial model on the test pixels.

    The majority class of the training pixels (classification) or their mean
    (regression), predicted everywhere.

    Parameters
    ----------
    task : {"classification", "regression"}
        As in :func:`score`.
    y_train : numpy.ndarray
        ``(N,)`` training targets.
    y_test : numpy.ndarray
        ``(M,)`` test targets.

    Returns
    -------
    float
    """
    if task == "classification":
        vals, counts = np.unique(y_train, return_counts=True)
        return score(task, y_test, np.full_like(y_test, vals[np.argmax(counts)]))
    return score(task, y_test, np.full_like(y_test, float(np.mean(y_train))))


@dataclass(frozen=True)
class Evaluation:
    """A model's held-out metric against a trivial baseline's.

    Attributes
    ----------
    metric : str
        Name of the held-out metric: ``accuracy``, ``rmse`` or ``simsiam_loss``.
    test : float
        The model's metric on the test split (the validation split for an encoder).
    baseline : float
        The same metric of a trivial model (majority class, training mean, or the
        untrained encoder).
    cv_score, cv_scoring, best_params : float, str, dict or None
        After a hyperparameter search: the best candidate's mean spatial-CV score, the
        scorer and the candidate's parameters (None otherwise).
    """

    metric: str
    test: float
    baseline: float
    cv_score: float | None = None
    cv_scoring: str | None = None
    best_params: dict[str, Any] | None = None

    @property
    def beats_baseline(self) -> bool:
        """True when the model is better than the baseline (higher accuracy, lower loss)."""
        if self.metric == "accuracy":
            return self.test > self.baseline
        return self.test < self.baseline


def class_values(attrs: dict[str, Any], target: str,
                 classes: Sequence[int] | None = None) -> np.ndarray:
    """The class values of a classification target, in the order of the model's outputs.

    Parameters
    ----------
    attrs : dict
        The target variable's attributes (``ds[target].attrs``).
    target : str
        Its name (for the message).
    classes : sequence of int, optional
        The config's ``classes``; when given they are used as they are.

    Returns
    -------
    numpy.ndarray
        ``(K,)`` class values: ``classes`` or the target's CF ``flag_values``.

    Raises
    ------
    TrainConfigError
        If neither is there.
    """
    if classes is not None:
        return np.asarray(classes)
    flags = attrs.get("flag_values")
    if flags is None:
        raise TrainConfigError(f"target {target!r} has no flag_values; give `classes` in the "
                               "config for a classification.")
    return np.asarray(flags)
