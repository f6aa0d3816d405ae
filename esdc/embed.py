"""Embeddings: a trained tile encoder maps every tile of the cube to a vector.

The encoder is trained by :func:`esdc.ml.train.train` with ``task: embedding`` (the SimSiam
fitter, :mod:`esdc.ml.fit.simsiam`); this module depends on :mod:`esdc.ml`, never the
reverse.

The vectors are written back into the cube's Zarr store as a variable per tile
size (*scale*), ``embedding_t{T}`` with dims ``(tile_y_t{T}, tile_x_t{T}, [time,]
feature_t{T})``; scales 8, 16 and 32 cells by default (:data:`DEFAULT_TILES`). One
encoder embeds every scale with vectors comparable across scales: a tile of ``T``
cells is area-averaged (:func:`area_mean`; ``coarsen`` for integer factors) to the
encoder's input size (``esdc_input_size``, by default the finest scale, the tile the
encoder is trained on) before it is encoded.
Coordinates give each tile's centre (``tile_y_t{T}``, ``tile_x_t{T}``, grid units) and
bounds (``..._bounds``, ``(n, 2)``); attributes give the model's MLflow run id, the
SHA-256 of its weights, the tile size, the input variables, their normalisation and
(time-varying embeddings) how many of the cube's time steps hold vectors.

A live archive grows along time: after ``esdc build --append`` (or ``esdc update``) the
cube's embeddings are carried over with their time axis grown and the new steps empty
(NaN), and ``embed_cube(..., append=True)`` (``esdc embed CUBE --append``) embeds only
those steps, with the encoder, tile sizes, valid-cell threshold and normalisation
recorded with the stored vectors; the stored chunks (one time step each) are not
rewritten.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from esdc.conventions import (
    ATTR_CONTEXT,
    ATTR_INPUT_SIZE,
    ATTR_INPUTS,
    ATTR_MIN_VALID_FRACTION,
    ATTR_MODEL,
    ATTR_MODEL_RUN,
    ATTR_MODEL_SHA256,
    ATTR_NORMALISATION,
    ATTR_ROLE,
    ATTR_TILE_DIMS,
    ATTR_TILE_SIZE,
    ATTR_TIME_STEPS,
    TIME_DIM,
)
from esdc.embed_scales import area_mean
from esdc.errors import EmbeddingConflictError, EsdcError
from esdc.hashing import file_sha256
from esdc.ml.patches import PatchStream
from esdc.ml.stats import cube_statistics, normalisation, read_statistics
from esdc.ml.tensorboard import log_tensorboard, write_projector
from esdc.ml.tracking import default_tracking_uri
from esdc.ml.windows import tile_windows
from esdc.storage import resolve

__all__ = ["DEFAULT_TILES", "AppendStep", "EncoderBundle", "append_plan", "area_mean",
           "compute_embeddings", "embed_cube", "embedded_model_run", "embedded_steps",
           "embedding_variables", "load_encoder", "projector_sample", "write_appended",
           "write_embeddings"]

#: Tile sizes (cells; the scales of multi-scale search) embedded when none are given.
DEFAULT_TILES = (8, 16, 32)
#: Largest stored chunk of an embedding variable, bytes (chunks hold one time step).
CHUNK_BYTES = 8 << 20


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

    @property
    def context(self) -> int:
        """Cells of context around each tile the encoder embeds (``encoder.json``, 0: none).

        Counted at the encoder's input size; the config's ``context``
        (:class:`esdc.ml.config.TrainConfig`).
        """
        return int(self.meta.get("context", 0))

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


def embedding_variables(ds: xr.Dataset) -> list[str]:
    """The cube's embedding variables (``esdc_role == "embedding"``), smallest tile first.

    Parameters
    ----------
    ds : xarray.Dataset
        The cube.

    Returns
    -------
    list of str
        Their names, ordered by tile size (``esdc_tile_size``, cells); empty if none.
    """
    return sorted((str(n) for n, v in ds.data_vars.items()
                   if v.attrs.get(ATTR_ROLE) == "embedding"),
                  key=lambda n: int(ds[n].attrs.get(ATTR_TILE_SIZE, 0)))


def embedded_steps(emb: xr.DataArray) -> int | None:
    """How many time steps of the cube an embedding holds vectors for (the first N).

    Parameters
    ----------
    emb : xarray.DataArray
        An embedding variable, ``(tile_y, tile_x, [time,] feature)``.

    Returns
    -------
    int or None
        ``esdc_time_steps`` (the steps after it were added to the cube by an append and
        are not embedded yet: NaN); its time length for embeddings of an older esdc;
        None for a static embedding.
    """
    if TIME_DIM not in emb.dims:
        return None
    return int(emb.attrs.get(ATTR_TIME_STEPS, emb.sizes[TIME_DIM]))


def _chunks(dims: list[str], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Stored chunks: one time step, all columns, as many tile rows as fit CHUNK_BYTES."""
    sizes = dict(zip(dims, shape, strict=True))
    row = 4 * int(np.prod([n for d, n in sizes.items() if d not in (dims[0], TIME_DIM)]))
    rows = max(1, min(shape[0], CHUNK_BYTES // max(row, 1)))
    return tuple(rows if d == dims[0] else 1 if d == TIME_DIM else n for d, n in sizes.items())


def compute_embeddings(cube: str, bundle: EncoderBundle, tile: int, batch_size: int = 256,
                       min_valid_fraction: float = 0.5, *,
                       time_steps: tuple[int, int] | None = None,
                       normalised_with: dict[str, dict[str, float]] | None = None,
                       input_size: int | None = None,
                       context: int | None = None) -> xr.Dataset:
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
    time_steps : (int, int), optional
        Embed only the cube's time steps ``start .. stop - 1`` (an append); default all.
    normalised_with : dict, optional
        ``{input: {"mean", "scale"}}`` to normalise the inputs with (an append uses the
        one recorded with the stored vectors); default: the cube's stored statistics
        (``esdc_statistics``), else statistics computed over the whole cube now.
    input_size : int, optional
        Cells per side the encoder sees: each tile is area-averaged to it
        (:func:`area_mean`) and the size recorded (``esdc_input_size``), so that every
        scale is embedded alike; default: the tile as it is (nothing recorded).
    context : int, optional
        Cells of context on every side of the tile at the encoder's input size
        (default: the encoder's, :attr:`EncoderBundle.context`): each tile is embedded
        from the window of ``tile + 2 * margin`` cells centred on it
        (:func:`esdc.ml.windows.tile_windows`; mirrored at the grid's edge), ``margin =
        round(context * tile / input_size)`` (``context`` itself without an
        ``input_size``), recorded as ``esdc_context`` when > 0. Whether a tile gets a
        vector still depends on its own cells only.

    Returns
    -------
    xarray.Dataset
        ``embedding_t{tile}`` float32 ``(tile_y, tile_x, [time,] feature)`` (dims suffixed
        ``_t{tile}``; ``time`` only the steps embedded), tile-centre and bound
        coordinates in the grid's units; stored in chunks of one time step.

    Raises
    ------
    TrainConfigError
        If an input is not in the cube, the tile does not fit the grid, ``time_steps``
        are not the cube's, or the context window does not fit the grid.
    """
    stream = PatchStream(cube, bundle.inputs, patch=(tile, tile), shuffle=False,
                         normalize=False, time_steps=time_steps)
    ctx = bundle.context if context is None else int(context)
    margin = ctx if input_size is None else round(ctx * tile / input_size)
    ds = stream.dataset
    if normalised_with is None:
        stats = read_statistics(ds, bundle.inputs) or cube_statistics(ds, bundle.inputs)
        mean, scale = normalisation(stats, bundle.inputs)
    else:
        mean = np.array([normalised_with[v]["mean"] for v in bundle.inputs], "float32")
        scale = np.array([normalised_with[v]["scale"] for v in bundle.inputs], "float32")
    ydim, xdim = stream.ydim, stream.xdim
    nty, ntx = stream.ny // tile, stream.nx // tile
    t0, t1 = (time_steps or (0, stream.nt)) if stream.has_time else (0, 1)
    dim = bundle.model.dim
    out = np.full((t1 - t0, nty, ntx, dim), np.nan, dtype="float32")
    for b in tile_windows(stream, tile, margin, batch_size, mean, scale):
        vec = bundle.encode(b.x if input_size is None else
                            area_mean(b.x, b.valid, input_size + 2 * ctx)[0])
        ok = b.tile_valid >= min_valid_fraction
        t = np.maximum(b.index[:, 0], 0) - t0
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
        coords[TIME_DIM] = ds[TIME_DIM].values[t0:t1]
    attrs = {"long_name": f"tile embedding, {tile}x{tile} cells", "units": "1",
             ATTR_ROLE: "embedding", ATTR_TILE_SIZE: tile, ATTR_TILE_DIMS: [ydim, xdim],
             ATTR_INPUTS: bundle.inputs, ATTR_MODEL_RUN: bundle.run_id,
             ATTR_MODEL_SHA256: bundle.sha256, ATTR_MODEL: bundle.meta["class"],
             ATTR_MIN_VALID_FRACTION: min_valid_fraction,
             ATTR_NORMALISATION: {v: {"mean": float(m), "scale": float(c)}
                                  for v, m, c in zip(bundle.inputs, mean, scale, strict=True)}}
    if stream.has_time:
        attrs[ATTR_TIME_STEPS] = t1
    if input_size is not None:
        attrs[ATTR_INPUT_SIZE] = int(input_size)
    if margin:
        attrs[ATTR_CONTEXT] = int(margin)
    emb = xr.Dataset({f"embedding{s}": (dims, data, attrs)}, coords=coords)
    emb[f"embedding{s}"].encoding["chunks"] = _chunks(dims, data.shape)
    return emb


def write_embeddings(cube: str | Path, emb: xr.Dataset) -> None:
    """Write (or replace) an embedding variable and its coordinates in the cube's store.

    The new arrays are written first under a temporary store and moved in; the old
    ones are removed only then, and metadata reconsolidated, so a failure leaves the
    previous embeddings in place.
    """
    resolve(cube).update(emb.drop_vars(TIME_DIM, errors="ignore"))


@dataclass(frozen=True)
class AppendStep:
    """What ``append=True`` embeds for one tile size.

    Attributes
    ----------
    variable : str
        The embedding variable, ``embedding_t{tile}``.
    tile : int
        Tile size in cells.
    start, stop : int
        The cube's time steps ``start .. stop - 1`` to embed (``start == stop``: none).
    min_valid_fraction : float
        Recorded with the stored vectors.
    normalisation : dict
        ``{input: {"mean", "scale"}}`` recorded with the stored vectors.
    input_size : int or None
        ``esdc_input_size`` recorded with the stored vectors (None: tiles as they are).
    """

    variable: str
    tile: int
    start: int
    stop: int
    min_valid_fraction: float
    normalisation: dict[str, dict[str, float]]
    input_size: int | None = None


def _stored(cube: str | Path, tiles: list[int] | None) -> tuple[Any, xr.Dataset, list[str]]:
    """Target, opened cube and the embedding variables ``append=True`` grows."""
    target = resolve(cube)
    if target.current_version() is not None:
        raise EmbeddingConflictError(
            f"append=True: {cube} is a versioned cube, whose embeddings are rewritten whole "
            "in one commit; embed it without append=True.")
    ds = target.open()
    have = {int(ds[n].attrs[ATTR_TILE_SIZE]): n for n in embedding_variables(ds)}
    if not have:
        raise EmbeddingConflictError(f"append=True: {cube} has no embeddings to append to; "
                                     "embed it without append=True first.")
    missing = sorted(set(tiles or ()) - set(have))
    if missing:
        raise EmbeddingConflictError(
            f"append=True: {cube} has no embedding of tile size {missing} to append to; its "
            f"tile sizes are {sorted(have)} (embed new sizes without append=True).")
    return target, ds, [have[t] for t in sorted(set(tiles or have))]


def embedded_model_run(cube: str | Path, tiles: list[int] | None = None) -> str:
    """The MLflow run of the encoder that made a cube's embeddings (what an append reuses).

    Parameters
    ----------
    cube : str or path-like
        The cube.
    tiles : list of int, optional
        Tile sizes considered (default: every embedding).

    Returns
    -------
    str
        The run id recorded (``esdc_model_run``).

    Raises
    ------
    EmbeddingConflictError
        If the cube has no embeddings (of those tile sizes), they name no run (an encoder
        loaded from files) or several.
    """
    _, ds, names = _stored(cube, tiles)
    runs = sorted({str(ds[n].attrs.get(ATTR_MODEL_RUN, "")) for n in names})
    if len(runs) != 1 or not runs[0]:
        raise EmbeddingConflictError(
            f"append=True: the embeddings {names} of {cube} were made by encoder run(s) "
            f"{runs or '(none recorded)'}; name the run to use with run_id=RUN.")
    return runs[0]


def append_plan(cube: str | Path, bundle: EncoderBundle,
                tiles: list[int] | None = None) -> list[AppendStep]:
    """Check that ``bundle`` may append to a cube's embeddings; the time steps to embed.

    Parameters
    ----------
    cube : str or path-like
        A cube with time-varying embeddings (an unversioned store).
    bundle : EncoderBundle
        The encoder to append with: the one the stored vectors were made with.
    tiles : list of int, optional
        Tile sizes to extend (default: every embedding of the cube).

    Returns
    -------
    list of AppendStep
        One per embedding: the steps after ``esdc_time_steps`` up to the cube's last
        (none for a static embedding, or one that is up to date).

    Raises
    ------
    EmbeddingConflictError
        If the cube is versioned or has no embedding of a tile size asked; if the
        encoder's weights (SHA-256) or inputs differ from those recorded; if the vectors
        record no normalisation (an older esdc); or if the cube's stored statistics
        (``esdc_statistics``) now give another normalisation than the recorded one.
    """
    _, ds, names = _stored(cube, tiles)
    plan = []
    for name in names:
        attrs = ds[name].attrs
        again = f"; embed {name} again without append=True"
        if attrs.get(ATTR_MODEL_SHA256) != bundle.sha256:
            raise EmbeddingConflictError(
                f"append=True: {name} was made by encoder run {attrs.get(ATTR_MODEL_RUN) or '?'} "
                f"(weights SHA-256 {str(attrs.get(ATTR_MODEL_SHA256))[:16]}...), not by the "
                f"encoder given (run {bundle.run_id or '?'}, {bundle.sha256[:16]}...){again}.")
        if list(attrs.get(ATTR_INPUTS, [])) != bundle.inputs:
            raise EmbeddingConflictError(
                f"append=True: {name} was made from inputs {list(attrs.get(ATTR_INPUTS, []))}, "
                f"the encoder reads {bundle.inputs}{again}.")
        norm = attrs.get(ATTR_NORMALISATION)
        if not isinstance(norm, dict) or ATTR_TIME_STEPS not in attrs and TIME_DIM in \
                ds[name].dims:
            raise EmbeddingConflictError(
                f"append=True: {name} records no normalisation or embedded time steps (made "
                f"by an older esdc){again}.")
        stats = read_statistics(ds, bundle.inputs)
        if stats is not None:
            mean, scale = normalisation(stats, bundle.inputs)
            now = {v: {"mean": float(m), "scale": float(c)}
                   for v, m, c in zip(bundle.inputs, mean, scale, strict=True)}
            if now != {v: norm.get(v) for v in bundle.inputs}:
                raise EmbeddingConflictError(
                    f"append=True: the cube's stored statistics normalise {bundle.inputs} as "
                    f"{now}, but {name} was made with {norm}{again}.")
        done = embedded_steps(ds[name])
        stop = ds.sizes[TIME_DIM] if done is not None else 0
        size = attrs.get(ATTR_INPUT_SIZE)
        plan.append(AppendStep(name, int(attrs[ATTR_TILE_SIZE]), done or 0, stop,
                               float(attrs.get(ATTR_MIN_VALID_FRACTION, 0.5)), norm,
                               None if size is None else int(size)))
    return plan


def write_appended(cube: str | Path, emb: xr.Dataset) -> None:
    """Write the vectors of new time steps into a cube's embedding variable.

    Only the chunks of those steps are written (one time step each): the stored ones
    are not rewritten. Then ``esdc_time_steps`` is set and the metadata reconsolidated,
    so a reader sees the new steps complete or not at all.

    Parameters
    ----------
    cube : str or path-like
        The cube (an unversioned store).
    emb : xarray.Dataset
        :func:`compute_embeddings` of ``time_steps=(start, stop)``: ``embedding_t{T}``
        ``(tile_y, tile_x, time, feature)`` with ``esdc_time_steps == stop``.
    """
    target = resolve(cube)
    name = str(next(iter(emb.data_vars)))
    var = emb[name]
    stop = int(var.attrs[ATTR_TIME_STEPS])
    start = stop - var.sizes[TIME_DIM]
    group = zarr.open_group(target.zarr_store(), mode="r+")
    arr = group[name]
    tpos = list(var.dims).index(TIME_DIM)
    if arr.shape[tpos] < stop:  # not grown by the append of the cube: grow it here
        arr.resize(tuple(stop if i == tpos else n for i, n in enumerate(arr.shape)))
    region = tuple(slice(start, stop) if i == tpos else slice(None) for i in range(arr.ndim))
    arr[region] = np.asarray(var.values, dtype=arr.dtype)
    target.update(attrs={name: {ATTR_TIME_STEPS: stop}})


def _thumbnails(ds: xr.Dataset, names: list[str], tile: int, iy: np.ndarray, ix: np.ndarray,
                it: np.ndarray, px: int = 32) -> np.ndarray:
    """``(N, S, S, 3)`` uint8 thumbnails of tiles: up to 3 layers as RGB (one: grey)."""
    chans = []
    for v in names[:3]:
        a = ds[v]
        steps = np.unique(it) if TIME_DIM in a.dims else np.zeros(1, dtype=int)
        vals = np.asarray(a.isel({TIME_DIM: steps}).values if TIME_DIM in a.dims
                          else a.values[None], dtype="float64")
        where = np.searchsorted(steps, it) if TIME_DIM in a.dims else np.zeros_like(it)
        stack = np.stack([vals[w, y * tile:(y + 1) * tile, x * tile:(x + 1) * tile]
                          for w, y, x in zip(where, iy, ix, strict=True)])
        lo, hi = (np.nanpercentile(stack, [2, 98]) if np.isfinite(stack).any() else (0, 1))
        chans.append(np.nan_to_num(np.clip((stack - lo) / max(hi - lo, 1e-12), 0, 1)))
    rgb = np.stack(chans * 3 if len(chans) == 1 else chans + [chans[-1]] * (3 - len(chans)), -1)
    scale = max(1, px // tile)
    return (rgb.repeat(scale, 1).repeat(scale, 2) * 255).round().astype("uint8")


def projector_sample(cube: str, emb: xr.Dataset, inputs: list[str], samples: int = 1000,
                     seed: int = 0) -> tuple[np.ndarray, dict[str, list[Any]], np.ndarray]:
    """A random sample of an embedding's tiles for TensorBoard's projector.

    Parameters
    ----------
    cube : str
        The cube's Zarr store (thumbnails and class labels are read from it).
    emb : xarray.Dataset
        :func:`compute_embeddings`'s result for one tile size.
    inputs : list of str
        The encoder's inputs: the first three give the thumbnails' colours (as RGB;
        one input: grey), stretched between their 2nd and 98th percentiles.
    samples : int
        Most tiles drawn (those with a vector).
    seed : int
        Seed of the draw.

    Returns
    -------
    tuple
        Vectors ``(N, D)``; metadata (tile centre in the grid's dims, ``time`` if any,
        and the majority class name of every categorical layer of the cube, i.e. one
        with ``flag_meanings`` over the spatial dims); thumbnails ``(N, S, S, 3)`` uint8.
    """
    var = emb[str(next(iter(emb.data_vars)))]
    tile = int(var.attrs[ATTR_TILE_SIZE])
    ydim, xdim = var.attrs[ATTR_TILE_DIMS]
    vec = np.asarray(var.values)
    vec = vec if TIME_DIM in var.dims else vec[:, :, None, :]
    ok = np.flatnonzero(np.isfinite(vec).all(-1).ravel())
    pick = np.sort(np.random.default_rng(seed).choice(ok, min(samples, ok.size), replace=False))
    iy, ix, it = np.unravel_index(pick, vec.shape[:3])
    s = f"_t{tile}"
    meta: dict[str, list[Any]] = {ydim: emb[f"tile_y{s}"].values[iy].tolist(),
                                  xdim: emb[f"tile_x{s}"].values[ix].tolist()}
    if TIME_DIM in var.dims:
        meta[TIME_DIM] = [str(t)[:19] for t in emb[TIME_DIM].values[it]]
    ds = resolve(cube).open()
    for name, layer in ds.data_vars.items():
        if "flag_meanings" not in layer.attrs or tuple(layer.dims) != (ydim, xdim):
            continue
        names = dict(zip(np.asarray(layer.attrs["flag_values"]).tolist(),
                         str(layer.attrs["flag_meanings"]).split(), strict=False))
        vals = np.asarray(layer.values)
        labels = []
        for y, x in zip(iy, ix, strict=True):
            block = vals[y * tile:(y + 1) * tile, x * tile:(x + 1) * tile]
            found, counts = np.unique(block[np.isfinite(block)], return_counts=True)
            labels.append(names.get(int(found[counts.argmax()]), "?") if found.size else "none")
        meta[str(name)] = labels
    return vec.reshape(-1, vec.shape[-1])[pick], meta, _thumbnails(ds, inputs, tile, iy, ix, it)


def _defaults(cube: str, bundle: EncoderBundle, tiles: list[int] | None,
              input_size: int | None) -> tuple[list[int], int]:
    """Tile sizes (default: those of DEFAULT_TILES that fit the grid) and input size.

    The input size is that of the cube's embeddings by the same encoder, else
    ``encoder.json``'s ``input_size``, else the finest tile.
    """
    ds = resolve(cube).open()
    if not tiles:
        first = ds[bundle.inputs[0]] if bundle.inputs[0] in ds else None
        side = min(first.shape[-2:]) if first is not None and first.ndim >= 2 else 0
        tiles = [t for t in DEFAULT_TILES if t <= side] or [DEFAULT_TILES[0]]
    for name in embedding_variables(ds):
        attrs = ds[name].attrs
        if attrs.get(ATTR_MODEL_SHA256) == bundle.sha256 and ATTR_INPUT_SIZE in attrs:
            return tiles, int(input_size or attrs[ATTR_INPUT_SIZE])
    return tiles, int(input_size or bundle.meta.get("input_size") or min(tiles))


def embed_cube(cube: str, bundle: EncoderBundle, tiles: list[int] | None = None,
               client: Any = None, *, append: bool = False, projector: bool = False,
               tensorboard: str | Path | None = None, tracking_uri: str | None = None,
               report: Callable[[str], None] | None = None,
               input_size: int | None = None) -> list[str]:
    """Compute and write embeddings for every tile size (on Dask workers when a client is given).

    Parameters
    ----------
    cube : str
        The cube's Zarr store.
    bundle : EncoderBundle
        The encoder.
    tiles : list of int, optional
        Tile sizes in cells (default: those of :data:`DEFAULT_TILES` that fit the grid;
        with ``append``: those already embedded).
    client : distributed.Client, optional
        Compute each tile size on a worker.
    append : bool
        Embed only the time steps the cube gained since its embeddings were made (after
        ``esdc build --append`` / ``esdc update``), with the normalisation and valid-cell
        threshold recorded with them (:func:`append_plan`); the stored vectors and their
        chunk files are kept as they are (:func:`write_appended`). No projector.
    projector : bool
        Also write TensorBoard's embedding projector (:func:`projector_sample` of each
        tile size; :func:`esdc.ml.tensorboard.write_projector`) into the encoder run's
        ``tensorboard/embed`` artifacts.
    tensorboard : str or pathlib.Path, optional
        With ``projector``: also keep the projector in ``tensorboard/embed-<run id>``.
    tracking_uri : str, optional
        MLflow tracking URI of the encoder's run.
    report : callable, optional
        Called with one-line messages (the time steps appended, or that there are none).
    input_size : int, optional
        Cells per side every tile is area-averaged to before it is encoded
        (:func:`compute_embeddings`); default: the size recorded with the cube's
        embeddings by the same encoder, else the encoder's ``input_size``, else the
        smallest tile. With ``append``: the one recorded with the stored vectors.

    Returns
    -------
    list of str
        Names of the embedding variables written (with ``append``: those that gained
        time steps).

    Raises
    ------
    EmbeddingConflictError
        With ``append``: as :func:`append_plan`.
    OutputPathError
        If ``tensorboard`` cannot be written.
    """
    say = report or (lambda _msg: None)
    if append:
        steps = [p for p in append_plan(cube, bundle, tiles) if p.stop > p.start]
        if not steps:
            say(f"the embeddings of {cube} hold every time step of the cube: nothing to append")
            return []
        kw = [{"min_valid_fraction": p.min_valid_fraction, "time_steps": (p.start, p.stop),
               "normalised_with": p.normalisation, "input_size": p.input_size}
              for p in steps]
        tiles = [p.tile for p in steps]
    else:
        tiles, size = _defaults(cube, bundle, tiles, input_size)
        kw = [{"input_size": size} for _ in tiles]
    if client is not None:
        futures = [client.submit(compute_embeddings, cube, bundle, t, pure=False, **k)
                   for t, k in zip(tiles, kw, strict=True)]
        results = client.gather(futures)
    else:
        results = [compute_embeddings(cube, bundle, t, **k) for t, k in zip(tiles, kw,
                                                                            strict=True)]
    names = [str(next(iter(e.data_vars))) for e in results]
    for emb, k in zip(results, kw, strict=True):
        if append:
            write_appended(cube, emb)
            say(f"appended time steps {k['time_steps'][0]}..{k['time_steps'][1] - 1} to "
                f"{next(iter(emb.data_vars))}")
        else:
            write_embeddings(cube, emb)
    if projector and not append:
        with tempfile.TemporaryDirectory() as tmp:
            folder = (Path(tensorboard) if tensorboard is not None else Path(tmp)) / \
                f"embed-{bundle.run_id or 'files'}"
            write_projector(folder, {n: projector_sample(cube, e, bundle.inputs)
                                     for n, e in zip(names, results, strict=True)})
            if bundle.run_id:
                log_tensorboard(folder, "tensorboard/embed", run_id=bundle.run_id,
                                tracking_uri=tracking_uri or default_tracking_uri())
    return names
