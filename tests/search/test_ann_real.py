"""The real-vector ANN benchmark's deduplication and tie-aware recall@10 (benchmarks/ann_real.py).

On real embeddings: a small Earth cube built from the real Blue Marble and OSTIA samples
(the equatorial band, 96 degrees of longitude, 0.5 degree, 3 months) embedded at 8 cells
by a seeded encoder on Blue Marble RGB and SST. A land tile's SST is NaN in every month
and its Blue Marble colours do not change, so its vector is the same in each of those
months: identical vectors the benchmark must keep once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import ann_real  # noqa: E402  (benchmarks/ann_real.py)

INPUTS = ["bmng_red", "bmng_green", "bmng_blue", "sst"]
TILE = 8


@pytest.fixture(scope="module")
def real_vectors(tmp_path_factory, samples) -> tuple[np.ndarray, np.ndarray]:
    """Indexed vectors ``(144, 16)`` (2 x 24 tiles x 3 months) and SST ``(3, 16, 192)``."""
    import torch

    from esdc.build import build
    from esdc.embed import EncoderBundle, compute_embeddings, write_embeddings
    from esdc.ml.ssl import Encoder
    from esdc.recipe import Recipe
    from esdc.search.index import read_embeddings
    from esdc.storage import open_cube

    folder = tmp_path_factory.mktemp("ann_real")
    doc = yaml.safe_load((ROOT / "recipes" / "earth.yaml").read_text(encoding="utf-8"))
    doc.pop("output")
    doc["grid"].update(bbox=[-64, -4, 32, 4], resolution=0.5,
                       time={"start": "2007-01-01", "end": "2007-03-01", "freq": "MS"})
    doc["sources"] = [s for s in doc["sources"] if s["name"] in ("blue_marble", "ostia")]
    doc["derived"] = []
    cube = build(Recipe.from_dict(doc), folder / "cube.zarr", base_dir=ROOT / "recipes")
    torch.manual_seed(0)
    meta = {"class": "esdc.ml.ssl.Encoder", "in_channels": len(INPUTS),
            "params": {"dim": 16, "width": 8}, "inputs": INPUTS, "tile": [TILE, TILE]}
    torch.save(Encoder(len(INPUTS), **meta["params"]).state_dict(), folder / "encoder.pt")
    (folder / "encoder.json").write_text(json.dumps(meta))
    write_embeddings(cube, compute_embeddings(str(cube), EncoderBundle(folder / "encoder.pt",
                                                                       meta), TILE))
    ds, _, vec, _, _ = read_embeddings(cube, f"embedding_t{TILE}")
    return vec, np.asarray(open_cube(cube)["sst"].values)


def exact_top10(base: np.ndarray, queries: np.ndarray) -> np.ndarray:
    from esdc.search.index import make_index

    flat, _ = make_index(base, "flat")
    return flat.search(queries, 10)[1]


def test_identical_vectors_are_kept_once(real_vectors):
    vec, sst = real_vectors
    assert vec.shape == (144, 16)
    base, first = ann_real.deduplicate(vec)
    # a tile-month whose SST is all NaN (land) repeats the tile's other all-NaN months
    allnan = np.isnan(sst.reshape(3, 2, TILE, 24, TILE)).all(axis=(2, 4))  # time, ty, tx
    assert allnan.sum() == 51  # 17 land tiles in each of the 3 months
    distinct = int(((~allnan).sum(axis=0) + allnan.any(axis=0)).sum())
    assert distinct == 110
    assert base.shape == (110, 16)
    assert len(np.unique(vec, axis=0)) == 110
    assert np.all(np.diff(first) > 0) and first[0] == 0  # first occurrences, in order
    np.testing.assert_array_equal(base, vec[first])
    # every vector left out equals one kept
    kept = {row.tobytes() for row in base}
    assert all(row.tobytes() in kept for row in vec)


def test_tie_aware_recall_at_10(real_vectors):
    vec, _ = real_vectors
    base, _ = ann_real.deduplicate(vec)
    queries = base  # each distinct vector queries the others, itself first
    truth = exact_top10(base, queries)
    assert (truth[:, 0] == np.arange(len(base))).all()
    assert ann_real.recall_at_k(truth, truth, base, queries) == 1.0

    missing = truth.copy()
    missing[:, 9] = -1  # no 10th result
    assert ann_real.recall_at_k(missing, truth, base, queries) == pytest.approx(0.9, abs=1e-12)
    worst = np.argmin(queries @ base.T, axis=1)  # a strictly worse 10th neighbour
    wrong = truth.copy()
    wrong[:, 9] = worst
    assert ann_real.recall_at_k(wrong, truth, base, queries) == pytest.approx(0.9, abs=1e-12)
    wrong[:55, 0] = worst[:55]  # and half the queries lose their first as well
    assert ann_real.recall_at_k(wrong, truth, base, queries) == pytest.approx(0.85, abs=1e-12)

    # a twin of a query's true 10th (a copy at a new id) is at the same distance: correct
    n = len(base)
    scores, naive = [], []
    for i in range(n):
        twins = np.vstack([base, base[truth[i, 9]]])
        again = exact_top10(twins, queries[i: i + 1])[0]
        assert set(again[:9]) == set(truth[i, :9]) and again[9] in (truth[i, 9], n)
        tied = truth[i: i + 1].copy()
        tied[0, 9] = n
        scores.append(ann_real.recall_at_k(tied, truth[i: i + 1], twins, queries[i: i + 1]))
        naive.append(len(set(tied[0]) & set(truth[i])) / 10)
    assert np.mean(scores) == 1.0
    assert np.mean(naive) == pytest.approx(0.9, abs=1e-12)  # what an id-only recall says
