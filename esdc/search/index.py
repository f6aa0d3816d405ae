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

The index file is written to a temporary name and moved into place, then the
manifest; :func:`load_index` checks the file's SHA-256 and that the index was
built from the embeddings (model run and weights checksum) now in the cube.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from esdc.errors import EsdcError

__all__ = ["EXACT_THRESHOLD", "Manifest", "build_index", "embedding_matrix", "embedding_variable",
           "index_dir", "load_index", "make_index", "normalise"]

#: Below this many vectors ``auto`` builds an exact index.
EXACT_THRESHOLD = 200_000


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


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise EsdcError("FAISS is not installed: pip install 'esdc[search]' (faiss-cpu).") \
            from None
    return faiss


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


def make_index(vec: np.ndarray, kind: str, ids: np.ndarray | None = None,
               **params: Any) -> tuple[Any, dict[str, Any]]:
    """The FAISS index of ``kind`` over vectors ``(N, F)`` float32 (centred, normalised).

    Parameters
    ----------
    vec : numpy.ndarray
        ``(N, F)`` vectors.
    kind : {"flat", "hnsw", "ivfpq"}
        See the module docstring.
    ids : numpy.ndarray, optional
        ``(N,)`` int64 ids (default ``0..N-1``).
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
    if kind == "flat":
        base = faiss.IndexFlatIP(d)
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
        ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, 8, metric)
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
                **params: Any) -> Manifest:
    """Build a FAISS index of an embedding variable and store it beside the cube.

    Parameters
    ----------
    cube : str or path-like
        The cube (with embeddings).
    variable : str, optional
        Embedding variable (default: the smallest tile size).
    kind : {"auto", "flat", "hnsw", "ivfpq"}
        Index kind (module docstring); ``auto`` is exact below ``EXACT_THRESHOLD``
        vectors, HNSW above.
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
    vec, ids, centre = embedding_matrix(ds, var)
    if len(ids) == 0:
        raise EsdcError(f"embedding {var!r} has no valid vector to index.")
    n, d = vec.shape
    if kind == "auto":
        kind = "flat" if n < EXACT_THRESHOLD else "hnsw"
    index, used = make_index(vec, kind, ids, **params)
    folder = index_dir(cube)
    folder.mkdir(exist_ok=True)
    target, tmp = folder / f"{var}.faiss", folder / f".{var}.faiss.tmp"
    faiss.write_index(index, str(tmp))
    os.replace(tmp, target)
    attrs = ds[var].attrs
    manifest = Manifest(
        cube=str(cube.resolve()), variable=var, model_run=str(attrs.get("esdc_model_run", "")),
        model_sha256=str(attrs.get("esdc_model_sha256", "")), count=int(n), dim=int(d),
        metric="cosine (inner product of centred, L2-normalised vectors)",
        centre=[float(c) for c in centre], kind=kind, params=used,
        index_sha256=_sha(target), ids_sha256=hashlib.sha256(ids.tobytes()).hexdigest(),
        faiss_version=faiss.__version__,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    mtmp = folder / f".{var}.json.tmp"
    mtmp.write_text(json.dumps(asdict(manifest), indent=2))
    os.replace(mtmp, folder / f"{var}.json")
    return manifest


def load_index(cube: str | Path, variable: str, ds: xr.Dataset | None = None) -> tuple[Any,
                                                                                        Manifest]:
    """Load an index and its manifest, checking integrity and lineage.

    Raises
    ------
    EsdcError
        If there is no index, its checksum differs from the manifest, or it was built
        from embeddings of another model than those now in the cube (lineage mismatch).
    """
    faiss = _faiss()
    folder = index_dir(cube)
    path, mpath = folder / f"{variable}.faiss", folder / f"{variable}.json"
    if not path.exists() or not mpath.exists():
        raise EsdcError(f"no index for {variable!r} beside {cube}; run `esdc index {cube}`.")
    try:
        manifest = Manifest(**json.loads(mpath.read_text()))
    except (ValueError, TypeError) as exc:
        raise EsdcError(f"{mpath} is not a valid index manifest ({exc}); rebuild the index.") \
            from None
    if _sha(path) != manifest.index_sha256:
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
    return faiss.read_index(str(path)), manifest
