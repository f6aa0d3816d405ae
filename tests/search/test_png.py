"""The PNG encoder of map tiles and thumbnails: any reader decodes the same pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from esdc.search.render import encode_png, png_bytes


@pytest.mark.parametrize("shape, mode", [((37, 53), "L"), ((256, 256, 3), "RGB"),
                                         ((64, 300, 4), "RGBA")])
@pytest.mark.parametrize("level", [0, 1, 9])
def test_encode_png_decodes_to_the_same_pixels(shape, mode, level):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    pixels[5:9] = pixels[4]  # repeated rows (a zoomed-in tile)
    if mode == "RGBA":
        pixels[0, 0, 3] = 0  # one transparent pixel keeps the alpha channel
    img = Image.open(io.BytesIO(encode_png(pixels, level)))
    img.load()  # decodes every row: CRCs, filters and zlib stream checked by Pillow
    assert img.mode == mode and img.size == (shape[1], shape[0])
    np.testing.assert_array_equal(np.asarray(img), pixels)


def test_opaque_rgba_is_written_as_rgb_and_repeated_rows_compress():
    rng = np.random.default_rng(1)
    cells = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    cells[..., 3] = 255
    tile = np.repeat(np.repeat(cells, 4, 0), 4, 1)  # each cell 4 x 4 pixels
    img = Image.open(io.BytesIO(encode_png(tile)))
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), tile[..., :3])
    assert len(encode_png(tile)) < 0.25 * tile[..., :3].nbytes  # 3 of 4 rows are zeros


def test_png_bytes_scales_values_to_grey_levels():
    values = np.array([[0.0, 5.0], [np.nan, 10.0]])
    img = np.asarray(Image.open(io.BytesIO(png_bytes(values))))
    np.testing.assert_array_equal(img, [[0, 128], [0, 255]])


@pytest.mark.parametrize("bad", [np.zeros((4, 4), "float32"), np.zeros((4, 4, 2), "uint8"),
                                 np.zeros((0, 4), "uint8"), np.zeros(4, "uint8")])
def test_encode_png_rejects_what_it_cannot_write(bad):
    with pytest.raises(ValueError, match="expected uint8"):
        encode_png(bad)
