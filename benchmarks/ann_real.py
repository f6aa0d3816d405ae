"""Approximate search on real embeddings: the ``--real`` case of ``bench_search.py``.

What is measured
----------------
data
    The trained encoder's embeddings of every 8-cell tile of every month of the full
    0.25 degree Earth cube (``recipes/earth.yaml``: 720 x 1440 cells, 54 months, so
    90 x 180 x 54 = 874,800 tiles). The encoder is the demo's VICReg config
    (``recipes/train/encoder_vicreg.yaml``) with the cube's time-varying layers added to
    its inputs (``sst``, ``linke_turbidity``), trained briefly (``--real-epochs``, 2, on
    patches every ``--real-stride`` cells, 32: about 64,000 patch views, as many as the
    demo's 8 epochs at 0.5 degree). The cube, the trained encoder (MLflow, SQLite) and
    the vectors are made once under ``--out-dir`` (``/tmp/esdc-real``) with the CLI a
    user runs (``esdc build``, ``esdc train``, ``esdc embed --tile 8``), their timings
    kept in ``prepare.json``, and reused by later runs.
vectors
    :func:`esdc.search.index.read_embeddings` (what ``esdc index`` indexes: valid tiles,
    centred on the collection mean, L2-normalised), then :func:`deduplicate`: identical
    vectors are kept once (several can be the nearest neighbour at the same distance,
    so a recall over duplicates would be ambiguous). ``--real-duplicates`` indexes every
    vector instead, as ``esdc index`` does (same queries; tie-aware recall).
queries
    ``--queries`` (1,000) vectors drawn from the deduplicated ones (seed 0); each is its
    own nearest neighbour, as in ``esdc search`` of a tile.
exact
    ``IndexIDMap2(IndexFlatIP)`` (:func:`esdc.search.index.make_index` ``"flat"``, what
    ``esdc index --kind flat`` builds): the ground truth, top 10 by inner product
    (cosine), and the exact rate, timed before and after the approximate indexes (the
    higher rate kept: ratios err low).
approximate
    Every other kind :func:`esdc.search.index.make_index` builds, with esdc's default
    parameters, then a sweep of the search-time parameters (HNSW ``efSearch``, IVF-PQ
    ``nprobe`` and ``k_factor``); ``tuned`` is the fastest setting on one thread whose
    recall@10 reaches ``--target-recall`` (0.95), ``best`` the kind whose tuned rate is
    the highest multiple of the exact one (``aim_met``: at least 10x on one thread, as
    ``esdc serve`` searches). :func:`recall_at_k` is tie-aware: a returned neighbour counts as
    correct if it is among the exact top 10 or at least as similar to the query as the
    exact 10th (computed in float64 from the stored vectors).
speed and size
    Queries per second for the whole batch in one ``search`` call, best of
    ``--repeats``, with FAISS on 1 thread and on all threads; build seconds (all
    threads); memory as the serialised index's bytes (``faiss.serialize_index``) and
    the process's resident-set growth while building.

Run ``python benchmarks/bench_search.py --real`` (``--json`` for one JSON object);
the first run builds (1 minute on 2 cores), trains (2 minutes) and embeds (2 minutes),
later ones only measure (3-5 minutes, most of it building HNSW and IVF-PQ).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: Where the cube, the encoder and the vectors are kept between runs.
OUT_DIR = Path("/tmp/esdc-real")
#: The demo's encoder config; the real case adds the cube's time-varying layers.
BASE_CONFIG = ROOT / "recipes" / "train" / "encoder_vicreg.yaml"
TIME_VARYING = ["sst", "linke_turbidity"]
TILE = 8
K = 10
#: Search-time parameters swept (HNSW efSearch; IVF-PQ nprobe as a fraction of nlist).
EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256)
NPROBE_DIVISORS = (128, 64, 32, 16, 8, 4)
K_FACTORS = (16, 32, 64)


def log(msg: str) -> None:
    print(f"[bench_search --real {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr,
          flush=True)


# ---------------------------------------------------------------------------- vectors
def deduplicate(vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep each distinct row of ``vec`` once, in order of first appearance.

    Parameters
    ----------
    vec : numpy.ndarray
        ``(N, F)`` vectors (float32).

    Returns
    -------
    tuple of numpy.ndarray
        ``(unique (M, F), first (M,))``: the distinct rows (bit for bit: ``-0.0`` and
        ``0.0`` differ, as FAISS sees no difference the distances do not either) and
        the index in ``vec`` of each one's first occurrence, ascending.
    """
    v = np.ascontiguousarray(vec)
    rows = v.view(np.dtype((np.void, v.dtype.itemsize * v.shape[1]))).ravel()
    _, first = np.unique(rows, return_index=True)
    first = np.sort(first)
    return v[first], first


def similarities(base: np.ndarray, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Inner products ``(Q, k)`` in float64 of each query with the base rows it lists.

    Parameters
    ----------
    base : numpy.ndarray
        ``(N, F)`` indexed vectors.
    queries : numpy.ndarray
        ``(Q, F)`` query vectors.
    ids : numpy.ndarray
        ``(Q, k)`` int row numbers into ``base``; ``-1`` (no result) gives ``-inf``.

    Returns
    -------
    numpy.ndarray
        ``(Q, k)`` float64.
    """
    ok = ids >= 0
    rows = base[np.where(ok, ids, 0)].astype("float64")
    sims = np.einsum("qkf,qf->qk", rows, queries.astype("float64"))
    return np.where(ok, sims, -np.inf)


def recall_at_k(found: np.ndarray, truth: np.ndarray, base: np.ndarray,
                queries: np.ndarray) -> float:
    """Tie-aware recall@k: mean fraction of each query's ``k`` results that are correct.

    A result is correct if it is among the exact top ``k`` (``truth``) or at least as
    similar to the query (inner product) as the exact ``k``-th, both computed in
    float64 from ``base``: a neighbour at the same distance as the true ``k``-th is as
    good as it.

    Parameters
    ----------
    found : numpy.ndarray
        ``(Q, k)`` ids (rows of ``base``) returned by the approximate index; ``-1`` for
        a missing result.
    truth : numpy.ndarray
        ``(Q, k)`` ids of the exact top ``k``, best first.
    base : numpy.ndarray
        ``(N, F)`` indexed vectors.
    queries : numpy.ndarray
        ``(Q, F)`` query vectors.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    k = truth.shape[1]
    kth = similarities(base, queries, truth[:, k - 1:])
    member = (found[:, :, None] == truth[:, None, :]).any(axis=2) & (found >= 0)
    correct = member | (similarities(base, queries, found[:, :k]) >= kth)
    return float(correct.sum(axis=1).clip(max=k).mean() / k)


# ---------------------------------------------------------------------------- prepare
def run_cli(args: list[str], cwd: Path) -> tuple[str, float]:
    """Run ``esdc ARGS`` in ``cwd``; its stdout and wall seconds (raises on failure)."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "esdc.cli", *args], cwd=cwd, text=True,
                         capture_output=True)
    if res.returncode != 0:
        raise RuntimeError(f"esdc {' '.join(args)} failed ({res.returncode}):\n"
                           f"{res.stderr[-3000:]}")
    return res.stdout, time.perf_counter() - t0


def prepare(out: Path, epochs: int, stride: int) -> dict[str, Any]:
    """Build the cube, train the encoder and embed every 8-cell tile, once, under ``out``.

    Each step runs only if its result is missing; ``out/prepare.json`` records what each
    made and how long it took (wall seconds, on this machine at that time).
    """
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "prepare.json"
    rec: dict[str, Any] = json.loads(record_path.read_text()) if record_path.exists() else {}
    cube = out / "earth.zarr"
    if not (cube / "zarr.json").exists():
        log(f"building {cube} (esdc build recipes/earth.yaml) ...")
        _, s = run_cli(["build", str(ROOT / "recipes" / "earth.yaml"), "--out", str(cube),
                        "--overwrite"], out)
        rec = {"build_s": round(s, 1)}
        record_path.write_text(json.dumps(rec, indent=2))
    tracking = f"sqlite:///{out / 'mlruns.db'}"
    if "run_id" not in rec:
        cfg = yaml.safe_load(BASE_CONFIG.read_text())
        cfg.update(name="earth_encoder_real", inputs=cfg["inputs"] + TIME_VARYING,
                   epochs=epochs)
        cfg["augment"]["stride"] = [stride, stride]
        (out / "encoder_real.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        log(f"training the encoder on {cfg['inputs']} ({epochs} epochs, stride {stride}) ...")
        stdout, s = run_cli(["train", str(cube), "--config", str(out / "encoder_real.yaml"),
                             "--tracking-uri", tracking, "--json"], out)
        trained = json.loads(stdout.strip().splitlines()[-1])
        rec.update(run_id=trained["run_id"], train_s=round(s, 1), inputs=cfg["inputs"],
                   epochs=epochs, stride=stride, train_test_loss=trained.get("test"))
        rec.pop("embed_s", None)
        record_path.write_text(json.dumps(rec, indent=2))
    if "embed_s" not in rec:
        log(f"embedding every {TILE}-cell tile (esdc embed --tile {TILE}) ...")
        _, s = run_cli(["embed", str(cube), "--model", rec["run_id"], "--tile", str(TILE),
                        "--tracking-uri", tracking], out)
        rec["embed_s"] = round(s, 1)
        record_path.write_text(json.dumps(rec, indent=2))
    return rec


def load_vectors(out: Path) -> dict[str, Any]:
    """The indexed vectors of ``out/earth.zarr`` (cached in ``out/vectors_t8.npy``)."""
    from esdc.search.index import read_embeddings

    cache = out / f"vectors_t{TILE}.npy"
    if cache.exists():
        vec = np.load(cache)
        shape = tuple(json.loads((out / f"vectors_t{TILE}.json").read_text())["shape"])
    else:
        ds, var, vec, _, _ = read_embeddings(out / "earth.zarr", f"embedding_t{TILE}")
        shape = tuple(int(n) for n in ds[var].shape)
        np.save(cache, vec)
        (out / f"vectors_t{TILE}.json").write_text(json.dumps({"shape": shape}))
    return {"vectors": vec, "shape": shape}


# ---------------------------------------------------------------------------- measure
def timed(index: Any, queries: np.ndarray, repeats: int, threads: int) -> tuple[np.ndarray,
                                                                                float]:
    """Top-``K`` ids and the best queries per second over ``repeats`` on ``threads``."""
    import faiss

    faiss.omp_set_num_threads(threads)
    best, ids = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, ids = index.search(queries, K)
        best = min(best, time.perf_counter() - t0)
    return ids, len(queries) / best


def built(base: np.ndarray, kind: str, threads: int) -> tuple[Any, dict[str, Any]]:
    """``make_index(base, kind)`` on ``threads``; the index and its build figures."""
    import faiss
    import psutil

    from esdc.search.index import make_index

    faiss.omp_set_num_threads(threads)
    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    index, used = make_index(base, kind)
    secs = time.perf_counter() - t0
    rss = psutil.Process().memory_info().rss - rss0
    size = int(faiss.serialize_index(index).nbytes)
    return index, {"params": used, "build_s": round(secs, 1),
                   "index_mb": round(size / 2**20, 1), "rss_growth_mb": round(rss / 2**20, 1)}


def sweep(index: Any, kind: str, used: dict[str, Any], base: np.ndarray,
          queries: np.ndarray, truth: np.ndarray, repeats: int,
          threads: int) -> list[dict[str, Any]]:
    """Recall@10 and rates over the kind's search-time parameters.

    HNSW: ``efSearch`` (:data:`EF_SEARCH`). IVF-PQ + refine: ``nprobe`` (``nlist``
    divided by :data:`NPROBE_DIVISORS`) at the default ``k_factor``, then ``k_factor``
    (:data:`K_FACTORS`: candidates re-ranked exactly per neighbour asked) at the
    default ``nprobe``. The index is left at its defaults.
    """
    import faiss

    inner = faiss.downcast_index(index.index)
    if kind == "hnsw":
        grid = [{"ef_search": v} for v in EF_SEARCH]

        def setp(p: dict[str, Any]) -> None:
            inner.hnsw.efSearch = int(p["ef_search"])
    else:  # ivfpq: IndexRefineFlat over IndexIVFPQ
        ivf = faiss.downcast_index(inner.base_index)
        nprobes = sorted({max(1, used["nlist"] // f) for f in NPROBE_DIVISORS})
        grid = ([{"nprobe": v, "k_factor": used["k_factor"]} for v in nprobes]
                + [{"nprobe": used["nprobe"], "k_factor": float(f)} for f in K_FACTORS
                   if f != used["k_factor"]])

        def setp(p: dict[str, Any]) -> None:
            ivf.nprobe = int(p["nprobe"])
            inner.k_factor = float(p["k_factor"])
    rows = []
    for p in grid:
        setp(p)
        ids, qps_all = timed(index, queries, repeats, threads)
        _, qps_one = timed(index, queries, repeats, 1)
        row = p | {"recall_at_10": round(recall_at_k(ids, truth, base, queries), 4),
                   "qps_1_thread": round(qps_one, 1), "qps_all_threads": round(qps_all, 1)}
        rows.append(row)
        log(f"  {kind} {p}: recall@10 {row['recall_at_10']:.4f}, "
            f"{qps_one:,.0f} q/s on 1 thread, {qps_all:,.0f} on {threads}")
    setp(used)
    return rows


def bench_real(args: argparse.Namespace) -> dict[str, Any]:
    """The real-vector case: prepare (or reuse) the vectors, then measure each kind."""
    import faiss

    out = Path(args.out_dir)
    threads = os.cpu_count() or 1
    load_start = round(os.getloadavg()[0], 2)
    prep = prepare(out, args.real_epochs, args.real_stride)
    t0 = time.perf_counter()
    loaded = load_vectors(out)
    raw = loaded["vectors"]
    base, _ = deduplicate(raw)
    log(f"{len(raw):,} vectors of {raw.shape[1]} dims ({loaded['shape']}), "
        f"{len(base):,} distinct ({time.perf_counter() - t0:.1f} s)")
    rng = np.random.default_rng(0)
    queries = base[np.sort(rng.choice(len(base), size=args.queries, replace=False))]
    distinct = len(base)
    if args.real_duplicates:  # index every vector, as esdc index does
        base = np.ascontiguousarray(raw)
        log(f"indexing all {len(base):,} vectors, duplicates included")

    flat, flat_info = built(base, "flat", threads)
    truth, exact_all = timed(flat, queries, args.repeats, threads)
    _, exact_one = timed(flat, queries, args.repeats, 1)
    log(f"exact: {exact_one:,.0f} q/s on 1 thread, {exact_all:,.0f} on {threads}")
    kinds: dict[str, Any] = {"flat": flat_info | {"recall_at_10": recall_at_k(
        truth, truth, base, queries)}}
    for kind in args.real_kinds:
        index, info = built(base, kind, threads)
        log(f"{kind} {info['params']}: built in {info['build_s']} s, {info['index_mb']} MB")
        info["sweep"] = sweep(index, kind, info["params"], base, queries, truth,
                              args.repeats, threads)
        kinds[kind] = info
        del index
    _, again_all = timed(flat, queries, args.repeats, threads)
    _, again_one = timed(flat, queries, args.repeats, 1)
    exact = {"qps_1_thread": round(max(exact_one, again_one), 1),
             "qps_all_threads": round(max(exact_all, again_all), 1),
             "runs_1_thread": [round(exact_one, 1), round(again_one, 1)],
             "runs_all_threads": [round(exact_all, 1), round(again_all, 1)]}
    kinds["flat"].update(qps_1_thread=exact["qps_1_thread"],
                         qps_all_threads=exact["qps_all_threads"])
    best = None
    for kind in args.real_kinds:
        info = kinds[kind]
        default = next(r for r in info["sweep"]
                       if all(r[p] == info["params"][p] for p in ("ef_search", "nprobe",
                                                                   "k_factor") if p in r))
        for r in info["sweep"]:
            r["ratio_1_thread"] = round(r["qps_1_thread"] / exact["qps_1_thread"], 2)
            r["ratio_all_threads"] = round(r["qps_all_threads"] / exact["qps_all_threads"], 2)
        info["default"] = default
        ok = [r for r in info["sweep"] if r["recall_at_10"] >= args.target_recall]
        info["tuned"] = max(ok, key=lambda r: r["qps_1_thread"]) if ok else max(
            info["sweep"], key=lambda r: r["recall_at_10"])
        if ok and (best is None or info["tuned"]["ratio_1_thread"]
                   > best[1]["ratio_1_thread"]):
            best = (kind, info["tuned"])
    return {
        "real": {
            "cube": str(out / "earth.zarr"), "embedding_shape": list(loaded["shape"]),
            "vectors": int(len(raw)), "dims": int(raw.shape[1]), "distinct": distinct,
            "indexed": int(len(base)),
            "queries": args.queries, "k": K, "prepare": prep, "exact": exact,
            "kinds": kinds, "threads": threads,
            "best": {"kind": best[0]} | best[1] if best else None,
            "aim_met": bool(best and best[1]["ratio_1_thread"] >= 10),
            "load_avg_1min_start": load_start, "load_avg_1min_end": round(os.getloadavg()[0], 2),
            "faiss": faiss.__version__,
        }
    }


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The ``--real`` options of ``bench_search.py``."""
    ap.add_argument("--real", action="store_true",
                    help="measure the indexes on the trained encoder's embeddings of the "
                    "full 0.25 degree Earth cube (benchmarks/ann_real.py) instead of "
                    "synthetic vectors")
    ap.add_argument("--out-dir", default=str(OUT_DIR),
                    help="--real: where the cube, encoder and vectors are made once and kept")
    ap.add_argument("--real-epochs", type=int, default=2, help="--real: encoder epochs")
    ap.add_argument("--real-stride", type=int, default=32,
                    help="--real: cells between training patches")
    ap.add_argument("--real-duplicates", action="store_true",
                    help="--real: index every vector, duplicates included (as esdc index "
                    "does), not each distinct one once; the queries are the same")
    ap.add_argument("--real-kinds", nargs="+", default=["hnsw", "ivfpq"],
                    help="--real: approximate index kinds to measure")
