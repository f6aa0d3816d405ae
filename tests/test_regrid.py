from pathlib import Path

import numpy as np
import pyproj
import pytest
import xarray as xr

from esdc.build import plan
from esdc.errors import RegridError, UpsamplingWarning
from esdc.grid import Grid
from esdc.harmonize import decode
from esdc.recipe import SourceSpec, load_recipe
from esdc.regrid import aligned_blocks, regrid
from esdc.regrid.blocks import block_mode, regular_bucket_average
from esdc.sources import Geolocated, open_source
from esdc.testing import raise_if_dask_computes

ROOT = Path(__file__).resolve().parents[1]


def synthetic(values: np.ndarray, bbox=(0.0, 0.0, 8.0, 4.0)) -> Geolocated:
    ny, nx = values.shape
    w, s, e, n = bbox
    lat = n - (np.arange(ny) + 0.5) * (n - s) / ny
    lon = w + (np.arange(nx) + 0.5) * (e - w) / nx
    ds = xr.Dataset({"v": (("lat", "lon"), values)}, coords={"lat": lat, "lon": lon})
    return Geolocated(ds.chunk({"lat": 20, "lon": 40}), pyproj.CRS.from_epsg(4326), "lat", "lon",
                      Path("synthetic"))


def test_fast_path_equals_pyresample_bucket_average():
    rng = np.random.default_rng(1)
    vals = rng.random((40, 80)).astype("float32")
    vals[3, 7] = np.nan
    src = synthetic(vals)
    grid = Grid.from_bbox("earth", "EPSG:4326", (0, 0, 8, 4), 0.5)
    assert aligned_blocks(src, grid) == (5, 5, 0, 0)
    fast = regrid(src.data["v"], src, grid, "bucket_average").values
    slow = regrid(src.data["v"], src, grid, "bucket_average", fast_path=False).values
    assert fast.shape == (8, 16)
    np.testing.assert_allclose(fast, slow, rtol=1e-5)
    block = vals[:5, 5:10]
    np.testing.assert_allclose(fast[0, 1], np.nanmean(block), rtol=1e-5)


def test_fast_path_equals_pyresample_bucket_mode():
    rng = np.random.default_rng(2)
    # each 5x5 block has a clear majority class (no ties), plus noise
    major = rng.integers(0, 3, size=(8, 16)).astype("uint8")
    vals = np.kron(major, np.ones((5, 5), dtype="uint8"))
    noise = rng.random(vals.shape) < 0.3
    vals[noise] = rng.integers(0, 3, size=noise.sum())
    src = synthetic(vals)
    grid = Grid.from_bbox("earth", "EPSG:4326", (0, 0, 8, 4), 0.5)
    fast = regrid(src.data["v"], src, grid, "bucket_mode", flag_values=[0, 1, 2]).values
    slow = regrid(src.data["v"], src, grid, "bucket_mode", flag_values=[0, 1, 2],
                  fast_path=False).values
    assert fast.dtype == np.uint8
    np.testing.assert_array_equal(fast, slow)
    np.testing.assert_array_equal(fast, major)


def test_bilinear_reproduces_a_linear_field():
    lat = np.arange(9.5, -10, -1.0)
    lon = np.arange(-9.5, 10, 1.0)
    field = (lon[None, :] + 2 * lat[:, None]).astype("float32")
    src = synthetic(field, bbox=(-10, -10, 10, 10))
    grid = Grid.from_bbox("earth", "EPSG:4326", (-5, -5, 5, 5), 0.25)
    with pytest.warns(UpsamplingWarning, match="4 x 4 times the grid's cells"):
        out = regrid(src.data["v"], src, grid, "bilinear")  # 1 degree pixels, 0.25 cells
    expect = grid.x[None, :] + 2 * grid.y[:, None]
    np.testing.assert_allclose(out.values, expect, atol=1e-3)
    assert out.dims == ("lat", "lon")


def test_nearest_takes_source_values():
    rng = np.random.default_rng(3)
    vals = rng.random((20, 20)).astype("float32")
    src = synthetic(vals, bbox=(-10, -10, 10, 10))
    grid = Grid.from_bbox("earth", "EPSG:4326", (-10, -10, 10, 10), 0.5)
    out = regrid(src.data["v"], src, grid, "nearest").values
    np.testing.assert_array_equal(out[::2, ::2], vals)


def test_nearest_wraps_a_0_360_source_onto_a_grid_across_the_prime_meridian():
    """West of 0 the cells take the source's 350-360 degree pixels: a cut of the source
    to the grid's box (-10..10) before resampling left that half NaN."""
    lon = np.arange(0.5, 360.0)
    vals = np.broadcast_to(lon, (20, 360)).astype("float32")
    src = synthetic(vals, bbox=(0, -10, 360, 10))
    assert src.data.lon.values.max() > 180
    grid = Grid.from_bbox("earth", "EPSG:4326", (-10, -10, 10, 10), 1.0)
    out = regrid(src.data["v"], src, grid, "nearest").values
    expect = np.where(grid.x < 0, grid.x + 360, grid.x)
    np.testing.assert_array_equal(out, np.broadcast_to(expect, out.shape))


def test_leading_dims_kept():
    vals = np.stack([np.full((40, 80), k, "float32") for k in range(3)])
    src = synthetic(vals[0])
    data = xr.DataArray(vals, dims=("month", "lat", "lon"),
                        coords={"lat": src.data.lat, "lon": src.data.lon}).chunk()
    grid = Grid.from_bbox("earth", "EPSG:4326", (0, 0, 8, 4), 1.0)
    for method in ("bucket_average", "bilinear"):
        out = regrid(data, src, grid, method)
        assert out.dims == ("month", "lat", "lon")
        assert np.nanmax(np.abs(out.values - np.arange(3)[:, None, None])) < 1e-5


def test_unknown_method():
    src = synthetic(np.zeros((40, 80), "float32"))
    grid = Grid.from_bbox("earth", "EPSG:4326", (0, 0, 8, 4), 1.0)
    with pytest.raises(RegridError, match="cubic"):
        regrid(src.data["v"], src, grid, "cubic")


@pytest.mark.parametrize("sample, spec_kw, var", [
    ("pvlib-linke-turbidity", dict(format="hdf5", georeference=dict(
        bbox=[-180, -90, 180, 90], dims=["lat", "lon", "month"])),
     dict(source="LinkeTurbidity", scale_factor=0.05)),
    ("bmng", dict(format="image", bands=["red", "green", "blue"],
                  georeference=dict(bbox=[-180, -90, 180, 90])), dict(source="red")),
])
def test_bucket_average_preserves_area_weighted_mean(samples, sample, spec_kw, var):
    """Area mean of the field on the grid equals the source's within 1 %."""
    spec = SourceSpec(name="s", sample=sample, variables=[dict(
        name="v", resampling="bucket_average", units="1", **var)], **spec_kw)
    geo = open_source(spec)
    raw = decode(geo.data[var["source"]], spec.variables[0])
    if "month" in raw.dims:
        raw = raw.isel(month=6)
    grid = Grid.from_bbox("earth", "EPSG:4326", (-180, -90, 180, 90), 1.0)
    out = regrid(raw, geo, grid, "bucket_average")
    src_w = np.cos(np.deg2rad(geo.data["lat"]))
    src_mean = float(raw.weighted(src_w).mean())
    dst_mean = float(out.weighted(xr.DataArray(grid.cell_area_weights()[:, 0],
                                               dims="lat")).mean())
    assert dst_mean == pytest.approx(src_mean, rel=0.01)


def test_building_the_recipe_graph_computes_nothing(samples):
    recipe = load_recipe(ROOT / "recipes" / "earth.yaml")
    with raise_if_dask_computes():
        ds = plan(recipe)
    assert set(ds.data_vars) >= {"altitude", "koppen_class", "sst", "linke_turbidity"}
    assert all(v.chunks is not None for v in ds.data_vars.values())


def test_swath_nearest_and_bucket_average():
    """A curvilinear (rotated) source lands where its lon/lat say."""
    ny, nx = 40, 40
    jj, ii = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    # a grid rotated by 10 degrees around (5, 5), 0.2 degree pixels
    theta = np.deg2rad(10)
    u, v = (ii - nx / 2) * 0.2, (ny / 2 - jj) * 0.2
    lons = 5 + u * np.cos(theta) - v * np.sin(theta)
    lats = 5 + u * np.sin(theta) + v * np.cos(theta)
    field = (lons + 2 * lats).astype("float32")
    ds = xr.Dataset({"v": (("row", "col"), field)}).chunk({"row": 20, "col": 20})
    src = Geolocated(ds, pyproj.CRS.from_epsg(4326), "row", "col", Path("swath"), lons, lats)
    assert src.is_swath
    grid = Grid.from_bbox("earth", "EPSG:4326", (3, 3, 7, 7), 0.5)
    with raise_if_dask_computes():
        near = regrid(ds["v"], src, grid, "nearest")
        avg = regrid(ds["v"], src, grid, "bucket_average")
    expect = grid.x[None, :] + 2 * grid.y[:, None]
    assert np.nanmax(np.abs(near.values - expect)) < 0.5  # within one source pixel
    assert np.nanmax(np.abs(avg.values - expect)) < 0.2   # mean of ~6x6 pixels ~ centre
    far = Grid.from_bbox("earth", "EPSG:4326", (20, 20, 22, 22), 0.5)
    assert np.isnan(regrid(ds["v"], src, far, "nearest").values).all()
    with pytest.raises(RegridError, match="swath"):
        regrid(ds["v"], src, grid, "bilinear")


def test_nearest_graph_can_move_between_worker_processes(client):
    """Every intermediate result of the nearest graph pickles (no KD-tree object in it).

    pyresample's lazy nearest resampler returns its KD-tree from one task to the next;
    on a multi-process cluster that fails as soon as the two run on different workers.
    """
    import cloudpickle
    import dask

    lons, lats = np.meshgrid(np.linspace(-9.75, 9.75, 40), np.linspace(9.75, -9.75, 40))
    vals = (lons + 2 * lats).astype("float32")
    ds = xr.Dataset({"v": (("time", "row", "col"), np.stack([vals, vals + 1]))}).chunk(
        {"time": 1, "row": 20, "col": 20})
    src = Geolocated(ds, pyproj.CRS.from_epsg(4326), "row", "col", Path("swath"), lons, lats)
    grid = Grid.from_bbox("earth", "EPSG:4326", (-5, -5, 5, 5), 0.25)
    out = regrid(ds["v"], src, grid, "nearest")
    graph = dict(out.data.__dask_graph__())
    for key, result in zip(graph, dask.get(graph, list(graph)), strict=True):
        try:
            cloudpickle.dumps(result)
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"task {key} returns a {type(result).__name__} that cannot be sent "
                        f"to another worker: {exc}")
    got = client.compute(out.data).result(timeout=120)
    np.testing.assert_array_equal(got, out.values)
    assert np.isfinite(got).all() and got.shape == (2, 40, 40)


@pytest.mark.parametrize("fy, fx", [
    (4, 5),     # 20 pixels a block: one uint8 run
    (30, 30),   # 900 pixels (the Koppen blocks at 0.25 degree): 4 runs of 225
    (1, 257),   # a prime over 255: runs of one pixel
])
def test_block_mode_matches_per_block_count_with_leading_dims(fy, fx):
    """The vectorised block mode equals counting each block by hand (ties: first class)."""
    rng = np.random.default_rng(3)
    cats = np.array([4, 0, 7])
    block = rng.choice(np.array([0, 4, 7, 9], dtype=np.uint8), size=(2, 3, 3 * fy, 3 * fx))
    block[0, 0, :fy, :fx] = 9  # a block holding no class
    block[1, 2, :fy, :fx] = 7  # a block of one class
    if fy * fx > 510:  # 260 pixels of class 4 beat 250 of class 0 (no uint8 wrap-around)
        cell = np.full(fy * fx, 9, dtype=np.uint8)
        cell[:260], cell[260:510] = 4, 0
        block[1, 1, :fy, :fx] = rng.permutation(cell).reshape(fy, fx)
    out = block_mode(block, fy, fx, cats, 255)
    assert out.shape == (2, 3, 3, 3)
    assert out[0, 0, 0, 0] == 255 and out[1, 2, 0, 0] == 7
    assert fy * fx <= 510 or out[1, 1, 0, 0] == 4
    for idx in np.ndindex(out.shape):
        *lead, i, j = idx
        cell = block[(*lead, slice(fy * i, fy * i + fy), slice(fx * j, fx * j + fx))]
        counts = [(cell == c).sum() for c in cats]
        want = 255 if max(counts) == 0 else cats[int(np.argmax(counts))]
        assert out[idx] == want, idx


@pytest.mark.parametrize("bbox, res", [
    ((0.0, 0.0, 8.0, 4.0), 0.3),        # 3.75 source pixels per cell: edges between pixels
    ((-1.0, -0.5, 9.0, 4.25), 0.25),    # grid wider than the source: outer cells empty
    ((1.1, 0.7, 6.3, 3.1), 0.4),        # grid inside the source, not aligned
])
def test_regular_bucket_average_equals_pyresample(bbox, res):
    """Same-CRS, non-integer factors: the separable fast path bins like pyresample."""
    rng = np.random.default_rng(5)
    vals = rng.random((3, 60, 120)).astype("float32")  # (time, lat, lon), 1/15 degree
    vals[:, 10:14, 30:37] = np.nan
    vals[1, :, 50] = np.nan
    ny, nx = vals.shape[1:]
    lat = 4.0 - (np.arange(ny) + 0.5) * 4.0 / ny
    lon = (np.arange(nx) + 0.5) * 8.0 / nx
    ds = xr.Dataset({"v": (("time", "lat", "lon"), vals)}, coords={"lat": lat, "lon": lon})
    src = Geolocated(ds.chunk({"time": 1, "lat": 25, "lon": 120}),
                     pyproj.CRS.from_epsg(4326), "lat", "lon", Path("synthetic"))
    grid = Grid.from_bbox("earth", "EPSG:4326", bbox, res)
    with raise_if_dask_computes():
        lazy = regular_bucket_average(src.data["v"], src, grid)
    assert lazy is not None and lazy.shape == (3, *grid.shape)
    fast = regrid(src.data["v"], src, grid, "bucket_average").values
    slow = regrid(src.data["v"], src, grid, "bucket_average", fast_path=False).values
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(slow))
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-7)


def test_regular_bucket_average_declines_other_cases():
    """Coarser sources, other CRSs and swaths go to pyresample."""
    src = synthetic(np.ones((8, 16), "float32"))  # 0.5 degree pixels
    assert regular_bucket_average(src.data["v"], src, Grid.from_bbox(
        "earth", "EPSG:4326", (0, 0, 8, 4), 0.3)) is None  # source coarser than the grid
    assert regular_bucket_average(src.data["v"], src, Grid.from_bbox(
        "earth", "EPSG:3857", (0, 0, 800_000, 400_000), 100_000)) is None  # another CRS


@pytest.mark.parametrize("cells", [1, 2, 50])
def test_strips_reduced_where_they_lie_equal_whole_blocks(cells):
    """Source strips whose edges fall inside blocks (77-row chunks, 10-row blocks) are
    reduced in place, block rows across two strips apart: the same cells as the kernel
    over the whole source, the strips' keys kept (nothing rechunked)."""
    import dask
    import dask.array as da

    from esdc.regrid.blocks import _strip_reduce, block_mean

    rng = np.random.default_rng(7)
    codes = rng.choice(np.array([0, 1, 2, 5], dtype=np.uint8), size=(300, 120))
    cats = np.array([5, 0, 1, 2], dtype=np.uint8)
    src = da.from_array(codes, chunks=(77, 120))
    with raise_if_dask_computes():
        out = _strip_reduce(src, 10, 6, cells, block_mode, (10, 6, cats, 255))
    assert out is not None and out.shape == (30, 20)
    assert all(k in dict(out.__dask_graph__()) for k in dask.core.flatten(src.__dask_keys__()))
    edges = np.cumsum((0, *out.chunks[0]))  # pieces within one band of `cells` rows
    assert all(a // cells == (b - 1) // cells for a, b in zip(edges[:-1], edges[1:], strict=True))
    with dask.config.set(scheduler="synchronous"):
        np.testing.assert_array_equal(out.compute(), block_mode(codes, 10, 6, cats, 255))
    vals = rng.random((3, 300, 120)).astype("float32")
    vals[0, 5:40] = np.nan
    mean = _strip_reduce(da.from_array(vals, chunks=(3, 77, 120)), 10, 6, cells, block_mean,
                         (10, 6))
    with dask.config.set(scheduler="synchronous"):
        np.testing.assert_allclose(mean.compute(), block_mean(vals, 10, 6), rtol=1e-6)
    # not strips (the columns in two chunks): the caller rechunks instead
    assert _strip_reduce(da.from_array(codes, chunks=(77, 60)), 10, 6, cells, block_mode,
                         (10, 6, cats, 255)) is None
