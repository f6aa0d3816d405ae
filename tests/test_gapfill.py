"""Swath gap filling on real layers: Stage IV rain, OSTIA SST, the LOLA DEM."""

from __future__ import annotations

import json
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

from esdc.build import plan
from esdc.cli import app
from esdc.errors import GapFillError, GapFillWarning
from esdc.gapfill import FLAG_MEANINGS, METHODS, domain_mask, fill_flags, fill_gaps
from esdc.gapfill.evaluate import evaluate_fill, stripes
from esdc.recipe import Recipe, load_recipe
from esdc.testing import raise_if_dask_computes
from tests.conftest import EARTH, ROOT, need_sample

FLOODS = ROOT / "recipes" / "floods.yaml"


def _recipe(path: Path, keep: tuple[str, ...], **changes) -> Recipe:
    """A recipe of the repository with only some sources (and no derived layers)."""
    d = load_recipe(path).to_dict()
    d["sources"] = [s for s in d["sources"] if s["name"] in keep]
    d["derived"] = []
    d.update(changes)
    return Recipe.from_dict(d)


def _load(recipe: Recipe, names: tuple[str, ...]) -> xr.Dataset:
    with dask.config.set(scheduler="synchronous"):
        return plan(recipe)[list(names)].compute()


@pytest.fixture(scope="module")
def floods() -> xr.Dataset:
    """Stage IV hourly precipitation (Hurricane Florence), land/sea mask, ETOPO5 (in memory)."""
    for name in ("stageiv-florence", "basemap-lsmask-5min", "etopo5"):
        need_sample(name)
    return _load(_recipe(FLOODS, ("stageiv", "land_mask", "etopo5")),
                 ("precipitation", "land_sea_mask", "elevation"))


def test_every_method_keeps_observations_and_fills_the_domain(floods):
    p = floods.precipitation
    land = domain_mask(floods.land_sea_mask, [1])
    seen = p.notnull()
    never = (land & ~seen.any("time")).values  # land cells Stage IV never covers here
    assert never.sum() > 1000
    for method in METHODS:
        if method == "temporal_linear":
            with pytest.warns(GapFillWarning, match=r"left \d+ cell\(s\) inside the domain"):
                out = fill_gaps(p, method, land)
        else:
            out = fill_gaps(p, method, land)
        assert out.dims == p.dims and out.dtype == p.dtype and out.attrs == p.attrs
        np.testing.assert_array_equal(out.values[seen.values], p.values[seen.values])
        outside = (~land & ~seen).transpose(*p.dims).values
        assert np.isnan(out.values[outside]).all(), method
        gap = np.isnan(out.values[:, land.values])
        if method == "temporal_linear":  # nothing to interpolate from in time
            assert gap.sum() == p.sizes["time"] * never.sum()
        else:
            assert not gap.any(), method
    near = fill_gaps(p, "nearest", land).values
    step = near[3][never]
    assert np.isin(step, p.values[3][np.isfinite(p.values[3])]).all()  # copied values
    smooth = fill_gaps(p, "spatial_biharmonic", land).values
    assert smooth[3][never].min() >= np.nanmin(p.values[3]) - 1e-4
    assert smooth[3][never].max() <= np.nanmax(p.values[3]) + 1e-4


def test_a_lazy_fill_computes_nothing_and_matches_in_memory(floods):
    lazy = plan(_recipe(FLOODS, ("stageiv", "land_mask")))
    land = domain_mask(lazy.land_sea_mask, [1])
    with raise_if_dask_computes():
        out = fill_gaps(lazy.precipitation, "spatiotemporal", land)
        flags = fill_flags(lazy.precipitation, out, land)
    assert out.chunks == lazy.precipitation.chunks
    with dask.config.set(scheduler="synchronous"):
        got, f = out.values, flags.values
    want = fill_gaps(floods.precipitation, "spatiotemporal",
                     domain_mask(floods.land_sea_mask, [1])).values
    np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)
    assert flags.attrs == {"flag_values": [0, 1, 2], "flag_meanings": FLAG_MEANINGS}
    seen = floods.precipitation.notnull().values
    assert (f[seen] == 0).all() and (f[~seen & np.isfinite(want)] == 1).all()
    assert np.isnan(f[~seen & np.isnan(want)]).all()


def test_an_empty_step_inside_the_domain(floods):
    p = floods.precipitation.copy()
    p[5] = np.nan
    for method in ("nearest", "spatial_biharmonic"):
        with pytest.raises(GapFillError, match=r"time step 5 \(2018-09-14T00.*has no observed "
                                               r"value inside the domain.*'spatiotemporal'"):
            fill_gaps(p, method)
    ever = p.notnull().any("time").values
    middle = (p.values[4] + p.values[6]) / 2  # hourly steps: the linear midpoint
    for method in ("temporal_linear", "spatiotemporal"):
        out = fill_gaps(p, method).values[5]
        np.testing.assert_allclose(out[ever], middle[ever], rtol=1e-5, atol=1e-5)


def test_bad_arguments_are_typed_errors(floods):
    p, z = floods.precipitation, floods.elevation
    cases = [
        (lambda: fill_gaps(p, "kriging"), "unknown method 'kriging'"),
        (lambda: fill_gaps(p, "nearest", max_gap=2), "takes no option"),
        (lambda: fill_gaps(p, "temporal_linear", max_gap=-1), "max_gap=-1"),
        (lambda: fill_gaps(p, "nearest", (floods.land_sea_mask == 1).isel(lat=slice(1, None))),
         "must be a boolean mask over the data's spatial dims"),
        (lambda: fill_gaps(p, "nearest", floods.land_sea_mask), "dtype float32"),
        (lambda: fill_gaps(z, "temporal_linear"), "has no 'time' dim"),
        (lambda: fill_gaps(p.isel(lat=0), "nearest"), "needs the spatial dims"),
        (lambda: evaluate_fill(z), "pass static=True"),
        (lambda: evaluate_fill(p, static=True), "static=True is for a layer without time"),
        (lambda: evaluate_fill(p, ["nope"]), "unknown method 'nope'"),
        (lambda: evaluate_fill(p, fraction=1.5), "fraction=1.5"),
    ]
    for call, needle in cases:
        with pytest.raises(GapFillError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            call()


def test_stripes_are_diagonal_bands_of_the_asked_share():
    band = stripes((300, 400), 5.0, fraction=0.3, period=40, angle=60)
    assert abs(band.mean() - 0.3) < 0.01
    assert not np.array_equal(band, stripes((300, 400), 25.0, fraction=0.3, period=40))
    assert band[0].any() and not band[0].all() and not band[:, 0].all()


def test_spatiotemporal_beats_nearest_by_20_percent_on_ostia_sst():
    need_sample("ostia-monthly")
    ds = _load(_recipe(EARTH, ("ostia",)), ("sst",))
    ev = evaluate_fill(ds.sst)
    scores = {s.method: s for s in ev.scores}
    assert list(scores) == list(METHODS)
    assert 0.27 < ev.hidden_share < 0.33 and len(ev.steps) == ds.sizes["time"] // 2
    assert ev.best().method == "spatiotemporal" and scores["spatiotemporal"].gain >= 0.2
    assert scores["spatial_biharmonic"].gain > 0.2
    assert scores["nearest"].gain == 0 and scores["nearest"].filled == 1
    # the last striped step has no later month: time interpolation cannot fill it
    assert 0.9 < scores["temporal_linear"].filled < 1
    assert np.isnan(scores["temporal_linear"].step_rmse[-1])
    assert all(abs(s.bias) < 0.05 for s in ev.scores)  # K
    json.dumps(ev.to_dict())


def test_rain_is_filled_best_in_time_and_space(floods):
    ev = evaluate_fill(floods.precipitation)
    scores = {s.method: s for s in ev.scores}
    assert ev.best().method == "spatiotemporal" and scores["spatiotemporal"].gain > 0.2
    assert scores["temporal_linear"].gain > 0.2


def test_lunar_dem_holes_are_filled_by_the_spatial_methods():
    for name in ("lola-dem-global", "lola-dem-north", "lola-dem-south"):
        need_sample(name)
    d = _recipe(ROOT / "recipes" / "moon.yaml", ("lola_north", "lola_south", "lola_global"),
                ).to_dict()
    d["grid"]["resolution"], d["output"]["chunks"] = 0.5, {"lat": 360, "lon": 720}
    z = _load(Recipe.from_dict(d), ("elevation",)).elevation
    ev = evaluate_fill(z, static=True)
    scores = {s.method: s for s in ev.scores}
    assert scores["spatial_biharmonic"].gain > 0.1
    assert scores["temporal_linear"].note == "needs time" and scores["spatiotemporal"].filled == 0
    assert ev.best().method == "spatial_biharmonic"


def test_the_documented_recipe_layers_are_valid():
    import re

    block = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "GAPFILL.md").read_text(), re.S)
    d = load_recipe(FLOODS).to_dict()
    d["derived"] = yaml.safe_load(block[0])["derived"]
    recipe = Recipe.from_dict(d)
    assert [x.function for x in recipe.derived] == ["fill_gaps", "fill_flags"]


@pytest.mark.slow
def test_fill_layers_in_a_built_cube_and_the_cli(tmp_path):
    d = _recipe(FLOODS, ("stageiv", "land_mask", "etopo5")).to_dict()
    d["derived"] = [
        {"name": "precipitation_gapfree", "function": "fill_gaps",
         "inputs": ["precipitation", "land_sea_mask"],
         "params": {"method": "spatiotemporal", "domain_values": [1]}, "units": "kg m-2"},
        {"name": "precipitation_filled", "function": "fill_flags",
         "inputs": ["precipitation", "precipitation_gapfree", "land_sea_mask"],
         "params": {"domain_values": [1]}, "units": "1"},
    ]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(d))
    cube = tmp_path / "fill.zarr"
    run = CliRunner().invoke
    res = run(app, ["build", str(tmp_path / "r.yaml"), "--out", str(cube), "--no-fetch"])
    assert res.exit_code == 0, res.output
    ds = xr.open_zarr(cube)
    land = (ds.land_sea_mask == 1).values
    filled, flags = ds.precipitation_gapfree.values, ds.precipitation_filled
    assert not np.isnan(filled[:, land]).any()
    assert flags.attrs["flag_values"] == [0, 1, 2]
    assert flags.attrs["flag_meanings"] == "observed filled unfilled"
    assert "fill_gaps(precipitation, land_sea_mask)" in ds.precipitation_gapfree.attrs[
        "esdc_derived"]
    f = flags.values
    assert (f == 1).sum() > 0 and not (f == 2).any()
    np.testing.assert_array_equal(f == 0, ds.precipitation.notnull().values)
    res = run(app, ["evaluate-fill", str(cube), "precipitation", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["best"] == "spatiotemporal" and out["hidden"] > 10000
    res = run(app, ["evaluate-fill", str(cube), "precipitation", "--domain", "land_sea_mask",
                    "--domain-value", "1", "--method", "spatial_biharmonic"])
    assert res.exit_code == 0 and "spatial_biharmonic" in res.output, res.output
    for args, needle in [(["elevation"], "pass --static"),
                         (["precipitation", "--method", "kriging"], "unknown method"),
                         (["precipitation", "--domain-value", "1"], "needs --domain NAME"),
                         (["nope"], "'nope' is not a variable of the cube")]:
        res = run(app, ["evaluate-fill", str(cube), *args])
        assert res.exit_code == 2 and needle in res.output, (args, res.output)
    bad = dict(d, derived=[dict(d["derived"][0], params={"method": "kriging"})])
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    res = run(app, ["build", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "b.zarr"),
                    "--no-fetch"])
    assert res.exit_code == 2 and "unknown method 'kriging'" in res.output, res.output
