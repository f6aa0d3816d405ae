"""A live archive of several scales: append, embed --append and index --update grow each one.

The OSTIA granule archive of tests/search/test_live_archive.py (equatorial band, 1
degree, 9 x 360 cells) is embedded at two scales, 3 and 9 cells (the 9-cell tiles area-
averaged to the encoder's 3 x 3 input), indexed, grown from 8 to 12 months by a real
append, embedded and indexed again incrementally, and searched across both scales.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("torch")

from esdc.build import build  # noqa: E402
from esdc.recipe import Recipe  # noqa: E402
from tests.search.test_live_archive import NEW_END, OLD_END, bundle, live_recipe  # noqa: E402
from tests.sources.test_granules import ostia_granules  # noqa: E402,F401

SCALES = [3, 9]


@pytest.fixture(scope="module")
def grown_scales(ostia_granules, tmp_path_factory) -> Path:  # noqa: F811
    """8 months embedded at 3 and 9 cells and indexed, then appended to 12 months."""
    from esdc.embed import embed_cube
    from esdc.search import build_indexes

    folder = tmp_path_factory.mktemp("live_scales")
    source = {"files": {"pattern": f"{ostia_granules}/ostia_{{time:%Y%m}}.nc"}}
    cube = build(Recipe.from_dict(live_recipe(source, OLD_END)), folder / "cube.zarr")
    assert embed_cube(str(cube), bundle(folder), SCALES) == ["embedding_t3", "embedding_t9"]
    first = build_indexes(cube, kind="flat")
    assert [(m.scale, m.time_steps, m.scales) for m in first] == [(3, 8, SCALES), (9, 8, SCALES)]
    build(Recipe.from_dict(live_recipe(source, NEW_END)), cube, append=True)
    return cube


def test_every_scale_grows_with_the_archive(grown_scales, tmp_path):
    from esdc.conventions import ATTR_INPUT_SIZE, ATTR_TIME_STEPS
    from esdc.embed import embed_cube
    from esdc.search import SearchEngine, update_indexes
    from esdc.storage import open_cube

    cube = tmp_path / grown_scales.name
    shutil.copytree(grown_scales, cube)
    shutil.copytree(grown_scales.parent / f"{grown_scales.name}.index",
                    tmp_path / f"{cube.name}.index")
    ds = open_cube(cube)
    for s in SCALES:  # carried over by the append: 12 steps, 8 embedded
        emb = ds[f"embedding_t{s}"]
        assert emb.sizes["time"] == 12 and emb.attrs[ATTR_TIME_STEPS] == 8
        assert emb.attrs[ATTR_INPUT_SIZE] == 3
    before = {s: np.asarray(ds[f"embedding_t{s}"].values[:, :, :8]) for s in SCALES}
    said: list[str] = []
    names = embed_cube(str(cube), bundle(tmp_path), append=True, report=said.append)
    assert names == ["embedding_t3", "embedding_t9"]
    assert said == [f"appended time steps 8..11 to embedding_t{s}" for s in SCALES]
    ds = open_cube(cube)
    for s in SCALES:
        emb = ds[f"embedding_t{s}"]
        assert emb.attrs[ATTR_TIME_STEPS] == 12
        np.testing.assert_array_equal(emb.values[:, :, :8], before[s])  # stored: kept
        assert np.isfinite(emb.values[:, :, 8:]).all(axis=-1).mean() > 0.3  # the ocean
    updated = update_indexes(cube)
    assert [(m.scale, m.time_steps, m.generation, m.generations[-1]["mode"]) for m in updated] \
        == [(3, 12, 2, "update"), (9, 12, 2, "update")]
    engine = SearchEngine(cube)
    assert sorted(engine.levels) == SCALES
    res = engine.search_tile(0.0, 61.0, "2007-02", k=15, scales="all")
    assert res.query["time"] == "2007-02-01" and res.query["scales"] == SCALES
    first = res.neighbours[0]
    assert (first.scale, first.time, first.distance) == (3, "2007-02-01",
                                                         pytest.approx(0.0, abs=1e-5))
    assert {n.scale for n in res.neighbours} <= set(SCALES)
    late = engine.search_tile(0.0, 61.0, "2007-02", k=5, scale=9, scales=[9],
                              time_range=("2007-01", None))
    assert [n.scale for n in late.neighbours] == [9] * 5
    assert all(n.time >= "2007-01-01" for n in late.neighbours)
