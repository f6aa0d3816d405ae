"""Every Python block of docs/USER_GUIDE.md runs, in order, on the real cubes it names.

The guide's commands make ``cubes/earth.zarr`` (the session's real Earth cube) and
``cubes/floods.icechunk`` (built through the CLI with ``--store icechunk`` and tagged
``paper-2026``, as the guide's versioned-cube commands do); the blocks then run in one
namespace from a folder holding them, as a reader pasting them into Python would.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from esdc.cli import app
from tests.conftest import ROOT

GUIDE = ROOT / "docs" / "USER_GUIDE.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)


@pytest.mark.slow
def test_every_python_block_of_the_guide_runs(earth_cube, samples, tmp_path, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) >= 3
    (tmp_path / "cubes").mkdir()
    (tmp_path / "cubes" / "earth.zarr").symlink_to(earth_cube)
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for args in (["build", "recipes/floods.yaml", "--out", "cubes/floods.icechunk", "--store",
                  "icechunk", "--no-fetch"],
                 ["tag", "cubes/floods.icechunk", "paper-2026"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
    namespace: dict[str, object] = {}
    exec("import esdc", namespace)  # noqa: S102 - the guide's own code, from this repository
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"USER_GUIDE.md python block {i + 1}", "exec"),  # noqa: S102
                 namespace)
        except Exception as exc:  # noqa: BLE001 - report which block failed
            pytest.fail(f"python block {i + 1} of USER_GUIDE.md failed: {exc!r}\n{block}")
    # what the blocks made is real: the old version, a map, a point, a batch of patches
    assert namespace["old"].attrs["esdc_recipe_sha256"]
    assert Path("k.png").stat().st_size > 1000
    assert namespace["x"].shape[1:] == (3, 32, 32)
