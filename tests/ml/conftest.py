"""Fixtures of the ML tests: a small synthetic cube with chunks, NaNs and a static layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from esdc.testing import new_cube


@pytest.fixture(scope="module")
def cube(tmp_path_factory) -> Path:
    """``a``, ``b`` ``(time 5, y 50, x 70)`` chunked ``(2, 16, 32)``; static ``s``; NaNs in a."""
    ds = new_cube(shape=(50, 70), times=5, variables=("a", "b"), seed=4)
    ds["s"] = ds["a"].isel(time=0, drop=True) * 0 + np.arange(70, dtype="float32")
    ds["s"].attrs = {"units": "1", "grid_mapping": "crs"}
    ds["a"][1, 3:9, 4:20] = np.nan
    path = tmp_path_factory.mktemp("c") / "cube.zarr"
    enc = {v: {"chunks": (2, 16, 32)} for v in ("a", "b")} | {"s": {"chunks": (16, 32)}}
    ds.to_zarr(path, zarr_format=3, encoding=enc, consolidated=True)
    return path
