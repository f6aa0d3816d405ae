"""MLflow tracking of training runs: where runs are stored and what every run records.

Shared by :func:`esdc.ml.train.train` and the fitters of :mod:`esdc.ml.fit`, so that
every framework's run has the same parameters, tags, metric names and artifact layout
(``model/`` holds the saved model; a search adds ``search/``). MLflow is imported inside
the functions: :func:`default_tracking_uri` stays cheap for the CLI and model cards.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from esdc.ml.tuning import SearchOutcome

__all__ = ["default_tracking_uri", "log_config", "log_epoch", "log_outcome", "log_search",
           "start_run"]


def default_tracking_uri() -> str:
    """``sqlite:///`` file ``mlruns.db`` in the current directory (MLflow 3 refuses ./mlruns)."""
    return f"sqlite:///{Path.cwd() / 'mlruns.db'}"


@contextmanager
def start_run(experiment: str, tracking_uri: str | None = None) -> Iterator[Any]:
    """Start an MLflow run of ``experiment`` (created on first use).

    With a ``sqlite:///`` store, a new experiment keeps its artifacts in ``mlruns/``
    beside the SQLite file, not in whatever the Dask worker's working directory is.

    Parameters
    ----------
    experiment : str
        Experiment name (the config's ``name``).
    tracking_uri : str, optional
        MLflow tracking URI; :func:`default_tracking_uri` when omitted.

    Yields
    ------
    mlflow.ActiveRun
        The active run (``run.info.run_id``).
    """
    import mlflow

    uri = tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None and uri.startswith("sqlite:///"):
        root = Path(uri.removeprefix("sqlite:///")).parent / "mlruns"
        mlflow.create_experiment(experiment, artifact_location=root.resolve().as_uri())
    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        yield run


def log_config(params: dict[str, Any], tags: dict[str, str]) -> None:
    """Log a config's fields as run parameters (lists and mappings as JSON) and tags.

    Parameters
    ----------
    params : dict
        Run parameters (``TrainConfig.model_dump()``); lists, tuples and dicts are logged
        as JSON text.
    tags : dict of str to str
        Run tags (``esdc.cube``, ``esdc.device``, ...).
    """
    import mlflow

    mlflow.log_params({k: json.dumps(v) if isinstance(v, (dict, list, tuple)) else v
                       for k, v in params.items()})
    mlflow.set_tags(tags)


def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
    """Log one epoch's metrics (``train_loss``, ``val_*``) at step ``epoch``.

    Parameters
    ----------
    epoch : int
        Epoch number, from 0 (the metrics' MLflow step).
    metrics : dict of str to float
        Metric name -> value (losses and scores in the units of the task's metric).
    """
    import mlflow

    mlflow.log_metrics(metrics, step=epoch)


def log_outcome(metric: str, test: float, baseline: float, model_dir: Path) -> str:
    """Log the held-out metric and the baseline's, and the model files; return their URI.

    Parameters
    ----------
    metric : str
        Metric name (``accuracy``, ``rmse``, ``simsiam_loss``); logged as
        ``test_<metric>`` and ``baseline_<metric>``.
    test, baseline : float
        The model's and the baseline's values.
    model_dir : pathlib.Path
        Folder of the saved model; every file goes to the run's ``model`` artifacts.

    Returns
    -------
    str
        Artifact URI of the ``model`` folder.
    """
    import mlflow

    mlflow.log_metrics({f"test_{metric}": test, f"baseline_{metric}": baseline})
    mlflow.log_artifacts(str(model_dir), artifact_path="model")
    return str(mlflow.get_artifact_uri("model"))


def log_search(res: SearchOutcome) -> None:
    """Log a hyperparameter search: tables, one child run per candidate, the best one.

    Artifacts ``search/cv_results.csv`` and ``search/cv_folds.csv``; child runs
    ``candidate-<i>`` with the candidate's parameters and ``cv_<scoring>``,
    ``cv_<scoring>_std``, ``cv_rank``; on the parent run ``best_<param>`` parameters,
    ``cv_<scoring>``, ``cv_<scoring>_std``, ``cv_candidates`` and the tags
    ``esdc.search_backend``, ``esdc.search_scoring``.
    """
    import mlflow

    with tempfile.TemporaryDirectory() as tables:
        res.cv_results.to_csv(Path(tables) / "cv_results.csv", index=False)
        res.folds.to_csv(Path(tables) / "cv_folds.csv", index=False)
        mlflow.log_artifacts(tables, artifact_path="search")
    name = res.scoring
    for i, row in res.cv_results.iterrows():
        with mlflow.start_run(run_name=f"candidate-{i}", nested=True):
            mlflow.log_params({c.removeprefix("param_"): row[c] for c in res.cv_results
                               if c.startswith("param_")})
            mlflow.log_metrics({f"cv_{name}": float(row["mean_test_score"]),
                                f"cv_{name}_std": float(row["std_test_score"]),
                                "cv_rank": float(row["rank_test_score"])})
    mlflow.log_params({f"best_{k}": v for k, v in res.best_params.items()})
    mlflow.log_metrics({f"cv_{name}": res.best_score, f"cv_{name}_std": res.best_score_std,
                        "cv_candidates": float(len(res.cv_results))})
    mlflow.set_tags({"esdc.search_backend": res.backend, "esdc.search_scoring": name})
