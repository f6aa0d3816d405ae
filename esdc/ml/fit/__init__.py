"""Fitters: one module per framework, found by name and imported only when used.

:data:`FITTERS` maps a fitter's name (:attr:`esdc.ml.config.TrainConfig.fitter`: the
config's framework, or ``simsiam`` for ``task: embedding``) to the module that
implements it, as xarray's ``BACKEND_ENTRYPOINTS`` maps engines to backends. Each module
registers its fitter by defining ``FITTER`` (a :class:`Fitter`) at its last line, and
imports its framework at module level: :func:`load_fitter` imports only the module a
config names, so training a random forest never imports esdc's torch or keras code.

Every fitter reads the spatial splits of a :class:`FitContext`, saves its model in
``FitContext.out`` and returns a :class:`FitResult`; :func:`esdc.ml.train.train` tracks
the run in MLflow around it. The model kinds each fitter accepts are
:data:`esdc.ml.config.MODEL_KINDS`.

Adding a framework: write ``esdc/ml/fit/<name>.py`` with ``fit(cfg, ctx) -> FitResult``
(optionally ``device`` and ``register``) and ``FITTER = Fitter(...)``, add it here and its
kinds to ``MODEL_KINDS``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import xarray as xr

from esdc.errors import EsdcError, TrainConfigError
from esdc.ml.config import TrainConfig
from esdc.ml.metrics import Evaluation, class_values
from esdc.ml.patches import PatchStream
from esdc.ml.tensorboard import TensorBoardLog

__all__ = ["FITTERS", "FitContext", "FitResult", "Fitter", "FitterEntry", "cpu_only",
           "load_fitter"]


class FitterEntry(NamedTuple):
    """Where a fitter is: its module and the extra that installs its framework.

    ``module`` defines ``FITTER``; ``extra`` is named in ``pip install 'esdc[<extra>]'``
    when the framework cannot be imported.
    """

    module: str
    extra: str


#: Fitter name -> its module and extra.
FITTERS: dict[str, FitterEntry] = {
    "sklearn": FitterEntry("esdc.ml.fit.sklearn", "ml"),
    "torch": FitterEntry("esdc.ml.fit.torch", "ml"),
    "keras": FitterEntry("esdc.ml.fit.keras", "tensorflow"),
    "simsiam": FitterEntry("esdc.ml.fit.simsiam", "ml"),
}


@dataclass(frozen=True)
class FitContext:
    """What a fitter works with besides the config.

    Attributes
    ----------
    dataset : xarray.Dataset
        The cube, opened lazily (the target's ``flag_values``, the cube's attributes).
    streams : mapping of str to PatchStream
        ``train``, ``validation`` and ``test``: the spatial splits of the config's inputs
        (and target), normalised with the cube's statistics; only ``train`` shuffles.
    out : pathlib.Path
        An empty folder: the fitter saves its model files there (all are logged as the
        run's ``model`` artifacts).
    device : str
        ``cpu`` or ``cuda`` (:attr:`Fitter.device` chose it).
    log : callable
        ``log(epoch, {name: value})`` records per-epoch metrics (``train_loss``,
        ``val_<metric>``, ``learning_rate``, ...) in MLflow and TensorBoard.
    tensorboard : TensorBoardLog, optional
        The run's TensorBoard folder: fitters write the model graph there
        (``torch_graph``, ``keras_callback``); None outside :func:`esdc.ml.train.train`.
    """

    dataset: xr.Dataset
    streams: Mapping[str, PatchStream]
    out: Path
    device: str
    log: Callable[[int, dict[str, float]], None]
    tensorboard: TensorBoardLog | None = None

    def classes(self, cfg: TrainConfig) -> np.ndarray | None:
        """The class values of a classification's target, in output order; else None.

        Raises
        ------
        TrainConfigError
            If the config gives no ``classes`` and the target has no ``flag_values``.
        """
        if cfg.task != "classification" or cfg.target is None:
            return None
        return class_values(self.dataset[cfg.target].attrs, cfg.target, cfg.classes)


@dataclass(frozen=True, kw_only=True)
class FitResult(Evaluation):
    """What every fitter returns: its :class:`~esdc.ml.metrics.Evaluation` and model file.

    Attributes
    ----------
    model_file : pathlib.Path
        The saved model in ``FitContext.out`` (skops, ``state_dict`` or ``.keras``).
    """

    model_file: Path


def cpu_only(prefer: str, resources: Mapping[str, float] | None) -> str:
    """Device of a fitter that trains on the CPU: always ``"cpu"``.

    Parameters
    ----------
    prefer : str
        The config's ``device`` (``auto``, ``cpu`` or ``cuda``); ignored.
    resources : mapping of str to float or None
        The Dask worker's resources; ignored.

    Returns
    -------
    str
        ``"cpu"``.
    """
    return "cpu"


@dataclass(frozen=True)
class Fitter:
    """A framework's fitter, as its module registers it (``FITTER = Fitter(...)``).

    Attributes
    ----------
    name : str
        Its key in :data:`FITTERS`.
    fit : callable
        ``fit(cfg: TrainConfig, ctx: FitContext) -> FitResult``; runs inside the active
        MLflow run of :func:`esdc.ml.train.train`.
    device : callable
        ``device(prefer, resources) -> str``: the device for the config's ``device``
        (``auto``/``cpu``/``cuda``) on a Dask worker with ``resources`` (or None).
    register : callable, optional
        ``register(cfg, ctx, result)``, called once the run has logged the model files:
        registers the model for serving (MLflow model registry).
    """

    name: str
    fit: Callable[[TrainConfig, FitContext], FitResult]
    device: Callable[[str, Mapping[str, float] | None], str] = cpu_only
    register: Callable[[TrainConfig, FitContext, FitResult], None] | None = None


def load_fitter(name: str) -> Fitter:
    """Import the module of fitter ``name`` and return the fitter it registers.

    Parameters
    ----------
    name : str
        A key of :data:`FITTERS` (``TrainConfig.fitter``).

    Returns
    -------
    Fitter

    Raises
    ------
    TrainConfigError
        If no fitter has that name.
    EsdcError
        If the framework is not installed (the message names the extra).
    """
    try:
        entry = FITTERS[name]
    except KeyError:
        raise TrainConfigError(f"no fitter {name!r}; the fitters are {sorted(FITTERS)}.") \
            from None
    try:
        module = importlib.import_module(entry.module)
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] == "esdc":
            raise
        raise EsdcError(f"the {name} fitter needs {exc.name}, which is not installed: pip "
                        f"install 'esdc[{entry.extra}]'.") from None
    fitter = module.FITTER
    if not isinstance(fitter, Fitter):  # pragma: no cover - a module's programming error
        raise TypeError(f"{entry.module}.FITTER is not an esdc.ml.fit.Fitter")
    return fitter
