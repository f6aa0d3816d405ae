"""The Moon encoder earns its place: it beats raw-pixel PCA on tiles it never saw (slow).

The pipeline of recipes/train/encoder_moon_vicreg.yaml as a user runs it, at the reduced
size of the tests (0.25 degree cube, 8 epochs): VICReg on topography alone (overlapping
patches, 16-cell crops, no flips or turns), ``esdc embed --tile 16``, then ``esdc
evaluate-search --held-out`` with the training config, so the queries are only tiles of
validation and test blocks and the PCA baseline reads the same four layers. Measured
over three seeds (docs/SEARCH.md, "Which lever gave what"): precision@10 0.953 against
0.898, macro 0.880 against 0.851.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.search.conftest import cli_ok, write_moon_cube

pytest.importorskip("faiss")
pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("mlflow")

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "recipes" / "train" / "encoder_moon_vicreg.yaml"


@pytest.mark.slow
def test_moon_vicreg_encoder_beats_pca_on_held_out_tiles(tmp_path, monkeypatch, client):
    from esdc.ml.config import load_train_config
    from esdc.ml.train import train

    cube = write_moon_cube(tmp_path / "moon.zarr", client)
    monkeypatch.chdir(tmp_path)
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = load_train_config(CONFIG)
    labels = {"mare_highland", "clementine_uvvis", "wac"}  # the label and its sources
    assert not labels & set(cfg.inputs) and cfg.model_kind == "vicreg"
    res = train(str(cube), cfg, tracking)
    assert res.metric == "vicreg_loss" and res.test < res.baseline

    cli_ok(["embed", cube, "--model", res.run_id, "--tracking-uri", tracking, "--tile", 16,
         "--scheduler", client.scheduler.address])
    ev = json.loads(cli_ok(["evaluate-search", cube, "--label", "mare_highland", "--variable",
                         "embedding_t16", "--queries", 100_000, "--held-out", CONFIG,
                         "--json"]))
    print("moon encoder vs PCA (0.25 degree, tile 16, held out):",
          json.dumps({k: ev[k] for k in ("queries", "tiles", "precision_at_k",
                                          "macro_precision_at_k")}))
    assert ev["held_out"] == yaml.safe_load(CONFIG.read_text())["split"]
    assert ev["queries"] >= 1000 and ev["k"] == 10
    p, macro = ev["precision_at_k"], ev["macro_precision_at_k"]
    assert p["embedding"] > p["pca_pixels"] + 0.02, p
    assert macro["embedding"] > macro["pca_pixels"], macro
