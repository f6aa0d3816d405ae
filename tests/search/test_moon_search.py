"""Reverse image search on the real Moon cube, judged by the mare / highland label.

The label (``mare_highland``, recipes/moon.yaml) comes from the Clementine albedo; the
encoder (recipes/train/encoder_moon.yaml) sees topography only: elevation, slope,
roughness and shaded relief. So the test asks whether maria and highlands separate by
their shape alone. At a reduced size (0.25 degree grid, 8-cell = 2 degree tiles, two
epochs) the pipeline runs as a user runs it: ``esdc embed``, ``esdc index``, ``esdc
evaluate-search``; the encoder and the raw-pixel PCA must both beat random clearly. The
full figures (0.1 degree, 16-cell tiles) are in docs/SEARCH.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tests.search.conftest import cli_ok, write_moon_cube

pytest.importorskip("faiss")
pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("mlflow")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_moon_search_by_mare_highland(tmp_path, monkeypatch, client):
    """Build (0.25 degree), train on topography (2 epochs), embed, index, evaluate."""
    from esdc.ml.config import TrainConfig
    from esdc.ml.train import train

    t0 = time.perf_counter()
    cube = write_moon_cube(tmp_path / "moon.zarr", client)
    monkeypatch.chdir(tmp_path)  # MLflow's artifact root defaults to ./mlruns
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = yaml.safe_load((ROOT / "recipes" / "train" / "encoder_moon.yaml").read_text())
    assert "clementine_uvvis" not in cfg["inputs"] and "wac" not in cfg["inputs"]
    cfg |= {"epochs": 2, "patch": [8, 8]}
    res = train(str(cube), TrainConfig.model_validate(cfg), tracking)
    assert res.metric == "simsiam_loss" and res.test < res.baseline  # it learned

    cli_ok(["embed", cube, "--model", res.run_id, "--tracking-uri", tracking, "--tile", 8,
         "--scheduler", client.scheduler.address])
    assert "built on cpu" in cli_ok(["index", cube, "--device", "cpu"])
    ev = json.loads(cli_ok(["evaluate-search", cube, "--label", "mare_highland", "--queries",
                         1000, "--json"]))
    print(f"moon search (0.25 degree, tile 8) in {time.perf_counter() - t0:.0f} s:",
          json.dumps({k: ev[k] for k in ("tiles", "precision_at_k",
                                          "macro_precision_at_k")}))
    p, macro = ev["precision_at_k"], ev["macro_precision_at_k"]
    assert ev["k"] == 10 and ev["variable"] == "embedding_t8"
    assert set(ev["per_class"]) == {"0", "1"}
    assert ev["per_class"]["0"]["name"] == "mare" and ev["per_class"]["1"]["name"] == "highland"
    assert 0.08 < ev["per_class"]["0"]["share"] < 0.25  # maria: a sixth of the Moon
    assert p["random"] == pytest.approx(p["random_expected"], abs=0.03)
    # Imbalanced classes make random precision high (sum of p_c^2 ~ 0.75); the macro
    # figure (mean over the two classes) starts from 0.5 and shows the separation.
    for method in ("embedding", "pca_pixels"):
        assert p[method] > p["random"] + 0.05, (method, p)
        assert macro[method] > macro["random"] + 0.15, (method, macro)
