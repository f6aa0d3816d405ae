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
:func:`load_index` checks the file's SHA-256 and that the index was built from the
embeddings (model run and weights checksum) now in the cube;
:class:`esdc.search.query.SearchEngine` also checks the vectors it reads from the
cube against ``vectors_sha256``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from esdc.errors import EsdcError

__all__ = ["EXACT_THRESHOLD", "GPU_KINDS", "Manifest", "build_index", "embedding_matrix",
           "embedding_variable", "gpu_count", "index_dir", "load_index", "make_index",
           "normalise", "select_device", "vectors_sha256"]

#: Below this many vectors ``auto`` builds an exact index.
EXACT_THRESHOLD = 200_000

#: Kinds FAISS builds and searches on a GPU (``faiss.index_cpu_to_gpu``); HNSW has no GPU
#: implementation in FAISS.
GPU_KINDS = ("flat", "ivfpq")


@dataclass(frozen=True)
class Manifest:
    """What an index was built from (its lineage) and how."""

    cube: str
    variable: str
    model_run: str
    model_sha256: str
    count: int
    dim: int
    metric: str
    centre: list[float]
    kind: str
    params: dict[str, Any]
    index_sha256: str
    ids_sha256: str
    faiss_version: str
    created: str
    #: File of the index in the index folder ("": ``VARIABLE.faiss``, older manifests).
    index_file: str = ""
    #: Build counter of this variable's index (0: manifest of an older esdc).
    generation: int = 0
    #: :func:`vectors_sha256` of the embedding array indexed ("": not recorded).
    vectors_sha256: str = ""


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise EsdcError("FAISS is not installed: pip install 'esdc[search]' (faiss-cpu).") \
            from None
    return faiss


def gpu_count() -> int:
    """GPUs FAISS can use: 0 with a CPU-only FAISS (faiss-cpu), no CUDA device or no FAISS.

    A GPU build (``pip install 'esdc[gpu]'``, faiss-gpu) has ``StandardGpuResources``
    and ``get_num_gpus() > 0`` on a machine with a CUDA device.
    """
    try:
        faiss = _faiss()
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
    EsdcError
        For an unknown device or kind, ``gpu`` without a GPU, or ``gpu`` with ``hnsw``.
    """
    if requested not in ("auto", "cpu", "gpu"):
        raise EsdcError(f"--device {requested!r} is unknown; use auto, cpu or gpu.")
    if kind not in ("auto", "flat", "hnsw", "ivfpq"):
        raise EsdcError(f"--kind {kind!r} is unknown; use flat, hnsw, ivfpq or auto.")
    if requested == "gpu" and gpus < 1:
        raise EsdcError("--device gpu: FAISS sees no GPU (faiss-cpu is installed, or no CUDA "
                        "device is visible); install the GPU build with pip install "
                        "'esdc[gpu]' on a machine with a CUDA GPU, or use --device cpu or "
                        "auto.")
    on_gpu = requested == "gpu" or (requested == "auto" and gpus > 0)
    if kind == "auto":
        kind = "flat" if count < EXACT_THRESHOLD else ("ivfpq" if on_gpu else "hnsw")
    if kind not in GPU_KINDS:
        if requested == "gpu":
            raise EsdcError(f"--kind {kind} has no GPU implementation in FAISS; use --kind "
                            f"{' or '.join(GPU_KINDS)} on the GPU, or --device cpu.")
        on_gpu = False
    return kind, "gpu" if on_gpu else "cpu"


def index_dir(cube: str | Path) -> Path:
    """Folder beside the cube that holds its indexes: ``NAME.zarr.index/``."""
    cube = Path(cube)
    return cube.parent / f"{cube.name}.index"


def embedding_variable(ds: xr.Dataset, variable: str | None = None) -> str:
    """The embedding variable to use: ``variable``, or the only/first one (smallest tile).

    Raises
    ------
    EsdcError
        If the cube has no embeddings or ``variable`` is not one.
    """
    names = sorted((str(n) for n, v in ds.data_vars.items()
                    if v.attrs.get("esdc_role") == "embedding"),
                   key=lambda n: int(ds[n].attrs.get("esdc_tile_size", 0)))
    if not names:
        raise EsdcError("the cube has no embeddings; run `esdc embed CUBE --model RUN` first.")
    if variable is None:
        return names[0]
    if variable not in names:
        raise EsdcError(f"--variable {variable!r} is not an embedding of the cube; it has "
                        f"{names}.")
    return variable


def normalise(vec: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Centre vectors ``(N, F)`` on the collection mean ``(F,)``, then L2-normalise.

    Centring before cosine similarity removes the direction all embeddings share
    (self-supervised encoders concentrate vectors in a narrow cone), so distances
    reflect what differs between tiles.
    """
    v = np.asarray(vec, dtype="float32") - centre
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.ascontiguousarray(v / np.where(norms > 0, norms, 1), dtype="float32")


def embedding_matrix(ds: xr.Dataset, variable: str) -> tuple[np.ndarray, np.ndarray,
                                                               np.ndarray]:
    """Valid vectors ``(N, F)`` (centred, L2-normalised), ids ``(N,)`` and the centre ``(F,)``.

    An id is the flat index into the variable's leading dims ``(tile_y, tile_x,
    [time])`` in C order; tiles with NaN vectors are left out.
    """
    arr = np.asarray(ds[variable].values, dtype="float32")
    flat = arr.reshape(-1, arr.shape[-1])
    ok = np.isfinite(flat).all(axis=1)
    ids = np.flatnonzero(ok).astype("int64")
    centre = flat[ok].mean(axis=0) if ok.any() else np.zeros(arr.shape[-1], "float32")
    return normalise(flat[ok], centre), ids, centre.astype("float32")


def _sha(path: Path) -> str:
    from esdc.samples import sha256sum

    return sha256sum(path)


def vectors_sha256(arr: Any) -> str:
    """SHA-256 of an embedding array ``(tile_y, tile_x, [time,] F)`` as float32 (and its shape).

    Recorded in the manifest by :func:`build_index`, so that a reader can check the
    vectors it reads from the cube are those that were indexed.
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
    EsdcError
        For an unknown kind.
    """
    faiss = _faiss()
    n, d = vec.shape
    metric = faiss.METRIC_INNER_PRODUCT
    used: dict[str, Any] = {}
    if device == "gpu" and kind not in GPU_KINDS:
        raise EsdcError(f"--kind {kind} has no GPU implementation in FAISS; use --kind "
                        f"{' or '.join(GPU_KINDS)} on the GPU, or --device cpu.")
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
        m = int(params.get("m", next(k for k in (16, 8, 4, 2, 1) if d % k == 0)))
        used = {"nlist": nlist, "m": m, "nprobe": int(params.get("nprobe", max(1, nlist // 8))),
                "k_factor": float(params.get("k_factor", 16))}
        ivf = placed(faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, 8, metric))
        # k-means on a sample: FAISS needs >= 39 points per list; 64 per list is plenty
        sample = min(n, max(64 * nlist, 256 * 40))
        ivf.train(vec[np.random.default_rng(0).permutation(n)[:sample]])
        ivf.nprobe = used["nprobe"]
        base = faiss.IndexRefineFlat(ivf)
        base.k_factor = used["k_factor"]
    else:
        raise EsdcError(f"--kind {kind!r} is unknown; use flat, hnsw, ivfpq or auto.")
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
    EsdcError
        If the cube has no embeddings, no valid vector, or ``kind`` is unknown.
    """
    from esdc.store import open_cube

    faiss = _faiss()
    cube = Path(cube)
    ds = open_cube(cube)
    var = embedding_variable(ds, variable)
    ds[var] = ds[var].load()  # read once: indexed and checksummed
    vec, ids, centre = embedding_matrix(ds, var)
    if len(ids) == 0:
        raise EsdcError(f"embedding {var!r} has no valid vector to index.")
    n, d = vec.shape
    kind, dev = select_device(device, kind, gpu_count() if device != "cpu" else 0, n)
    index, used = make_index(vec, kind, ids, device=dev, **params)
    if dev == "gpu":
        index = faiss.index_gpu_to_cpu(index)
    used = used | {"built_on": dev}
    folder = index_dir(cube)
    folder.mkdir(exist_ok=True)
    tmp = folder / f".{var}.faiss.{os.getpid()}.tmp"
    faiss.write_index(index, str(tmp))
    sha = _sha(tmp)
    target = folder / f"{var}.{sha[:16]}.faiss"  # one name, one content: never rewritten
    os.replace(tmp, target)
    mpath = folder / f"{var}.json"
    previous = _read_manifest(mpath)
    attrs = ds[var].attrs
    manifest = Manifest(
        cube=str(cube.resolve()), variable=var, model_run=str(attrs.get("esdc_model_run", "")),
        model_sha256=str(attrs.get("esdc_model_sha256", "")), count=int(n), dim=int(d),
        metric="cosine (inner product of centred, L2-normalised vectors)",
        centre=[float(c) for c in centre], kind=kind, params=used,
        index_sha256=sha, ids_sha256=hashlib.sha256(ids.tobytes()).hexdigest(),
        faiss_version=faiss.__version__,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        index_file=target.name, generation=(previous.generation if previous else 0) + 1,
        vectors_sha256=vectors_sha256(ds[var].values))
    mtmp = folder / f".{var}.json.{os.getpid()}.tmp"
    mtmp.write_text(json.dumps(asdict(manifest), indent=2))
    os.replace(mtmp, mpath)  # the commit: readers now see this generation
    keep = {target.name, _index_file(previous, var) if previous else ""}
    pattern = re.compile(rf"{re.escape(var)}(\.[0-9a-f]{{16}})?\.faiss")
    for old in folder.iterdir():
        if pattern.fullmatch(old.name) and old.name not in keep:
            old.unlink(missing_ok=True)
    return manifest


def _index_file(manifest: Manifest, variable: str) -> str:
    return manifest.index_file or f"{variable}.faiss"


def _read_manifest(path: Path) -> Manifest | None:
    """The manifest at ``path``, or None if missing or unreadable."""
    try:
        return Manifest(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def load_index(cube: str | Path, variable: str, ds: xr.Dataset | None = None) -> tuple[Any,
                                                                                        Manifest]:
    """Load an index and its manifest, checking integrity and lineage.

    The manifest is read first and names the index file of its generation (module
    docstring), so a concurrent ``esdc index`` cannot pair it with another build's
    file; if that file was removed meanwhile (two newer builds), the newer manifest
    is read again.

    Raises
    ------
    EsdcError
        If there is no index, its checksum differs from the manifest, or it was built
        from embeddings of another model than those now in the cube (lineage mismatch).
    """
    faiss = _faiss()
    folder = index_dir(cube)
    mpath = folder / f"{variable}.json"
    for attempt in range(3):
        try:
            text = mpath.read_text()
        except FileNotFoundError:
            raise EsdcError(f"no index for {variable!r} beside {cube}; run `esdc index "
                            f"{cube}`.") from None
        try:
            manifest = Manifest(**json.loads(text))
        except (ValueError, TypeError) as exc:
            raise EsdcError(f"{mpath} is not a valid index manifest ({exc}); rebuild the "
                            "index.") from None
        path = folder / _index_file(manifest, variable)
        try:
            digest = _sha(path)
            break
        except FileNotFoundError:
            if attempt == 2 or mpath.read_text() == text:
                raise EsdcError(f"no index for {variable!r} beside {cube} ({path.name} is "
                                f"missing); run `esdc index {cube}`.") from None
    if digest != manifest.index_sha256:
        raise EsdcError(f"{path} does not match its manifest's SHA-256 (corrupted or "
                        "replaced); rebuild it with `esdc index`.")
    if ds is not None:
        attrs = ds[variable].attrs
        if (str(attrs.get("esdc_model_run", "")), str(attrs.get("esdc_model_sha256", ""))) != (
                manifest.model_run, manifest.model_sha256):
            raise EsdcError(
                f"lineage mismatch: the index of {variable!r} was built from model run "
                f"{manifest.model_run} but the cube's embeddings come from "
                f"{attrs.get('esdc_model_run')}; rebuild the index with `esdc index`.")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:  # FAISS raises RuntimeError for a file it cannot parse
        raise EsdcError(f"{path} is not a FAISS index ({str(exc).strip()[:200]}); rebuild it "
                        "with `esdc index`.") from None
    # The kinds build_index writes, with the manifest's shape: nothing else is searched.
    if (not isinstance(index, faiss.IndexIDMap2) or index.d != manifest.dim
            or index.ntotal != manifest.count):
        raise EsdcError(f"{path} holds a {type(index).__name__} of {index.ntotal} vectors of "
                        f"dimension {index.d}, not the IndexIDMap2 of {manifest.count} x "
                        f"{manifest.dim} its manifest describes; rebuild it with `esdc index`.")
    return index, manifest
