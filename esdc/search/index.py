"""FAISS index of a cube's embedding variable, stored beside the cube with a manifest.

Vectors are centred on their mean and L2-normalised (:func:`normalise`) and
searched by inner product, i.e. cosine similarity;
distances reported are cosine distances ``1 - cos`` in [0, 2]. Kinds:

``flat``
    exact (``IndexFlatIP``); the default below ``EXACT_THRESHOLD`` vectors.
``hnsw``
    graph search (``IndexHNSWFlat``, M = 32; Malkov and Yashunin 2018, IEEE TPAMI 42(4)).
``ivfpq``
    inverted lists with product quantisation, re-ranked exactly (``IndexRefineFlat``)
    so recall stays high (PQ alone does not reach 0.95 here: ../shared/STACK.md).

Each build is one *generation*: the index is written to a temporary name and moved
to ``VARIABLE.SHA16.faiss`` (named by the first 16 hex digits of its SHA-256, so a
name always holds the same bytes), then the manifest ``VARIABLE.json`` naming that
file (``index_file``), with ``generation`` one more than the previous build's, is
moved over the old manifest. That ``os.replace`` is the single commit point: a
reader (a running ``esdc serve`` reloads on it) sees either the old manifest and
the old index file, or the new ones, never a mix. The previous generation's file is
kept (a reader may have just read the old manifest); older ones are removed.
Manifests of earlier esdc versions (no ``index_file``) name ``VARIABLE.faiss``.
An index of time-varying embeddings covers their first ``time_steps`` steps (those
embedded when it was built); :func:`esdc.search.live.update_index` (``esdc index
--update``) adds the vectors of steps embedded since as the next generation, and
``generations`` lists what each generation added.
:func:`load_index` checks the file's SHA-256 and that the index was built from the
embeddings (model run and weights checksum) now in the cube;
:class:`esdc.search.query.SearchEngine` also checks the vectors it reads from the
cube against ``vectors_sha256``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from esdc.conventions import ATTR_MODEL_RUN, ATTR_MODEL_SHA256, ATTR_TILE_SIZE, TIME_DIM
from esdc.embed import embedded_steps, embedding_variables
from esdc.errors import EsdcError, SearchIndexError
from esdc.hashing import file_sha256
from esdc.search.manifest import (
    Manifest,
    commit_generation,
    generation_entry,
    index_dir,
    indexed_version,
    read_manifest,
    require_faiss,
    time_range_of,
)
from esdc.storage import open_cube, resolve

__all__ = ["EXACT_THRESHOLD", "GPU_KINDS", "Manifest", "build_index", "build_indexes",
           "commit_generation",
           "embedding_matrix", "embedding_variable", "embedding_variables", "generation_entry",
           "gpu_count", "index_dir", "indexed_version", "load_index", "make_index", "normalise",
           "read_embeddings", "read_manifest", "require_faiss", "searched_version",
           "select_device", "time_range_of", "vectors_sha256"]

#: Below this many vectors ``auto`` builds an exact index.
EXACT_THRESHOLD = 200_000

#: Kinds FAISS builds and searches on a GPU (``faiss.index_cpu_to_gpu``); HNSW has no GPU
#: implementation in FAISS.
GPU_KINDS = ("flat", "ivfpq")


def gpu_count() -> int:
    """GPUs FAISS can use: 0 with a CPU-only FAISS (faiss-cpu), no CUDA device or no FAISS.

    A GPU build (``pip install 'esdc[gpu]'``, faiss-gpu) has ``StandardGpuResources``
    and ``get_num_gpus() > 0`` on a machine with a CUDA device.

    Returns
    -------
    int
        Number of CUDA devices FAISS sees (never raises).
    """
    try:
        faiss = require_faiss()
    except EsdcError:
        return 0
    if not hasattr(faiss, "StandardGpuResources") or not hasattr(faiss, "get_num_gpus"):
        return 0
    try:
        return max(0, int(faiss.get_num_gpus()))
    except RuntimeError:  # pragma: no cover - CUDA driver problems
        return 0


def select_device(requested: str, kind: str, gpus: int, count: int = 0) -> tuple[str, str]:
    """Index kind and device for a build or a search (pure: no FAISS, no GPU needed).

    Parameters
    ----------
    requested : {"auto", "cpu", "gpu"}
        ``auto`` uses a GPU when there is one and the kind runs there; ``gpu`` insists.
    kind : {"auto", "flat", "hnsw", "ivfpq"}
        ``auto`` is ``flat`` below :data:`EXACT_THRESHOLD` vectors, else ``hnsw`` on
        the CPU and ``ivfpq`` on a GPU (HNSW has no GPU implementation).
    gpus : int
        GPUs FAISS sees (:func:`gpu_count`).
    count : int
        Vectors to index (for ``kind="auto"``).

    Returns
    -------
    tuple of str
        ``(kind, device)`` with device ``"cpu"`` or ``"gpu"``.

    Raises
    ------
    SearchIndexError
        For an unknown device or kind, ``gpu`` without a GPU, or ``gpu`` with ``hnsw``.
    """
    # The two "--..." messages below are matched as they are by tests/search/
    # test_gpu_select.py (Python callers); the others name the parameters.
    if requested not in ("auto", "cpu", "gpu"):
        raise SearchIndexError(f"--device {requested!r} is unknown; use auto, cpu or gpu.")
    if kind not in ("auto", "flat", "hnsw", "ivfpq"):
        raise SearchIndexError(f"--kind {kind!r} is unknown; use flat, hnsw, ivfpq or auto.")
    if requested == "gpu" and gpus < 1:
        raise SearchIndexError("device='gpu': FAISS sees no GPU (faiss-cpu is installed, or "
                               "no CUDA device is visible); install the GPU build with pip "
                               "install 'esdc[gpu]' on a machine with a CUDA GPU, or use "
                               "device='cpu' or 'auto'.")
    on_gpu = requested == "gpu" or (requested == "auto" and gpus > 0)
    if kind == "auto":
        kind = "flat" if count < EXACT_THRESHOLD else ("ivfpq" if on_gpu else "hnsw")
    if kind not in GPU_KINDS:
        if requested == "gpu":
            _no_gpu_kind(kind)
        on_gpu = False
    return kind, "gpu" if on_gpu else "cpu"


def _no_gpu_kind(kind: str) -> None:
    raise SearchIndexError(f"kind={kind} has no GPU implementation in FAISS; use kind="
                           f"{' or '.join(GPU_KINDS)} on the GPU, or device='cpu'.")


def embedding_variable(ds: xr.Dataset, variable: str | None = None) -> str:
    """The embedding variable to use: ``variable``, or the only/first one (smallest tile).

    Parameters
    ----------
    ds : xarray.Dataset
        The cube.
    variable : str, optional
        Name of an embedding variable (``esdc_role == "embedding"``).

    Returns
    -------
    str
        The variable's name.

    Raises
    ------
    SearchIndexError
        If the cube has no embeddings or ``variable`` is not one.
    """
    names = embedding_variables(ds)
    if not names:
        raise SearchIndexError("the cube has no embeddings; run `esdc embed CUBE --model RUN` "
                               "(esdc.embed) first.")
    if variable is None:
        return names[0]
    if variable not in names:
        raise SearchIndexError(f"variable={variable!r} is not an embedding of the cube; it "
                               f"has {names}.")
    return variable


def normalise(vec: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Centre vectors ``(N, F)`` on the collection mean ``(F,)``, then L2-normalise.

    Centring before cosine similarity removes the direction all embeddings share
    (self-supervised encoders concentrate vectors in a narrow cone), so distances
    reflect what differs between tiles.

    Parameters
    ----------
    vec : numpy.ndarray
        ``(N, F)`` (or ``(F,)``) embedding vectors.
    centre : numpy.ndarray
        ``(F,)`` mean of the indexed vectors (the manifest's ``centre``).

    Returns
    -------
    numpy.ndarray
        Same shape, float32, C-contiguous; each row of unit length (zero rows stay zero).
    """
    v = np.asarray(vec, dtype="float32") - centre
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.ascontiguousarray(v / np.where(norms > 0, norms, 1), dtype="float32")


def embedding_matrix(ds: xr.Dataset, variable: str) -> tuple[np.ndarray, np.ndarray,
                                                               np.ndarray]:
    """Valid vectors ``(N, F)`` (centred, L2-normalised), ids ``(N,)`` and the centre ``(F,)``.

    An id is the flat index into the variable's leading dims ``(tile_y, tile_x,
    [time])`` in C order; tiles with NaN vectors are left out.

    Parameters
    ----------
    ds : xarray.Dataset
        The cube.
    variable : str
        Embedding variable, dims ``(tile_y, tile_x, [time,] feature)``.

    Returns
    -------
    tuple of numpy.ndarray
        ``(vectors (N, F) float32, ids (N,) int64, centre (F,) float32)``.
    """
    arr = np.asarray(ds[variable].values, dtype="float32")
    flat = arr.reshape(-1, arr.shape[-1])
    ok = np.isfinite(flat).all(axis=1)
    ids = np.flatnonzero(ok).astype("int64")
    centre = flat[ok].mean(axis=0) if ok.any() else np.zeros(arr.shape[-1], "float32")
    return normalise(flat[ok], centre), ids, centre.astype("float32")


def read_embeddings(cube: str | Path, variable: str | None = None,
                    version: str | None = None) -> tuple[
        xr.Dataset, str, np.ndarray, np.ndarray, np.ndarray]:
    """Open a cube and read the valid vectors of one of its embedding variables.

    Parameters
    ----------
    cube : str or path-like
        The cube (with embeddings), a folder.
    variable : str, optional
        Embedding variable (default: the smallest tile size, :func:`embedding_variable`).
    version : str, optional
        Version of a versioned (Icechunk) cube to read: a tag or snapshot id.

    Returns
    -------
    tuple
        ``(ds, variable, vectors, ids, centre)``: the cube (the embedding loaded in
        memory), the variable's name and :func:`embedding_matrix` of it, i.e. vectors
        ``(N, F)`` centred and L2-normalised, flat tile ids ``(N,)``, centre ``(F,)``.

    Raises
    ------
    CubeNotFoundError
        If there is no cube at ``cube`` (:func:`esdc.storage.open_cube`).
    SearchIndexError
        If the cube has no embeddings, ``variable`` is not one, or no tile has a valid
        vector.
    """
    ds = open_cube(Path(cube), version=version)
    var = embedding_variable(ds, variable)
    steps = embedded_steps(ds[var])
    if steps is not None and steps < ds.sizes[TIME_DIM]:  # steps appended, not embedded yet
        ds = ds.isel({TIME_DIM: slice(0, steps)})
    ds[var] = ds[var].load()  # read once: indexed, checksummed, clustered
    vec, ids, centre = embedding_matrix(ds, var)
    if len(ids) == 0:
        raise SearchIndexError(f"embedding {var!r} has no valid vector (every tile had too "
                               "few valid cells).")
    return ds, var, vec, ids, centre


def vectors_sha256(arr: Any) -> str:
    """SHA-256 of an embedding array ``(tile_y, tile_x, [time,] F)`` as float32 (and its shape).

    Recorded in the manifest by :func:`build_index`, so that a reader can check the
    vectors it reads from the cube are those that were indexed.

    Parameters
    ----------
    arr : array-like
        The embedding variable's values, ``(tile_y, tile_x, [time,] F)``.

    Returns
    -------
    str
        64 hex digits.
    """
    a = np.ascontiguousarray(np.asarray(arr, dtype="float32"))
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()


def make_index(vec: np.ndarray, kind: str, ids: np.ndarray | None = None,
               device: str = "cpu", **params: Any) -> tuple[Any, dict[str, Any]]:
    """The FAISS index of ``kind`` over vectors ``(N, F)`` float32 (centred, normalised).

    Parameters
    ----------
    vec : numpy.ndarray
        ``(N, F)`` vectors.
    kind : {"flat", "hnsw", "ivfpq"}
        See the module docstring.
    ids : numpy.ndarray, optional
        ``(N,)`` int64 ids (default ``0..N-1``).
    device : {"cpu", "gpu"}
        ``gpu`` (kinds of :data:`GPU_KINDS`; see :func:`select_device`) trains and fills
        the flat or IVF-PQ part on GPU 0 (``faiss.index_cpu_to_gpu``); the result then
        lives there: :func:`build_index` copies it back with ``faiss.index_gpu_to_cpu``
        to save it.
    **params
        Kind parameters (see :func:`build_index`).

    Returns
    -------
    tuple
        ``(faiss.IndexIDMap2, parameters used)``.

    Raises
    ------
    SearchIndexError
        For an unknown kind, or a kind without GPU implementation on ``device="gpu"``.
    """
    faiss = require_faiss()
    n, d = vec.shape
    metric = faiss.METRIC_INNER_PRODUCT
    used: dict[str, Any] = {}
    if device == "gpu" and kind not in GPU_KINDS:
        _no_gpu_kind(kind)
    res = faiss.StandardGpuResources() if device == "gpu" else None

    def placed(ix: Any) -> Any:  # the flat / IVF part on the GPU when asked
        return ix if res is None else faiss.index_cpu_to_gpu(res, 0, ix)

    if kind == "flat":
        base = placed(faiss.IndexFlatIP(d))
    elif kind == "hnsw":
        used = {"M": 32, "ef_construction": 80, "ef_search": 96} | params
        base = faiss.IndexHNSWFlat(d, int(used["M"]), metric)
        base.hnsw.efConstruction = int(used["ef_construction"])
        base.hnsw.efSearch = int(used["ef_search"])
    elif kind == "ivfpq":
        nlist = int(params.get("nlist", max(1, min(4096, int(4 * np.sqrt(n))))))
        # up to 32 sub-quantisers of >= 2 dims and k_factor 32: on the real Earth
        # embeddings (64 dims) m = 16, k_factor = 16 capped recall@10 at 0.83 whatever
        # nprobe; m = 32 gave 0.975, 0.99 with k_factor 32 (docs/SEARCH.md)
        m = int(params.get("m", next((k for k in (32, 16, 8, 4, 2) if d % k == 0
                                      and d // k >= 2), 1)))
        used = {"nlist": nlist, "m": m, "nprobe": int(params.get("nprobe", max(1, nlist // 8))),
                "k_factor": float(params.get("k_factor", 32))}
        ivf = placed(faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, 8, metric))
        # k-means on a sample: FAISS needs >= 39 points per list; 64 per list is plenty
        sample = min(n, max(64 * nlist, 256 * 40))
        ivf.train(vec[np.random.default_rng(0).permutation(n)[:sample]])
        ivf.nprobe = used["nprobe"]
        base = faiss.IndexRefineFlat(ivf)
        base.k_factor = used["k_factor"]
    else:
        raise SearchIndexError(f"kind={kind!r} is unknown; use flat, hnsw, ivfpq or auto.")
    index = faiss.IndexIDMap2(base)
    index.add_with_ids(vec, np.arange(len(vec), dtype="int64") if ids is None else ids)
    return index, used


def build_index(cube: str | Path, variable: str | None = None, kind: str = "auto",
                device: str = "auto", **params: Any) -> Manifest:
    """Build a FAISS index of an embedding variable and store it beside the cube.

    Parameters
    ----------
    cube : str or path-like
        The cube (with embeddings).
    variable : str, optional
        Embedding variable (default: the smallest tile size).
    kind : {"auto", "flat", "hnsw", "ivfpq"}
        Index kind (module docstring); ``auto`` is exact below ``EXACT_THRESHOLD``
        vectors, HNSW above (IVF-PQ on a GPU).
    device : {"auto", "cpu", "gpu"}
        Where to build (:func:`select_device`): ``auto`` uses a GPU when FAISS sees one
        (:func:`gpu_count`) and the kind runs there. The saved index is a CPU index
        either way (the manifest's ``params["built_on"]`` says where it was built).
    **params
        ``M``/``ef_construction``/``ef_search`` (hnsw), ``nlist``/``m``/``nprobe``/
        ``k_factor`` (ivfpq).

    Returns
    -------
    Manifest

    Raises
    ------
    CubeNotFoundError
        If there is no cube at ``cube``.
    SearchIndexError
        If the cube has no embeddings, no valid vector, or ``kind``/``device`` is unknown
        or not available.
    EsdcError
        If FAISS is not installed.
    """
    faiss = require_faiss()
    cube = Path(cube)
    version = resolve(cube).current_version()  # lineage: the cube version indexed
    ds, var, vec, ids, centre = read_embeddings(cube, variable, version)
    n, d = vec.shape
    kind, dev = select_device(device, kind, gpu_count() if device != "cpu" else 0, n)
    index, used = make_index(vec, kind, ids, device=dev, **params)
    if dev == "gpu":
        index = faiss.index_gpu_to_cpu(index)
    attrs = ds[var].attrs
    steps = embedded_steps(ds[var]) or 0
    return commit_generation(cube, var, index, {
        "cube": str(cube.resolve()), "variable": var,
        "model_run": str(attrs.get(ATTR_MODEL_RUN, "")),
        "model_sha256": str(attrs.get(ATTR_MODEL_SHA256, "")), "count": int(n), "dim": int(d),
        "metric": "cosine (inner product of centred, L2-normalised vectors)",
        "centre": [float(c) for c in centre], "kind": kind, "params": used | {"built_on": dev},
        "ids_sha256": hashlib.sha256(ids.tobytes()).hexdigest(),
        "vectors_sha256": vectors_sha256(ds[var].values), "cube_version": version or "",
        "time_steps": steps, "time_range": time_range_of(ds, steps),
        "scale": int(attrs.get(ATTR_TILE_SIZE, 0)),
        "scales": [int(ds[v].attrs.get(ATTR_TILE_SIZE, 0)) for v in embedding_variables(ds)],
    }, generation_entry("build", n, (0, steps), version))


def build_indexes(cube: str | Path, scales: list[int] | None = None, kind: str = "auto",
                  device: str = "auto", **params: Any) -> list[Manifest]:
    """Index every scale of a cube's embeddings (what ``esdc index`` does): one index each.

    Parameters
    ----------
    cube : str or path-like
        The cube (with embeddings).
    scales : list of int, optional
        Tile sizes (cells) to index; default every embedding of the cube.
    kind, device, **params
        As :func:`build_index`, for each scale.

    Returns
    -------
    list of Manifest
        One per scale, finest first (each records ``scale`` and the cube's ``scales``).

    Raises
    ------
    SearchIndexError
        If the cube has no embeddings or no embedding of a scale asked (the scales held
        are named), or as :func:`build_index`.
    CubeNotFoundError, EsdcError
        As :func:`build_index`.
    """
    ds = open_cube(Path(cube))
    held = {int(ds[v].attrs.get(ATTR_TILE_SIZE, 0)): v for v in embedding_variables(ds)}
    if not held:
        embedding_variable(ds)  # raises: no embeddings
    missing = sorted(set(scales or ()) - set(held))
    if missing:
        raise SearchIndexError(f"scales={missing}: the cube holds no embedding of that tile "
                               f"size; its scales (cells per tile) are {sorted(held)}.")
    return [build_index(cube, held[s], kind, device, **params)
            for s in sorted(set(scales or held))]


def searched_version(cube: str | Path, variable: str, version: str | None = None) -> str | None:
    """The cube version a search reads: the one its index was built from.

    Parameters
    ----------
    cube, variable : str or path-like, str
        The cube and the embedding variable searched.
    version : str, optional
        The version asked for (a tag or snapshot id): it must be the one indexed.

    Returns
    -------
    str or None
        The snapshot id indexed; None for a cube without versions.

    Raises
    ------
    StorageError
        If ``version`` names nothing, or the cube has no versions.
    SearchIndexError
        If ``version`` is not the version the index was built from (both are named).
    """
    indexed = indexed_version(cube, variable) or None
    if version is None:
        return indexed
    asked = resolve(cube).at(version).current_version()
    if asked != indexed:
        raise SearchIndexError(
            f"version={version!r} of {cube} is snapshot {asked}, but the index of "
            f"{variable!r} was built from version {indexed or '(none recorded)'}; search "
            "the version indexed (leave version out), or embed and index that version "
            "again (`esdc index` indexes the newest one).")
    return indexed


def load_index(cube: str | Path, variable: str, ds: xr.Dataset | None = None) -> tuple[Any,
                                                                                        Manifest]:
    """Load an index and its manifest, checking integrity and lineage.

    The manifest is read first and names the index file of its generation (module
    docstring), so a concurrent ``esdc index`` cannot pair it with another build's
    file; if that file was removed meanwhile (two newer builds), the newer manifest
    is read again.

    Parameters
    ----------
    cube : str or path-like
        The cube the index was built from.
    variable : str
        Its embedding variable.
    ds : xarray.Dataset, optional
        The cube, opened: its embedding's model run and weights checksum are compared
        with the manifest's (lineage).

    Returns
    -------
    tuple
        ``(faiss.IndexIDMap2, Manifest)``.

    Raises
    ------
    SearchIndexError
        If there is no index, its manifest is not valid, its checksum differs from the
        manifest, it is not the kind of index the manifest describes, or it was built
        from embeddings of another model than those now in the cube (lineage mismatch).
    """
    faiss = require_faiss()
    folder = index_dir(cube)
    mpath = folder / f"{variable}.json"
    rebuild = f"rebuild the index with `esdc index {cube}` (esdc.search.build_index)"
    for attempt in range(3):
        try:
            text = mpath.read_text()
        except FileNotFoundError:
            raise SearchIndexError(f"no index for {variable!r} beside {cube}; build it with "
                                   f"`esdc index {cube}` (esdc.search.build_index).") from None
        try:
            manifest = Manifest(**json.loads(text))
        except (ValueError, TypeError) as exc:
            raise SearchIndexError(f"{mpath} is not a valid index manifest ({exc}); "
                                   f"{rebuild}.") from None
        path = folder / manifest.file_name()
        try:
            digest = file_sha256(path)
            break
        except FileNotFoundError:
            if attempt == 2 or mpath.read_text() == text:
                raise SearchIndexError(f"no index for {variable!r} beside {cube} ({path.name} "
                                       f"is missing); {rebuild}.") from None
    if digest != manifest.index_sha256:
        raise SearchIndexError(f"{path} does not match its manifest's SHA-256 (corrupted or "
                               f"replaced); {rebuild}.")
    if ds is not None:
        attrs = ds[variable].attrs
        if (str(attrs.get(ATTR_MODEL_RUN, "")), str(attrs.get(ATTR_MODEL_SHA256, ""))) != (
                manifest.model_run, manifest.model_sha256):
            raise SearchIndexError(
                f"lineage mismatch: the index of {variable!r} was built from model run "
                f"{manifest.model_run} but the cube's embeddings come from "
                f"{attrs.get(ATTR_MODEL_RUN)}; {rebuild}.")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:  # FAISS raises RuntimeError for a file it cannot parse
        raise SearchIndexError(f"{path} is not a FAISS index ({str(exc).strip()[:200]}); "
                               f"{rebuild}.") from None
    # The kinds build_index writes, with the manifest's shape: nothing else is searched.
    if (not isinstance(index, faiss.IndexIDMap2) or index.d != manifest.dim
            or index.ntotal != manifest.count):
        raise SearchIndexError(f"{path} holds a {type(index).__name__} of {index.ntotal} "
                               f"vectors of dimension {index.d}, not the IndexIDMap2 of "
                               f"{manifest.count} x {manifest.dim} its manifest describes; "
                               f"{rebuild}.")
    return index, manifest
