import numpy as np
import pytest

from esdc.errors import GridError
from esdc.grid import Grid


def test_global_quarter_degree():
    g = Grid.from_bbox("earth", "EPSG:4326", (-180, -90, 180, 90), 0.25)
    assert g.shape == (720, 1440)
    assert g.dims == ("lat", "lon")
    assert g.y[0] == 89.875 and g.y[-1] == -89.875
    assert g.x[0] == -179.875 and g.x[-1] == 179.875
    assert g.bbox == (-180, -90, 180, 90)
    area = g.area_definition()
    assert area.shape == (720, 1440)
    assert np.allclose(area.area_extent, (-180, -90, 180, 90))


def test_frozen_and_hashable_round_trip():
    g = Grid.from_bbox("moon", "IAU_2015:30100", (-10, -5, 10, 5), 0.1,
                       time=["2020-01-01", "2020-02-01"])
    with pytest.raises(AttributeError):
        g.shape = (1, 1)  # type: ignore[misc]
    again = Grid.from_dict(g.to_dict())
    assert again == g
    assert again.time_bounds == g.time_bounds
    assert g.crs_attrs()["semi_major_axis"] == 1737400.0


def test_projected_grid_uses_y_x():
    g = Grid.from_bbox("earth", "EPSG:32621", (300000, 5000000, 330000, 5030000), 30.0)
    assert g.dims == ("y", "x")
    assert g.coords()["x"].attrs["units"] == "m"


def test_cell_area_weights_sum_to_sphere_fraction():
    g = Grid.from_bbox("earth", "EPSG:4326", (-180, -90, 180, 90), 1.0)
    # sum over rows of (sin(north) - sin(south)) is 2 over the full sphere
    assert g.cell_area_weights().sum() == pytest.approx(2.0)


@pytest.mark.parametrize("kw", [
    dict(crs="EPSG:999999"),
    dict(shape=(0, 10)),
    dict(shape=(-1, 10)),
    dict(transform=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0)),
    dict(body="mars"),
])
def test_invalid(kw):
    base = dict(body="earth", crs="EPSG:4326", transform=(1.0, 0.0, -180.0, 0.0, -1.0, 90.0),
                shape=(180, 360))
    with pytest.raises(GridError):
        Grid(**{**base, **kw})


def test_time_axis_must_increase():
    with pytest.raises(GridError, match="increasing"):
        Grid.from_bbox("earth", "EPSG:4326", (0, 0, 1, 1), 1.0,
                       time=["2020-02-01", "2020-01-01"])


def test_band_rows_align_to_the_region_tile():
    """Bands of target rows never cross a multiple of the regions' rows (Grid.tile), so a
    resampler's band is released when its row of regions is written."""
    import dataclasses

    g = Grid.from_bbox("earth", "EPSG:4326", (-180, -90, 180, 90), 0.1)
    assert g.tile is None and g.band_rows(1234) == 1234 and g.band_rows(0) == 1
    t = dataclasses.replace(g, tile=(180, 360))
    assert t == g and hash(t) == hash(g)  # a hint, not part of the grid's identity
    assert [t.band_rows(n) for n in (1234, 400, 180, 179, 100, 7, 1)] == [
        1080, 360, 180, 90, 90, 6, 1]
    for limit in range(1, 500):
        rows = t.band_rows(limit)
        assert limit / 2 <= rows <= limit and (rows % 180 == 0 or 180 % rows == 0)
    prime = dataclasses.replace(g, tile=(179, 360))  # no divisor near the budget
    assert prime.band_rows(100) == 100 and prime.band_rows(179) == 179
    assert t.band_rows(5000) == 1800 and g.band_rows(5000) == 1800  # the whole grid fits
    # blocks: whole where they fit, whole rows while a row of regions fits, else tiles
    assert t.block_shape(1, 8_000_000) == (1800, 3600)
    assert t.block_shape(12, 8_000_000) == (180, 3600)
    assert t.block_shape(54, 8_000_000) == (180, 360)
    assert t.block_shape(54, 1_000_000) == (45, 360)
    assert g.block_shape(54, 8_000_000) == (41, 3600)
    with pytest.raises(GridError, match="tile"):
        dataclasses.replace(g, tile=(0, 360))
