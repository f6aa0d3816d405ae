"""``esdc verify`` finds holes: layers NaN where their source covers the grid.

The issue's case: ``land_fraction`` by ``bucket_average`` from the 5' GSHHG land mask onto
a 0.05 degree Pacific Northwest grid came out 64 % NaN in stripes and verify said OK. The
bucket methods onto finer cells are now refused at plan time, so the holed layer is made
here the way it used to be (the bucket resampler called directly) and written into a
cube beside the conservative one: verify must report it, and only it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from esdc.build import build, plan
from esdc.cli import app
from esdc.conventions import ATTR_COVERAGE
from esdc.grid import Grid
from esdc.harmonize import decode
from esdc.recipe import Recipe
from esdc.regrid.regular import RegularResampler
from esdc.sources import open_source
from esdc.verify import hole_problems, verify_store

PNW = [-125.0, 42.0, -116.0, 49.0]
LAND_MASK = {"name": "land_mask", "sample": "basemap-lsmask-5min", "format": "raw",
             "dtype": "uint8", "shape": [2160, 4320], "compression": "gzip",
             "georeference": {"crs": "EPSG:4326", "bbox": [-180, -90, 180, 90],
                              "row_order": "south_up", "dims": ["lat", "lon"]}}


def recipe() -> Recipe:
    return Recipe.from_dict({
        "name": "pnw", "title": "Pacific Northwest, 0.05 degree",
        "grid": {"body": "earth", "crs": "EPSG:4326", "bbox": PNW, "resolution": 0.05},
        "sources": [
            {**LAND_MASK, "variables": [{
                "name": "land_fraction", "source": "mask", "resampling": "conservative",
                "select_values": [1, 2], "units": "1", "standard_name": "land_area_fraction"}]},
            {"name": "altitude", "sample": "pvlib-altitude", "format": "hdf5",
             "georeference": {"crs": "EPSG:4326", "bbox": [-180, -90, 180, 90],
                              "dims": ["lat", "lon"]},
             "variables": [{"name": "altitude", "source": "Altitude", "resampling": "bilinear",
                            "scale_factor": 28, "add_offset": -450, "fill_value": 255,
                            "units": "m"}]},
        ]})


@pytest.fixture(scope="module")
def cubes(tmp_path_factory, samples) -> dict[str, Path]:
    """The conservative cube (built) and the issue's bucket-average cube (written)."""
    folder = tmp_path_factory.mktemp("coverage")
    good = Path(build(recipe(), folder / "good.zarr", fetch=False))
    ds = plan(recipe())
    spec = recipe().sources[0]
    geo = open_source(spec)
    grid = Grid.from_bbox("earth", "EPSG:4326", tuple(PNW), 0.05)
    holed = RegularResampler().resample(decode(geo.data["mask"], spec.variables[0]), geo, grid,
                                        "bucket_average", flag_values=None, fast_path=True,
                                        min_valid_fraction=0.5)
    ds["land_fraction"] = ds["land_fraction"].copy(data=holed.data)
    ds.to_zarr(folder / "bucket.zarr", zarr_format=3, consolidated=True)
    return {"good": good, "bucket": folder / "bucket.zarr"}


def test_build_records_where_each_source_lands(cubes):
    with xr.open_zarr(cubes["good"]) as ds:
        for name in ("land_fraction", "altitude"):
            cov = json.loads(ds[name].attrs[ATTR_COVERAGE])
            assert cov["bbox"] == PNW
            assert cov["pixel"] == pytest.approx([5 / 3, 5 / 3], rel=1e-5)
        nan_share = float(np.isnan(ds["land_fraction"]).mean())
        assert nan_share == 0.0  # was 64 % with bucket_average


def test_verify_reports_the_issue_case_and_not_the_good_cube(cubes):
    assert verify_store(cubes["good"]) == []  # altitude is NaN over the ocean: no hole
    problems = verify_store(cubes["bucket"])
    assert len(problems) == 1, problems
    msg = problems[0]
    for needle in ("'land_fraction' has holes", "140 x 180 cells", "all NaN between valid ones",
                   "(stripes)", "valid in 36.0% of the cells", "reach 100.0%", "conservative"):
        assert needle in msg, (needle, msg)


def test_cli_verify_exits_1_on_holes(cubes):
    res = CliRunner().invoke(app, ["verify", str(cubes["bucket"])])
    assert res.exit_code == 1, res.output
    assert "land_fraction" in res.output and "stripes" in res.output
    ok = CliRunner().invoke(app, ["verify", str(cubes["good"])])
    assert ok.exit_code == 0 and "OK" in ok.output


def test_holes_found_in_a_time_series_and_narrow_gaps_only():
    """Stripes across every time step are holes; a wide real gap (an ocean) is not."""
    y, x = np.arange(19.5, 0, -1.0), np.arange(0.5, 20, 1.0)
    field = np.ones((3, 20, 20), "float32")
    field[:, :, 12:] = np.nan  # a wide gap: the sea
    ds = xr.Dataset({"v": (("time", "lat", "lon"), field)}, coords={"lat": y, "lon": x})
    ds["v"].attrs[ATTR_COVERAGE] = json.dumps({"bbox": [0, 0, 20, 20], "pixel": [1.5, 1.5]})
    assert hole_problems(ds) == []
    ds["v"][:, ::3, :] = np.nan  # every third row empty in every step
    (problem,) = hole_problems(ds)
    assert "6 rows and 0 columns are all NaN" in problem
