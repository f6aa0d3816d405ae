"""Reverse image search over a cube's embeddings: FAISS index, queries, HTTP API.

Modules, in import order (each imports only those before it, at module level; FAISS,
FastAPI, uvicorn, matplotlib and scikit-learn are imported inside the functions that
use them)::

    index  ->  render  ->  query  ->  evaluate, balance  ->  page  ->  http

``index``
    The FAISS index of an embedding variable, its manifest (lineage, SHA-256) and
    generations; reading a cube's embeddings (:func:`~esdc.search.index.read_embeddings`).
``render``
    Pixels of a cube for display (Blue Marble RGB or the first input) and their PNG.
``query``
    :class:`SearchEngine`: one cube, one index generation; tile, vector and image
    queries, bounding-box (:func:`esdc.grid.parse_bbox`) and time filters, quicklooks.
``evaluate``, ``balance``
    Precision@k against a class label; class-balanced samples by k-means.
``page``
    The web page of ``esdc serve`` (overview map, routes ``/`` and ``/overview.*``).
``http``
    The FastAPI app and ``esdc serve``; swaps in a rebuilt index while serving.

Errors of a missing, stale or mismatched index or embedding variable, and of a query
that does not fit the index, are :class:`esdc.errors.SearchIndexError`.
"""

from esdc.search.index import Manifest, build_index, index_dir, load_index
from esdc.search.query import Neighbour, SearchEngine, SearchResult

__all__ = ["Manifest", "Neighbour", "SearchEngine", "SearchResult", "build_index", "index_dir",
           "load_index"]
