"""The reader contract every reader's tests subclass (after zarr-python's store test suite)."""

from __future__ import annotations

import numpy as np
import pytest

from esdc.recipe import SourceSpec
from esdc.sources import Geolocated, open_source
from esdc.testing import raise_if_dask_computes


class ReaderContract:
    """Subclasses give ``spec()`` and the expected ``shape`` (ny, nx) and value range."""

    shape: tuple[int, int]
    value_range: tuple[float, float]

    def spec(self, tmp_path) -> SourceSpec:
        raise NotImplementedError

    @pytest.fixture
    def opened(self, tmp_path) -> tuple[SourceSpec, Geolocated]:
        spec = self.spec(tmp_path)
        with raise_if_dask_computes():
            geo = open_source(spec)
        return spec, geo

    def test_lazy(self, opened):
        spec, geo = opened
        for v in spec.variables:
            assert geo.data[v.source].chunks is not None, "variables must be Dask-backed"

    def test_spatial_dims_last(self, opened):
        spec, geo = opened
        for v in spec.variables:
            assert geo.data[v.source].dims[-2:] == (geo.ydim, geo.xdim)
            assert geo.data[v.source].shape[-2:] == self.shape

    def test_north_up_west_first(self, opened):
        _, geo = opened
        y, x = geo.data[geo.ydim].values, geo.data[geo.xdim].values
        assert np.all(np.diff(y) < 0) and np.all(np.diff(x) > 0)
        if geo.crs.is_geographic:
            assert x.min() >= -180.5 and x.max() < 180.0

    def test_geometry(self, opened):
        _, geo = opened
        area = geo.area_definition()
        assert area.shape == self.shape
        w, s, e, n = geo.bbox
        assert e > w and n > s
        dx, dy = geo.resolution
        assert dx > 0 and dy > 0

    def test_values(self, opened):
        spec, geo = opened
        arr = geo.data[spec.variables[0].source]
        block = arr.isel({geo.ydim: slice(0, 50), geo.xdim: slice(0, 50)}).values
        assert block.min() >= self.value_range[0] and block.max() <= self.value_range[1]
