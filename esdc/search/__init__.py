"""Reverse image search over a cube's embeddings: FAISS index, queries, HTTP API."""

from esdc.search.index import Manifest, build_index, index_dir, load_index
from esdc.search.query import Neighbour, SearchEngine, SearchResult

__all__ = ["Manifest", "Neighbour", "SearchEngine", "SearchResult", "build_index", "index_dir",
           "load_index"]
