"""The Moon cubes (recipes/moon.yaml, recipes/moon_100m.yaml) and what they rely on.

Unit tests of the terrain functions (slope, roughness), the global wrap of bilinear
regridding and the declared GeoTIFF georeference run on tiny synthetic data. The
``slow`` tests build the real cubes once per module: the global recipe at 0.25 degree
(the recipe's own 0.1 degree takes about as long again; `esdc build recipes/moon.yaml`
builds it) and the 100 m regional recipe as written.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pyproj
import pytest
import xarray as xr

from esdc.build import plan
from esdc.derive import classify, ground_spacing, minimum_error_threshold, roughness, slope
from esdc.errors import RecipeError, SourceError, UpsamplingWarning
from esdc.grid import Grid
from esdc.recipe import Recipe, SourceSpec, load_recipe
from esdc.regrid import regrid
from esdc.samples import SAMPLES
from esdc.sources import Geolocated, open_source
from esdc.storage import open_cube, resolve
from esdc.testing import raise_if_dask_computes
from esdc.verify import verify_store
from tests.conftest import MOON_SAMPLES, moon_recipe, need_sample

ROOT = Path(__file__).resolve().parents[1]
R_MOON = 1737400.0
def horizontal(z: np.ndarray, grid: Grid, chunks: dict[str, int] | None = None) -> xr.DataArray:
    da = xr.DataArray(z, dims=grid.dims, coords={grid.dims[0]: grid.y, grid.dims[1]: grid.x})
    return da.chunk(chunks or {grid.dims[0]: 4, grid.dims[1]: 5})


# ---------------------------------------------------------------- recipes and registry
def test_recipes_validate_and_round_trip():
    for name in ("moon.yaml", "moon_100m.yaml"):
        r = load_recipe(ROOT / "recipes" / name)
        assert Recipe.from_dict(r.to_dict()) == r
        assert r.grid.body == "moon"
        assert {"slope", "roughness"} <= {d.function for d in r.derived}
    g = load_recipe(ROOT / "recipes" / "moon.yaml").grid.to_grid()
    assert g.crs == "IAU_2015:30100" and g.shape == (1800, 3600) and g.dims == ("lat", "lon")
    assert g.pyproj_crs.ellipsoid.semi_major_metre == R_MOON
    g100 = load_recipe(ROOT / "recipes" / "moon_100m.yaml").grid.to_grid()
    assert g100.dims == ("y", "x") and g100.resolution == (100.0, 100.0)
    assert g100.shape == (500, 500) and g100.pyproj_crs.is_projected
    assert g100.pyproj_crs.ellipsoid.semi_major_metre == R_MOON
    lon, lat = pyproj.Transformer.from_crs(g100.pyproj_crs, g100.pyproj_crs.geodetic_crs,
                                           always_xy=True).transform(0.0, 0.0)
    assert (round(lon, 2), round(lat, 2)) == (3.63, 26.13)  # Apollo 15 landing site


def test_moon_samples_name_mission_instrument_product():
    for name in MOON_SAMPLES:
        s = SAMPLES[name]
        assert s.product and s.mission and s.instrument and s.citation and s.licence
        assert len(s.sha256) == 64
    assert "Smith" in SAMPLES["lola-dem-global"].citation
    assert "Robinson" in SAMPLES["lroc-wac-global"].citation
    assert "Nozette" in SAMPLES["clementine-uvvis"].citation
    clem = SAMPLES["clementine-uvvis"]
    assert clem.transport == "debian" and clem.version.startswith("4:")
    assert clem.member.startswith("/usr/share/marble/")


@pytest.mark.network
def test_debian_sample_fetch(tmp_path, monkeypatch):
    """`esdc samples fetch` downloads the Debian package (not installed) and verifies it."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("apt-get and dpkg-deb are needed to fetch Debian-carried samples "
                    "(clementine-uvvis); this machine is not Debian-based")
    from typer.testing import CliRunner

    from esdc.cli import app
    from esdc.hashing import file_sha256 as sha256sum
    from esdc.samples import sample_path

    monkeypatch.setenv("ESDC_CACHE", str(tmp_path))
    res = CliRunner().invoke(app, ["samples", "fetch", "clementine-uvvis"])
    assert res.exit_code == 0, res.output
    path = sample_path("clementine-uvvis")
    assert path.parent.parent == tmp_path and path.name == "clementine.jpg"
    assert sha256sum(path) == SAMPLES["clementine-uvvis"].sha256


# ---------------------------------------------------------------- slope and roughness
def test_ground_spacing_on_the_moon_sphere():
    g = Grid.from_bbox("moon", "IAU_2015:30100", (0, 58, 1, 62), 1.0)
    dx, dy = ground_spacing(g)
    np.testing.assert_allclose(dx.values, R_MOON * np.cos(np.deg2rad(g.y)) * np.deg2rad(1.0))
    np.testing.assert_allclose(dy.values, R_MOON * np.deg2rad(1.0))
    # Earth (WGS 84 ellipsoid): one degree of latitude at the equator is 110.574 km.
    dxe, dye = ground_spacing(Grid.from_bbox("earth", "EPSG:4326", (0, -0.5, 1, 0.5), 1.0))
    assert abs(float(dye[0]) - 110574.0) < 2 and abs(float(dxe[0]) - 111319.5) < 2


def test_slope_of_flat_dem_is_zero():
    for g in (Grid.from_bbox("moon", "IAU_2015:30100", (-180, -90, 180, 90), 10.0),
              Grid.from_bbox("moon", "IAU_2015:30110", (0, 0, 2000, 1000), 100.0)):
        z = horizontal(np.full(g.shape, -1234.5), g)
        s = slope([z], g).values
        assert np.nanmax(np.abs(s)) == 0.0
        assert np.isfinite(s[1:-1, 1:-1]).all()
        assert np.nanmax(roughness([z], g).values) == 0.0


def test_slope_of_north_tilted_sphere_is_constant():
    """z = k * (distance northward) = k R lat: every interior cell has slope atan(k)."""
    g = Grid.from_bbox("moon", "IAU_2015:30100", (-180, -90, 180, 90), 2.0)
    k = 0.1
    z = horizontal(k * R_MOON * np.deg2rad(g.y)[:, None] * np.ones(g.shape), g,
                   {"lat": 20, "lon": 45})
    s = slope([z], g).values
    np.testing.assert_allclose(s[1:-1], np.degrees(np.arctan(k)), rtol=1e-6)
    # Columns wrap around the Moon; only the polar rows lack neighbours.
    assert np.isnan(s[[0, -1]]).all() and np.isfinite(s[1:-1]).all()


def test_slope_east_west_uses_each_rows_cell_size():
    """Hand-computed Horn slope at 60 N, where a degree of longitude is half as long."""
    g = Grid.from_bbox("moon", "IAU_2015:30100", (10, 59, 13, 62), 1.0)
    c = 300.0  # metres of elevation per degree of longitude
    z = horizontal(c * g.x[None, :] * np.ones(g.shape), g)
    s = slope([z], g).values
    dlon = np.deg2rad(1.0)
    dx = R_MOON * np.cos(np.deg2rad([61.5, 60.5, 59.5])) * dlon  # rows north, centre, south
    # Horn: each row's east-west difference 2c over 2 dx of that row, weights 1-2-1.
    dzdx = (2 * c / (2 * dx[0]) + 2 * (2 * c / (2 * dx[1])) + 2 * c / (2 * dx[2])) / 4
    assert s[1, 1] == pytest.approx(np.degrees(np.arctan(dzdx)), rel=1e-6)
    assert s[1, 1] == pytest.approx(1.1516, abs=1e-3)  # 0.5668 with the equator's dx
    assert np.isnan(s[0]).all() and np.isnan(s[:, 0]).all()  # not global: edges unknown


def test_slope_on_projected_grid_removes_map_scale():
    k = 0.05
    # Equirectangular with true scale at the equator: a 100 m cell is 100 m on the ground.
    g = Grid.from_bbox("moon", "IAU_2015:30110", (0, -500, 1000, 500), 100.0)
    z = horizontal(k * g.x[None, :] * np.ones(g.shape), g)
    np.testing.assert_allclose(slope([z], g).values[1:-1, 1:-1], np.degrees(np.arctan(k)),
                               rtol=1e-6)
    # At 60 N the same map cells are 50 m wide on the ground: twice the gradient.
    y60 = R_MOON * np.deg2rad(60.0)
    g = Grid.from_bbox("moon", "IAU_2015:30110", (0, y60 - 500, 1000, y60 + 500), 100.0)
    z = horizontal(k * g.x[None, :] * np.ones(g.shape), g)
    s = slope([z], g).values
    assert s[5, 5] == pytest.approx(np.degrees(np.arctan(2 * k)), rel=2e-4)


def test_roughness_is_riley_tri():
    g = Grid.from_bbox("moon", "IAU_2015:30110", (0, 0, 500, 500), 100.0)
    z = np.zeros(g.shape)
    z[1:4, 1:4] = np.arange(1.0, 10.0).reshape(3, 3)  # centre (2, 2) is 5
    r = roughness([horizontal(z, g, {"y": 2, "x": 3})], g).values
    assert r[2, 2] == pytest.approx(np.sqrt(sum((v - 5.0) ** 2 for v in range(1, 10))))
    assert np.isnan(r[0]).all() and np.isnan(r[:, -1]).all()


def test_terrain_functions_are_lazy():
    for g in (Grid.from_bbox("moon", "IAU_2015:30100", (-180, -90, 180, 90), 5.0),
              Grid.from_bbox("moon", "IAU_2015:30130", (-50e3, -50e3, 50e3, 50e3), 1e3)):
        z = horizontal(np.random.default_rng(0).random(g.shape), g)
        with raise_if_dask_computes():
            outs = [slope([z], g), roughness([z], g)]
        for out in outs:
            assert out.dims == g.dims and out.chunks == z.chunks and out.dtype == np.float32
            np.testing.assert_array_equal(out[g.dims[1]].values, g.x)


# ---------------------------------------------------------------- classes (mare / highland)
def test_classify_bins_flags_and_exclusions():
    g = Grid.from_bbox("moon", "IAU_2015:30100", (-180, -90, 180, 90), 30.0)  # 6 x 12
    v = np.tile(np.linspace(0.0, 1.1, 12), (6, 1))
    v[2, 3] = np.nan
    with raise_if_dask_computes():
        out = classify([horizontal(v, g, {"lat": 4, "lon": 5})], g, bins=[0.3, 0.7],
                       flag_meanings=["dark", "mid", "bright"], flag_values=[5, 6, 7],
                       valid_min=0.05, valid_max=1.0, max_abs_latitude=70)
    assert out.attrs == {"flag_values": [5, 6, 7], "flag_meanings": "dark mid bright"}
    assert out.dtype == np.float32 and out.chunks == ((4, 2), (5, 5, 2))
    c = out.values
    want = np.where(v < 0.3, 5.0, np.where(v < 0.7, 6.0, 7.0))  # digitize: bins[i-1] <= v
    want[(v < 0.05) | (v > 1.0) | np.isnan(v)] = np.nan
    want[np.abs(g.y) > 70] = np.nan  # the rows centred at +-75 degrees
    np.testing.assert_array_equal(c, want)
    assert np.isnan(c[[0, -1]]).all() and np.isfinite(c[1:-1, 1:-1]).sum() == 4 * 10 - 1
    for bad, match in (({"bins": [0.5, 0.2]}, "ascending"),
                       ({"flag_meanings": ["a", "b"]}, "must be 3 words"),
                       ({"flag_values": [1, 1, 2]}, "distinct")):
        kw = {"bins": [0.3, 0.7], "flag_meanings": ["a", "b", "c"]} | bad
        with pytest.raises(RecipeError, match=match):
            classify([horizontal(v, g)], g, **kw)
    # In a recipe, params that are not the function's arguments are refused when parsed.
    d = load_recipe(ROOT / "recipes" / "moon.yaml").to_dict()
    mh = next(x for x in d["derived"] if x["name"] == "mare_highland")
    assert mh["function"] == "classify" and mh["params"]["bins"] == [0.28]
    mh["params"]["bin"] = [0.3]  # a typo
    with pytest.raises(RecipeError, match=r"derived\[2\]\.params: .*unexpected keyword "
                                          "argument 'bin'"):
        Recipe.from_dict(d)
    proj = Grid.from_bbox("moon", "IAU_2015:30110", (0, 0, 500, 500), 100.0)
    with pytest.raises(RecipeError, match="geographic"):
        classify([horizontal(np.zeros(proj.shape), proj)], proj, bins=[0.5],
                 flag_meanings=["a", "b"], max_abs_latitude=60)
    ramp = np.linspace(0.0, 1.0, 25).reshape(proj.shape)  # projected grid, no latitude cut
    np.testing.assert_array_equal(
        classify([horizontal(ramp, proj)], proj, bins=[0.5], flag_meanings=["a", "b"]).values,
        (ramp >= 0.5).astype("float32"))


def test_minimum_error_threshold_splits_two_unequal_modes():
    """Kittler-Illingworth on a 15 % / 85 % mixture lands in the valley between the modes."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.2, 0.04, 15_000), rng.normal(0.55, 0.1, 85_000)])
    t = minimum_error_threshold(x)
    assert 0.27 < t < 0.35
    assert abs(np.mean(x < t) - 0.15) < 0.02  # Otsu would cut far into the big mode
    # a weight counts like repeated values (cells weighted by their area)
    w = np.r_[np.full(15_000, 2.0), np.ones(85_000)]
    assert minimum_error_threshold(x, w) == minimum_error_threshold(np.r_[x, x[:15_000]])
    with pytest.raises(ValueError, match="two bins"):
        minimum_error_threshold(np.full(10, 0.5))


# ---------------------------------------------------------------- regrid and readers
def test_bilinear_wraps_a_global_source_across_antimeridian_and_poles():
    lat = 90 - (np.arange(36) + 0.5) * 5.0
    lon = -180 + (np.arange(72) + 0.5) * 5.0
    f = np.cos(np.deg2rad(lat))[:, None] * np.sin(np.deg2rad(lon))[None, :] + 2.0
    ds = xr.Dataset({"v": (("lat", "lon"), f)}, coords={"lat": lat, "lon": lon})
    src = Geolocated(ds.chunk(), pyproj.CRS("IAU_2015:30100"), "lat", "lon", Path("synthetic"))
    g = Grid.from_bbox("moon", "IAU_2015:30100", (-180, -90, 180, 90), 2.0)
    with pytest.warns(UpsamplingWarning):  # 5 degree pixels onto 2 degree cells
        out = regrid(src.data["v"], src, g, "bilinear").values
    assert np.isfinite(out).all()  # no NaN seam at +-180 or at the poles
    want = np.cos(np.deg2rad(g.y))[:, None] * np.sin(np.deg2rad(g.x))[None, :] + 2.0
    np.testing.assert_allclose(out, want, atol=0.01)


def _write_tif(path: Path, transform=None, crs=None) -> None:
    import rasterio

    kw = {"transform": transform, "crs": crs} if transform is not None else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", width=8, height=4, count=1,
                           dtype="int16", **kw) as f:
            f.write(np.arange(32, dtype="int16").reshape(1, 4, 8))


def _tif_spec(path: Path, bbox: list[float]) -> SourceSpec:
    return SourceSpec(name="t", path=str(path), format="geotiff",
                      georeference={"crs": "IAU_2015:30100", "bbox": bbox},
                      variables=[{"name": "v", "source": "band_1", "resampling": "nearest",
                                  "units": "m"}])


def test_geotiff_declared_bbox_places_a_file_without_geotransform(tmp_path):
    from rasterio.transform import from_bounds

    bare = tmp_path / "bare.tif"
    _write_tif(bare)
    g = open_source(_tif_spec(bare, [0, 10, 80, 50]))
    np.testing.assert_allclose(g.data[g.ydim], [45, 35, 25, 15])
    np.testing.assert_allclose(g.data[g.xdim], np.arange(5, 80, 10))
    assert int(g.data["band_1"][0, 0]) == 0 and g.crs.equals(pyproj.CRS("IAU_2015:30100"))
    # A file with its own geotransform: the declared CRS replaces the file's, and the
    # declared bbox must agree with the file's bounds.
    placed = tmp_path / "placed.tif"
    _write_tif(placed, from_bounds(0, 10, 80, 50, 8, 4), "EPSG:4326")
    g = open_source(_tif_spec(placed, [0, 10, 80, 50]))
    assert g.crs.equals(pyproj.CRS("IAU_2015:30100")) and g.bbox == (0, 10, 80, 50)
    with pytest.raises(SourceError, match="differs from the bounds"):
        open_source(_tif_spec(placed, [0, 10, 90, 50]))


def test_plan_of_the_moon_recipe_computes_nothing():
    for name in MOON_SAMPLES:
        need_sample(name)
    with raise_if_dask_computes():
        ds = plan(load_recipe(ROOT / "recipes" / "moon.yaml"))
    assert ds.elevation.dims == ("lat", "lon") and ds.sizes["lat"] == 1800
    assert ds.slope.attrs["units"] == "degree" and ds.roughness.attrs["units"] == "m"
    assert "lola_north then lola_south" in ds.elevation.attrs["esdc_source"]


# ---------------------------------------------------------------- the real cubes
@pytest.fixture(scope="module")
def moon_cube(tmp_path_factory, client) -> Path:
    """recipes/moon.yaml at 0.25 degree, built once on the session's Dask cluster."""
    for name in MOON_SAMPLES:
        need_sample(name)
    r = moon_recipe(0.25)
    out = tmp_path_factory.mktemp("cubes") / "moon.zarr"
    t0 = time.perf_counter()
    resolve(out).write(plan(r), chunks=dict(r.output.chunks),
                       compressor=r.output.compressor, client=client)
    print(f"moon cube (0.25 degree) built in {time.perf_counter() - t0:.1f} s")
    return out


@pytest.fixture(scope="module")
def moon(moon_cube) -> xr.Dataset:
    return open_cube(moon_cube).load()


def region(da: xr.DataArray, lat: float, lon: float, half: float = 3.0) -> float:
    return float(da.sel(lat=slice(lat + half, lat - half), lon=slice(lon - half, lon + half))
                 .mean())


@pytest.mark.slow
def test_moon_cube_conventions(moon_cube, moon):
    assert verify_store(moon_cube) == []
    assert moon.sizes["lat"] == 720 and moon.sizes["lon"] == 1440
    grid = json.loads(moon.attrs["esdc_grid"])
    assert grid["body"] == "moon" and grid["crs"] == "IAU_2015:30100"
    assert moon.crs.attrs["semi_major_axis"] == R_MOON
    sources = {s["source"]: s for s in json.loads(moon.attrs["esdc_sources"])}
    assert set(sources) == {"lola_north", "lola_south", "lola_global", "lroc_wac",
                            "lola_shade", "clementine"}
    assert sources["lroc_wac"]["instrument"].startswith("Lunar Reconnaissance Orbiter Camera")
    assert sources["clementine"]["obtained_from"].startswith("debian:marble-qt-data==4:")
    assert all(s["mission"] and s["product"] for s in sources.values())


@pytest.mark.slow
def test_lola_elevation_range_and_coverage(moon):
    z = moon.elevation.values
    assert np.isfinite(z).all()  # poles and the antimeridian are filled
    assert -9200 < z.min() < -8000 and 10000 < z.max() < 10800
    # Away from the poles the global grid (0.25 degree, same grid) is copied unchanged.
    import rasterio

    with rasterio.open(need_sample("lola-dem-global")) as f:
        raw = f.read(1).astype("float32")
    mid = np.abs(moon.lat.values) < 60
    np.testing.assert_array_equal(z[mid], raw[mid])


@pytest.mark.slow
def test_polar_dems_fill_the_poles(moon):
    """Above 85 degrees the elevation comes from the polar stereographic grids."""
    import rasterio

    caps = moon.elevation.where(np.abs(moon.lat) > 85, drop=True)
    assert caps.sizes["lat"] == 40 and np.isfinite(caps.values).all()
    without = plan(moon_recipe(0.25, drop=("lola_north", "lola_south"))).elevation
    without = without.where(np.abs(without.lat) > 85, drop=True).values
    diff = np.abs(caps.values - without)
    assert np.median(diff) > 10  # the polar grids contribute: values differ
    # ... and the cube agrees with the polar grids themselves at its cell centres.
    rng = np.random.default_rng(0)
    for sample, code, rows in (("lola-dem-north", "IAU_2015:30130", slice(0, 20)),
                               ("lola-dem-south", "IAU_2015:30135", slice(-20, None))):
        cells = moon.elevation.isel(lat=rows)
        i = rng.integers(0, cells.sizes["lat"], 300)
        j = rng.integers(0, cells.sizes["lon"], 300)
        lat, lon = cells.lat.values[i], cells.lon.values[j]
        x, y = pyproj.Transformer.from_crs("IAU_2015:30100", code,
                                           always_xy=True).transform(lon, lat)
        with rasterio.open(need_sample(sample)) as f:
            polar = np.array([v[0] for v in f.sample(zip(x, y, strict=True))], dtype=float)
        cube = cells.values[i, j]
        # bilinear between 1.6 km pixels vs the pixel itself: close, not equal
        assert np.median(np.abs(cube - polar)) < 50
        assert np.corrcoef(cube, polar)[0, 1] > 0.99


@pytest.mark.slow
def test_maria_darker_and_lower_than_highlands(moon):
    imbrium, highlands = (33.0, -15.0), (-40.0, 10.0)  # Mare Imbrium; southern highlands
    for v in ("wac", "clementine_uvvis", "lola_hillshade"):
        assert 0.0 <= float(moon[v].min()) and float(moon[v].max()) <= 1.0
    assert region(moon.wac, *imbrium) < 0.75 * region(moon.wac, *highlands)
    assert region(moon.clementine_uvvis, *imbrium) < 0.75 * region(moon.clementine_uvvis,
                                                                    *highlands)
    assert region(moon.elevation, *imbrium) < region(moon.elevation, *highlands) - 1000
    assert region(moon.slope, *imbrium) < region(moon.slope, *highlands)
    assert region(moon.roughness, *imbrium) < region(moon.roughness, *highlands)


@pytest.mark.slow
def test_mare_highland_classes(moon_cube, moon):
    """Albedo classes against the known map: maria cover ~31 % of the nearside, ~2 % of
    the farside (Wilhelms 1987, USGS Prof. Paper 1348; Lunar Sourcebook, 1991)."""
    m = moon.mare_highland
    assert m.attrs["flag_values"] == [0, 1] and m.attrs["flag_meanings"] == "mare highland"
    assert m.attrs["esdc_derived"] == "classify(clementine_uvvis)"
    at = {name: float(m.sel(lat=lat, lon=lon, method="nearest")) for name, (lat, lon) in {
        "imbrium": (33.0, -16.0), "serenitatis": (28.0, 17.0), "tranquillitatis": (8.0, 31.0),
        "crisium": (17.0, 59.0), "south_of_tycho": (-50.0, 0.0),
        "farside_highlands": (0.0, 180.0)}.items()}
    assert at == {"imbrium": 0, "serenitatis": 0, "tranquillitatis": 0, "crisium": 0,
                  "south_of_tycho": 1, "farside_highlands": 1}
    v = m.values
    assert set(np.unique(v[np.isfinite(v)])) == {0.0, 1.0}
    assert np.isnan(v[np.abs(moon.lat.values) > 70]).all()  # no albedo class at the poles
    w = np.broadcast_to(np.cos(np.deg2rad(moon.lat.values))[:, None], v.shape)
    near = np.broadcast_to(np.abs(moon.lon.values)[None, :] < 90, v.shape)
    ok = np.isfinite(v)
    share = {side: float((w * (v == 0))[ok & sel].sum() / w[ok & sel].sum())
             for side, sel in (("near", near), ("far", ~near))}
    assert 0.18 < share["near"] < 0.4 and share["far"] < 0.05
    assert share["near"] > 8 * share["far"]
    # The recipe's threshold is the minimum-error threshold of this cube's albedo.
    x = moon.clementine_uvvis.values
    keep = (np.abs(moon.lat.values)[:, None] <= 70) & (x >= 0.06)
    assert minimum_error_threshold(np.where(keep, x, np.nan), w) == pytest.approx(0.28,
                                                                                  abs=0.015)


@pytest.mark.slow
def test_slope_and_roughness_in_the_cube(moon):
    s, r = moon.slope.values, moon.roughness.values
    assert np.isnan(s[[0, -1]]).all() and np.isfinite(s[1:-1]).all()  # only the polar rows
    assert np.nanmin(s) >= 0 and 20 < np.nanmax(s) < 60 and 0.5 < np.nanmedian(s) < 5
    assert np.isfinite(r[1:-1]).all() and np.nanmin(r) >= 0
    assert moon.slope.attrs["esdc_derived"] == "slope(elevation)"


@pytest.fixture(scope="module")
def moon_100m(tmp_path_factory, client) -> Path:
    for name in ("lola-dem-global", "lroc-wac-global"):
        need_sample(name)
    r = load_recipe(ROOT / "recipes" / "moon_100m.yaml")
    out = tmp_path_factory.mktemp("cubes") / "moon_100m.zarr"
    resolve(out).write(plan(r), chunks=dict(r.output.chunks),
                       compressor=r.output.compressor, client=client)
    return out


@pytest.mark.slow
def test_moon_100m_region_builds_in_metres(moon_100m):
    assert verify_store(moon_100m) == []
    ds = open_cube(moon_100m).load()
    assert ds.elevation.dims == ("y", "x") and ds.sizes == {"y": 500, "x": 500}
    assert ds.x.attrs["units"] == "m" and ds.y.attrs["units"] == "m"
    np.testing.assert_allclose(np.diff(ds.x.values), 100.0)
    np.testing.assert_allclose(np.diff(ds.y.values), -100.0)
    assert np.isfinite(ds.elevation.values).all() and np.isfinite(ds.wac.values).all()
    # Montes Apenninus (east of the landing site) stand above the Hadley plain (west).
    east = float(ds.elevation.sel(x=slice(10e3, 25e3)).mean())
    west = float(ds.elevation.sel(x=slice(-25e3, -10e3)).mean())
    assert east > west + 500
    assert np.isfinite(ds.slope.values[1:-1, 1:-1]).all()
