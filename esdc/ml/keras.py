"""Keras adapter: a ``PyDataset`` over :class:`~esdc.ml.patches.PatchStream`; a Keras CNN.

The fitter of ``framework: keras`` (:mod:`esdc.ml.fit.keras`) trains :func:`pixel_cnn` on
:class:`PatchPyDataset` batches.

TensorFlow/Keras is an optional extra: ``pip install 'esdc[tensorflow]'``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from esdc.errors import EsdcError
from esdc.ml.patches import Batch, PatchStream

try:
    import keras
except ImportError:  # pragma: no cover - depends on the environment
    raise EsdcError("Keras is not installed: pip install 'esdc[tensorflow]'.") from None

__all__ = ["PatchPyDataset", "pixel_cnn"]


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

    def _convert(self, b: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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

    ``depth`` 3x3 convolutions (same padding, batch norm, ReLU) of ``hidden`` channels,
    then a 1x1 convolution to ``out_channels``.

    Parameters
    ----------
    in_channels, out_channels, hidden, depth : int
        Input channels C; classes K (1 for regression); width of the hidden layers;
        number of 3x3 convolution layers (as for the PyTorch model).

    Returns
    -------
    keras.Model
        Input ``(B, H, W, C)`` float32, output ``(B, H, W, K)`` logits (or K = 1 values);
        H and W are preserved.
    """
    inputs = keras.Input((None, None, in_channels))
    x = inputs
    for _ in range(depth):
        x = keras.layers.Conv2D(hidden, 3, padding="same")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    outputs = keras.layers.Conv2D(out_channels, 1)(x)
    return keras.Model(inputs, outputs)
