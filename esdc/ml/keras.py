"""Keras adapter: a ``PyDataset`` over :class:`~esdc.ml.patches.PatchStream`; Keras trainer.

:func:`fit_keras` is the trainer :func:`esdc.ml.train.train` uses for ``framework: keras``.

TensorFlow/Keras is an optional extra: ``pip install 'esdc[tensorflow]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from esdc.errors import EsdcError
from esdc.ml.config import TrainConfig
from esdc.ml.patches import PatchStream

try:
    import keras
except ImportError:  # pragma: no cover - depends on the environment
    raise EsdcError("Keras is not installed: pip install 'esdc[tensorflow]'.") from None

__all__ = ["PatchPyDataset", "fit_keras", "pixel_cnn"]


class PatchPyDataset(keras.utils.PyDataset):  # type: ignore[misc]
    """Batches of a :class:`PatchStream` as a Keras ``PyDataset``, channels last.

    Batches are materialised per epoch from the stream (chunk-aligned reads), so
    ``__getitem__`` is O(1) and ``on_epoch_end`` reshuffles with the next epoch's seed.

    Parameters
    ----------
    stream : PatchStream
        Inputs and one target variable.
    batch_size : int
        Patches per batch.
    lookup : dict, optional
        Class value -> index for classification targets; unknown or missing values get
        sample weight 0.

    Notes
    -----
    Items are ``(x, y, w)``: ``x`` float32 ``(B, ph, pw, C)``, ``y`` ``(B, ph, pw)``
    (int class indices, or float values), ``w`` float32 ``(B, ph, pw)`` sample weights
    (0 where the target is missing).
    """

    def __init__(self, stream: PatchStream, batch_size: int,
                 lookup: dict[int, int] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stream, self.batch_size, self.lookup = stream, batch_size, lookup
        self.epoch = 0
        self._load()

    def _load(self) -> None:
        self._batches = [self._convert(b) for b in self.stream.batches(self.batch_size,
                                                                       self.epoch)]

    def _convert(self, b: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(b.x.transpose(0, 2, 3, 1))
        t = b.target[:, 0]
        ok = np.isfinite(t)
        if self.lookup is not None:
            idx = np.zeros(t.shape, dtype=np.int32)
            for value, i in self.lookup.items():
                idx[t == value] = i
            ok &= np.isin(t, list(self.lookup))
            return x, idx, ok.astype("float32")
        return x, np.where(ok, t, 0).astype("float32"), ok.astype("float32")

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self._batches)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batch ``i`` as ``(x, y, sample_weight)``."""
        return self._batches[i]

    def on_epoch_end(self) -> None:
        """Reshuffle: the next epoch uses the stream's next seed."""
        self.epoch += 1
        self._load()


def pixel_cnn(in_channels: int, out_channels: int, hidden: int = 32,
              depth: int = 3) -> Any:
    """The Keras twin of :class:`esdc.ml.models.PixelCNN` (channels last).

    Input ``(B, H, W, C)``, output ``(B, H, W, K)`` logits (or K = 1 values).
    """
    inputs = keras.Input((None, None, in_channels))
    x = inputs
    for _ in range(depth):
        x = keras.layers.Conv2D(hidden, 3, padding="same")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    outputs = keras.layers.Conv2D(out_channels, 1)(x)
    return keras.Model(inputs, outputs)


def fit_keras(cfg: TrainConfig, streams: dict[str, PatchStream], cube: str, out: Path,
              log: Any) -> tuple[float, float, Path]:
    """Fit the Keras PixelCNN; return (test metric, baseline metric, ``.keras`` file).

    The model is saved in the native ``.keras`` format (loads with
    ``keras.saving.load_model(path, safe_mode=True)``: no code executed).
    """
    from esdc.ml.train import _baseline, _classes, _score

    keras.utils.set_random_seed(cfg.seed)
    clf = cfg.task == "classification"
    classes = _classes(cube, cfg) if clf else None
    lookup = {int(c): i for i, c in enumerate(classes)} if classes is not None else None
    train = PatchPyDataset(streams["train"], cfg.batch_size, lookup)
    model = pixel_cnn(len(cfg.inputs), len(classes) if classes is not None else 1,
                      **cfg.model_params)
    loss = (keras.losses.SparseCategoricalCrossentropy(from_logits=True) if clf
            else keras.losses.MeanSquaredError())
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=loss)

    class _Log(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            log(epoch, {"train_loss": float((logs or {}).get("loss", np.nan))})

    model.fit(train, epochs=cfg.epochs, verbose=0, callbacks=[_Log()])

    def predict(stream: PatchStream) -> tuple[np.ndarray, np.ndarray]:
        data = PatchPyDataset(stream, cfg.batch_size, lookup)
        ys, ps = [], []
        for x, y, w in data._batches:
            pred = np.asarray(model(x, training=False))
            p = pred.argmax(-1) if clf else pred[..., 0]
            ok = w > 0
            ys.append(y[ok])
            ps.append(p[ok])
        return np.concatenate(ys), np.concatenate(ps)

    y_te, p_te = predict(streams["test"])
    y_tr, _ = predict(streams["train"])
    path = out / "model.keras"
    model.save(path)
    return _score(cfg.task, y_te, p_te), _baseline(cfg.task, y_tr, y_te), path
