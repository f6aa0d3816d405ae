"""Zarr storage of cubes: encoding, region-by-region writes, atomic commit.

A cube is written into a hidden sibling folder (``.NAME.partial-XXXX``) and moved
into place with one ``os.replace`` only when every region is written and the
metadata consolidated, so an existing cube at the target is never left
half-written: a failed build leaves it as it was.
"""

from __future__ import annotations

import itertools
import os
import shutil
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from esdc.errors import CubeExistsError, OutputPathError
from esdc.recipe import CompressorSpec

__all__ = ["check_target", "encoding", "open_cube", "regions", "write_cube"]


def check_target(target: Path, overwrite: bool) -> None:
    """Fail early when the cube cannot be written at ``target``.

    Raises
    ------
    CubeExistsError
        If ``target`` exists and ``overwrite`` is false.
    OutputPathError
        If ``target``'s folder cannot be created or written.
    """
    if target.exists() and not overwrite:
        raise CubeExistsError(
            f"{target} exists; pass --overwrite to replace it (the old cube is kept until the "
            "new one is complete) or choose another --out."
        )
    parent = target.parent
    blocker = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise OutputPathError(
            f"cannot write the cube into {parent}: {blocker} is a file, not a folder. Choose "
            "a writable --out path."
        )
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".esdc-probe-{uuid.uuid4().hex[:8]}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise OutputPathError(
            f"cannot write the cube into {parent}: {exc.strerror or exc}. Choose a writable "
            "--out path."
        ) from None


def encoding(ds: xr.Dataset, chunks: dict[str, int], compressor: CompressorSpec) -> dict[str, Any]:
    """Zarr v3 encoding of every data variable: chunks and a Blosc compressor.

    Parameters
    ----------
    ds : xarray.Dataset
        The cube.
    chunks : dict
        Chunk length per dim; dims not named take their full length.
    compressor : CompressorSpec
        Blosc settings (``zarr.codecs.BloscCodec``).

    Returns
    -------
    dict
        ``{var: {"chunks": tuple, "compressors": (BloscCodec,)}}``.
    """
    codec = zarr.codecs.BloscCodec(cname=compressor.cname, clevel=compressor.clevel,
                                   shuffle=compressor.shuffle)
    enc: dict[str, Any] = {}
    for name, v in ds.data_vars.items():
        enc[str(name)] = {
            "chunks": tuple(min(chunks.get(str(d), n), n) for d, n in v.sizes.items()),
            "compressors": (codec,),
        }
        if np.issubdtype(v.dtype, np.floating):
            enc[str(name)]["fill_value"] = np.nan
    if "time" in ds.coords:
        enc["time"] = {"units": "days since 1970-01-01", "calendar": "proleptic_gregorian",
                       "dtype": "float64"}
        if "time_bnds" in ds:
            enc["time_bnds"] = dict(enc["time"])
    return enc


def regions(ds: xr.Dataset, dim: str, size: int) -> list[slice]:
    """Slices of ``dim`` in steps of ``size`` (one chunk band each); regions are their products."""
    n = ds.sizes[dim]
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def write_cube(
    ds: xr.Dataset,
    target: Path,
    *,
    chunks: dict[str, int],
    compressor: CompressorSpec,
    overwrite: bool = False,
    client: Any = None,
    on_region: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a lazy cube to Zarr (format 3) region by region, then commit atomically.

    The metadata and the in-memory coordinates are written first; then each spatial
    tile of chunks (all times, all variables) is a region write, all submitted to the
    ``distributed`` client at once (shared inputs are computed once) and counted as
    they finish; then metadata are consolidated and the store moved into place.

    Parameters
    ----------
    ds : xarray.Dataset
        The cube, Dask-backed; dims ``time``, ``lat|y``, ``lon|x``.
    target : pathlib.Path
        Final location of the store.
    chunks : dict
        Chunk length per dim.
    compressor : CompressorSpec
        Compressor settings.
    overwrite : bool
        Replace an existing cube (only once the new one is complete).
    client : distributed.Client, optional
        Where to compute; the current Dask scheduler when omitted.
    on_region : callable, optional
        Called as ``on_region(done, total)`` after each region.

    Returns
    -------
    pathlib.Path
        ``target``.

    Raises
    ------
    CubeExistsError, OutputPathError
        See :func:`check_target`.
    """
    check_target(target, overwrite)
    ds = ds.chunk({d: chunks.get(str(d), -1) for d in ds.dims if d != "nv"})
    # Small non-spatial coordinates (time bounds) go in memory: the metadata write
    # stores them, the region writes leave them alone.
    ds = ds.assign_coords({c: ds[c].load() for c in ds.coords
                           if ds[c].chunks is not None and not {"lat", "lon", "y", "x"} & set(
                               ds[c].dims)})
    enc = encoding(ds, chunks, compressor)
    tmp = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        ds.to_zarr(tmp, mode="w-", compute=False, zarr_format=3, consolidated=False,
                   encoding=enc)
        ydim, xdim = next((y, x) for y, x in (("lat", "lon"), ("y", "x")) if y in ds.dims)
        spatial = [v for v in ds.data_vars if ydim in ds[v].dims]
        tiles = [(ysl, xsl)
                 for ysl in regions(ds, ydim, chunks.get(ydim, ds.sizes[ydim]))
                 for xsl in regions(ds, xdim, chunks.get(xdim, ds.sizes[xdim]))]

        def region_write(ysl: slice, xsl: slice) -> Any:
            part = ds[spatial].isel({ydim: ysl, xdim: xsl})
            part = part.drop_vars([c for c in part.coords
                                   if not {ydim, xdim} <= set(part[c].dims)])
            # Every chunk is stored, even all-fill ones, so a missing chunk file always
            # means a lost write and is detected below.
            return part.to_zarr(tmp, region={ydim: ysl, xdim: xsl}, compute=False,
                                zarr_format=3, consolidated=False, write_empty_chunks=True)

        _run([region_write(*t) for t in tiles], client, on_region)
        lost = _missing_tiles(tmp, ds, spatial, tiles, ydim, xdim, chunks)
        if lost:  # rewrite lost regions once, then give up loudly
            _run([region_write(*t) for t in lost], client, None)
            lost = _missing_tiles(tmp, ds, spatial, lost, ydim, xdim, chunks)
            if lost:
                raise OSError(f"region writes of {len(lost)} tile(s) were lost twice; the "
                              f"cube was not committed: {lost[:3]}")
        with warnings.catch_warnings():
            # Consolidated metadata is not (yet) in the Zarr v3 spec; zarr-python and
            # xarray read it, and it makes opening a cube one read.
            warnings.filterwarnings("ignore", message="Consolidated metadata")
            zarr.consolidate_metadata(str(tmp), zarr_format=3)
        if target.exists():
            trash = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, trash)
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _run(writes: list[Any], client: Any, on_region: Callable[[int, int], None] | None) -> None:
    if client is not None:
        from distributed import as_completed

        futures = client.compute(writes)
        for done, fut in enumerate(as_completed(futures), start=1):
            fut.result()
            if on_region:
                on_region(done, len(writes))
    else:
        import dask

        dask.compute(*writes)
        if on_region:
            on_region(len(writes), len(writes))


def _missing_tiles(store: Path, ds: xr.Dataset, names: list[Any],
                   tiles: list[tuple[slice, slice]], ydim: str, xdim: str,
                   chunks: dict[str, int]) -> list[tuple[slice, slice]]:
    """Tiles for which some variable lacks a chunk file (a lost region write)."""
    lost = []
    for ysl, xsl in tiles:
        for name in names:
            v = ds[name]
            lead = [range(0, -(-v.sizes[d] // chunks.get(str(d), v.sizes[d])))
                    for d in v.dims[:-2]]
            iy = ysl.start // chunks.get(ydim, ds.sizes[ydim])
            ix = xsl.start // chunks.get(xdim, ds.sizes[xdim])
            keys = [(*k, iy, ix) for k in itertools.product(*lead)]
            if any(not (store / str(name) / "c" / "/".join(map(str, k))).exists() for k in keys):
                lost.append((ysl, xsl))
                break
    return lost


def open_cube(path: str | os.PathLike[str], **kwargs: Any) -> xr.Dataset:
    """Open a cube lazily (consolidated metadata, Dask chunks = Zarr chunks).

    Parameters
    ----------
    path : str or path-like
        The Zarr store.
    **kwargs
        Passed to :func:`xarray.open_zarr`.

    Returns
    -------
    xarray.Dataset
        Nothing is read but metadata and the 1-D coordinates.

    Raises
    ------
    FileNotFoundError
        If there is no cube at ``path``.
    """
    from esdc.errors import SourceNotFoundError

    p = Path(path)
    if not (p / "zarr.json").exists() and not (p / ".zgroup").exists():
        raise SourceNotFoundError(f"no Zarr cube at {p}.")
    kwargs.setdefault("consolidated", True)
    kwargs.setdefault("chunks", {})
    ds = xr.open_zarr(p, **kwargs)
    # CF cell bounds (e.g. the embeddings' tile bounds) are coordinates, not data.
    bounds = {c.attrs["bounds"] for c in ds.coords.values() if "bounds" in c.attrs}
    return ds.set_coords([b for b in bounds if b in ds.data_vars])
