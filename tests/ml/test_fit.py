"""Fitters: one module per framework, found by name, each returning a FitResult.

Also the typed errors of a training config that is invalid or does not fit the cube.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from esdc.errors import EsdcError, TrainConfigError
from esdc.ml.config import MODEL_KINDS, TrainConfig, load_train_config
from esdc.ml.fit import FITTERS, FitContext, FitResult, Fitter, load_fitter
from esdc.ml.patches import PatchStream
from esdc.ml.train import check_fits, train
from esdc.storage import open_cube

SHAPE, BLOCK, PATCH = (48, 96), (16, 16), (8, 8)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """A static 48x96 cube: inputs a, b; ``cls`` 0/1/2 from them (flag_values); ``raw``
    the same classes without flag_values; ``val`` a continuous target."""
    from esdc.testing import new_cube

    ds = new_cube(shape=SHAPE, times=0, seed=7)
    cls = (ds["a"] > 0).astype("float32") + (ds["b"] > 0.5).astype("float32")
    ds["cls"] = cls.assign_attrs(units="1", long_name="class", grid_mapping="crs",
                                 flag_values=[0, 1, 2], flag_meanings="low mid high")
    ds["raw"] = cls.assign_attrs(units="1", long_name="class", grid_mapping="crs")
    ds["val"] = (2 * ds["a"] - ds["b"]).assign_attrs(units="1", long_name="value",
                                                     grid_mapping="crs")
    out = tmp_path_factory.mktemp("fit") / "labelled.zarr"
    ds.to_zarr(out, zarr_format=3, consolidated=True)
    return out


def _cfg(**changes) -> TrainConfig:
    d = dict(name="t_fit", framework="sklearn", task="classification", inputs=["a", "b"],
             target="cls", model={"kind": "random_forest", "n_estimators": 10},
             patch=list(PATCH), split={"block": list(BLOCK), "fractions": [0.6, 0.2, 0.2]},
             max_train_pixels=3000, epochs=2, batch_size=16)
    d.update(changes)
    return TrainConfig.from_dict(d)


def _fit(cube: Path, cfg: TrainConfig, out: Path) -> tuple[FitResult, list]:
    """Run the config's fitter as esdc.ml.train.train does, without MLflow."""
    streams = {s: PatchStream(str(cube), cfg.inputs, patch=cfg.patch,
                              targets=[cfg.target] if cfg.target else [], split=s,
                              split_block=cfg.split.block, split_fractions=cfg.split.fractions,
                              split_seed=cfg.split.seed, seed=cfg.seed, shuffle=(s == "train"))
               for s in ("train", "validation", "test")}
    logged: list = []
    out.mkdir()
    ctx = FitContext(open_cube(cube), streams, out, "cpu",
                     lambda epoch, metrics: logged.append((epoch, metrics)))
    fitter = load_fitter(cfg.fitter)
    return fitter.fit(cfg, ctx), logged


def test_registry_names_a_module_per_fitter_and_the_kinds_each_fits():
    assert set(FITTERS) == set(MODEL_KINDS) == {"sklearn", "torch", "keras", "simsiam"}
    assert all(e.module == f"esdc.ml.fit.{name}" for name, e in FITTERS.items())
    with pytest.raises(TrainConfigError, match="no fitter 'jax'"):
        load_fitter("jax")
    assert _cfg().fitter == "sklearn"
    assert _cfg(framework="torch", model={"kind": "cnn"}).fitter == "torch"
    enc = _cfg(framework="torch", task="embedding", target=None, model={"kind": "simsiam"})
    assert enc.fitter == "simsiam" and enc.model_kind == "simsiam"
    fitter = load_fitter("sklearn")
    assert isinstance(fitter, Fitter) and fitter.name == "sklearn"
    assert fitter.device("cuda", {"GPU": 1}) == "cpu"  # scikit-learn fits on the CPU


def test_random_forest_training_imports_no_torch_or_keras_code(labelled, tmp_path):
    """The registry imports only the fitter a config names (skops itself may load torch)."""
    code = f"""
import json, sys
from esdc.ml.train import train
cfg = {{"name": "t_rf", "framework": "sklearn", "task": "classification",
        "inputs": ["a", "b"], "target": "cls", "patch": [8, 8], "max_train_pixels": 2000,
        "split": {{"block": [16, 16], "fractions": [0.6, 0.2, 0.2]}},
        "model": {{"kind": "random_forest", "n_estimators": 5}}}}
res = train({str(labelled)!r}, cfg, "sqlite:///{tmp_path / 'm.db'}")
mods = sorted(m for m in sys.modules if m.startswith(("esdc", "tensorflow", "keras")))
print(json.dumps({{"test": res.test, "modules": mods}}))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["test"] > 0
    mods = set(out["modules"])
    assert {"esdc.ml.fit", "esdc.ml.fit.sklearn"} <= mods
    assert not {"esdc.ml.fit.torch", "esdc.ml.fit.keras", "esdc.ml.fit.simsiam",
                "esdc.ml.torch", "esdc.ml.keras", "esdc.ml.models", "esdc.ml.ssl",
                "esdc.embed"} & mods, mods
    assert not any(m.split(".")[0] in ("tensorflow", "keras") for m in mods), mods


@pytest.mark.parametrize(("task", "kind", "target"), [
    ("classification", "random_forest", "cls"),
    ("classification", "sgd", "cls"),
    ("regression", "random_forest", "val"),
])
def test_sklearn_fitter_returns_a_fit_result(labelled, tmp_path, task, kind, target):
    from skops.io import get_untrusted_types, load

    cfg = _cfg(task=task, target=target, model={"kind": kind})
    res, logged = _fit(labelled, cfg, tmp_path / "model")
    assert isinstance(res, FitResult)
    assert res.metric == {"classification": "accuracy", "regression": "rmse"}[task]
    # cls and val are functions of the inputs: every model beats the trivial one
    assert (res.test > res.baseline) if task == "classification" else (
        res.test < res.baseline)
    assert res.model_file == tmp_path / "model" / "model.skops"
    est = load(res.model_file, trusted=get_untrusted_types(file=res.model_file))
    assert est.n_features_in_ == 2
    assert res.best_params is None and res.cv_score is None
    if kind == "sgd":  # streamed partial_fit: one logged score per epoch
        assert [e for e, _ in logged] == [0, 1] and "train_score" in logged[0][1]


def test_torch_and_simsiam_fitters_return_fit_results(labelled, tmp_path):
    torch = pytest.importorskip("torch")
    from esdc.ml.models import PixelCNN
    from esdc.ml.ssl import Encoder

    cfg = _cfg(framework="torch", model={"kind": "cnn", "hidden": 8, "depth": 2}, epochs=3,
               learning_rate=0.01)
    res, logged = _fit(labelled, cfg, tmp_path / "cnn")
    assert res.metric == "accuracy" and res.test > res.baseline
    assert [e for e, _ in logged] == [0, 1, 2] and "val_accuracy" in logged[-1][1]
    meta = json.loads((res.model_file.parent / "model.json").read_text())
    assert meta["classes"] == [0, 1, 2] and meta["out_channels"] == 3
    model = PixelCNN(meta["in_channels"], meta["out_channels"], **meta["params"])
    model.load_state_dict(torch.load(res.model_file, weights_only=True))

    enc = _cfg(framework="torch", task="embedding", target=None,
               model={"kind": "simsiam", "dim": 16, "width": 8}, epochs=1)
    res, logged = _fit(labelled, enc, tmp_path / "enc")
    assert res.metric == "simsiam_loss" and res.model_file.name == "encoder.pt"
    assert -1.0 <= res.test <= 1.0 and -1.0 <= res.baseline <= 1.0
    assert set(logged[0][1]) == {"train_loss", "val_loss"}
    meta = json.loads((res.model_file.parent / "encoder.json").read_text())
    assert meta["inputs"] == ["a", "b"] and meta["tile"] == list(PATCH)
    Encoder(meta["in_channels"], **meta["params"]).load_state_dict(
        torch.load(res.model_file, weights_only=True))


@pytest.mark.tensorflow
def test_keras_fitter_returns_a_fit_result(labelled, tmp_path):
    keras = pytest.importorskip("keras")
    cfg = _cfg(framework="keras", model={"kind": "cnn", "hidden": 8, "depth": 2}, epochs=2,
               learning_rate=0.01)
    res, logged = _fit(labelled, cfg, tmp_path / "keras")
    assert res.metric == "accuracy" and res.model_file.name == "model.keras"
    assert [e for e, _ in logged] == [0, 1]
    model = keras.saving.load_model(res.model_file, safe_mode=True)
    assert model.output_shape[-1] == 3


def test_bad_configs_raise_train_config_error(tmp_path):
    base = dict(name="t", framework="sklearn", task="regression", inputs=["a"], target="b")
    with pytest.raises(TrainConfigError, match="framework"):
        TrainConfig.from_dict({**base, "framework": "jax"})
    with pytest.raises(TrainConfigError, match="model.kind 'simsiam' is not available for "
                                               "torch"):
        TrainConfig.from_dict({**base, "framework": "torch", "model": {"kind": "simsiam"}})
    with pytest.raises(TrainConfigError, match="does not exist"):
        load_train_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**base, "epochs": 0}))
    with pytest.raises(TrainConfigError, match=r"bad\.yaml is invalid:\n  epochs"):
        load_train_config(tmp_path / "bad.yaml")
    # a TrainConfigError is a RecipeError (and a ValueError) as before
    assert issubclass(TrainConfigError, ValueError) and issubclass(TrainConfigError, EsdcError)


@pytest.mark.parametrize(("changes", "needle"), [
    (dict(inputs=["a", "nope"]), r"variables \['nope'\] are not in the cube"),
    (dict(target="missing"), r"variables \['missing'\] are not in the cube"),
    (dict(patch=[60, 60], split={"block": [64, 64]}), "does not fit the grid"),
    (dict(split={"block": [4, 4]}), "smaller than the patch"),
    (dict(search={"grid": {"max_depth": [2, 4]}, "cv": 40}), "search.cv: 40 folds need"),
])
def test_a_config_that_does_not_fit_the_cube(labelled, tmp_path, changes, needle):
    cfg = _cfg(**changes)
    with pytest.raises(TrainConfigError, match=needle):
        check_fits(str(labelled), cfg)
    # train() finds it too, before any MLflow run
    with pytest.raises(TrainConfigError, match=needle):
        train(str(labelled), cfg.model_dump(), f"sqlite:///{tmp_path / 'm.db'}")
    assert not (tmp_path / "m.db").exists()


def test_a_classification_needs_classes(labelled, tmp_path):
    cfg = _cfg(target="raw", model={"kind": "sgd"})
    with pytest.raises(TrainConfigError, match="target 'raw' has no flag_values"):
        _fit(labelled, cfg, tmp_path / "a")
    res, _ = _fit(labelled, _cfg(target="raw", model={"kind": "sgd"}, classes=[0, 1, 2]),
                  tmp_path / "b")
    assert res.test > res.baseline
    # a random forest learns its classes from the pixels
    res, _ = _fit(labelled, _cfg(target="raw"), tmp_path / "c")
    assert res.test > res.baseline


def test_a_missing_framework_names_the_extra(tmp_path, monkeypatch):
    """A fitter module whose framework is not installed: the error says what to install."""
    from esdc.ml.fit import FitterEntry

    (tmp_path / "esdc_test_fitter_jaxlike.py").write_text("import jax_is_not_installed_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(FITTERS, "jaxlike", FitterEntry("esdc_test_fitter_jaxlike", "jax"))
    with pytest.raises(EsdcError, match=r"the jaxlike fitter needs jax_is_not_installed_here, "
                                        r"which is not installed: pip install 'esdc\[jax\]'"):
        load_fitter("jaxlike")
