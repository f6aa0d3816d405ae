"""The fingerprint of a build: what decides that a stored cube is up to date.

Two builds with equal fingerprints write the same chunks: the recipe's SHA-256, every
source file's SHA-256, the dims, coordinate values, variables and dtypes, the chunks, the
shards and the compressor. The fingerprint is recorded (with its own SHA-256) in the cube's checksum
record (:mod:`esdc.storage.integrity`) and in the journal of a partial build
(:mod:`esdc.storage.journal`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import xarray as xr

from esdc.conventions import ATTR_RECIPE_SHA256, ATTR_SOURCES
from esdc.recipe import CompressorSpec

__all__ = ["complete_digest", "digest", "fingerprint"]


def fingerprint(ds: xr.Dataset, chunks: dict[str, int], compressor: CompressorSpec,
                shards: dict[str, int] | None = None) -> dict[str, Any]:
    """What identifies a build's result: recipe, sources, grid, variables, encoding.

    Nothing is computed: the recipe and source SHA-256 come from the plan's provenance
    attributes, the coordinates are hashed from memory.

    Parameters
    ----------
    ds : xarray.Dataset
        The planned cube (:func:`esdc.build.plan`).
    chunks : dict
        Chunk length (cells or steps) per dim name.
    compressor : CompressorSpec
        Compressor settings.
    shards : dict, optional
        Shard length per dim (recorded only when given: an unsharded cube's fingerprint
        is as before).

    Returns
    -------
    dict
        JSON-serializable; :func:`digest` gives its SHA-256.
    """
    try:
        sources = sorted((str(s.get("source")), str(s.get("sha256")))
                         for s in json.loads(ds.attrs.get(ATTR_SOURCES, "[]")))
    except (TypeError, ValueError, AttributeError):
        sources = []
    coords = {}
    for d in map(str, ds.dims):
        if d in ds.coords:
            coords[d] = hashlib.sha256(np.ascontiguousarray(ds[d].values).tobytes()).hexdigest()
    fp: dict[str, Any] = {
        "format": 1,
        "recipe_sha256": ds.attrs.get(ATTR_RECIPE_SHA256),
        "sources": [list(s) for s in sources],
        "sizes": {str(k): int(v) for k, v in sorted(ds.sizes.items())},
        "coords": coords,
        "variables": {str(k): {"dims": list(map(str, v.dims)), "dtype": str(v.dtype)}
                      for k, v in sorted(ds.data_vars.items())},
        "chunks": {str(k): int(v) for k, v in sorted(chunks.items())},
        "compressor": {"cname": compressor.cname, "clevel": int(compressor.clevel),
                       "shuffle": compressor.shuffle},
    }
    if shards:
        fp["shards"] = {str(k): int(v) for k, v in sorted(shards.items())}
    return fp


def digest(fp: dict[str, Any]) -> str:
    """SHA-256 (64 hex digits) of a fingerprint's canonical JSON."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


def complete_digest(root: dict[str, Any] | None, record: dict[str, Any] | None) -> str | None:
    """Fingerprint SHA-256 of a complete esdc cube, from its root metadata and its record.

    Parameters
    ----------
    root : dict or None
        The store's parsed root ``zarr.json``.
    record : dict or None
        Its checksum record (:func:`esdc.storage.integrity.record_of`).

    Returns
    -------
    str or None
        None unless the metadata are consolidated (the last step of a build) and the
        record names a fingerprint.
    """
    if not root or root.get("consolidated_metadata") is None or record is None:
        return None
    value = record.get("fingerprint_sha256")
    return value if isinstance(value, str) else None
