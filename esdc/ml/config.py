"""Training configuration: YAML validated into a typed model (like recipes).

:data:`MODEL_KINDS` names, per fitter, the model kinds it fits; the fitters themselves are
found by name in the registry :mod:`esdc.ml.fit` (:attr:`TrainConfig.fitter`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from esdc.errors import TrainConfigError
from esdc.ml.estimators import estimator_class, require_sklearn
from esdc.recipe import Identifier, format_errors

__all__ = ["MODEL_KINDS", "AugmentSpec", "Distribution", "SearchSpec", "SplitSpec",
           "TrainConfig", "load_train_config"]

#: Fitter name (:attr:`TrainConfig.fitter`, a name of :data:`esdc.ml.fit.FITTERS`) -> the
#: model kinds it fits, its default first.
MODEL_KINDS: dict[str, tuple[str, ...]] = {
    "sklearn": ("random_forest", "sgd"),
    "torch": ("cnn",),
    "keras": ("cnn",),
    "simsiam": ("simsiam", "vicreg", "mae"),
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitSpec(_Model):
    """Spatial block split: block size in cells, train/validation/test shares, seed."""

    block: tuple[PositiveInt, PositiveInt] = (64, 64)
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0


class AugmentSpec(_Model):
    """Training patches and random views of a self-supervised encoder (:mod:`esdc.ml.augment`).

    Attributes
    ----------
    stride : (int, int), optional
        Training patches start every ``stride`` cells (overlapping when smaller than
        ``patch``: more, shifted patches per epoch); default ``patch`` (no overlap).
        Validation patches never overlap.
    crop : (int, int), optional
        Each view is a random window of ``crop`` cells of the patch (two overlapping,
        neighbouring tiles); default the whole patch.
    flip_rotate : bool
        Random flips and quarter turns per tile.
    channel_drop : float
        Probability of setting a channel of a tile to its mean, in ``[0, 1)``.
    noise : float
        Standard deviation of Gaussian noise added, in normalised units (0: none; no
        colour jitter, which would change what a physical value means).
    coarse : (int, int), optional
        Multi-scale views: the second view of each pair is a random window of this many
        cells of the patch (at least the crop), averaged down to the crop's size: the
        tile and its wider surroundings at a coarser resolution. Default: both views
        crops.
    """

    stride: tuple[PositiveInt, PositiveInt] | None = None
    crop: tuple[PositiveInt, PositiveInt] | None = None
    flip_rotate: bool = True
    channel_drop: Annotated[float, Field(ge=0, lt=1)] = 0.2
    noise: Annotated[float, Field(ge=0)] = 0.1
    coarse: tuple[PositiveInt, PositiveInt] | None = None


class Distribution(_Model):
    """A sampled hyperparameter of a randomized search (scipy.stats).

    ``randint``: integers ``low..high`` inclusive; ``uniform``: floats on ``[low, high]``;
    ``loguniform``: log-uniform on ``[low, high]`` (``low > 0``).
    """

    dist: Literal["randint", "uniform", "loguniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _check(self) -> Distribution:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be smaller than high ({self.high})")
        if self.dist == "randint" and not (self.low.is_integer() and self.high.is_integer()):
            raise ValueError("randint takes integer low and high")
        if self.dist == "loguniform" and self.low <= 0:
            raise ValueError("loguniform needs low > 0")
        return self


_Values = Annotated[list[Any], Field(min_length=1)]


class SearchSpec(_Model):
    """Cross-validated hyperparameter search of a scikit-learn model (:mod:`esdc.ml.tuning`).

    Give either ``grid`` (every combination: ``GridSearchCV``) or ``distributions`` and
    ``n_iter`` (``RandomizedSearchCV``). Folds are whole spatial blocks of
    ``split.block`` from the train split; each fit is a task on the Dask cluster.
    Candidates are fitted in memory on the sampled training pixels (``max_train_pixels``);
    for ``sgd`` that is ``fit``, not the streamed ``partial_fit`` of a plain run.

    Attributes
    ----------
    grid : dict of str to list, optional
        Estimator parameter -> values to try (at least one parameter, one value each).
    distributions : dict of str to list or Distribution, optional
        Parameter -> values drawn uniformly, or a :class:`Distribution`.
    n_iter : int
        Candidates drawn from ``distributions`` (default 10).
    scoring : str, optional
        A scikit-learn scorer name (``sklearn.metrics.get_scorer_names()``); default
        ``accuracy`` (classification) or ``neg_root_mean_squared_error`` (regression).
    cv : int
        Number of spatial folds, at least 2 (default 3).
    """

    grid: Annotated[dict[str, _Values], Field(min_length=1)] | None = None
    distributions: Annotated[dict[str, _Values | Distribution],
                             Field(min_length=1)] | None = None
    n_iter: PositiveInt | None = None
    scoring: str | None = None
    cv: Annotated[int, Field(ge=2)] = 3

    @model_validator(mode="after")
    def _check(self) -> SearchSpec:
        if (self.grid is None) == (self.distributions is None):
            raise ValueError("give exactly one of `grid` (grid search) or `distributions` "
                             "(randomized search with n_iter)")
        if self.grid is not None and self.n_iter is not None:
            raise ValueError("n_iter is for `distributions`; a grid tries every combination")
        if self.scoring is not None:
            require_sklearn()
            from sklearn.metrics import get_scorer_names

            if self.scoring not in get_scorer_names():
                raise ValueError(f"scoring {self.scoring!r} is not a scikit-learn scorer; "
                                 "see sklearn.metrics.get_scorer_names()")
        return self

    @property
    def params(self) -> dict[str, Any]:
        """The searched parameters with their values or distributions."""
        return dict(self.grid if self.grid is not None else self.distributions or {})


def _search_error(loc: tuple[str | int, ...], msg: str, value: Any) -> ValidationError:
    """A validation error located at a field inside ``search`` (for format_errors)."""
    from pydantic_core import InitErrorDetails, PydanticCustomError

    return ValidationError.from_exception_data("TrainConfig", [InitErrorDetails(
        type=PydanticCustomError("value_error", "{msg}", {"msg": msg}), loc=loc, input=value)])


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
        encoder (``model.kind`` ``simsiam``, ``vicreg`` or ``mae``, :mod:`esdc.ml.ssl`) on
        patches of size ``patch`` (no target).
    inputs : list of str
        Cube variables used as input channels.
    target : str, optional
        Cube variable to predict (none for ``embedding``).
    model : dict
        ``kind`` (``random_forest`` | ``sgd`` for sklearn; ``cnn`` for torch/keras;
        ``simsiam`` | ``vicreg`` | ``mae`` for ``task: embedding``) and its keyword
        parameters.
    patch : (int, int)
        Patch size in cells.
    epochs, batch_size, learning_rate : int, int, float
        Optimisation (torch/keras; ``sgd`` uses epochs and batch_size too).
    max_train_pixels : int
        Cap of training pixels for estimators fitted in memory (random forest).
    device : {"auto", "cpu", "cuda"}
        Where torch trains (``auto``: the worker's GPU if it has one).
    search : SearchSpec, optional
        Hyperparameter search (sklearn only): spatial-block cross-validation on the
        train split, candidate fits on the Dask workers, best candidate refitted.
    augment : AugmentSpec, optional
        Training patches and views of ``task: embedding`` (default: non-overlapping
        patches, flips and quarter turns, channel dropout 0.2, noise 0.1).
    context : int
        ``task: embedding``: cells of context on every side of a search tile; the
        encoder embeds each tile from the window of ``tile + 2 * context`` cells
        centred on it (:mod:`esdc.ml.windows`; recorded in ``encoder.json``, used by
        ``esdc embed``, and the PCA baseline of ``esdc evaluate-search`` reads the same
        windows). Train on views of that size (``augment.crop``). Default 0: the tile.
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
    search: SearchSpec | None = None
    augment: AugmentSpec | None = None
    context: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.search is not None and self.framework != "sklearn":
            raise _search_error(("search",), "hyperparameter search is for framework "
                                "sklearn", self.framework)
        for what, given in (("augment", self.augment is not None), ("context", self.context)):
            if given and self.task != "embedding":
                raise ValueError(f"`{what}` is for task embedding (a self-supervised encoder)")
        if self.task == "embedding":
            kinds = MODEL_KINDS["simsiam"]
            if self.framework != "torch" or self.model.get("kind", kinds[0]) not in kinds:
                raise ValueError("task embedding trains a torch SimSiam, VICReg or MAE encoder: "
                                 "use framework torch and model.kind mae, simsiam or vicreg")
            if self.target is not None:
                raise ValueError("task embedding is self-supervised: remove `target`")
            aug = self.augment or AugmentSpec()
            for what, size in (("crop", aug.crop), ("stride", aug.stride),
                               ("coarse", aug.coarse)):
                if size is not None and (size[0] > self.patch[0] or size[1] > self.patch[1]):
                    raise ValueError(f"augment.{what} {list(size)} is larger than the patch "
                                     f"{list(self.patch)}")
            view = aug.crop or self.patch
            if aug.coarse is not None and (aug.coarse[0] < view[0] or aug.coarse[1] < view[1]):
                raise ValueError(f"augment.coarse {list(aug.coarse)} is smaller than the view "
                                 f"{list(view)}")
            return self
        if self.target is None:
            raise ValueError(f"task {self.task} needs a `target` variable")
        kinds = MODEL_KINDS[self.fitter]
        kind = self.model.get("kind", kinds[0])
        if kind not in kinds:
            raise ValueError(f"model.kind {kind!r} is not available for {self.framework}; use "
                             f"one of {list(kinds)}")
        if self.target in self.inputs:
            raise ValueError(f"target {self.target!r} is also an input")
        if self.search is not None:
            self._check_search(kind)
        return self

    def _check_search(self, kind: str) -> None:
        """Searched parameters must exist on the estimator and have valid values."""
        search = self.search
        if search is None:
            return
        cls = estimator_class(kind, self.task)
        from sklearn.base import clone

        est = cls()
        known = est.get_params()
        field = "grid" if search.grid is not None else "distributions"
        for name, values in search.params.items():
            loc = ("search", field, name)
            if name not in known:
                raise _search_error(loc, f"{name!r} is not a parameter of {cls.__name__}; it "
                                    f"has {sorted(known)}", name)
            for v in values if isinstance(values, list) else []:
                try:
                    clone(est).set_params(**{name: v})._validate_params()
                except ValueError as exc:  # sklearn's InvalidParameterError
                    raise _search_error(loc, str(exc), v) from None

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "training config") -> TrainConfig:
        """Validate a dict (as from YAML) into a config.

        Parameters
        ----------
        d : dict
            The config's fields.
        where : str
            What the dict is (a file name), the first words of an error message.

        Returns
        -------
        TrainConfig

        Raises
        ------
        TrainConfigError
            One line per invalid field: its path (``search.grid.max_depth``) and the
            problem.
        """
        try:
            return cls.model_validate(d)
        except ValidationError as exc:
            raise TrainConfigError(format_errors(exc, where, cls)) from None

    @property
    def fitter(self) -> str:
        """Name of the fitter in :data:`esdc.ml.fit.FITTERS`.

        ``simsiam`` (the self-supervised encoder fitter, SimSiam or VICReg) for ``task:
        embedding``, otherwise the framework.
        """
        return "simsiam" if self.task == "embedding" else self.framework

    @property
    def model_kind(self) -> str:
        """The model kind, defaulted per fitter (:data:`MODEL_KINDS`)."""
        return str(self.model.get("kind", MODEL_KINDS[self.fitter][0]))

    @property
    def model_params(self) -> dict[str, Any]:
        """Model keyword parameters (``model`` without ``kind``)."""
        return {k: v for k, v in self.model.items() if k != "kind"}


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and validate a training config file.

    Raises
    ------
    TrainConfigError
        If the file is missing, malformed or invalid (field paths in the message).
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainConfigError(f"config file {p} does not exist.") from None
    except yaml.YAMLError as exc:
        raise TrainConfigError(f"{p}: malformed YAML: {exc}".splitlines()[0]) from None
    except RecursionError:
        raise TrainConfigError(f"{p}: malformed YAML: nested too deeply.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainConfigError(f"config file {p} cannot be read: {exc}.") from None
    if not isinstance(data, dict):
        raise TrainConfigError(f"{p}: a training config is a YAML mapping.")
    return TrainConfig.from_dict(data, str(p))
