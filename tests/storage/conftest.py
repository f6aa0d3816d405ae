"""Shared by the storage tests: a small synthetic cube and moto's S3 server on 127.0.0.1.

``synthetic`` and ``write`` are also used by tests/test_integrity.py and
tests/test_reliability.py; the ``s3`` fixture by tests/test_s3.py.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from esdc.recipe import CompressorSpec
from esdc.storage import Target, resolve

CHUNKS = {"time": 4, "lat": 6, "lon": 8}
BUCKET = "esdc-test"


def synthetic(nt: int = 10, ny: int = 12, nx: int = 16, label: str = "synthetic") -> xr.Dataset:
    """A small valid esdc cube: ``sst(time, lat, lon)``, ``mask(lat, lon)``, Dask-backed.

    The data of step ``t`` does not depend on ``nt``, so a longer cube extends a shorter one.
    """
    rng = np.random.default_rng(7)
    full = rng.normal(290.0, 5.0, (64, ny, nx)).astype("float32")
    full[:, :2, :3] = np.nan  # an all-NaN corner, as outside a swath
    time = pd.date_range("2020-01-01", periods=nt, freq="D")
    lat = np.linspace(5.5, -5.5, ny)
    lon = np.linspace(0.5, nx - 0.5, nx)
    ds = xr.Dataset(
        {"sst": (("time", "lat", "lon"), da.from_array(full[:nt], chunks=(3, 5, 7)),
                 {"units": "K", "long_name": "sea surface temperature", "grid_mapping": "crs"}),
         "mask": (("lat", "lon"), da.from_array((full[0] > 290).astype("uint8"), chunks=-1),
                  {"units": "1", "long_name": "warm", "grid_mapping": "crs"})},
        coords={"time": time,
                "lat": ("lat", lat, {"standard_name": "latitude", "units": "degrees_north"}),
                "lon": ("lon", lon, {"standard_name": "longitude", "units": "degrees_east"}),
                "crs": ((), 0, {"grid_mapping_name": "latitude_longitude"})},
        attrs={"Conventions": "CF-1.10", "title": label, "esdc_recipe": f"name: {label}\n",
               "esdc_recipe_sha256": f"{label}-{nt}", "esdc_sources": "[]",
               "esdc_versions": "{}", "esdc_grid": "{}",
               "history": "2020-01-01T00:00:00+00:00 built by esdc test",
               "date_created": "2020-01-01T00:00:00+00:00"},
    )
    return ds


def region_writes(tmp_path: Path, mean_over: str | None = None) -> tuple[
        list[Any], list[list[int]], Any, np.ndarray]:
    """One store write per region of ``anom = sst - sst.mean(mean_over)`` (a whole-cube
    mean when None: every region needs it) into a real Zarr array, not yet computed.

    Returns the writes (one per tile, each ends with ``len`` of its stored parts), the
    tiles, the array and the expected values.
    """
    import zarr

    from esdc.storage.regions import prepare, tiles
    from esdc.storage.schedule import encoded_variables, finish_region, store_region

    ds = synthetic(nt=8, ny=12, nx=24)
    ds = ds.assign(anom=ds.sst - ds.sst.mean(mean_over))
    ds = prepare(ds, CHUNKS)
    expected = ds.anom.values
    arr = zarr.create_array(str(tmp_path / "anom"), shape=ds.anom.shape,
                            chunks=tuple(CHUNKS[d] for d in ds.anom.dims), dtype="float32")
    todo = tiles(ds, "lat", "lon", CHUNKS)
    encoded = encoded_variables(ds, ["anom"], {"anom": arr.dtype})
    writes = []
    for t in todo:
        sel = {"lat": slice(t[0], t[1]), "lon": slice(t[2], t[3])}
        stored = store_region(encoded, [arr], sel)
        writes.append(finish_region(stored, len, "test-region"))
    return writes, todo, arr, expected


def write(ds: xr.Dataset, target: Path | str | Target, **kwargs: Any) -> Path | str:
    """Build ``ds`` at ``target`` (a path, URL or target) with :data:`CHUNKS`, default Blosc."""
    return resolve(target).write(ds, chunks=CHUNKS, compressor=CompressorSpec(), **kwargs)


def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """moto's S3 server on a free port of 127.0.0.1; the AWS_* variables point at it.

    Yields an ``s3fs.S3FileSystem`` with the bucket :data:`BUCKET` made; cubes bound for
    it are staged under a temporary ``ESDC_STAGING``. A module-scoped fixture ``s3`` here
    and in tests/test_s3.py.
    """
    s3fs = pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _host, port = server.get_host_and_port()
    # moto keeps its buckets in the process: start from none, whatever ran before
    urllib.request.urlopen(urllib.request.Request(  # noqa: S310 - our own server, loopback
        f"http://127.0.0.1:{port}/moto-api/reset", method="POST"), timeout=30).close()
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3",
                    "ESDC_STORAGE_OPTIONS"):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        mp.setenv("ESDC_STAGING", str(tmp_path_factory.mktemp("staging")))
        # filesystems cached by fsspec still point at an earlier module's server
        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir(BUCKET)
        yield fs
    server.stop()


s3_server = pytest.fixture(scope="module", name="s3")(moto_s3)
