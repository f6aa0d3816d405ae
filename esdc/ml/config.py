"""Training configuration: YAML validated into a typed model (like recipes)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from esdc.errors import RecipeError
from esdc.recipe import Identifier, _format_errors

__all__ = ["SplitSpec", "TrainConfig", "load_train_config"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitSpec(_Model):
    """Spatial block split: block size in cells, train/validation/test shares, seed."""

    block: tuple[PositiveInt, PositiveInt] = (64, 64)
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0


class TrainConfig(_Model):
    """What to learn from a cube, with which framework and model.

    Attributes
    ----------
    name : str
        Experiment name in MLflow.
    framework : {"sklearn", "torch", "keras"}
        Trainer.
    task : {"classification", "regression", "embedding"}
        Per-pixel task; classes of a classification come from the target's
        ``flag_values`` unless given. ``embedding`` trains a self-supervised tile
        encoder (SimSiam, :mod:`esdc.ml.ssl`) on patches of size ``patch`` (no target).
    inputs : list of str
        Cube variables used as input channels.
    target : str, optional
        Cube variable to predict (none for ``embedding``).
    model : dict
        ``kind`` (``random_forest`` | ``sgd`` for sklearn; ``cnn`` for torch/keras)
        and its keyword parameters.
    patch : (int, int)
        Patch size in cells.
    epochs, batch_size, learning_rate : int, int, float
        Optimisation (torch/keras; ``sgd`` uses epochs and batch_size too).
    max_train_pixels : int
        Cap of training pixels for estimators fitted in memory (random forest).
    device : {"auto", "cpu", "cuda"}
        Where torch trains (``auto``: the worker's GPU if it has one).
    """

    name: Identifier
    framework: Literal["sklearn", "torch", "keras"]
    task: Literal["classification", "regression", "embedding"]
    inputs: Annotated[list[Identifier], Field(min_length=1)]
    target: Identifier | None = None
    model: dict[str, Any] = Field(default_factory=dict)
    patch: tuple[PositiveInt, PositiveInt] = (16, 16)
    split: SplitSpec = Field(default_factory=SplitSpec)
    epochs: PositiveInt = 3
    batch_size: PositiveInt = 64
    learning_rate: Annotated[float, Field(gt=0)] = 1e-3
    max_train_pixels: PositiveInt = 200_000
    classes: list[int] | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        kinds = {"sklearn": ("random_forest", "sgd"), "torch": ("cnn", "simsiam"),
                 "keras": ("cnn",)}
        if self.task == "embedding":
            if self.framework != "torch" or self.model.get("kind", "simsiam") != "simsiam":
                raise ValueError("task embedding trains a torch SimSiam encoder: use "
                                 "framework torch and model.kind simsiam")
            if self.target is not None:
                raise ValueError("task embedding is self-supervised: remove `target`")
            return self
        if self.target is None:
            raise ValueError(f"task {self.task} needs a `target` variable")
        kind = self.model.get("kind", kinds[self.framework][0])
        if kind not in kinds[self.framework]:
            raise ValueError(f"model.kind {kind!r} is not available for {self.framework}; use "
                             f"one of {list(kinds[self.framework])}")
        if self.target in self.inputs:
            raise ValueError(f"target {self.target!r} is also an input")
        return self

    @property
    def model_kind(self) -> str:
        """The model kind, defaulted per framework."""
        if self.task == "embedding":
            return "simsiam"
        return str(self.model.get("kind", {"sklearn": "random_forest"}.get(self.framework,
                                                                             "cnn")))

    @property
    def model_params(self) -> dict[str, Any]:
        """Model keyword parameters (``model`` without ``kind``)."""
        return {k: v for k, v in self.model.items() if k != "kind"}


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and validate a training config file.

    Raises
    ------
    RecipeError
        If the file is missing, malformed or invalid (field paths in the message).
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"config file {p} does not exist.") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{p}: malformed YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise RecipeError(f"{p}: a training config is a YAML mapping.")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_errors(exc, str(p))) from None
