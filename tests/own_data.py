"""A small cube with a scientist's own files: the recipe and one build per test session.

Stage IV hourly precipitation (a registered sample: time series) over the Carolinas at
0.25 degree, plus two files given by ``path:`` as a user's own data would be: the GSHHG
land/ocean/lake mask (raw, with a declared ``provenance:`` block; a categorical and a
conservative fraction) and pvlib's altitude grid (HDF5, with no provenance declared).
Built on the local Dask scheduler in a few seconds; shared by test_export, test_point and
the provenance tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import need_sample

#: What the recipe declares for the land mask file (checked in info, cards and STAC).
GSHHG_PROVENANCE = {
    "product": "GSHHG land/ocean/lake mask, 5 arc-minutes",
    "mission": "compilation",
    "instrument": "World Vector Shoreline, CIA World Data Bank II",
    "license": "LGPL-3.0-or-later",
    "citation": "Wessel, P. and Smith, W. H. F. (1996), A global, self-consistent, "
                "hierarchical, high-resolution shoreline database, J. Geophys. Res. 101(B4), "
                "8741-8743",
    "doi": "https://doi.org/10.1029/96JB00104",
    "url": "https://www.soest.hawaii.edu/pwessel/gshhg/",
}

_BUILT: dict[str, Path] = {}


def own_data_recipe() -> dict[str, Any]:
    """The recipe (as a dict): 12 hourly steps, 20 x 22 cells of 0.25 degree."""
    return {
        "name": "own_data",
        "title": "Own data test cube: Florence rain, land mask, altitude",
        "license": "mixed; see esdc_sources",
        "grid": {"body": "earth", "crs": "EPSG:4326", "bbox": [-80.5, 32.5, -75.0, 37.5],
                 "resolution": 0.25, "time": {"start": "2018-09-13T19:00",
                                              "end": "2018-09-14T06:00", "freq": "h"}},
        "output": {"chunks": {"time": 4, "lat": 10, "lon": 11}},
        "sources": [
            {"name": "stageiv", "sample": "stageiv-florence", "format": "netcdf",
             "time": "series",
             "variables": [{"name": "precipitation", "resampling": "nearest",
                            "source": "Total_precipitation_surface_1_Hour_Accumulation",
                            "units": "kg m-2", "long_name": "hourly precipitation"}]},
            {"name": "my_land_mask", "path": str(need_sample("basemap-lsmask-5min")),
             "format": "raw", "dtype": "uint8", "shape": [2160, 4320], "compression": "gzip",
             "georeference": {"crs": "EPSG:4326", "bbox": [-180, -90, 180, 90],
                              "row_order": "south_up", "dims": ["lat", "lon"]},
             "provenance": GSHHG_PROVENANCE,
             "variables": [
                 {"name": "land_fraction", "source": "mask", "resampling": "conservative",
                  "select_values": [1, 2], "units": "1",
                  "standard_name": "land_area_fraction",
                  "long_name": "fraction of the cell that is land"},
                 {"name": "land_sea_mask", "source": "mask", "resampling": "bucket_mode",
                  "units": "1", "long_name": "land/ocean/lake class",
                  "flag_values": [0, 1, 2], "flag_meanings": ["ocean", "land", "lake"]}]},
            {"name": "my_altitude", "path": str(need_sample("pvlib-altitude")),
             "format": "hdf5",
             "georeference": {"crs": "EPSG:4326", "bbox": [-180, -90, 180, 90],
                              "dims": ["lat", "lon"]},
             "variables": [{"name": "altitude", "source": "Altitude",
                            "resampling": "bucket_average", "scale_factor": 28,
                            "add_offset": -450, "fill_value": 255, "units": "m",
                            "standard_name": "surface_altitude",
                            "long_name": "surface altitude"}]},
        ],
    }


def own_data_cube(tmp_path_factory: Any) -> Path:
    """The cube of :func:`own_data_recipe`, built once per test session."""
    if "cube" not in _BUILT:
        from esdc.build import build
        from esdc.recipe import Recipe

        out = tmp_path_factory.mktemp("own_data") / "own_data.zarr"
        _BUILT["cube"] = build(Recipe.from_dict(own_data_recipe()), out, fetch=False)
    return _BUILT["cube"]
