"""Model registry and HTTP serving of trained models (MLflow), bound to 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["log_pixel_cnn", "serve", "serve_command", "serve_env"]


def log_pixel_cnn(weights: Path, meta: Path, name: str, example: np.ndarray) -> Any:
    """Log a PixelCNN as an MLflow pyfunc (model from code) and register it as ``name``.

    Parameters
    ----------
    weights, meta : pathlib.Path
        ``state_dict`` file and its JSON description (written by the trainer).
    name : str
        Registered model name.
    example : numpy.ndarray
        An input patch batch ``(B, C, H, W)`` float32 (signature and input example).

    Returns
    -------
    mlflow.models.model.ModelInfo
    """
    import mlflow
    from mlflow.models import infer_signature

    from esdc.ml import mlflow_pyfunc

    return mlflow.pyfunc.log_model(
        name="pyfunc", python_model=mlflow_pyfunc.__file__,
        artifacts={"weights": str(weights), "meta": str(meta)},
        signature=infer_signature(example.astype(np.float32)), input_example=example[:1],
        registered_model_name=name, pip_requirements=["esdc"])


def serve_command(model_uri: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """The ``mlflow models serve`` command serving ``model_uri`` in this environment.

    ``--env-manager local``: the model runs in the current environment (esdc and torch
    installed), nothing is downloaded.
    """
    exe = Path(sys.executable).parent / "mlflow"
    return [str(exe), "models", "serve", "-m", model_uri, "--env-manager", "local",
            "-h", host, "-p", str(port), "--workers", "1"]


def serve_env(tracking_uri: str) -> dict[str, str]:
    """Environment for the model server: the tracking URI; this environment's ``bin`` on PATH.

    MLflow starts ``uvicorn`` by name, so the environment's ``bin`` goes first on ``PATH``.
    """
    import os

    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
            "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}


def serve(model_uri: str, port: int, tracking_uri: str,
          host: str = "127.0.0.1") -> subprocess.Popen[bytes]:
    """Start the MLflow model server in a subprocess (the caller stops it)."""
    return subprocess.Popen(serve_command(model_uri, port, host), env=serve_env(tracking_uri))
