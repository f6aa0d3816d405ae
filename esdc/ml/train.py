"""Training on a cube: scikit-learn and PyTorch trainers, tracked in MLflow.

:func:`train` runs in one process (a Dask worker when called through
:func:`submit`): it streams patches of the spatial train/validation/test splits
(:class:`~esdc.ml.patches.PatchStream`), fits, evaluates against a trivial baseline
(majority class or mean of the training pixels), logs parameters, per-epoch
metrics, the model and the cube's identity to MLflow, and saves the model in a
format that loads without executing code (scikit-learn: skops; PyTorch:
``state_dict`` for ``torch.load(weights_only=True)``).

A scikit-learn config with a ``search`` block cross-validates candidates on spatial-block
folds of the train split, each fit a task on the Dask cluster (:mod:`esdc.ml.tuning`),
then refits and tests the best one.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from esdc.errors import EsdcError
from esdc.ml.config import TrainConfig
from esdc.ml.patches import PatchStream

__all__ = ["TrainResult", "default_tracking_uri", "submit", "train"]


@dataclass(frozen=True)
class TrainResult:
    """Outcome of a training run.

    Attributes
    ----------
    run_id : str
        MLflow run id.
    metric : str
        Name of the held-out metric (``accuracy`` or ``rmse``).
    test : float
        The model's metric on the test split.
    baseline : float
        The trivial baseline's metric on the test split.
    device : str
        Where the model trained.
    model_path : str
        Saved model file (skops or state_dict).
    cv_score, cv_scoring, best_params : float, str, dict or None
        With a ``search`` block: the best candidate's mean spatial-CV score, the scorer
        and its parameters (None otherwise).
    """

    run_id: str
    metric: str
    test: float
    baseline: float
    device: str
    model_path: str
    cv_score: float | None = None
    cv_scoring: str | None = None
    best_params: dict[str, Any] | None = None

    @property
    def beats_baseline(self) -> bool:
        """True when the model is better than the baseline (higher accuracy, lower RMSE)."""
        if self.metric == "accuracy":
            return self.test > self.baseline
        return self.test < self.baseline



def default_tracking_uri() -> str:
    """``sqlite:///`` file ``mlruns.db`` in the current directory (MLflow 3 refuses ./mlruns)."""
    return f"sqlite:///{Path.cwd() / 'mlruns.db'}"


def _streams(cube: str, cfg: TrainConfig) -> dict[str, PatchStream]:
    targets = [cfg.target] if cfg.target else []
    return {s: PatchStream(cube, cfg.inputs, patch=cfg.patch, targets=targets, split=s,
                           split_block=cfg.split.block, split_fractions=cfg.split.fractions,
                           split_seed=cfg.split.seed, seed=cfg.seed, shuffle=(s == "train"))
            for s in ("train", "validation", "test")}


def _classes(cube: str, cfg: TrainConfig) -> np.ndarray:
    if cfg.classes is not None:
        return np.asarray(cfg.classes)
    from esdc.store import open_cube

    flags = open_cube(cube)[cfg.target].attrs.get("flag_values")
    if flags is None:
        raise EsdcError(f"target {cfg.target!r} has no flag_values; give `classes` in the "
                        "config for a classification.")
    return np.asarray(flags)


def _pixels(stream: PatchStream, limit: int, seed: int,
            coords: bool = False) -> tuple[np.ndarray, ...]:
    """Valid pixels as ``X (N, C)``, ``y (N,)``, at most ``limit`` (uniform sample).

    With ``coords``, also their grid ``rows (N,)`` and ``cols (N,)`` (int64).
    """
    xs, ys, rs, cs = [], [], [], []
    for b in stream.batches(256):
        x = b.x.transpose(0, 2, 3, 1).reshape(-1, b.x.shape[1])
        v = b.valid.transpose(0, 2, 3, 1).reshape(-1, b.x.shape[1]).all(axis=1)
        y = b.target[:, 0].reshape(-1)  # type: ignore[index]
        keep = v & np.isfinite(y)
        xs.append(x[keep])
        ys.append(y[keep])
        if coords:
            n, _, ph, pw = b.x.shape
            r = b.index[:, 1, None, None] + np.arange(ph)[None, :, None]
            c = b.index[:, 2, None, None] + np.arange(pw)[None, None, :]
            rs.append(np.broadcast_to(r, (n, ph, pw)).reshape(-1)[keep])
            cs.append(np.broadcast_to(c, (n, ph, pw)).reshape(-1)[keep])
    if not xs or sum(len(a) for a in ys) == 0:
        raise EsdcError("no valid pixels in this split of the cube; check the variables or "
                        "the split settings.")
    out = [np.concatenate(xs), np.concatenate(ys)]
    if coords:
        out += [np.concatenate(rs).astype(np.int64), np.concatenate(cs).astype(np.int64)]
    if len(out[1]) > limit:
        pick = np.random.default_rng(seed).choice(len(out[1]), limit, replace=False)
        out = [a[pick] for a in out]
    return tuple(out)


def _score(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    if task == "classification":
        return float(np.mean(y_true == y_pred))
    return float(np.sqrt(np.mean((y_true - y_pred) ** 2)))


def _baseline(task: str, y_train: np.ndarray, y_test: np.ndarray) -> float:
    if task == "classification":
        vals, counts = np.unique(y_train, return_counts=True)
        return _score(task, y_test, np.full_like(y_test, vals[np.argmax(counts)]))
    return _score(task, y_test, np.full_like(y_test, float(np.mean(y_train))))


def _fit_sklearn(cfg: TrainConfig, streams: dict[str, PatchStream], cube: str,
                 out: Path, log: Any) -> tuple[float, float, Path, dict[str, Any]]:
    from skops.io import dump

    from esdc.ml.tuning import make_estimator

    x_te, y_te = _pixels(streams["test"], cfg.max_train_pixels, cfg.seed + 1)
    clf = cfg.task == "classification"
    est = make_estimator(cfg)
    extra: dict[str, Any] = {}
    if cfg.search is not None:
        x_tr, y_tr, rows, cols = _pixels(streams["train"], cfg.max_train_pixels, cfg.seed,
                                         coords=True)
        est, extra = _search_sklearn(cfg, est, streams["train"], x_tr, y_tr, rows, cols)
    elif cfg.model_kind == "random_forest":
        x_tr, y_tr = _pixels(streams["train"], cfg.max_train_pixels, cfg.seed)
        est.fit(x_tr, y_tr)
    else:  # sgd: partial_fit over the streamed batches, epoch by epoch
        x_tr, y_tr = _pixels(streams["train"], cfg.max_train_pixels, cfg.seed)
        classes = _classes(cube, cfg) if clf else None
        for epoch in range(cfg.epochs):
            for b in streams["train"].batches(cfg.batch_size, epoch):
                x = b.x.transpose(0, 2, 3, 1).reshape(-1, b.x.shape[1])
                y = b.target[:, 0].reshape(-1)  # type: ignore[index]
                keep = b.valid.transpose(0, 2, 3, 1).reshape(len(y), -1).all(1) & np.isfinite(y)
                if keep.any():
                    if clf:
                        est.partial_fit(x[keep], y[keep], classes=classes)
                    else:
                        est.partial_fit(x[keep], y[keep])
            log(epoch, {"train_score": float(est.score(x_tr, y_tr))})
    test = _score(cfg.task, y_te, est.predict(x_te))
    path = out / "model.skops"
    dump(est, path)
    return test, _baseline(cfg.task, y_tr, y_te), path, extra


def _search_sklearn(cfg: TrainConfig, est: Any, stream: PatchStream, x: np.ndarray,
                    y: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                    ) -> tuple[Any, dict[str, Any]]:
    """Spatial-block CV search on the Dask cluster; MLflow: child runs, tables, best."""
    import mlflow

    from esdc.ml.tuning import block_ids, run_search

    assert cfg.search is not None
    block = cfg.split.block
    res = run_search(est, cfg.search, cfg.task, x, y,
                     block_ids(rows, cols, block, stream.nx), -(-stream.nx // block[1]),
                     cfg.seed)
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
    return res.estimator, {"cv_score": res.best_score, "cv_scoring": name,
                           "best_params": res.best_params}


def _fit_torch(cfg: TrainConfig, streams: dict[str, PatchStream], cube: str, out: Path,
               log: Any, device: str) -> tuple[float, float, Path]:
    import torch

    from esdc.ml.models import PixelCNN
    from esdc.ml.torch import PatchDataset

    torch.manual_seed(cfg.seed)
    clf = cfg.task == "classification"
    classes = _classes(cube, cfg) if clf else None
    n_out = len(classes) if classes is not None else 1
    model = PixelCNN(len(cfg.inputs), n_out, **cfg.model_params).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    lookup = None
    if classes is not None:
        lookup = torch.full((int(classes.max()) + 2,), -100, dtype=torch.long)
        lookup[torch.as_tensor(classes, dtype=torch.long)] = torch.arange(len(classes))
    amp = device == "cuda"

    def targets(t: Any) -> Any:
        t = t[:, 0]
        if lookup is None:
            return t
        idx = torch.nan_to_num(t, nan=-1).long().clamp(-1, len(lookup) - 2)
        return lookup[idx]  # unknown or missing class -> -100 (ignored)

    def loss_fn(pred: Any, y: Any) -> Any:
        if clf:
            return torch.nn.functional.cross_entropy(pred, y, ignore_index=-100)
        ok = torch.isfinite(y)
        return torch.nn.functional.mse_loss(pred[:, 0][ok], y[ok])

    def evaluate(stream: PatchStream) -> tuple[np.ndarray, np.ndarray]:
        model.eval()
        ys, ps = [], []
        with torch.no_grad():
            for b in stream.batches(cfg.batch_size):
                pred = model(torch.from_numpy(b.x).to(device)).float().cpu()
                y = targets(torch.from_numpy(b.target))
                p = pred.argmax(1) if clf else pred[:, 0]
                ok = (y != -100) if clf else torch.isfinite(y)
                ys.append(y[ok].numpy())
                ps.append(p[ok].numpy())
        model.train()
        return np.concatenate(ys), np.concatenate(ps)

    loader = torch.utils.data.DataLoader(PatchDataset(streams["train"], cfg.batch_size),
                                         batch_size=None, pin_memory=amp)
    for epoch in range(cfg.epochs):
        loader.dataset.set_epoch(epoch)
        total, n = 0.0, 0
        for x, _valid, _idx, t in loader:
            x = x.to(device, non_blocking=amp)
            y = targets(t).to(device, non_blocking=amp)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(model(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(x)
            n += len(x)
        y_val, p_val = evaluate(streams["validation"])
        log(epoch, {"train_loss": total / max(n, 1),
                    f"val_{'accuracy' if clf else 'rmse'}": _score(cfg.task, y_val, p_val)})
    y_te, p_te = evaluate(streams["test"])
    y_tr, _ = evaluate(streams["train"])
    path = out / "model.pt"
    torch.save(model.state_dict(), path)
    (out / "model.json").write_text(json.dumps({"class": "esdc.ml.models.PixelCNN",
                                                "in_channels": len(cfg.inputs),
                                                "out_channels": n_out,
                                                "params": cfg.model_params,
                                                "classes": None if classes is None
                                                else classes.tolist()}))
    return _score(cfg.task, y_te, p_te), _baseline(cfg.task, y_tr, y_te), path


def train(cube: str, config: dict[str, Any] | TrainConfig, tracking_uri: str | None = None,
          resources: dict[str, float] | None = None) -> TrainResult:
    """Train a model on a cube and track the run in MLflow.

    Parameters
    ----------
    cube : str
        Path of the cube's Zarr store.
    config : dict or TrainConfig
        The training configuration.
    tracking_uri : str, optional
        MLflow tracking URI; :func:`default_tracking_uri` when omitted.
    resources : dict, optional
        The Dask worker's resources (``{"GPU": 1}`` selects CUDA on ``device: auto``).

    Returns
    -------
    TrainResult

    Raises
    ------
    EsdcError
        For a cube without valid pixels, missing variables or class definitions.
    """
    import mlflow

    from esdc.store import open_cube

    cfg = config if isinstance(config, TrainConfig) else TrainConfig.model_validate(config)
    ds = open_cube(cube)
    streams = _streams(cube, cfg)
    device = "cpu"
    if cfg.framework == "torch":
        from esdc.ml.torch import device_for

        device = device_for(cfg.device, resources)
    uri = tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(cfg.name) is None and uri.startswith("sqlite:///"):
        # artifacts beside the SQLite file, not in whatever the worker's cwd is
        root = Path(uri.removeprefix("sqlite:///")).parent / "mlruns"
        mlflow.create_experiment(cfg.name, artifact_location=root.resolve().as_uri())
    mlflow.set_experiment(cfg.name)
    with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params({k: json.dumps(v) if isinstance(v, (dict, list, tuple)) else v
                           for k, v in cfg.model_dump().items()})
        mlflow.set_tags({"esdc.cube": str(cube), "esdc.device": device,
                         "esdc.recipe_sha256": ds.attrs.get("esdc_recipe_sha256", ""),
                         "esdc.cube_title": ds.attrs.get("title", "")})

        def log(epoch: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics(metrics, step=epoch)

        out = Path(tmp)
        extra: dict[str, Any] = {}
        if cfg.task == "embedding":
            from esdc.embed import fit_encoder

            test, base, path = fit_encoder(cfg, streams, out, log, device)
        elif cfg.framework == "sklearn":
            test, base, path, extra = _fit_sklearn(cfg, streams, cube, out, log)
        elif cfg.framework == "torch":
            test, base, path = _fit_torch(cfg, streams, cube, out, log, device)
        else:
            from esdc.ml.keras import fit_keras

            test, base, path = fit_keras(cfg, streams, cube, out, log)
        metric = {"classification": "accuracy", "regression": "rmse"}.get(cfg.task,
                                                                           "simsiam_loss")
        mlflow.log_metrics({f"test_{metric}": test, f"baseline_{metric}": base})
        mlflow.log_artifacts(str(out), artifact_path="model")
        if cfg.framework == "torch" and cfg.task != "embedding":  # registered for serving
            from esdc.ml.serving import log_pixel_cnn

            example = next(streams["test"].batches(2)).x
            log_pixel_cnn(path, out / "model.json", cfg.name, example)
        uri = mlflow.get_artifact_uri("model")
        model_path = f"{uri}/{path.name}"
        return TrainResult(run.info.run_id, metric, test, base, device, model_path, **extra)


def submit(client: Any, cube: str, config: TrainConfig, tracking_uri: str | None = None) -> Any:
    """Run :func:`train` on a worker of a ``distributed`` cluster.

    A GPU worker (resource ``GPU``) is requested when ``config.device`` is ``cuda``.

    Returns
    -------
    distributed.Future
        Resolves to a :class:`TrainResult`.
    """
    resources = {"GPU": 1} if config.device == "cuda" else None
    uri = tracking_uri or default_tracking_uri()

    def run() -> dict[str, Any]:
        from distributed import get_worker

        worker_res = dict(get_worker().state.total_resources)
        return asdict(train(cube, config.model_dump(), uri, worker_res))

    return client.submit(run, pure=False, resources=resources)
