"""Hyperparameter search: spatial-block CV folds, fits on the Dask workers, MLflow tables."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from esdc.cli import app
from esdc.errors import EsdcError
from esdc.ml.config import TrainConfig
from esdc.ml.patches import PatchStream, block_splits
from esdc.ml.pixels import valid_pixels
from esdc.ml.train import submit
from esdc.ml.tuning import block_ids, spatial_folds

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("mlflow")
pytest.importorskip("skops")

SHAPE, BLOCK, PATCH = (64, 128), (16, 16), (8, 8)
GRID = {"max_depth": [2, 4, None], "min_samples_leaf": [1, 20]}


def _base(**changes) -> dict:
    d = dict(name="t_search", framework="sklearn", task="classification", inputs=["a", "b"],
             target="cls", model={"kind": "random_forest", "n_estimators": 5},
             patch=list(PATCH), split={"block": list(BLOCK), "fractions": [0.7, 0.15, 0.15]},
             max_train_pixels=3000, search={"grid": GRID, "cv": 3})
    d.update(changes)
    return d


@pytest.fixture(scope="module")
def small_cube(tmp_path_factory) -> Path:
    """A static 64x128 cube; class 0/1/2 from two inputs, 32 spatial blocks of 16x16."""
    from esdc.testing import new_cube

    ds = new_cube(shape=SHAPE, times=0)
    cls = (ds["a"] > 0).astype("float32") + (ds["b"] > 0.5).astype("float32")
    ds["cls"] = cls.assign_attrs(units="1", long_name="class", grid_mapping="crs",
                                 flag_values=[0, 1, 2], flag_meanings="low mid high")
    out = tmp_path_factory.mktemp("search") / "small.zarr"
    ds.to_zarr(out, zarr_format=3, consolidated=True)
    return out


@pytest.fixture(scope="module")
def searched(small_cube, client, tmp_path_factory):
    """One grid search through ``submit`` on the 2-worker LocalCluster, task stream kept."""
    from distributed import get_task_stream

    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    cfg = TrainConfig.model_validate(_base())
    with get_task_stream(client) as ts:
        result = submit(client, str(small_cube), cfg, uri).result()
    return {"result": result, "tasks": ts.data, "uri": uri, "cfg": cfg}


def _artifact_csv(uri: str, run_id: str, name: str) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(uri)
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"search/{name}")
    return pd.read_csv(local)


def test_candidate_fits_ran_as_tasks_on_the_dask_workers(searched, client):
    workers = set(client.scheduler_info()["workers"])
    fits = [t for t in searched["tasks"] if "_fit_and_score" in str(t["key"])]
    assert fits, [t["key"] for t in searched["tasks"]]
    # joblib's dask backend names each task batch_of_<func>_<n>_calls-<uuid>
    calls = sum(int(re.search(r"_(\d+)_calls", str(t["key"])).group(1)) for t in fits)
    n_candidates = len(GRID["max_depth"]) * len(GRID["min_samples_leaf"])
    assert calls == n_candidates * 3  # every (candidate, fold) fit went through Dask
    ran_on = {t["worker"] for t in fits}
    # On worker processes, not in the client; how the 18 fits spread over the two
    # workers is the scheduler's choice (usually both; not asserted, to stay stable).
    assert ran_on and ran_on <= workers, ran_on
    import mlflow

    mlflow.set_tracking_uri(searched["uri"])
    run = mlflow.get_run(searched["result"]["run_id"])
    assert run.data.tags["esdc.search_backend"] == "dask"


def test_folds_are_whole_disjoint_spatial_blocks_of_the_train_split(searched, small_cube):
    cfg = searched["cfg"]
    stream = PatchStream(str(small_cube), cfg.inputs, patch=cfg.patch, targets=[cfg.target],
                         split="train", split_block=cfg.split.block,
                         split_fractions=cfg.split.fractions, split_seed=cfg.split.seed)
    x, y, rows, cols = valid_pixels(stream, cfg.max_train_pixels, cfg.seed, coords=True)
    assert x.shape == (len(y), 2) and len(y) == cfg.max_train_pixels
    # the coordinates are right: the pixel values are the cube's
    a = stream._ds["a"].values
    assert np.allclose(x[:, 0] * stream._scale[0] + stream._mean[0], a[rows, cols], atol=1e-4)
    labels = block_splits(SHAPE, PATCH, BLOCK, cfg.split.fractions, cfg.split.seed)
    by, bx = rows // BLOCK[0], cols // BLOCK[1]
    assert (labels[by, bx] == 0).all()  # only train blocks take part in the search
    groups = block_ids(rows, cols, BLOCK, SHAPE[1])
    folds = spatial_folds(groups, 3)
    assert len(folds) == 3
    seen = set()
    for train_idx, val_idx in folds:
        tr = set(zip(by[train_idx], bx[train_idx], strict=True))
        va = set(zip(by[val_idx], bx[val_idx], strict=True))
        assert tr and va and not tr & va  # no block on both sides of a fold
        assert not va & seen  # each block validates exactly one fold
        seen |= va
    assert seen == set(zip(by, bx, strict=True))
    # the run logged the same block -> fold table
    logged = _artifact_csv(searched["uri"], searched["result"]["run_id"], "cv_folds.csv")
    assert logged["block"].is_unique and set(logged["fold"]) == {0, 1, 2}
    assert (labels[logged["block_y"], logged["block_x"]] == 0).all()
    assert logged["pixels"].sum() == cfg.max_train_pixels


def test_cv_results_best_params_and_child_runs_in_mlflow(searched):
    import mlflow

    res = searched["result"]
    uri = searched["uri"]
    table = _artifact_csv(uri, res["run_id"], "cv_results.csv")
    assert len(table) == 6  # one row per candidate
    assert {"param_max_depth", "param_min_samples_leaf", "mean_test_score", "std_test_score",
            "rank_test_score", "split0_test_score", "split2_test_score"} <= set(table.columns)
    best = table.loc[table["rank_test_score"].idxmin()]
    mlflow.set_tracking_uri(uri)
    run = mlflow.get_run(res["run_id"])
    assert run.data.metrics["cv_accuracy"] == pytest.approx(best["mean_test_score"])
    assert run.data.params["best_min_samples_leaf"] == str(int(best["param_min_samples_leaf"]))
    assert res["best_params"]["min_samples_leaf"] == int(best["param_min_samples_leaf"])
    assert res["cv_scoring"] == "accuracy" and res["cv_score"] == pytest.approx(
        best["mean_test_score"])
    assert "test_accuracy" in run.data.metrics and res["test"] > res["baseline"] + 0.2
    children = mlflow.search_runs(experiment_ids=[run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len(children) == 6
    assert set(children["metrics.cv_accuracy"].round(6)) == set(
        table["mean_test_score"].round(6))
    assert res["model_path"].endswith("model.skops")


def test_randomized_search_with_distributions(small_cube, client, tmp_path):
    cfg = TrainConfig.model_validate(_base(search={
        "distributions": {"max_depth": {"dist": "randint", "low": 2, "high": 6},
                          "max_features": {"dist": "uniform", "low": 0.5, "high": 1.0},
                          "min_samples_leaf": [1, 10]},
        "n_iter": 3, "cv": 2}))
    res = submit(client, str(small_cube), cfg, f"sqlite:///{tmp_path / 'm.db'}").result()
    json.dumps(res)  # what `esdc train --json` prints: plain Python numbers
    assert 2 <= res["best_params"]["max_depth"] <= 6
    assert 0.5 <= res["best_params"]["max_features"] <= 1.0
    table = _artifact_csv(f"sqlite:///{tmp_path / 'm.db'}", res["run_id"], "cv_results.csv")
    assert len(table) == 3 and "split1_test_score" in table and "split2_test_score" not in table


@pytest.mark.parametrize(("search", "field", "needle"), [
    ({"grid": {"max_deep": [2, 4]}}, "search.grid.max_deep", "not a parameter of "
     "RandomForestClassifier"),
    ({"grid": {}}, "search.grid", "at least 1 item"),
    ({"grid": {"max_depth": []}}, "search.grid.max_depth", "at least 1 item"),
    ({"grid": {"max_depth": [-3]}}, "search.grid.max_depth", "must be an int in the range"),
    ({"grid": {"max_depth": [2]}, "cv": 30}, "search.cv", "spatial blocks"),
    ({"grid": {"max_depth": [2]}, "cv": 1}, "search.cv", "greater than or equal to 2"),
    ({"grid": {"max_depth": [2]}, "scoring": "acuracy"}, "search", "not a scikit-learn scorer"),
    ({"grid": {"max_depth": [2]}, "n_iter": 4}, "search", "n_iter is for `distributions`"),
    ({"grid": {"max_depth": [2]}, "distributions": {"max_depth": [2]}}, "search",
     "exactly one of"),
    ({"distributions": {"max_depth": {"dist": "randint", "low": 5, "high": 2}}},
     "search.distributions.max_depth", "smaller than high"),
    ({"grid": {"max_depth": [2]}, "folds": 3}, "search.folds", "unknown key"),
])
def test_bad_search_config_is_a_user_error(small_cube, tmp_path, search, field, needle):
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(_base(search=search)))
    r = CliRunner().invoke(app, ["train", str(small_cube), "--config", str(tmp_path / "cfg.yaml"),
                                 "--scheduler", "tcp://127.0.0.1:9"])
    assert r.exit_code == 2, r.output
    out = " ".join(r.output.split())
    assert field in out and needle in out and "Traceback" not in out, out


def test_search_needs_sklearn_and_enough_blocks_with_pixels(tmp_path):
    from esdc.ml.config import load_train_config

    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(_base(framework="torch",
                                                            model={"kind": "cnn"})))
    with pytest.raises(EsdcError, match="search: hyperparameter search is for framework "
                                        "sklearn"):
        load_train_config(tmp_path / "cfg.yaml")
    # blocks without valid pixels do not count (checked on the worker, after reading)
    with pytest.raises(EsdcError, match=r"search\.cv: 3 folds need at least 3 spatial blocks"):
        spatial_folds(np.array([4, 4, 7, 7, 7]), 3)


@pytest.mark.slow
def test_koppen_rf_search_recipe_on_the_earth_cube(earth_cube, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg_path = ROOT / "recipes" / "train" / "koppen_rf_search.yaml"
    spec = yaml.safe_load(cfg_path.read_text())["search"]
    r = CliRunner().invoke(app, ["train", str(earth_cube), "--config", str(cfg_path),
                                 "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    assert all(res["best_params"][k] in v for k, v in spec["grid"].items())
    assert res["test"] > res["baseline"] + 0.3  # majority class ~0.26
    assert res["cv_score"] > 0.7


def test_model_card_reports_the_search(searched):
    """`esdc card RUN` of a searched model states the search and its best candidate."""
    from esdc.cards import model_card

    res = searched["result"]
    card = model_card(res["run_id"], searched["uri"])
    assert "## Hyperparameter search" in card
    assert "6 candidates" in card and "spatial blocks" in card
    assert f"| min_samples_leaf | {res['best_params']['min_samples_leaf']} |" in card
    assert f"spatial-CV accuracy (mean ± std over folds) | {res['cv_score']:.4f}" in card
