"""Training reports its data: patches and pixels per split and class, in the result and in
MLflow, with warnings when the blocks waste most patches or a split lacks the training
majority class.

On tests/own_data.py's real cube (0.25 degree over the Carolinas): inputs altitude and the
hourly rain (12 steps), target the GSHHG land/ocean/lake class (static).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from esdc.cli import app
from esdc.errors import TrainingDataWarning
from esdc.ml.config import TrainConfig
from esdc.ml.datareport import data_report, report_lines
from esdc.ml.train import train
from tests.own_data import own_data_cube

pytest.importorskip("mlflow")
pytest.importorskip("skops")


@pytest.fixture(scope="module")
def cube(tmp_path_factory) -> Path:
    return own_data_cube(tmp_path_factory)


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{tmp_path / 'mlruns.db'}"


def _config(block: list[int]) -> dict:
    return {"name": "t_data", "framework": "sklearn", "task": "classification",
            "inputs": ["altitude", "precipitation"], "target": "land_sea_mask",
            "patch": [4, 4], "split": {"block": block},
            "model": {"kind": "random_forest", "n_estimators": 5, "max_depth": 4}}


def test_counts_per_split_and_class(cube):
    from esdc.ml.patches import PatchStream

    cfg = TrainConfig.model_validate(_config([8, 8]))
    streams = {s: PatchStream(cube, cfg.inputs, patch=cfg.patch, targets=[cfg.target],
                              split=s, split_block=cfg.split.block) for s in
               ("train", "validation", "test")}
    rep = data_report(streams, cfg.target, cfg.task)
    assert rep.warnings == []
    # 20 x 22 cells hold 5 x 5 patch positions of 4 x 4, at each of 12 hours
    assert rep.grid_patches == 25 * 12
    assert sum(c.patches for c in rep.splits.values()) == rep.grid_patches  # none wasted
    for split, c in rep.splits.items():
        assert c.patches == len(streams[split])
        assert c.pixels == c.patches * 16  # the mask is valid everywhere
        assert sum(c.classes.values()) == c.pixels
        assert set(c.classes) == {"ocean", "land", "lake"}
    assert rep.metrics()["data_train_class_land"] == rep.splits["train"].classes["land"]
    lines = report_lines(rep.as_dict())
    assert lines[0].startswith(f"train: {rep.splits['train'].patches} patches, ")
    assert "(ocean " in lines[0]


def test_thin_splits_warn_and_are_recorded_in_mlflow(cube, tracking):
    import mlflow

    with pytest.warns(TrainingDataWarning) as caught:
        res = train(str(cube), _config([5, 5]), tracking)
    texts = [str(w.message) for w in caught if w.category is TrainingDataWarning]
    assert any("split blocks [5, 5] with patches [4, 4] keep 48 of the grid's 300 patches "
               "(84% wasted" in t and "split.block: [8, 8]" in t for t in texts), texts
    assert any("has no pixel of the training majority class 'land'" in t for t in texts)
    data = res.data
    assert data["grid_patches"] == 300 and data["warnings"] == texts
    assert {s: c["patches"] for s, c in data["splits"].items()} == {
        "train": 24, "validation": 12, "test": 12}
    mlflow.set_tracking_uri(tracking)
    run = mlflow.get_run(res.run_id)
    assert run.data.metrics["data_train_patches"] == 24
    assert run.data.metrics["data_validation_class_land"] == 0
    assert "84% wasted" in run.data.tags["esdc.data_warnings"]
    stored = mlflow.artifacts.load_dict(f"runs:/{res.run_id}/data.json")
    assert stored == data


@pytest.mark.slow
def test_cli_prints_the_counts_and_warnings(cube, tmp_path, tracking):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(_config([5, 5])))
    res = CliRunner().invoke(app, ["train", str(cube), "--config", str(cfg),
                                   "--tracking-uri", tracking])
    assert res.exit_code == 0, res.output
    assert "  train: 24 patches, 384 pixels (ocean " in res.output
    assert "  validation: 12 patches" in res.output and "  test: 12 patches" in res.output
    assert "warning: split blocks [5, 5] with patches [4, 4]" in res.output
    res = CliRunner().invoke(app, ["train", str(cube), "--config", str(cfg),
                                   "--tracking-uri", tracking, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert doc["data"]["splits"]["train"]["patches"] == 24
