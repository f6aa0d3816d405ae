"""Shared fixtures: real samples from the cache, one Dask cluster, the real Earth cube."""

from __future__ import annotations

from pathlib import Path

import pytest

from esdc.errors import EsdcError
from esdc.samples import SAMPLES, sample_path

ROOT = Path(__file__).resolve().parents[1]


def need_sample(name: str) -> Path:
    """Path of a cached, verified sample; fails with what to run when it is missing."""
    try:
        return sample_path(name)
    except EsdcError as exc:
        pytest.fail(f"{exc} (the test command runs `esdc samples fetch --all` first)")


@pytest.fixture(scope="session")
def samples() -> dict[str, Path]:
    return {name: need_sample(name) for name in SAMPLES}


@pytest.fixture(scope="session")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address="127.0.0.1:0", host="127.0.0.1") as cluster, \
            Client(cluster) as c:
        yield c


@pytest.fixture(scope="session")
def earth_cube(tmp_path_factory, samples) -> Path:
    """The real Earth cube, built once per session through the CLI (LocalCluster)."""
    from typer.testing import CliRunner

    from esdc.cli import app

    out = tmp_path_factory.mktemp("cubes") / "earth.zarr"
    res = CliRunner().invoke(app, ["build", str(ROOT / "recipes" / "earth.yaml"),
                                   "--out", str(out), "--no-fetch"])
    assert res.exit_code == 0, res.output
    assert "Dask dashboard: http://127.0.0.1:" in res.output
    return out
