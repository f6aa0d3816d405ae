"""MLflow "model from code" for a trained :class:`~esdc.ml.models.PixelCNN`.

Logged by :func:`esdc.ml.serving.log_pixel_cnn` as the ``python_model`` *file* (MLflow
models-from-code), so nothing is pickled: the server imports this module and loads
the ``state_dict`` with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class PixelCNNModel(PythonModel):
    """Per-pixel predictions for patches ``(B, C, H, W)`` float32 (normalised like training).

    Returns ``(B, H, W)``: class values (classification) or predicted values (regression).
    """

    def load_context(self, context: Any) -> None:
        """Rebuild the network from ``weights`` (state_dict) and ``meta`` (JSON) artifacts."""
        import torch

        from esdc.ml.models import PixelCNN

        meta = json.loads(open(context.artifacts["meta"]).read())
        self.classes = meta["classes"]
        self.model = PixelCNN(meta["in_channels"], meta["out_channels"], **meta["params"])
        self.model.load_state_dict(torch.load(context.artifacts["weights"], weights_only=True))
        self.model.eval()

    def predict(self, context: Any, model_input: Any, params: Any = None) -> np.ndarray:
        """Predict ``(B, H, W)`` for ``model_input`` ``(B, C, H, W)``."""
        import torch

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            out = self.model(x)
        if self.classes is None:
            return out[:, 0].numpy()
        return np.asarray(self.classes)[out.argmax(1).numpy()]


mlflow.models.set_model(PixelCNNModel())
