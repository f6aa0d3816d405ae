"""``esdc plot --rgb R,G,B``: a true-colour map of any three variables of a cube.

On tests/own_data.py's real cube: altitude, land fraction and the hourly rain as red,
green and blue (each stretched to 0..1 when it is not already in it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from esdc.cli import app
from esdc.errors import SelectionError
from tests.own_data import own_data_cube

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def cube(tmp_path_factory) -> Path:
    return own_data_cube(tmp_path_factory)


def test_rgb_of_three_named_variables(cube, tmp_path):
    from PIL import Image

    out = tmp_path / "rgb.png"
    res = CliRunner().invoke(app, ["plot", str(cube), "--rgb",
                                   "altitude,land_fraction,precipitation",
                                   "--time", "2018-09-14T04:00", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.output
    img = np.asarray(Image.open(out).convert("RGB"), dtype=float)
    assert img.std(axis=(0, 1)).min() > 5  # three channels, each with structure


def test_rgb_refusals_name_the_way_out(cube, tmp_path):
    from esdc.plot import quicklook
    from esdc.storage import open_cube

    ds = open_cube(cube)
    with pytest.raises(SelectionError, match=r"no Blue Marble channels .* rgb=R,G,B"):
        quicklook(ds, "rgb", tmp_path / "a.png")
    with pytest.raises(SelectionError, match="give three variables"):
        quicklook(ds, None, tmp_path / "a.png", rgb=["altitude", "land_fraction"])
    res = CliRunner().invoke(app, ["plot", str(cube), "--out", str(tmp_path / "a.png")])
    assert res.exit_code == 2 and "give a VARIABLE to map, or three variables with --rgb"\
        in res.output
    assert not list(tmp_path.iterdir())
