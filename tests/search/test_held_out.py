"""Held-out queries: the search evaluated only from tiles the encoder never trained on.

An encoder trains on patches inside the train blocks of its config's ``split``; with
``held_out`` (``esdc evaluate-search --held-out CONFIG``) the query tiles are drawn only
from the validation and test blocks, while their neighbours are still searched among
all tiles.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from esdc.cli import app
from esdc.errors import SearchIndexError
from esdc.ml.config import SplitSpec
from esdc.ml.patches import block_splits
from tests.search.test_evaluate import make_labelled_cube

pytest.importorskip("faiss")
pytest.importorskip("torch")
pytest.importorskip("sklearn")

runner = CliRunner()
SPLIT = SplitSpec(block=(16, 16), fractions=(0.5, 0.25, 0.25), seed=3)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return make_labelled_cube(tmp_path_factory.mktemp("held_out"))


def _brute_force(split: SplitSpec, shape=(64, 128), tile: int = 8) -> np.ndarray:
    """Held out: every cell of the tile in one block, and that block not in train."""
    blocks = block_splits(shape, (tile, tile), split.block, split.fractions, split.seed)
    nty, ntx = shape[0] // tile, shape[1] // tile
    out = np.zeros((nty, ntx), dtype=bool)
    for ty in range(nty):
        for tx in range(ntx):
            by = {(ty * tile + i) // split.block[0] for i in range(tile)}
            bx = {(tx * tile + i) // split.block[1] for i in range(tile)}
            out[ty, tx] = len(by) == 1 and len(bx) == 1 and blocks[by.pop(), bx.pop()] != 0
    return out.reshape(-1)


def test_held_out_tiles_lie_wholly_in_validation_or_test_blocks(labelled):
    from esdc.search.evaluate import held_out_tiles
    from esdc.storage import open_cube

    ds = open_cube(labelled[0])
    held = held_out_tiles(ds, "embedding_t8", SPLIT)
    assert held.shape == (8 * 16,) and np.array_equal(held, _brute_force(SPLIT))
    assert 0.3 < held.mean() < 0.7
    # blocks of 12 cells: tiles of 8 that straddle two blocks are never held out
    odd = SplitSpec(block=(12, 12), fractions=(0.5, 0.25, 0.25), seed=3)
    held = held_out_tiles(ds, "embedding_t8", odd)
    assert np.array_equal(held, _brute_force(odd))
    straddle = np.add.outer((np.arange(8) * 8 + 7) // 12 != np.arange(8) * 8 // 12,
                            (np.arange(16) * 8 + 7) // 12 != np.arange(16) * 8 // 12)
    assert not held[straddle.reshape(-1)].any()
    with pytest.raises(SearchIndexError, match="larger than the split's blocks"):
        held_out_tiles(ds, "embedding_t8", SplitSpec(block=(4, 4)))


def test_evaluate_search_draws_queries_only_from_held_out_tiles(labelled):
    from esdc.search.evaluate import evaluate_search

    cube, _ = labelled
    held = _brute_force(SPLIT)
    r = evaluate_search(cube, "surface_class", k=5, queries=10_000, held_out=SPLIT)
    assert r["queries"] == held.sum() and r["tiles"] == held.size
    assert r["held_out"] == {"block": [16, 16], "fractions": [0.5, 0.25, 0.25], "seed": 3}
    assert sum(c["queries"] for c in r["per_class"].values()) == held.sum()
    every = evaluate_search(cube, "surface_class", k=5, queries=10_000)
    assert every["queries"] == held.size and every["held_out"] is None
    assert r["queries"] < every["queries"]
    few = evaluate_search(cube, "surface_class", k=5, queries=7, held_out=SPLIT)
    assert few["queries"] == 7
    with pytest.raises(SearchIndexError, match="no labelled tile"):
        evaluate_search(cube, "surface_class", k=5, held_out=SplitSpec(
            block=(16, 16), fractions=(1.0, 0.0, 0.0)))


def test_cli_held_out_reads_the_training_config(labelled, tmp_path):
    cube, _ = labelled
    cfg = tmp_path / "encoder.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "enc", "framework": "torch", "task": "embedding",
        "inputs": ["bmng_red", "bmng_green", "bmng_blue"], "patch": [8, 8],
        "split": {"block": [16, 16], "fractions": [0.5, 0.25, 0.25], "seed": 3}}))
    res = runner.invoke(app, ["evaluate-search", str(cube), "--label", "surface_class",
                              "-k", "5", "--queries", "10000", "--held-out", str(cfg),
                              "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["queries"] == _brute_force(SPLIT).sum()
    res = runner.invoke(app, ["evaluate-search", str(cube), "--label", "surface_class",
                              "-k", "5", "--held-out", str(cfg)])
    assert res.exit_code == 0 and "held-out queries" in res.stdout, res.output
    res = runner.invoke(app, ["evaluate-search", str(cube), "--label", "surface_class",
                              "--held-out", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "does not exist" in res.output, res.output
