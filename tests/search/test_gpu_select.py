"""Where FAISS builds and searches: the device selection (pure, runs on CPU machines), the
``esdc index --device`` option, and on a machine with a CUDA GPU and faiss-gpu the GPU
build itself (marked ``gpu``, skipped elsewhere)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from esdc.cli import app
from esdc.errors import EsdcError
from esdc.search.index import EXACT_THRESHOLD, GPU_KINDS, gpu_count, select_device

pytest.importorskip("faiss")
runner = CliRunner()
BIG = EXACT_THRESHOLD  # vectors from which `auto` stops building an exact index


@pytest.mark.parametrize(("requested", "kind", "gpus", "count", "want"), [
    # no GPU: everything on the CPU, auto kinds as before (exact, then HNSW)
    ("auto", "auto", 0, 10, ("flat", "cpu")),
    ("auto", "auto", 0, BIG, ("hnsw", "cpu")),
    ("auto", "ivfpq", 0, 10, ("ivfpq", "cpu")),
    ("cpu", "flat", 0, 10, ("flat", "cpu")),
    # a GPU: flat and IVF-PQ go there; HNSW (no GPU implementation) stays on the CPU
    ("auto", "auto", 1, 10, ("flat", "gpu")),
    ("auto", "auto", 2, BIG, ("ivfpq", "gpu")),
    ("auto", "flat", 1, BIG, ("flat", "gpu")),
    ("auto", "hnsw", 1, 10, ("hnsw", "cpu")),
    ("gpu", "auto", 1, BIG, ("ivfpq", "gpu")),
    ("gpu", "ivfpq", 1, 10, ("ivfpq", "gpu")),
    # --device cpu wins over a GPU
    ("cpu", "auto", 1, BIG, ("hnsw", "cpu")),
    ("cpu", "ivfpq", 4, 10, ("ivfpq", "cpu")),
])
def test_select_device(requested, kind, gpus, count, want):
    assert select_device(requested, kind, gpus, count) == want
    got_kind, device = want
    assert device == "cpu" or got_kind in GPU_KINDS


@pytest.mark.parametrize(("args", "match"), [
    (("gpu", "flat", 0), "FAISS sees no GPU"),
    (("gpu", "auto", 0), "esdc\\[gpu\\]"),
    (("gpu", "hnsw", 1), "hnsw has no GPU implementation"),
    (("tpu", "flat", 1), "--device 'tpu' is unknown"),
    (("auto", "lsh", 1), "--kind 'lsh' is unknown"),
])
def test_select_device_refuses(args, match):
    with pytest.raises(EsdcError, match=match):
        select_device(*args)


def test_gpu_count_of_this_faiss():
    import faiss

    n = gpu_count()
    assert n >= 0
    if not hasattr(faiss, "StandardGpuResources"):  # faiss-cpu: never a GPU
        assert n == 0


def test_index_device_option(embedded_cube, tmp_path):
    """--device cpu builds here; --device gpu without a GPU is a user error (exit 2)."""
    import shutil

    from esdc.search import index_dir

    cube = tmp_path / "cube.zarr"
    shutil.copytree(embedded_cube, cube)
    res = runner.invoke(app, ["index", str(cube), "--device", "cpu", "--kind", "flat"])
    assert res.exit_code == 0, res.output
    assert "built on cpu" in res.output
    manifest = json.loads((index_dir(cube) / "embedding_t8.json").read_text())
    assert manifest["params"]["built_on"] == "cpu" and manifest["kind"] == "flat"
    res = runner.invoke(app, ["index", str(cube), "--device", "tpu"])
    assert res.exit_code == 2 and "--device 'tpu' is unknown" in res.output
    if gpu_count() == 0:
        res = runner.invoke(app, ["index", str(cube), "--device", "gpu"])
        assert res.exit_code == 2, res.output
        assert "FAISS sees no GPU" in res.output and "Traceback" not in res.output


def _build_and_check(kind: str, device: str, tmp_path) -> None:
    """Build on ``device``, save as a CPU index, reload: recall@10 against exact search."""
    import faiss

    from esdc.search.index import make_index, normalise

    rng = np.random.default_rng(0)  # 200 clusters in 64 dims, like tile embeddings
    raw = rng.normal(size=(100, 64))[rng.integers(0, 100, 10_000)]
    vec = normalise(raw + 0.3 * rng.normal(size=raw.shape), np.zeros(64, "float32"))
    ids = np.arange(len(vec), dtype="int64") * 3
    q = vec[:200]
    ref = faiss.IndexFlatIP(64)
    ref.add(vec)
    _, want = ref.search(q, 10)
    params = {"nlist": 100, "m": 8} if kind == "ivfpq" else {}
    built, used = make_index(vec, kind, ids, device=device, **params)
    cpu_copy = faiss.index_gpu_to_cpu(built) if device == "gpu" else built
    path = tmp_path / f"{kind}.faiss"
    faiss.write_index(cpu_copy, str(path))
    back = faiss.read_index(str(path))
    assert back.ntotal == len(vec)
    for index in (built, back):
        _, got = index.search(q, 10)
        recall = np.mean([len(set(g) & set(ids[w])) / 10 for g, w in zip(got, want,
                                                                          strict=True)])
        assert recall >= (0.999 if kind == "flat" else 0.95), (kind, recall, used)


@pytest.mark.parametrize("kind", GPU_KINDS)
def test_cpu_build_of_the_gpu_kinds(kind, tmp_path):
    """The same check on the CPU (runs everywhere; the GPU test below mirrors it)."""
    _build_and_check(kind, "cpu", tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(gpu_count() == 0, reason="needs faiss-gpu and a CUDA device")
@pytest.mark.parametrize("kind", GPU_KINDS)
def test_gpu_build_matches_cpu(kind, tmp_path):
    """Built on the GPU, copied back (index_gpu_to_cpu), saved and reloaded: as exact."""
    _build_and_check(kind, "gpu", tmp_path)
