import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from esdc.errors import EsdcError  # noqa: E402
from esdc.testing import new_cube  # noqa: E402


def test_quicklook_continuous_and_categorical(tmp_path):
    ds = new_cube(shape=(18, 36), times=2)
    ds["cls"] = (("lat", "lon"), np.tile(np.arange(3, dtype="uint8"), (18, 12)),
                 {"units": "1", "flag_values": [0, 1, 2], "flag_meanings": "a b c"})
    for var in ("a", "cls"):
        path = ds.esdc.quicklook(var, tmp_path / f"{var}.png", time=1)
        img = np.asarray(Image.open(path))
        assert img.shape[0] > 300 and img.shape[1] > 600
        assert img[..., :3].std() > 10  # not a blank canvas
    fig = ds.esdc.quicklook("a")
    assert "synthetic a" in fig.axes[0].get_title()
    assert fig.axes[0].get_xlabel() == "lon (degrees_east)"
    legend = ds.esdc.quicklook("cls").axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["0 a", "1 b", "2 c"]
    with pytest.raises(EsdcError, match="not in the cube"):
        ds.esdc.quicklook("nope")
