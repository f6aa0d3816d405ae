"""One bbox parser, one time-range check, typed search errors, parameter names in messages.

``esdc.grid.parse_bbox`` is the one parser of bounding boxes: ``esdc search --bbox``, the
HTTP API (query string and JSON body) and ``SearchEngine`` give the same message for the
same box (the CLI says ``--bbox`` where the library says ``bbox=``). A missing, stale or
mismatched index or embedding variable raises ``SearchIndexError``; library messages name
Python parameters and the CLI maps them to its flags (``esdc.cli._common.FLAGS``).
"""

from __future__ import annotations

import ast
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from esdc.cli import app
from esdc.errors import CubeNotFoundError, GridError, OutputPathError, SearchIndexError
from esdc.grid import parse_bbox

pytest.importorskip("faiss")

runner = CliRunner()
SEARCH = Path(__file__).resolve().parents[2] / "esdc" / "search"


def _copy(cube: Path, tmp_path: Path) -> Path:
    dst = tmp_path / cube.name
    shutil.copytree(cube, dst)
    shutil.copytree(cube.parent / f"{cube.name}.index", tmp_path / f"{cube.name}.index")
    return dst


def _cli_error(args: list) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    return " ".join(res.stderr.split())


# ---------------------------------------------------------------- parse_bbox
@pytest.mark.parametrize(("given", "want"), [
    ("-10,35,30,60", (-10.0, 35.0, 30.0, 60.0)),
    (" -10, 35 ,30,60 ", (-10.0, 35.0, 30.0, 60.0)),
    ([-10, 35, 30, 60], (-10.0, 35.0, 30.0, 60.0)),
    ((170, -10, -170, 10), (170.0, -10.0, -170.0, 10.0)),  # crosses the antimeridian
    ("0,5,1,5", (0.0, 5.0, 1.0, 5.0)),  # a line of latitude: south == north
    (None, None),
    ("", None),
])
def test_parse_bbox_accepts(given, want):
    got = parse_bbox(given)
    assert got == want
    assert got is None or all(isinstance(v, float) for v in got)


@pytest.mark.parametrize(("given", "needle"), [
    ("1,2,3", "bbox='1,2,3': give four numbers W,S,E,N, not 3."),
    ("1,2,3,4,5", "give four numbers W,S,E,N, not 5."),
    ("a,b,c,d", "bbox='a,b,c,d': give four numbers W,S,E,N."),
    ("0,nan,10,40", "bbox='0,nan,10,40': the numbers must be finite."),
    ("0,0,inf,1", "the numbers must be finite."),
    ("0,50,10,40", "bbox='0,50,10,40': south (50.0) is north of north (40.0)."),
    ([0, 50, 10, 40], "bbox=[0, 50, 10, 40]: south (50.0) is north of north (40.0)."),
    ([0, 0, 1], "bbox=[0, 0, 1]: give four numbers W,S,E,N, not 3."),
    (["x", 0, 1, 2], "give four numbers W,S,E,N."),
])
def test_parse_bbox_refuses_naming_the_parameter(given, needle):
    with pytest.raises(GridError) as info:
        parse_bbox(given)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)


def test_parse_bbox_names_the_field_it_is_given():
    with pytest.raises(GridError, match=r"^area='1,2': give four numbers"):
        parse_bbox("1,2", field="area")


def test_one_bbox_message_in_python_cli_and_http(embedded_cube):
    """The same box is refused with the same words by the engine, the CLI and the API."""
    from esdc.search import SearchEngine
    from esdc.search.http import create_app

    box = "0,50,10,40"
    with pytest.raises(GridError) as info:
        SearchEngine(embedded_cube).search_tile(0, 0, bbox=(0, 50, 10, 40))
    assert str(info.value) == "bbox=[0, 50, 10, 40]: south (50.0) is north of north (40.0)."

    cli = _cli_error(["search", embedded_cube, "--lat", 0, "--lon", 0, "--bbox", box])
    assert "--bbox '0,50,10,40': south (50.0) is north of north (40.0)." in cli
    assert "bbox=" not in cli

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient
    client = TestClient(create_app(embedded_cube, watch=None))
    r = client.get("/search/tile", params={"lat": 0, "lon": 0, "bbox": box})
    assert r.status_code == 422
    assert r.json()["detail"] == "bbox='0,50,10,40': south (50.0) is north of north (40.0)."
    r = client.post("/search/vector", json={"vector": [0.1] * 16, "bbox": [0, 50, 10, 40]})
    assert r.status_code == 422  # the body's numbers, as pydantic read them
    assert r.json()["detail"] == ("bbox=[0.0, 50.0, 10.0, 40.0]: south (50.0) is north of "
                                  "north (40.0).")


# ---------------------------------------------------------------- time range
def test_time_range_checked_everywhere(embedded_cube_time):
    """A bad date is a user error in Python and the CLI (it was a pandas traceback)."""
    from esdc.search import SearchEngine
    from esdc.search.query import parse_time_range

    assert parse_time_range(None, None) is None
    assert parse_time_range("2020-01", None) == ("2020-01", None)
    with pytest.raises(SearchIndexError, match="start 2021-01 is after end 2020-01"):
        parse_time_range("2021-01", "2020-01")
    engine = SearchEngine(embedded_cube_time)
    with pytest.raises(SearchIndexError, match="end 'someday' is not a date"):
        engine.search_tile(0, 0, "2020-02", k=5, time_range=(None, "someday"))
    cli = _cli_error(["search", embedded_cube_time, "--lat", 0, "--lon", 0, "--time",
                      "2020-02", "--start", "not-a-date"])
    assert "start 'not-a-date' is not a date" in cli
    # the filter still works when both ends are given as the CLI passes them
    res = engine.search_tile(0, 0, "2020-02", k=10, time_range=("2020-02-01", "2020-02-01"))
    assert res.neighbours and {n.time for n in res.neighbours} == {"2020-02-01"}


# ---------------------------------------------------------------- typed errors
def test_missing_index_stale_vectors_and_bad_query_are_search_index_errors(embedded_cube,
                                                                          tmp_path):
    import zarr

    from esdc.search import SearchEngine, index_dir, load_index

    cube = _copy(embedded_cube, tmp_path)
    engine = SearchEngine(cube)
    with pytest.raises(SearchIndexError, match="k = 0 must be between 1 and 128"):
        engine.search_tile(0, 0, k=0)
    with pytest.raises(SearchIndexError, match="15 values; the index holds 16-dimensional"):
        engine.search_vector(np.ones(15))
    with pytest.raises(SearchIndexError, match="lat 95.0 is outside the embedded grid"):
        engine.search_tile(95.0, 0)
    with pytest.raises(SearchIndexError, match="variable='embedding_t99' is not an embedding"):
        SearchEngine(cube, "embedding_t99")

    arr = zarr.open_array(str(cube / "embedding_t8"), mode="r+")  # the vectors change
    arr[0, 0] = np.asarray(arr[0, 0]) + 1.0
    with pytest.raises(SearchIndexError, match="not those the index was built from"):
        SearchEngine(cube)

    manifest = json.loads((index_dir(cube) / "embedding_t8.json").read_text())
    (index_dir(cube) / manifest["index_file"]).write_bytes(b"not an index")
    with pytest.raises(SearchIndexError, match="does not match its manifest's SHA-256"):
        load_index(cube, "embedding_t8")
    shutil.rmtree(index_dir(cube))
    with pytest.raises(SearchIndexError, match="no index for 'embedding_t8'") as info:
        load_index(cube, "embedding_t8")
    assert "build_index" in str(info.value)


def test_cube_without_embeddings_and_missing_cube(tmp_path):
    from esdc.search import build_index
    from esdc.search.balance import balanced_sample
    from esdc.search.evaluate import evaluate_search
    from esdc.testing import new_cube

    plain = tmp_path / "plain.zarr"
    new_cube(shape=(16, 32), times=0).to_zarr(plain, zarr_format=3, consolidated=True)
    for call in (lambda c: build_index(c), lambda c: balanced_sample(c),
                 lambda c: evaluate_search(c, "a")):
        with pytest.raises(SearchIndexError, match="the cube has no embeddings"):
            call(plain)
        with pytest.raises(CubeNotFoundError, match="no cube at"):
            call(tmp_path / "missing.zarr")


def test_messages_name_parameters_and_the_cli_names_flags(embedded_cube, tmp_path):
    from esdc.search.balance import balanced_sample, write_sample
    from esdc.search.index import select_device

    with pytest.raises(SearchIndexError) as info:
        balanced_sample(embedded_cube, per_cluster=0)
    assert str(info.value) == "per_cluster=0 must be at least 1."
    assert "--per-cluster 0 must be at least 1." in _cli_error(
        ["balance", embedded_cube, "--per-cluster", 0])

    with pytest.raises(SearchIndexError, match=r"^clusters=500 must be between 1 and 128"):
        balanced_sample(embedded_cube, clusters=500)
    assert "--clusters 500 must be between 1 and 128" in _cli_error(
        ["balance", embedded_cube, "--clusters", 500])

    with pytest.raises(SearchIndexError, match=r"^kind=hnsw has no GPU implementation"):
        select_device("gpu", "hnsw", 1)

    with pytest.raises(OutputPathError, match="does not exist"):
        write_sample({}, tmp_path / "no" / "sample.json")

    cli = _cli_error(["search", embedded_cube, "--lat", 0, "--lon", 0, "--variable", "nope"])
    assert "--variable 'nope' is not an embedding" in cli


def test_time_is_asked_for_by_parameter_name(embedded_cube_time):
    from esdc.search import SearchEngine

    with pytest.raises(SearchIndexError, match=r"give time=DATE \(e.g. 2008-07\)"):
        SearchEngine(embedded_cube_time).search_tile(0, 0)
    assert "give --time DATE" in _cli_error(["search", embedded_cube_time, "--lat", 0,
                                             "--lon", 0])


# ---------------------------------------------------------------- one renderer
def test_tile_pixels_are_the_overview_pixels(embedded_cube_time):
    """Tile PNGs and the overview map are drawn by one function (esdc.search.render)."""
    from esdc.search import SearchEngine
    from esdc.search.page import overview_image, overview_info
    from esdc.search.render import RGB_BANDS

    engine = SearchEngine(embedded_cube_time)
    info = overview_info(engine)
    assert info["step"] == 1 and info["shown"].startswith("RGB")
    size = info["tile_size"]
    for t in (0, 2):
        full = overview_image(engine, t)
        assert full.shape == (64, 128, 3)
        tile = engine.tile_image(3, 5, t)
        np.testing.assert_array_equal(tile, full[3 * size:4 * size, 5 * size:6 * size])
        raw = engine.ds[RGB_BANDS[0]].isel(time=t).values[3 * size:4 * size,
                                                          5 * size:6 * size]
        np.testing.assert_allclose(tile[..., 0], np.clip(raw, 0, 1))
    with pytest.raises(SearchIndexError, match="t = 3 is outside the 3 time step"):
        overview_image(engine, 3)
    with pytest.raises(SearchIndexError, match=r"tile \(8, 0\) is outside the embedding grid"):
        engine.tile_png(8, 0)


# ---------------------------------------------------------------- import structure
ORDER = ["manifest", "index", "live", "render", "xyz", "feedback", "scales", "query",
         "evaluate", "balance", "page", "http"]
HEAVY = {"faiss", "fastapi", "uvicorn", "torch", "matplotlib", "sklearn", "PIL", "pydantic",
         "tensorflow", "keras", "mlflow"}


def _imports(path: Path) -> tuple[set[str], list[tuple[str, int]]]:
    """esdc modules imported at module level, and (module, line) of those in functions."""
    tree = ast.parse(path.read_text())
    top: set[str] = set()
    inner: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in (n for n in names if n == "esdc" or n.startswith("esdc.")):
            if node in tree.body:
                top.add(name)
            else:
                inner.append((name, node.lineno))
    return top, inner


def test_search_package_imports_one_way():
    """Inside esdc.search each module imports only those before it (its __init__ order)."""
    chain = ("manifest -> index -> live -> render -> xyz -> feedback -> scales\n"
             "        -> query -> evaluate, balance -> page -> http")
    assert chain in (SEARCH / "__init__.py").read_text()
    files = {p.stem for p in SEARCH.glob("*.py")} - {"__init__"}
    assert files == set(ORDER)
    for i, name in enumerate(ORDER):
        top, inner = _imports(SEARCH / f"{name}.py")
        used = {m.split(".")[2] for m in top if m.startswith("esdc.search.")}
        allowed = set(ORDER[:i]) - ({"evaluate"} if name == "balance" else set())
        assert used <= allowed, (name, used - allowed)
        assert not inner, (name, inner)  # no esdc import inside a function


def test_search_imports_no_heavy_dependency_at_module_level():
    for name in ORDER:
        tree = ast.parse((SEARCH / f"{name}.py").read_text())
        for node in tree.body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                mods = ([node.module] if isinstance(node, ast.ImportFrom)
                        else [a.name for a in node.names])
                assert not {str(m).split(".")[0] for m in mods} & HEAVY, (name, mods)
