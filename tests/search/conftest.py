"""Fixtures for the search tests: small cubes with embeddings and a flat index.

Built without training: a freshly initialised (seeded) encoder embeds a synthetic
Blue Marble cube, so the fixtures take a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

INPUTS = ["bmng_red", "bmng_green", "bmng_blue"]


def make_embedded_cube(folder: Path, times: int = 0, shape: tuple[int, int] = (64, 128),
                       dim: int = 16, tile: int = 8, kind: str = "flat") -> Path:
    """Write ``folder/cube.zarr`` with ``embedding_t{tile}`` and an index beside it."""
    import torch

    import esdc.testing
    from esdc.embed import EncoderBundle, compute_embeddings, write_embeddings
    from esdc.ml.ssl import Encoder
    from esdc.search import build_index

    folder.mkdir(parents=True, exist_ok=True)
    cube = folder / "cube.zarr"
    ds = esdc.testing.new_cube(shape=shape, times=times, variables=tuple(INPUTS))
    ds.to_zarr(cube, zarr_format=3, consolidated=True)
    torch.manual_seed(0)
    meta = {"class": "esdc.ml.ssl.Encoder", "in_channels": len(INPUTS),
            "params": {"dim": dim, "width": 8}, "inputs": INPUTS, "tile": [tile, tile]}
    torch.save(Encoder(len(INPUTS), **meta["params"]).state_dict(), folder / "encoder.pt")
    (folder / "encoder.json").write_text(json.dumps(meta))
    bundle = EncoderBundle(folder / "encoder.pt", meta)
    write_embeddings(cube, compute_embeddings(str(cube), bundle, tile))
    build_index(cube, kind=kind)
    return cube


@pytest.fixture(scope="session")
def embedded_cube(tmp_path_factory) -> Path:
    """Static cube (64 x 128 cells, 8 x 16 tiles of 8 cells, 16-dim embeddings, flat index)."""
    return make_embedded_cube(tmp_path_factory.mktemp("search") / "static", times=0)


@pytest.fixture(scope="session")
def embedded_cube_time(tmp_path_factory) -> Path:
    """Same with 3 monthly time steps (8 x 16 x 3 vectors)."""
    return make_embedded_cube(tmp_path_factory.mktemp("search") / "time", times=3)


def cli_ok(args: list) -> str:
    """Run ``esdc ARGS`` in process; its stdout, after asserting exit code 0."""
    from typer.testing import CliRunner

    from esdc.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.stdout


def cli_fails(args: list, *needles: str) -> str:
    """Run ``esdc ARGS`` in process; its output, after asserting exit code 2, no traceback
    and every ``needle`` in the output."""
    from typer.testing import CliRunner

    from esdc.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit) and "Traceback" not in res.output
    for n in needles:
        assert n in res.output, res.output
    return res.output


def write_moon_cube(path: Path, client) -> Path:
    """The real Moon cube at 0.25 degree (``tests.conftest.moon_recipe``) written at ``path``."""
    from esdc.build import plan
    from esdc.storage import resolve
    from tests.conftest import MOON_SAMPLES, moon_recipe, need_sample

    for name in MOON_SAMPLES:
        need_sample(name)
    r = moon_recipe(0.25)
    resolve(path).write(plan(r), chunks=dict(r.output.chunks),
                        compressor=r.output.compressor, client=client)
    return path
