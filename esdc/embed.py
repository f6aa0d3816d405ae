"""Embeddings: a trained tile encoder maps every tile of the cube to a vector.

The vectors are written back into the cube's Zarr store as a variable per tile
size, ``embedding_t{T}`` with dims ``(tile_y_t{T}, tile_x_t{T}, [time,] feature_t{T})``.
Coordinates give each tile's centre (``tile_y_t{T}``, ``tile_x_t{T}``, grid units) and
bounds (``..._bounds``, ``(n, 2)``); attributes give the model's MLflow run id, the
SHA-256 of its weights, the tile size and the input variables.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from esdc.errors import EsdcError
from esdc.ml.config import TrainConfig
from esdc.ml.patches import PatchStream

__all__ = ["EncoderBundle", "compute_embeddings", "embed_cube", "fit_encoder", "load_encoder",
           "write_embeddings"]


def fit_encoder(cfg: TrainConfig, streams: dict[str, PatchStream], out: Path, log: Any,
                device: str) -> tuple[float, float, Path]:
    """Train a SimSiam encoder on the train split; return (val loss, untrained val loss, file).

    The returned "baseline" is the validation loss of the same network before training,
    so ``loss < baseline`` shows it learned. Writes ``encoder.pt`` (``state_dict`` of
    :class:`esdc.ml.ssl.Encoder`, loads with ``weights_only=True``) and
    ``encoder.json`` (architecture, inputs, tile size).
    """
    import torch

    from esdc.ml.ssl import SimSiam, augment, simsiam_loss
    from esdc.ml.torch import PatchDataset

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    params = {"dim": 64, "width": 32} | cfg.model_params
    params.pop("kind", None)
    model = SimSiam(len(cfg.inputs), **params).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)

    def val_loss() -> float:
        model.eval()
        vgen = torch.Generator().manual_seed(123)
        total, n = 0.0, 0
        with torch.no_grad():
            for b in streams["validation"].batches(cfg.batch_size):
                x = torch.from_numpy(b.x)
                loss = simsiam_loss(*model(augment(x, vgen).to(device),
                                           augment(x, vgen).to(device)))
                total, n = total + loss.item() * len(x), n + len(x)
        model.train()
        return total / max(n, 1)

    before = val_loss()
    loader = torch.utils.data.DataLoader(PatchDataset(streams["train"], cfg.batch_size,
                                                      drop_last=True), batch_size=None)
    for epoch in range(cfg.epochs):
        loader.dataset.set_epoch(epoch)
        total, n = 0.0, 0
        for x, *_ in loader:
            loss = simsiam_loss(*model(augment(x, gen).to(device), augment(x, gen).to(device)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(x), n + len(x)
        log(epoch, {"train_loss": total / max(n, 1), "val_loss": val_loss()})
    after = val_loss()
    path = out / "encoder.pt"
    torch.save(model.encoder.state_dict(), path)
    (out / "encoder.json").write_text(json.dumps({
        "class": "esdc.ml.ssl.Encoder", "in_channels": len(cfg.inputs), "params": params,
        "inputs": list(cfg.inputs), "tile": list(cfg.patch)}))
    return after, before, path


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
        self.sha256 = hashlib.sha256(Path(weights).read_bytes()).hexdigest()
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

    Raises
    ------
    EsdcError
        If the run does not exist or holds no encoder.
    """
    import mlflow

    from esdc.ml.train import default_tracking_uri

    mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
    try:
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model"))
    except Exception as exc:  # noqa: BLE001 - MLflow raises several kinds for a bad run id
        raise EsdcError(f"--model {run_id}: no such MLflow run with an encoder ({exc}).") \
            from None
    if not (local / "encoder.pt").exists():
        raise EsdcError(f"--model {run_id}: the run has no encoder.pt; train one with "
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
    ds = stream._ds
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
        dims.insert(2, "time")
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
        coords["time"] = ds["time"].values
    attrs = {"long_name": f"tile embedding, {tile}x{tile} cells", "units": "1",
             "esdc_role": "embedding", "esdc_tile_size": tile, "esdc_tile_dims": [ydim, xdim],
             "esdc_inputs": bundle.inputs, "esdc_model_run": bundle.run_id,
             "esdc_model_sha256": bundle.sha256, "esdc_model": bundle.meta["class"],
             "esdc_min_valid_fraction": min_valid_fraction}
    return xr.Dataset({f"embedding{s}": (dims, data, attrs)}, coords=coords)


def write_embeddings(cube: str | Path, emb: xr.Dataset) -> None:
    """Write (or replace) an embedding variable and its coordinates in the cube's store.

    The new arrays are written first under a temporary store and moved in; the old
    ones are removed only then, and metadata reconsolidated, so a failure leaves the
    previous embeddings in place.
    """
    cube = Path(cube)
    names = [str(n) for n in emb.variables if n != "time"]
    with tempfile.TemporaryDirectory(dir=cube.parent, prefix=f".{cube.name}.emb-") as tmp:
        staged = Path(tmp) / "e.zarr"
        emb.drop_vars("time", errors="ignore").to_zarr(staged, zarr_format=3,
                                                       consolidated=False)
        for n in names:  # move new arrays into place, replacing old ones
            old = cube / n
            if old.exists():
                shutil.rmtree(old)
            shutil.move(str(staged / n), str(old))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        zarr.consolidate_metadata(str(cube))


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
