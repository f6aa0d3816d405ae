"""TensorBoard next to MLflow: scalars read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from esdc.cli import app
from esdc.errors import OutputPathError, TrainingDataWarning
from esdc.ml.config import TrainConfig
from esdc.ml.tensorboard import TensorBoardLog, tensorboard_dir

pytest.importorskip("tensorboard")
ROOT = Path(__file__).resolve().parents[2]


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_scalars_read_back_and_an_unwritable_folder(tmp_path):
    with TensorBoardLog(tmp_path / "run") as log:
        log.scalars(0, {"train_loss": 0.5, "learning_rate": 1e-3})
        log.scalars(1, {"train_loss": 0.25, "learning_rate": 1e-3})
    got = _scalars(tmp_path / "run")
    assert got["train_loss"] == [(0, 0.5), (1, 0.25)]
    assert got["learning_rate"][1] == (1, pytest.approx(1e-3))
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    for bad in (blocker, blocker / "sub"):
        with pytest.raises(OutputPathError, match=r"tensorboard=.*cannot be written there"):
            tensorboard_dir(bad)


def test_the_cli_refuses_an_unwritable_tensorboard_folder(tmp_path):
    from esdc.testing import new_cube

    cube = tmp_path / "c.zarr"
    new_cube(shape=(20, 30), times=2).to_zarr(cube, zarr_format=3, consolidated=True)
    cfg = dict(name="t", framework="sklearn", task="regression", inputs=["a"], target="b")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "file.txt").write_text("x")
    bad = str(tmp_path / "file.txt" / "board")
    for args in (["train", str(cube), "--config", str(tmp_path / "cfg.yaml")],
                 ["embed", str(cube), "--model", "0" * 32]):
        res = CliRunner().invoke(app, [*args, "--tensorboard", bad])
        assert res.exit_code == 2, res.output
        assert "--tensorboard" in res.output and "cannot be written there" in res.output
        assert "Traceback" not in res.output


@pytest.fixture(scope="module")
def small_earth(tmp_path_factory) -> Path:
    """A 1 degree static Earth cube: Blue Marble RGB, land/sea mask, Köppen classes."""
    from esdc.build import build
    from esdc.recipe import Recipe, load_recipe

    d = load_recipe(ROOT / "recipes" / "earth.yaml").to_dict()
    d["name"], d["grid"]["resolution"] = "earth_small", 1.0
    d["grid"].pop("time", None)
    d["output"]["chunks"] = {"lat": 180, "lon": 360}
    d["sources"] = [s for s in d["sources"] if s["name"] in ("blue_marble", "land_mask",
                                                             "koppen")]
    d["derived"] = []
    return Path(build(Recipe.from_dict(d), tmp_path_factory.mktemp("tb") / "small.zarr",
                      fetch=False))


# 16-cell patches in 24-cell blocks: only 105 of the 1 degree grid's 242 patches lie wholly
# inside one block, and training says so (esdc.ml.datareport)
WASTED = r"keep 105 of the grid's 242 patches \(57% wasted"


def _config(name: str, **changes) -> TrainConfig:
    d = yaml.safe_load((ROOT / "recipes" / "train" / name).read_text())
    d.update(patch=[16, 16], split={"block": [24, 24], "fractions": [0.7, 0.15, 0.15],
                                    "seed": 0}, **changes)
    return TrainConfig.model_validate(d)


@pytest.mark.slow
def test_torch_run_scalars_graph_and_artifacts(small_earth, tmp_path, monkeypatch):
    import mlflow

    from esdc.ml.train import train

    monkeypatch.chdir(tmp_path)
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = _config("landsea_cnn.yaml", epochs=2)
    with pytest.warns(TrainingDataWarning, match=WASTED):
        res = train(str(small_earth), cfg, tracking, tensorboard=tmp_path / "board")
    run_dir = tmp_path / "board" / res.run_id
    got = _scalars(run_dir)
    assert [s for s, _ in got["train_loss"]] == [0, 1]
    assert [s for s, _ in got["val_accuracy"]] == [0, 1]
    assert got["learning_rate"] == [(0, pytest.approx(cfg.learning_rate)),
                                    (1, pytest.approx(cfg.learning_rate))]
    assert got["test_accuracy"] == [(2, pytest.approx(res.test))]
    assert got["baseline_accuracy"] == [(2, pytest.approx(res.baseline))]
    mlflow.set_tracking_uri(tracking)
    run = mlflow.get_run(res.run_id)
    history = mlflow.MlflowClient().get_metric_history(res.run_id, "train_loss")
    assert [m.value for m in history] == pytest.approx([v for _, v in got["train_loss"]])
    assert run.data.metrics["learning_rate"] == pytest.approx(cfg.learning_rate)
    local = Path(mlflow.artifacts.download_artifacts(run_id=res.run_id,
                                                     artifact_path="tensorboard"))
    assert _scalars(local)["train_loss"] == got["train_loss"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    assert acc.Tags()["graph"]  # the PixelCNN traced by torch.utils.tensorboard
    nodes = [n.op for n in acc.Graph().node]
    assert any("conv" in op.lower() for op in nodes)


@pytest.mark.slow
def test_embed_writes_the_projector(small_earth, tmp_path, monkeypatch):
    import mlflow

    from esdc.ml.train import train

    monkeypatch.chdir(tmp_path)
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    enc = _config("encoder.yaml", epochs=1, inputs=["bmng_red", "bmng_green", "bmng_blue"],
                  model={"kind": "simsiam", "dim": 16, "width": 8})
    with pytest.warns(TrainingDataWarning, match=WASTED):
        res = train(str(small_earth), enc, tracking)
    assert "train_loss" in _scalars(Path(mlflow.artifacts.download_artifacts(
        run_id=res.run_id, artifact_path="tensorboard", tracking_uri=tracking)))
    r = CliRunner().invoke(app, ["embed", str(small_earth), "--model", res.run_id,
                                 "--tile", "8", "--tracking-uri", tracking,
                                 "--tensorboard", str(tmp_path / "board")])
    assert r.exit_code == 0, r.output
    folder = tmp_path / "board" / f"embed-{res.run_id}"
    config = (folder / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "embedding_t8"' in config and "single_image_dim: 32" in config
    vectors = np.loadtxt(folder / "embedding_t8" / "tensors.tsv", delimiter="\t")
    rows = (folder / "embedding_t8" / "metadata.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    assert header[:2] == ["lat", "lon"] and {"koppen_class", "land_sea_mask"} <= set(header)
    assert vectors.shape == (len(rows) - 1, 16) and 100 < vectors.shape[0] <= 1000
    classes = {r.split("\t")[header.index("land_sea_mask")] for r in rows[1:]}
    assert {"ocean", "land"} <= classes
    from PIL import Image

    sprite = Image.open(folder / "embedding_t8" / "sprite.png")
    side = int(np.ceil(np.sqrt(vectors.shape[0])))
    assert sprite.size == (32 * side, 32 * side) and sprite.mode == "RGB"
    assert np.asarray(sprite).std() > 10  # real imagery, not a blank sheet
    stored = Path(mlflow.artifacts.download_artifacts(
        run_id=res.run_id, artifact_path="tensorboard/embed", tracking_uri=tracking))
    assert (stored / "projector_config.pbtxt").read_text() == config


@pytest.mark.slow
@pytest.mark.tensorflow
def test_keras_run_scalars_and_graph(small_earth, tmp_path, monkeypatch):
    pytest.importorskip("keras")
    from esdc.ml.train import train

    monkeypatch.chdir(tmp_path)
    cfg = _config("landsea_keras.yaml", epochs=2)
    with pytest.warns(TrainingDataWarning, match=WASTED):
        res = train(str(small_earth), cfg, f"sqlite:///{tmp_path / 'mlruns.db'}",
                    tensorboard=tmp_path / "board")
    run_dir = tmp_path / "board" / res.run_id
    got = _scalars(run_dir)
    assert [s for s, _ in got["train_loss"]] == [0, 1]
    assert got["learning_rate"][0][1] == pytest.approx(cfg.learning_rate)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "train"))  # Keras' own TensorBoard callback
    acc.Reload()
    tags = acc.Tags()
    assert "epoch_loss" in tags["tensors"] + tags["scalars"], tags
    # the model's conceptual graph (plugin graph_keras_model), drawn by the Graphs tab
    assert "keras" in tags["tensors"], tags
    assert acc.SummaryMetadata("keras").plugin_data.plugin_name == "graph_keras_model"
