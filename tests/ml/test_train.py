"""Training on real cubes through Dask, tracked in MLflow (slow: real cube, real cluster)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from esdc.cli import app
from esdc.errors import TrainConfigError
from esdc.ml.config import TrainConfig
from esdc.ml.train import train

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("mlflow")
pytest.importorskip("skops")


def _config(name: str, **changes) -> TrainConfig:
    d = yaml.safe_load((ROOT / "recipes" / "train" / name).read_text())
    d.update(changes)
    return TrainConfig.model_validate(d)


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's artifact root defaults to ./mlruns
    return f"sqlite:///{tmp_path / 'mlruns.db'}"


@pytest.mark.slow
def test_random_forest_koppen_beats_majority(earth_cube, tracking):
    import mlflow
    from skops.io import get_untrusted_types, load

    cfg = _config("koppen_rf.yaml", max_train_pixels=40000,
                  model={"kind": "random_forest", "n_estimators": 20, "max_depth": 12})
    res = train(str(earth_cube), cfg, tracking)
    assert res.metric == "accuracy" and res.beats_baseline
    assert res.test > res.baseline + 0.2
    mlflow.set_tracking_uri(tracking)
    run = mlflow.get_run(res.run_id)
    assert run.data.metrics["test_accuracy"] == pytest.approx(res.test)
    assert run.data.tags["esdc.recipe_sha256"]
    path = res.model_path.removeprefix("file://")
    untrusted = get_untrusted_types(file=path)
    assert all(t.startswith(("sklearn.", "numpy.")) for t in untrusted)  # documented trust check
    model = load(path, trusted=untrusted)
    assert model.n_features_in_ == len(cfg.inputs)


@pytest.mark.slow
def test_cnn_landsea_beats_majority_and_reloads_weights_only(earth_cube, tracking):
    import torch

    from esdc.ml.models import PixelCNN

    cfg = _config("landsea_cnn.yaml", epochs=2)
    res = train(str(earth_cube), cfg, tracking)
    assert res.beats_baseline and res.device == "cpu"
    path = Path(res.model_path.removeprefix("file://"))
    meta = json.loads((path.parent / "model.json").read_text())
    model = PixelCNN(meta["in_channels"], meta["out_channels"], **meta["params"])
    model.load_state_dict(torch.load(path, weights_only=True))
    assert meta["classes"] == [0, 1, 2]
    _serve_and_compare(tracking, cfg.name)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_and_compare(tracking: str, name: str) -> None:
    """Serve the registered model over HTTP; a posted patch gets the in-process answer."""
    import urllib.request

    import mlflow

    from esdc.ml.serving import serve

    mlflow.set_tracking_uri(tracking)
    model = mlflow.pyfunc.load_model(f"models:/{name}/latest")
    rng = np.random.default_rng(0)
    patch = rng.standard_normal((2, 3, 32, 32)).astype("float32")
    local = model.predict(patch)
    port = _free_port()
    proc = serve(f"models:/{name}/latest", port, tracking)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("model server did not start") from None
                time.sleep(0.5)
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": patch.tolist()}).encode(),
            headers={"Content-Type": "application/json"})
        remote = np.asarray(json.loads(urllib.request.urlopen(req, timeout=30).read())[
            "predictions"])
        np.testing.assert_array_equal(remote, local)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_train_through_a_real_dask_scheduler_and_two_workers(earth_cube, tmp_path, tracking):
    bindir = Path(sys.executable).parent
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__DIAGNOSTICS__NVML": "False"}
    procs = [subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--dashboard-address", "127.0.0.1:0",
                               "--scheduler-file", str(sched_file)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(100):
            if sched_file.exists() and sched_file.stat().st_size:
                break
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        for _ in range(2):
            procs.append(subprocess.Popen(
                [str(bindir / "dask"), "worker", address, "--nthreads", "1", "--host",
                 "127.0.0.1", "--no-dashboard"], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout="20s") as c:
            c.wait_for_workers(2, timeout=60)
        cfg = yaml.safe_load((ROOT / "recipes" / "train" / "koppen_rf.yaml").read_text())
        cfg.update(max_train_pixels=20000, model={"kind": "random_forest", "n_estimators": 10})
        (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
        r = CliRunner().invoke(app, ["train", str(earth_cube), "--config",
                                     str(tmp_path / "cfg.yaml"), "--scheduler", address,
                                     "--tracking-uri", tracking, "--json"])
        assert r.exit_code == 0, r.output
        result = json.loads(r.output.strip().splitlines()[-1])
        assert result["test"] > result["baseline"]
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def test_bad_training_input(tmp_path):
    from esdc.testing import new_cube

    cube = tmp_path / "c.zarr"
    new_cube(shape=(20, 30), times=2).to_zarr(cube, zarr_format=3, consolidated=True)
    base = dict(name="t", framework="sklearn", task="regression", inputs=["a"], target="b")
    cases = [
        (dict(framework="jax"), "framework"),
        (dict(inputs=["nope"]), "not in the cube"),
        (dict(patch=[40, 40]), "does not fit the grid"),
    ]
    for change, needle in cases:
        (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({**base, **change}))
        r = CliRunner().invoke(app, ["train", str(cube), "--config", str(tmp_path / "cfg.yaml")])
        assert r.exit_code == 2, (change, r.output)
        assert needle in r.output and "Traceback" not in r.output
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(base))
    start = time.monotonic()
    r = CliRunner().invoke(app, ["train", str(cube), "--config", str(tmp_path / "cfg.yaml"),
                                 "--scheduler", "tcp://127.0.0.1:9"])
    assert r.exit_code == 2 and "cannot connect" in r.output
    assert time.monotonic() - start < 60
    empty = tmp_path / "empty.zarr"
    ds = new_cube(shape=(20, 30), times=2)
    ds["a"][:] = np.nan
    ds.to_zarr(empty, zarr_format=3, consolidated=True)
    with pytest.raises(TrainConfigError, match="no valid pixels"):
        train(str(empty), TrainConfig.model_validate(base), f"sqlite:///{tmp_path / 'm.db'}")
    shutil.rmtree(empty)


@pytest.mark.slow
@pytest.mark.tensorflow
def test_keras_landsea_beats_majority(earth_cube, tracking):
    keras = pytest.importorskip("keras")
    cfg = _config("landsea_keras.yaml", epochs=2)
    res = train(str(earth_cube), cfg, tracking)
    assert res.beats_baseline
    path = res.model_path.removeprefix("file://")
    model = keras.saving.load_model(path, safe_mode=True)
    assert model.output_shape[-1] == 3
