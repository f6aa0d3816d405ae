"""Bad input of the Moon, Sun and floods families: clear message, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

from esdc.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _build(tmp_path: Path, recipe: dict) -> tuple[int, str, Path]:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "cube.zarr"
    r = runner.invoke(app, ["build", str(path), "--out", str(out), "--no-fetch"])
    return r.exit_code, r.output, out


def _check(code: int, text: str, out: Path, *needles: str) -> None:
    assert code == 2, text
    assert "Traceback" not in text
    for n in needles:
        assert n in text, (n, text)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".partial" in p.name]


def test_fits_without_wcs(tmp_path):
    fits = pytest.importorskip("astropy.io.fits")
    f = tmp_path / "nowcs.fits"
    fits.PrimaryHDU(np.ones((16, 16), "float32")).writeto(f)
    recipe = yaml.safe_load((ROOT / "recipes" / "sun.yaml").read_text())
    recipe["sources"] = [{"name": "plain", "path": str(f), "format": "fits",
                          "variables": [{"name": "img", "source": "data",
                                         "resampling": "bilinear", "units": "1"}]}]
    recipe["derived"] = []
    recipe["grid"].pop("time", None)
    code, text, out = _build(tmp_path, recipe)
    _check(code, text, out, "nowcs.fits")


def test_lunar_source_on_an_earth_grid(tmp_path):
    moon = yaml.safe_load((ROOT / "recipes" / "moon.yaml").read_text())
    lola = next(s for s in moon["sources"] if s.get("sample", "").startswith("lola")
                or "lola" in s["name"])
    earth = {"name": "mixed", "title": "mixed bodies",
             "grid": {"body": "earth", "crs": "EPSG:4326", "bbox": [-180, -90, 180, 90],
                      "resolution": 2.0},
             "sources": [lola]}
    code, text, out = _build(tmp_path, earth)
    _check(code, text, out, "moon", "grid.body is earth")


def test_projection_proj_does_not_know(tmp_path):
    recipe = yaml.safe_load((ROOT / "recipes" / "moon_100m.yaml").read_text())
    recipe["grid"]["crs"] = "+proj=notaprojection +R=1737400"
    code, text, out = _build(tmp_path, recipe)
    _check(code, text, out, "grid.crs", "unknown CRS")


def test_curvilinear_coordinates_with_nan(tmp_path):
    lat = np.linspace(33, 36, 12)[:, None] + np.zeros((12, 10))
    lon = np.linspace(-80, -76, 10)[None, :] + np.zeros((12, 10))
    lat[3, 4] = np.nan
    ds = xr.Dataset({"p": (("y", "x"), np.ones((12, 10), "float32"), {"units": "kg m-2"})},
                    coords={"lat": (("y", "x"), lat, {"units": "degrees_north"}),
                            "lon": (("y", "x"), lon, {"units": "degrees_east"})})
    ds.to_netcdf(tmp_path / "swath.nc")
    recipe = {"name": "swath", "title": "curvilinear with NaN",
              "grid": {"body": "earth", "bbox": [-81, 32, -75, 37], "resolution": 0.5},
              "sources": [{"name": "p", "path": str(tmp_path / "swath.nc"), "format": "netcdf",
                           "variables": [{"name": "p", "source": "p",
                                          "resampling": "nearest", "units": "kg m-2"}]}]}
    code, text, out = _build(tmp_path, recipe)
    _check(code, text, out, "swath.nc", "NaN")
