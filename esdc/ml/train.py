"""Training on a cube: the one entry of every fitter, tracked in MLflow.

:func:`train` runs in one process (a Dask worker when called through :func:`submit`): it
opens the spatial train/validation/test splits of the cube
(:class:`~esdc.ml.patches.PatchStream`), runs the config's fitter (:mod:`esdc.ml.fit`:
scikit-learn, PyTorch, Keras or the SimSiam encoder, imported only when used), which
evaluates against a trivial baseline (majority class or mean of the training pixels;
the untrained encoder), and logs parameters, per-epoch metrics, the model and the cube's
identity to MLflow (:mod:`esdc.ml.tracking`). Models are saved in formats that load
without executing code (scikit-learn: skops; PyTorch: ``state_dict`` for
``torch.load(weights_only=True)``; Keras: ``.keras``).

A scikit-learn config with a ``search`` block cross-validates candidates on spatial-block
folds of the train split, each fit a task on the Dask cluster (:mod:`esdc.ml.tuning`),
then refits and tests the best one. :func:`check_fits` finds a config that does not fit
the cube before any cluster starts.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from esdc.conventions import ATTR_RECIPE_SHA256
from esdc.errors import TrainingDataWarning
from esdc.ml.config import TrainConfig
from esdc.ml.datareport import data_report
from esdc.ml.fit import FitContext, load_fitter
from esdc.ml.metrics import Evaluation
from esdc.ml.patches import PatchStream
from esdc.ml.tensorboard import TensorBoardLog, log_tensorboard, tensorboard_dir
from esdc.ml.tracking import default_tracking_uri, log_config, log_epoch, log_outcome, start_run
from esdc.ml.tuning import check_search_blocks
from esdc.storage import open_cube, resolve

__all__ = ["TrainResult", "check_fits", "submit", "train"]


@dataclass(frozen=True, kw_only=True)
class TrainResult(Evaluation):
    """Outcome of a training run: the fit's evaluation and where the run is.

    The :class:`~esdc.ml.metrics.Evaluation` fields (``metric``, ``test``, ``baseline``,
    ``beats_baseline``, the search's ``cv_score``, ``cv_scoring``, ``best_params``) and:

    Attributes
    ----------
    run_id : str
        MLflow run id.
    device : str
        Where the model trained.
    model_path : str
        Artifact URI of the saved model file (skops, state_dict or ``.keras``).
    data : dict
        What the run learned from (:class:`esdc.ml.datareport.DataReport` as a dict):
        ``grid_patches``; ``splits`` with ``patches``, ``pixels`` and per-class pixels of
        each split; ``warnings``.
    """

    run_id: str
    device: str
    model_path: str
    data: dict[str, Any] = field(default_factory=dict)


def _streams(cube: str, cfg: TrainConfig, version: str | None = None,
             ) -> dict[str, PatchStream]:
    targets = [cfg.target] if cfg.target else []
    return {s: PatchStream(cube, cfg.inputs, patch=cfg.patch, targets=targets, split=s,
                           version=version,
                           split_block=cfg.split.block, split_fractions=cfg.split.fractions,
                           split_seed=cfg.split.seed, seed=cfg.seed, shuffle=(s == "train"))
            for s in ("train", "validation", "test")}


def check_fits(cube: str, config: TrainConfig, version: str | None = None,
               tensorboard: str | Path | None = None) -> None:
    """Check that a config fits a cube, reading only its metadata.

    Called before a cluster starts (``esdc train``), so that these mistakes are not
    found on a worker.

    Parameters
    ----------
    cube : str
        Path of the cube's Zarr store.
    config : TrainConfig
        The training configuration.
    version : str, optional
        Version of a versioned (Icechunk) cube (tag or snapshot id).
    tensorboard : str or pathlib.Path, optional
        Folder for TensorBoard files (created if needed).

    Raises
    ------
    TrainConfigError
        If an input or the target is not in the cube, the variables do not share the
        grid, the patch is larger than the grid or a split block, or ``search.cv`` asks
        for more folds than the train split has spatial blocks.
    CubeNotFoundError
        If there is no cube at ``cube``.
    OutputPathError
        If ``tensorboard`` cannot be written.
    """
    if tensorboard is not None:
        tensorboard_dir(tensorboard)
    stream = PatchStream(cube, config.inputs, patch=config.patch,
                         targets=[config.target] if config.target else [], normalize=False,
                         split="train", split_block=config.split.block,
                         split_fractions=config.split.fractions, split_seed=config.split.seed,
                         version=version)
    check_search_blocks(config, (stream.ny, stream.nx))


def train(cube: str, config: dict[str, Any] | TrainConfig, tracking_uri: str | None = None,
          resources: dict[str, float] | None = None,
          version: str | None = None, tensorboard: str | Path | None = None) -> TrainResult:
    """Train a model on a cube and track the run in MLflow.

    Parameters
    ----------
    cube : str
        Path of the cube's Zarr store.
    config : dict or TrainConfig
        The training configuration.
    tracking_uri : str, optional
        MLflow tracking URI; :func:`esdc.ml.tracking.default_tracking_uri` when omitted.
    resources : dict, optional
        The Dask worker's resources (``{"GPU": 1}`` selects CUDA on ``device: auto``).
    version : str, optional
        Version of a versioned (Icechunk) cube to train on: a tag or snapshot id
        (default: the newest). Recorded as the MLflow run tag ``esdc.cube_version``.
    tensorboard : str or pathlib.Path, optional
        Also write the run's TensorBoard files, with the model graph, to
        ``tensorboard/<run id>`` (:mod:`esdc.ml.tensorboard`); they are always stored in
        the run's ``tensorboard`` artifacts.

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainConfigError
        For an invalid config, one that does not fit the cube (missing variables, patch
        larger than the grid, more folds than blocks), a split without valid pixels or
        a classification without class definitions.

    Warns
    -----
    TrainingDataWarning
        When the split blocks waste more than half of the grid's patches, or a split has
        no pixel of the training majority class (also in ``TrainResult.data``).
    CubeNotFoundError
        If there is no cube at ``cube``.
    OutputPathError
        If ``tensorboard`` cannot be written.
    EsdcError
        If the fitter's framework is not installed.
    """
    root = tensorboard_dir(tensorboard) if tensorboard is not None else None
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    version = resolve(cube).at(version).current_version()  # lineage: the version trained on
    ds = open_cube(cube, version=version)
    streams = _streams(cube, cfg, version)
    check_search_blocks(cfg, (streams["train"].ny, streams["train"].nx))
    report = data_report(streams, cfg.target, cfg.task, cfg.classes)
    for text in report.warnings:
        warnings.warn(text, TrainingDataWarning, stacklevel=2)
    fitter = load_fitter(cfg.fitter)
    device = fitter.device(cfg.device, resources)
    with start_run(cfg.name, tracking_uri) as run, tempfile.TemporaryDirectory() as tmp:
        log_config(cfg.model_dump(), {"esdc.cube": str(cube), "esdc.device": device,
                                      "esdc.recipe_sha256": ds.attrs.get(ATTR_RECIPE_SHA256, ""),
                                      "esdc.cube_title": ds.attrs.get("title", ""),
                                      **({"esdc.cube_version": version} if version else {})})
        _log_data(report)
        out = Path(tmp) / "model"
        out.mkdir()
        board = TensorBoardLog((root or Path(tmp)) / run.info.run_id, graph=root is not None)

        def log(epoch: int, metrics: dict[str, float]) -> None:
            log_epoch(epoch, metrics)
            board.scalars(epoch, metrics)

        ctx = FitContext(ds, streams, out, device, log, board)
        with board:
            res = fitter.fit(cfg, ctx)
            board.scalars(cfg.epochs, {f"test_{res.metric}": res.test,
                                       f"baseline_{res.metric}": res.baseline})
        uri = log_outcome(res.metric, res.test, res.baseline, out)
        log_tensorboard(board.logdir)
        if fitter.register is not None:
            fitter.register(cfg, ctx, res)
        return TrainResult(res.metric, res.test, res.baseline, res.cv_score, res.cv_scoring,
                           res.best_params, run_id=run.info.run_id, device=device,
                           model_path=f"{uri}/{res.model_file.name}", data=report.as_dict())


def _log_data(report: Any) -> None:
    """The run's data counts as MLflow metrics and ``data.json``; warnings as a tag."""
    import mlflow

    mlflow.log_metrics(report.metrics())
    mlflow.log_dict(report.as_dict(), "data.json")
    if report.warnings:
        mlflow.set_tag("esdc.data_warnings", " | ".join(report.warnings)[:5000])


def submit(client: Any, cube: str, config: TrainConfig, tracking_uri: str | None = None,
           version: str | None = None, tensorboard: str | Path | None = None) -> Any:
    """Run :func:`train` on a worker of a ``distributed`` cluster.

    A GPU worker (resource ``GPU``) is requested when ``config.device`` is ``cuda``.

    Parameters
    ----------
    client : distributed.Client
        The cluster's client.
    cube : str
        Path of the cube's Zarr store (as the workers see it).
    config : TrainConfig
        The training configuration.
    tracking_uri : str, optional
        MLflow tracking URI; :func:`esdc.ml.tracking.default_tracking_uri` (of this
        process's working directory) when omitted.
    version : str, optional
        Version of a versioned (Icechunk) cube to train on (tag or snapshot id).
    tensorboard : str or pathlib.Path, optional
        Folder for the run's TensorBoard files too (as the workers see it).

    Returns
    -------
    distributed.Future
        Resolves to :class:`TrainResult` as a dict (``dataclasses.asdict``).
    """
    resources = {"GPU": 1} if config.device == "cuda" else None
    uri = tracking_uri or default_tracking_uri()

    def run() -> dict[str, Any]:
        from distributed import get_worker

        worker_res = dict(get_worker().state.total_resources)
        return asdict(train(cube, config.model_dump(), uri, worker_res, version=version,
                            tensorboard=tensorboard))

    return client.submit(run, pure=False, resources=resources)
