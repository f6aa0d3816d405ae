"""Embeddings: a trained tile encoder maps every tile of the cube to a vector.

The encoder is trained by :func:`esdc.ml.train.train` with ``task: embedding`` (the SimSiam
fitter, :mod:`esdc.ml.fit.simsiam`); this module depends on :mod:`esdc.ml`, never the
reverse.

The vectors are written back into the cube's Zarr store as a variable per tile
size, ``embedding_t{T}`` with dims ``(tile_y_t{T}, tile_x_t{T}, [time,] feature_t{T})``.
Coordinates give each tile's centre (``tile_y_t{T}``, ``tile_x_t{T}``, grid units) and
bounds (``..._bounds``, ``(n, 2)``); attributes give the model's MLflow run id, the
SHA-256 of its weights, the tile size and the input variables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from esdc.conventions import (
    ATTR_INPUTS,
    ATTR_MIN_VALID_FRACTION,
    ATTR_MODEL,
    ATTR_MODEL_RUN,
    ATTR_MODEL_SHA256,
    ATTR_ROLE,
    ATTR_TILE_DIMS,
    ATTR_TILE_SIZE,
    TIME_DIM,
)
from esdc.errors import EsdcError
from esdc.hashing import file_sha256
from esdc.ml.patches import PatchStream
from esdc.ml.tracking import default_tracking_uri
from esdc.storage import resolve

__all__ = ["EncoderBundle", "compute_embeddings", "embed_cube", "load_encoder",
           "write_embeddings"]


class EncoderBundle:
    """A trained encoder and its description, loaded without executing code.

    Parameters
    ----------
    weights : pathlib.Path
        ``encoder.pt`` (a ``state_dict``, loaded with ``torch.load(weights_only=True)``).
    meta : dict
        Contents of ``encoder.json``.
    run_id : str
        MLflow run that trained it ("" when loaded from files).
    """

    def __init__(self, weights: Path, meta: dict[str, Any], run_id: str = "") -> None:
        import torch

        from esdc.ml.ssl import Encoder

        self.meta, self.run_id = meta, run_id
        self.sha256 = file_sha256(weights)
        self.model = Encoder(meta["in_channels"], **meta["params"])
        self.model.load_state_dict(torch.load(weights, weights_only=True))
        self.model.eval()

    @property
    def inputs(self) -> list[str]:
        """Cube variables the encoder reads, in channel order."""
        return list(self.meta["inputs"])

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Embeddings ``(B, dim)`` float32 of normalised tiles ``(B, C, H, W)``."""
        import torch

        with torch.no_grad():
            return self.model(torch.from_numpy(np.ascontiguousarray(x, "float32"))).numpy()


def load_encoder(run_id: str, tracking_uri: str | None = None) -> EncoderBundle:
    """Download a run's encoder artifacts from MLflow and load them.

    Parameters
    ----------
    run_id : str
        MLflow run of ``esdc train`` with ``task: embedding``.
    tracking_uri : str, optional
        MLflow tracking URI; :func:`esdc.ml.tracking.default_tracking_uri` when omitted.

    Returns
    -------
    EncoderBundle

    Raises
    ------
    EsdcError
        If the run does not exist or holds no encoder.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
    try:
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model"))
    except Exception as exc:  # noqa: BLE001 - MLflow raises several kinds for a bad run id
        raise EsdcError(f"run_id={run_id}: no such MLflow run with an encoder ({exc}).") \
            from None
    if not (local / "encoder.pt").exists():
        raise EsdcError(f"run_id={run_id}: the run has no encoder.pt; train one with "
                        "`task: embedding`.")
    return EncoderBundle(local / "encoder.pt", json.loads((local / "encoder.json").read_text()),
                         run_id)


def compute_embeddings(cube: str, bundle: EncoderBundle, tile: int, batch_size: int = 256,
                       min_valid_fraction: float = 0.5) -> xr.Dataset:
    """One vector per tile of ``tile x tile`` cells (and per time step if inputs vary).

    Parameters
    ----------
    cube : str
        The cube's Zarr store.
    bundle : EncoderBundle
        The encoder.
    tile : int
        Tile size in grid cells; tiles do not overlap; a partial last row/column of
        tiles is left out.
    batch_size : int
        Tiles per forward pass.
    min_valid_fraction : float
        Tiles with fewer valid cells get NaN vectors (not indexed).

    Returns
    -------
    xarray.Dataset
        ``embedding_t{tile}`` float32 ``(tile_y, tile_x, [time,] feature)`` (dims suffixed
        ``_t{tile}``), tile-centre and bound coordinates in the grid's units.
    """
    stream = PatchStream(cube, bundle.inputs, patch=(tile, tile), shuffle=False)
    ds = stream.dataset
    ydim, xdim = stream.ydim, stream.xdim
    nty, ntx = stream.ny // tile, stream.nx // tile
    dim = bundle.model.dim
    out = np.full((stream.nt, nty, ntx, dim), np.nan, dtype="float32")
    for b in stream.batches(batch_size):
        vec = bundle.encode(b.x)
        ok = b.valid.mean(axis=(1, 2, 3)) >= min_valid_fraction
        t = np.maximum(b.index[:, 0], 0)
        out[t[ok], b.index[ok, 1] // tile, b.index[ok, 2] // tile] = vec[ok]
    s = f"_t{tile}"
    y, x = ds[ydim].values, ds[xdim].values
    dy, dx = abs(float(y[1] - y[0])), abs(float(x[1] - x[0]))
    yc = y[: nty * tile].reshape(nty, tile).mean(1)
    xc = x[: ntx * tile].reshape(ntx, tile).mean(1)
    ysign = 1.0 if y[1] > y[0] else -1.0
    ybounds = np.stack([y[: nty * tile: tile] - ysign * dy / 2,
                        y[tile - 1: nty * tile: tile] + ysign * dy / 2], 1)
    xbounds = np.stack([x[: ntx * tile: tile] - dx / 2, x[tile - 1: ntx * tile: tile] + dx / 2], 1)
    dims = [f"tile_y{s}", f"tile_x{s}", f"feature{s}"]
    data = out[0] if not stream.has_time else np.moveaxis(out, 0, 2)
    if stream.has_time:
        dims.insert(2, TIME_DIM)
    units = ds[ydim].attrs.get("units", "")
    coords: dict[str, Any] = {
        f"tile_y{s}": (f"tile_y{s}", yc, {"long_name": f"{ydim} of the tile centre",
                                         "units": units, "bounds": f"tile_y{s}_bounds"}),
        f"tile_x{s}": (f"tile_x{s}", xc, {"long_name": f"{xdim} of the tile centre",
                                         "units": ds[xdim].attrs.get("units", ""),
                                         "bounds": f"tile_x{s}_bounds"}),
        f"tile_y{s}_bounds": ((f"tile_y{s}", "nv"), ybounds),
        f"tile_x{s}_bounds": ((f"tile_x{s}", "nv"), xbounds),
    }
    if stream.has_time:
        coords[TIME_DIM] = ds[TIME_DIM].values
    attrs = {"long_name": f"tile embedding, {tile}x{tile} cells", "units": "1",
             ATTR_ROLE: "embedding", ATTR_TILE_SIZE: tile, ATTR_TILE_DIMS: [ydim, xdim],
             ATTR_INPUTS: bundle.inputs, ATTR_MODEL_RUN: bundle.run_id,
             ATTR_MODEL_SHA256: bundle.sha256, ATTR_MODEL: bundle.meta["class"],
             ATTR_MIN_VALID_FRACTION: min_valid_fraction}
    return xr.Dataset({f"embedding{s}": (dims, data, attrs)}, coords=coords)


def write_embeddings(cube: str | Path, emb: xr.Dataset) -> None:
    """Write (or replace) an embedding variable and its coordinates in the cube's store.

    The new arrays are written first under a temporary store and moved in; the old
    ones are removed only then, and metadata reconsolidated, so a failure leaves the
    previous embeddings in place.
    """
    resolve(cube).update(emb.drop_vars(TIME_DIM, errors="ignore"))


def embed_cube(cube: str, bundle: EncoderBundle, tiles: list[int], client: Any = None) -> list[
        str]:
    """Compute and write embeddings for every tile size (on Dask workers when a client is given).

    Returns
    -------
    list of str
        Names of the embedding variables written.
    """
    if client is not None:
        futures = [client.submit(compute_embeddings, cube, bundle, t, pure=False) for t in tiles]
        results = client.gather(futures)
    else:
        results = [compute_embeddings(cube, bundle, t) for t in tiles]
    for emb in results:
        write_embeddings(cube, emb)
    return [str(next(iter(e.data_vars))) for e in results]
