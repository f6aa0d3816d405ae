"""Reverse image search over a cube's embeddings: FAISS index, queries, HTTP API.

Modules, in import order (each imports only those before it, at module level; FAISS,
FastAPI, uvicorn, matplotlib and scikit-learn are imported inside the functions that
use them)::

    manifest -> index -> live -> render -> xyz -> feedback -> scales
        -> query -> evaluate, balance -> page -> http

``manifest``
    What an index was built from (lineage, SHA-256, time steps covered) and its
    generations, each committed atomically.
``index``
    The FAISS index of an embedding variable; reading a cube's embeddings
    (:func:`~esdc.search.index.read_embeddings`).
``live``
    A live archive: :func:`~esdc.search.live.update_index` adds the vectors of newly
    embedded time steps as the next generation (``esdc index --update``).
``render``
    Pixels of a cube for display (Blue Marble RGB or the first input) and their PNG.
``xyz``
    The search page's slippy-map tiles: 256 px XYZ PNGs of any layer, plate carree or
    pixel coordinates, read chunk by chunk and cached.
``feedback``
    Relevance feedback: marked tiles (:class:`FeedbackTile`) and the Rocchio query.
``scales``
    One scale (tile size) of a search: its index and tile geometry; ``scales=`` parsed.
``query``
    :class:`SearchEngine`: one cube, one index generation; tile, vector and image
    queries, refinement by marked tiles, bounding-box (:func:`esdc.grid.parse_bbox`)
    and time filters, quicklooks.
``evaluate``, ``balance``
    Precision@k against a class label, and after simulated relevance feedback;
    class-balanced samples by k-means.
``page``
    The web page of ``esdc serve`` (overview map, routes ``/`` and ``/overview.*``).
``http``
    The FastAPI app and ``esdc serve``; swaps in a rebuilt index while serving.

Errors of a missing, stale or mismatched index or embedding variable, and of a query
that does not fit the index, are :class:`esdc.errors.SearchIndexError`.
"""

from esdc.search.feedback import FeedbackTile
from esdc.search.index import Manifest, build_index, build_indexes, index_dir, load_index
from esdc.search.live import update_index, update_indexes
from esdc.search.query import Neighbour, SearchEngine, SearchResult

__all__ = ["FeedbackTile", "Manifest", "Neighbour", "SearchEngine", "SearchResult",
           "build_index", "build_indexes", "index_dir", "load_index", "update_index",
           "update_indexes"]
