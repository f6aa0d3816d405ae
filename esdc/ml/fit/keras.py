"""Keras fitter: the Keras per-pixel CNN (:func:`esdc.ml.keras.pixel_cnn`) on patches.

Batches are :class:`esdc.ml.keras.PatchPyDataset` items (channels last, sample weight 0
where the target is missing). The model is saved in the native ``.keras`` format, which
loads with ``keras.saving.load_model(path, safe_mode=True)`` (no code executed).

TensorFlow/Keras is an optional extra: ``pip install 'esdc[tensorflow]'``.
"""

from __future__ import annotations

import keras
import numpy as np

from esdc.ml.config import TrainConfig
from esdc.ml.fit import FitContext, FitResult, Fitter
from esdc.ml.keras import PatchPyDataset, pixel_cnn
from esdc.ml.metrics import baseline, metric_name, score
from esdc.ml.patches import PatchStream

__all__ = ["FITTER", "fit"]


def fit(cfg: TrainConfig, ctx: FitContext) -> FitResult:
    """Fit the Keras PixelCNN on the train split; test it; save it.

    Parameters
    ----------
    cfg : TrainConfig
        ``framework: keras``, ``model.kind: cnn`` with ``hidden`` and ``depth``;
        ``epochs``, ``batch_size``, ``learning_rate``.
    ctx : FitContext
        Splits, output folder and epoch logger (``train_loss``, ``learning_rate`` per
        epoch); Keras' TensorBoard callback writes into its TensorBoard folder (the graph
        when one was asked for).

    Returns
    -------
    FitResult
        Accuracy (sparse categorical cross-entropy over the classes) or RMSE (mean squared
        error loss) on the test split, the baseline's, ``model.keras``.

    Raises
    ------
    TrainConfigError
        For a classification whose classes are neither given nor in ``flag_values``.
    """
    keras.utils.set_random_seed(cfg.seed)
    clf = cfg.task == "classification"
    classes = ctx.classes(cfg)
    lookup = {int(c): i for i, c in enumerate(classes)} if classes is not None else None
    train = PatchPyDataset(ctx.streams["train"], cfg.batch_size, lookup)
    model = pixel_cnn(len(cfg.inputs), len(classes) if classes is not None else 1,
                      **cfg.model_params)
    loss = (keras.losses.SparseCategoricalCrossentropy(from_logits=True) if clf
            else keras.losses.MeanSquaredError())
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=loss)

    class _Log(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            rate = keras.ops.convert_to_numpy(model.optimizer.learning_rate)
            ctx.log(epoch, {"train_loss": float((logs or {}).get("loss", np.nan)),
                            "learning_rate": float(rate)})

    callbacks = [_Log()]
    if ctx.tensorboard is not None:
        callbacks.append(ctx.tensorboard.keras_callback())
    model.fit(train, epochs=cfg.epochs, verbose=0, callbacks=callbacks)

    def predict(stream: PatchStream) -> tuple[np.ndarray, np.ndarray]:
        data = PatchPyDataset(stream, cfg.batch_size, lookup)
        ys, ps = [], []
        for i in range(len(data)):
            x, y, w = data[i]
            pred = np.asarray(model(x, training=False))
            p = pred.argmax(-1) if clf else pred[..., 0]
            ok = w > 0
            ys.append(y[ok])
            ps.append(p[ok])
        return np.concatenate(ys), np.concatenate(ps)

    y_te, p_te = predict(ctx.streams["test"])
    y_tr, _ = predict(ctx.streams["train"])
    path = ctx.out / "model.keras"
    model.save(path)
    return FitResult(metric_name(cfg.task), score(cfg.task, y_te, p_te),
                     baseline(cfg.task, y_tr, y_te), model_file=path)


FITTER = Fitter("keras", fit)
