"""PyTorch fitter: a per-pixel CNN (:class:`esdc.ml.models.PixelCNN`) on patches.

Batches come from a ``DataLoader`` over :class:`esdc.ml.torch.PatchDataset`; on CUDA the
forward pass runs in bfloat16 autocast. The model is saved as a ``state_dict``
(``model.pt``, loads with ``torch.load(weights_only=True)``) with ``model.json``
describing it, and registered in MLflow as a pyfunc served by ``esdc serve-model``
(:func:`esdc.ml.serving.log_pixel_cnn`).

PyTorch is an optional extra: ``pip install 'esdc[ml]'``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from esdc.ml.config import TrainConfig
from esdc.ml.fit import FitContext, FitResult, Fitter
from esdc.ml.metrics import baseline, metric_name, score
from esdc.ml.models import PixelCNN
from esdc.ml.patches import PatchStream
from esdc.ml.serving import log_pixel_cnn
from esdc.ml.torch import PatchDataset, device_for, patch_loader

__all__ = ["FITTER", "IGNORE", "fit", "register"]

IGNORE = -100
"""Class index of pixels without a known class (``ignore_index`` of the loss)."""


def fit(cfg: TrainConfig, ctx: FitContext) -> FitResult:
    """Train a PixelCNN on the train split; test it; save and register it.

    Parameters
    ----------
    cfg : TrainConfig
        ``framework: torch``, ``model.kind: cnn`` with ``hidden`` and ``depth``;
        ``epochs``, ``batch_size``, ``learning_rate``.
    ctx : FitContext
        Splits, output folder, device and epoch logger (``train_loss``,
        ``val_accuracy``/``val_rmse``, ``learning_rate`` per epoch); the model graph goes
        to its TensorBoard folder when one was asked for.

    Returns
    -------
    FitResult
        Accuracy (classification; cross-entropy over the classes) or RMSE (regression;
        mean squared error loss) on the test split, the baseline's, ``model.pt`` (and
        ``model.json`` beside it: architecture, parameters, classes).

    Raises
    ------
    TrainConfigError
        For a classification whose classes are neither given nor in ``flag_values``.
    """
    device = ctx.device
    torch.manual_seed(cfg.seed)
    clf = cfg.task == "classification"
    classes = ctx.classes(cfg)
    n_out = len(classes) if classes is not None else 1
    model = PixelCNN(len(cfg.inputs), n_out, **cfg.model_params).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    lookup = None
    if classes is not None:
        lookup = torch.full((int(classes.max()) + 2,), IGNORE, dtype=torch.long)
        lookup[torch.as_tensor(classes, dtype=torch.long)] = torch.arange(len(classes))
    amp = device == "cuda"

    def targets(t: Any) -> Any:
        t = t[:, 0]
        if lookup is None:
            return t
        idx = torch.nan_to_num(t, nan=-1).long().clamp(-1, len(lookup) - 2)
        return lookup[idx]  # unknown or missing class -> IGNORE

    def loss_fn(pred: Any, y: Any) -> Any:
        if clf:
            return torch.nn.functional.cross_entropy(pred, y, ignore_index=IGNORE)
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
                ok = (y != IGNORE) if clf else torch.isfinite(y)
                ys.append(y[ok].numpy())
                ps.append(p[ok].numpy())
        model.train()
        return np.concatenate(ys), np.concatenate(ps)

    streams = ctx.streams
    if ctx.tensorboard is not None and ctx.tensorboard.graph:
        example = torch.from_numpy(next(streams["train"].batches(2)).x).to(device)
        ctx.tensorboard.torch_graph(model, example)
    loader = patch_loader(PatchDataset(streams["train"], cfg.batch_size), pin_memory=amp)
    metric = metric_name(cfg.task)
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
        ctx.log(epoch, {"train_loss": total / max(n, 1),
                        f"val_{metric}": score(cfg.task, y_val, p_val),
                        "learning_rate": float(opt.param_groups[0]["lr"])})
    y_te, p_te = evaluate(streams["test"])
    y_tr, _ = evaluate(streams["train"])
    path = ctx.out / "model.pt"
    torch.save(model.state_dict(), path)
    (ctx.out / "model.json").write_text(json.dumps({"class": "esdc.ml.models.PixelCNN",
                                "in_channels": len(cfg.inputs), "out_channels": n_out,
                                "params": cfg.model_params,
                                "classes": None if classes is None else classes.tolist()}))
    return FitResult(metric, score(cfg.task, y_te, p_te), baseline(cfg.task, y_tr, y_te),
                     model_file=path)


def register(cfg: TrainConfig, ctx: FitContext, result: FitResult) -> None:
    """Register the fitted PixelCNN as MLflow model ``cfg.name`` (a pyfunc for serving).

    Parameters
    ----------
    cfg : TrainConfig
        The config (its ``name`` is the registered model's).
    ctx : FitContext
        The fit's context (``model.json`` in ``ctx.out``; a test batch is the input example).
    result : FitResult
        The fit (``model.pt``).
    """
    example = next(ctx.streams["test"].batches(2)).x
    log_pixel_cnn(result.model_file, ctx.out / "model.json", cfg.name, example)


FITTER = Fitter("torch", fit, device_for, register)
