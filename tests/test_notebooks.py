"""The notebooks run top to bottom on the real Earth cube (nbclient, one kernel each).

Each notebook reads its cube from ``ESDC_CUBE`` and tracks runs in the MLflow store of
``MLFLOW_TRACKING_URI``; it runs with a temporary folder as working directory. The search
notebook writes embeddings into its cube, so it gets a copy. The notebooks are stored
without outputs.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAMES = [p.name for p in NOTEBOOKS]
#: Seconds a notebook may take (each runs in < ~90 s on 2 shared cores).
TIMEOUT = 300


def test_the_five_notebooks_are_stored_without_outputs():
    assert NAMES == ["1_open_cube.ipynb", "2_train_sklearn.ipynb", "3_train_pytorch.ipynb",
                     "4_train_keras.ipynb", "5_search.ipynb"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        kinds = [c.cell_type for c in nb.cells]
        assert kinds[0] == "markdown" and kinds.count("markdown") >= 4, path.name
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name
                assert "execution" not in cell.metadata, path.name
        text = "\n".join(c.source for c in nb.cells)
        assert 'os.environ.get("ESDC_CUBE", "cubes/earth.zarr")' in text, path.name


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One folder (and MLflow store) for all notebooks, so notebook 4 sees every run."""
    return tmp_path_factory.mktemp("notebooks")


def _errors(nb) -> list[str]:
    return [f"{o.ename}: {o.evalue}" for c in nb.cells if c.cell_type == "code"
            for o in c.outputs if o.output_type == "error"]


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.outputs)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(name, earth_cube, workdir, monkeypatch):
    if name.startswith("4_"):
        pytest.importorskip("keras", reason="notebook 4 needs the tensorflow extra")
    cube = earth_cube
    if name.startswith("5_"):  # writes embeddings into the cube and an index beside it
        cube = workdir / "earth.zarr"
        shutil.copytree(earth_cube, cube)
    monkeypatch.setenv("ESDC_CUBE", str(cube))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlruns.db'}")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    start = time.monotonic()
    client = nbclient.NotebookClient(nb, timeout=TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"{name} failed:\n{str(exc)[-4000:]}")
    took = time.monotonic() - start
    print(f"{name}: {took:.1f} s")
    assert not _errors(nb)
    assert _images(nb) >= 2, f"{name} drew {_images(nb)} pictures"
    if name.startswith("5_"):
        from esdc.storage import open_cube

        assert "embedding_t16" in open_cube(cube).data_vars
        assert "embedding_t16" not in open_cube(earth_cube).data_vars  # the original is intact
        assert (workdir / "earth.zarr.index").is_dir()
