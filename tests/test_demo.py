"""The README's main job: `esdc demo` runs the whole pipeline on real data (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def test_demo_builds_trains_embeds_indexes_searches_and_draws(tmp_path: Path, samples) -> None:
    out = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "esdc.cli", "demo", "--out", str(out),
                          "--epochs", "2"], capture_output=True, text=True, timeout=900,
                         check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Dask dashboard: http://127.0.0.1:" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["verify_problems"] == []
    assert {"embedding_t8", "embedding_t16", "koppen_class", "sst"} <= set(s["variables"])
    assert s["grid"]["resolution"] == 0.5
    assert s["encoder"]["test"] < s["encoder"]["baseline"]  # the encoder learned
    assert s["index"]["count"] == 90 * 45  # 0.5 degree: 360 x 720 cells, tiles of 8
    ev = s["search_evaluation"]["koppen_class"]["precision_at_k"]
    assert ev["embedding"] > ev["random"] + 0.2 and ev["pca_pixels"] > ev["random"] + 0.2
    koppen = s["search_evaluation"]["koppen_class"]
    assert koppen["queries"] >= 1000 and koppen["held_out"]["fractions"][0] < 1  # never trained on
    assert {"embedding", "pca_pixels"} <= set(koppen["macro_precision_at_k"])
    names = {Path(p).name for p in s["pictures"]}
    assert {"rgb.png", "koppen_class.png", "search_amazon.png", "search_sahara.png"} <= names
    for p in s["pictures"]:
        with Image.open(p) as im:
            assert im.width > 400 and im.height > 200
            assert len(np.unique(np.asarray(im.convert("L")))) > 20  # a picture, not a blank
    assert (out / "earth.zarr.index").is_dir()
    # multi-scale: every scale embedded and indexed; the README's search across scales
    assert set(s["index"]["scales"]) == {"8", "16", "32"}
    assert set(s["search_evaluation"]["koppen_class"]["per_scale"]) == {"8", "16", "32"}
    found = subprocess.run([sys.executable, "-m", "esdc.cli", "search", str(out / "earth.zarr"),
                            "--lat", "-4", "--lon", "-62", "--scales", "all", "--json"],
                           capture_output=True, text=True, timeout=300, check=False)
    assert found.returncode == 0, found.stderr[-2000:]
    answer = json.loads(found.stdout)
    assert answer["query"]["scales"] == [8, 16, 32] and len(answer["neighbours"]) == 10
    assert all(n["scale"] in (8, 16, 32) and len(n["bounds"]) == 4 for n in answer["neighbours"])
