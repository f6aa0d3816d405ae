"""Multi-file sources: granules listed from ``files:`` and combined along time.

:func:`list_granules` turns a source's ``files`` (a pattern, URLs or a glob) into
:class:`Granule` records, reading nothing and sending no request (a glob lists its
folder or bucket). The build fetches them (:mod:`esdc.storage.fetch`), then
:func:`open_granules` opens every fetched file with the source's reader and
concatenates them along ``time`` exactly as if one file held them: a build from
granules equals the build from the same data in one file, value for value.

``files.stac`` lists the items of a STAC catalog or API (:mod:`esdc.sources.stac`);
a tile service (``format: wmts``, :data:`esdc.sources.registry.SERVICES`) names an
index document fetched first (:func:`index_urls`, its capabilities), lists its tiles
over the grid from it and mosaics them (:class:`TileService`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import fsspec
import numpy as np
import pandas as pd
import pyproj
import xarray as xr

from esdc.conventions import TIME_DIM
from esdc.errors import SourceError, SourceNotFoundError
from esdc.grid import Grid
from esdc.recipe import SourceSpec
from esdc.sources.base import Geolocated, open_source
from esdc.sources.pattern import parse_pattern
from esdc.sources.registry import SERIES_READERS, SERVICES, load_entry, reader

__all__ = ["Granule", "TilePlace", "TileService", "fetch_options", "granule_origin",
           "index_urls", "is_local", "list_granules", "open_granules", "parse_mirrors",
           "value_key"]


@dataclasses.dataclass(frozen=True)
class TilePlace:
    """Where one tile of a tile matrix (WMTS) lies.

    Attributes
    ----------
    matrix : str
        ``"SET/MATRIX"``: the tile matrix set and tile matrix identifiers.
    crs : str
        The tile matrix set's CRS (as PROJ reads it, e.g. ``EPSG:4326``).
    left, top : float
        The matrix's top-left corner, CRS units (x, y).
    pixel : tuple of float
        ``(dx, dy)`` pixel size, CRS units, both positive.
    size : tuple of int
        ``(height, width)`` of a tile, pixels.
    row, col : int
        The tile's row (from the top) and column (from the left).
    extent : tuple of float
        ``(west, south, east, north)`` of the layer's valid area, CRS units: pixels
        outside (the padding of tiles past 180 degrees or -90 degrees) are cropped.
    """

    matrix: str
    crs: str
    left: float
    top: float
    pixel: tuple[float, float]
    size: tuple[int, int]
    row: int
    col: int
    extent: tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class Granule:
    """One file of a multi-file source.

    Attributes
    ----------
    url : str
        Local path (absolute) or URL.
    time : pandas.Timestamp or None
        The time its pattern was expanded with (``None`` for URLs and globs).
    key : str or None
        The value combination of the pattern's other fields (``"171"``; several fields
        joined by ``_``), which is its source variable name; ``None`` without such fields.
    tile : TilePlace or None
        For a tile of a tile service: where it lies; ``None`` for files and for the
        service's index document (its capabilities).
    """

    url: str
    time: pd.Timestamp | None = None
    key: str | None = None
    tile: TilePlace | None = None


class TileService(Protocol):
    """A tile service's listing and mosaic (:data:`esdc.sources.registry.SERVICES`)."""

    def index_url(self, spec: SourceSpec, base_dir: Path | None) -> str:
        """The URL (or local path) of the document the tiles are listed from."""

    def list_tiles(self, spec: SourceSpec, grid: Grid, index: Path) -> list[Granule]:
        """The tiles over ``grid``, from the fetched index document ``index``."""

    def open_tiles(self, spec: SourceSpec, granules: Sequence[Granule],
                   paths: Sequence[str | Path | None]) -> list[Geolocated]:
        """The fetched tiles (``None``: skipped) mosaicked, one :class:`Geolocated`."""


def value_key(values: Mapping[str, Any]) -> str:
    """The source-variable name of a value combination: values joined by ``_``."""
    return "_".join(str(v) for v in values.values())


def is_local(url: str) -> bool:
    """Whether ``url`` is a local path (no protocol, or ``file://``), as fsspec reads it."""
    return fsspec.utils.infer_storage_options(url).get("protocol", "file") == "file"


def _local(url: str, base_dir: Path | None) -> str:
    if not is_local(url):
        return url
    p = Path(url.removeprefix("file://")).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return str(p)


def _mirror(url: str, mirrors: Mapping[str, str] | None) -> str:
    for prefix, replacement in (mirrors or {}).items():
        if url.startswith(prefix):
            return replacement + url[len(prefix):]
    return url


def parse_mirrors(pairs: Sequence[str] | None) -> dict[str, str]:
    """``["PREFIX=REPLACEMENT", ...]`` as a dict (``--mirror`` of ``esdc build``).

    Raises
    ------
    SourceError
        For an item without ``=`` or with an empty prefix.
    """
    out = {}
    for item in pairs or []:
        prefix, sep, replacement = item.partition("=")
        if not sep or not prefix:
            raise SourceError(f"mirror {item!r} must be PREFIX=REPLACEMENT, e.g. "
                              "https://archive.example/sst=http://127.0.0.1:8000/sst")
        out[prefix] = replacement
    return out


def _service(spec: SourceSpec) -> TileService | None:
    return load_entry(SERVICES, spec.format)  # type: ignore[no-any-return]


def index_urls(spec: SourceSpec, *, base_dir: Path | None = None,
               mirrors: Mapping[str, str] | None = None) -> list[str]:
    """The documents fetched before a source's granules can be listed.

    Parameters
    ----------
    spec : SourceSpec
        A source with ``files`` or of a tile service (``format: wmts``).
    base_dir : pathlib.Path, optional
        Folder relative local paths are taken from.
    mirrors : mapping of str to str, optional
        URL prefix -> replacement (:func:`list_granules`).

    Returns
    -------
    list of str
        A tile service's capabilities document (one URL or local path); empty for
        ``files`` sources, which are listed without fetching anything first.
    """
    service = _service(spec)
    if service is None:
        return []
    return [_mirror(_local(service.index_url(spec, base_dir), base_dir), mirrors)]


def fetch_options(spec: SourceSpec) -> dict[str, Any]:
    """How a source's granules are fetched: ``concurrency``, ``missing``, ``storage_options``.

    The keywords of :func:`esdc.storage.fetch.fetch_granules`, from ``files`` or ``wmts``.
    """
    if spec.wmts is not None:
        return {"concurrency": spec.wmts.concurrency, "missing": spec.wmts.missing,
                "storage_options": {}}
    files = spec.files
    assert files is not None
    return {"concurrency": files.concurrency, "missing": files.missing,
            "storage_options": files.storage_options}


def granule_origin(spec: SourceSpec) -> str:
    """Where a source's granules come from, in a few words (its provenance record)."""
    if spec.wmts is not None:
        return f"WMTS {spec.wmts.capabilities} layer {spec.wmts.layer}"
    files = spec.files
    assert files is not None
    if files.stac is not None:
        return f"STAC {files.stac.catalog} asset {files.stac.asset}"
    return files.pattern or files.glob or f"{len(files.urls or [])} urls"


def _lonlat_bbox(grid: Grid) -> tuple[float, float, float, float]:
    """The grid's bounding box in longitude/latitude (degrees), for catalog searches."""
    if grid.is_geographic:
        return grid.bbox
    crs = grid.pyproj_crs
    t = pyproj.Transformer.from_crs(crs, crs.geodetic_crs or pyproj.CRS.from_epsg(4326),
                                    always_xy=True)
    w, s, e, n = t.transform_bounds(*grid.bbox, densify_pts=21)
    return float(w), float(s), float(e), float(n)


def _time_span(spec: SourceSpec, grid: Grid | None,
               grid_times: Sequence[Any] | None) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """``[start, end)`` a catalog search covers: the grid's time cells, else ``files.time``."""
    if grid is not None and grid.time_bounds:
        return pd.Timestamp(grid.time_bounds[0][0]), pd.Timestamp(grid.time_bounds[-1][1])
    files = spec.files
    times = (files.time.index() if files is not None and files.time is not None
             else pd.DatetimeIndex(grid_times) if grid_times is not None and len(grid_times)
             else None)
    if times is None:
        return None
    return times[0], times[-1] + pd.Timedelta(1, "ns")


def _stac_granules(spec: SourceSpec, grid: Grid | None, grid_times: Sequence[Any] | None,
                   base_dir: Path | None, mirrors: Mapping[str, str] | None) -> list[Granule]:
    """The granules of ``files.stac``: one asset of each item found, in time order."""
    files = spec.files
    assert files is not None and files.stac is not None
    try:  # esdc.sources.stac imports pystac (optional, heavy): only when a recipe reads one
        from esdc.sources.stac import stac_assets
    except ImportError:
        raise SourceError(f"sources.{spec.name}.files.stac: reading STAC catalogs needs pystac "
                          "and pystac-client: pip install 'esdc[catalog]'.") from None

    found = stac_assets(files.stac, _mirror(_local(files.stac.catalog, base_dir), mirrors),
                        bbox=_lonlat_bbox(grid) if grid is not None else None,
                        span=_time_span(spec, grid, grid_times),
                        what=f"sources.{spec.name}.files.stac")
    try:
        files.check_count(len(found))
    except ValueError as exc:
        raise SourceError(f"sources.{spec.name}.files.stac: {exc}") from None
    return [Granule(_mirror(_local(href, base_dir), mirrors), t) for href, t in found]


def list_granules(spec: SourceSpec, grid_times: Sequence[Any] | None = None, *,
                  base_dir: Path | None = None,
                  mirrors: Mapping[str, str] | None = None,
                  grid: Grid | None = None,
                  index: Sequence[str | Path] = ()) -> list[Granule]:
    """The granules of a ``files:`` or tile service source, in time order, without reading any.

    A pattern, URLs and a glob send no request (a glob lists its folder or bucket); a
    STAC catalog is read (a STAC API searched) for the items over the grid; a tile
    service's tiles are listed from its index document, fetched before.

    Parameters
    ----------
    spec : SourceSpec
        A source with ``files`` or ``wmts``.
    grid_times : sequence of datetime-like, optional
        The grid's time labels: the times a pattern's ``{time:...}`` field expands over
        when ``files.time`` is not given.
    base_dir : pathlib.Path, optional
        Folder relative local paths are taken from (the recipe's).
    mirrors : mapping of str to str, optional
        URL prefix -> replacement (a mirror or a local test server); applied to every
        URL. The recipe (and its SHA-256) is unchanged; the granule table records the
        URLs fetched.
    grid : Grid, optional
        The grid: the bounding box and time span of a STAC search; the area, pixel size
        and time cells a tile service's tiles are chosen for (required then).
    index : sequence of str or pathlib.Path
        The fetched documents of :func:`index_urls` (a tile service's capabilities).

    Returns
    -------
    list of Granule
        Pattern order: for each time, each value combination; STAC items by time; tiles
        by time, row and column.

    Raises
    ------
    SourceError
        If a glob matches nothing, a pattern needs times and none are given, a catalog
        search finds no item or an item lacks the asset, or a tile service's document
        lacks the layer, tile matrix set, zoom or time asked for.
    """
    service = _service(spec)
    if service is not None:
        if grid is None or len(index) != 1:
            raise SourceError(f"sources.{spec.name}: listing the tiles of a {spec.format} "
                              "source needs the grid and its fetched capabilities document.")
        return [dataclasses.replace(g, url=_mirror(g.url, mirrors))
                for g in service.list_tiles(spec, grid, Path(index[0]))]
    files = spec.files
    assert files is not None
    what = f"sources.{spec.name}.files"
    if files.stac is not None:
        return _stac_granules(spec, grid, grid_times, base_dir, mirrors)
    if files.urls is not None:
        return [Granule(_mirror(_local(u, base_dir), mirrors)) for u in files.urls]
    if files.glob is not None:
        where = _mirror(_local(files.glob, base_dir), mirrors)
        try:
            fs, path = fsspec.core.url_to_fs(where, **files.storage_options)
            found = sorted(fs.glob(path))
        except (ValueError, ImportError) as exc:
            raise SourceError(f"{what}.glob: cannot list {where}: {exc}") from None
        if not found:
            raise SourceError(f"{what}.glob: {where} matches no file; check the pattern "
                              "(relative paths are taken from the recipe's folder).")
        return [Granule(p if is_local(where) else fs.unstrip_protocol(p)) for p in found]
    pattern = parse_pattern(files.pattern or "")
    times: list[Any] = [None]
    if pattern.has_time:
        if files.time is not None:
            times = list(files.time.index())
        elif grid_times is not None and len(grid_times):
            times = list(pd.DatetimeIndex(grid_times))
        else:
            raise SourceError(f"{what}: the pattern's {{time:...}} field needs files.time or "
                              "a grid time axis.")
    names = pattern.value_fields
    combos = [dict(zip(names, c, strict=True))
              for c in itertools.product(*(files.values[n] for n in names))]
    return [Granule(_mirror(_local(pattern.render(t, c), base_dir), mirrors), t,
                    value_key(c) if names else None)
            for t in times for c in combos]


def _granule_spec(spec: SourceSpec, local: str | Path) -> SourceSpec:
    """The source as one file: ``path`` set, ``files`` gone (not re-validated)."""
    update: dict[str, Any] = {"path": str(local), "files": None}
    files = spec.files
    if files is not None and files.values:
        update["variables"] = [v.model_copy(update={"source": files.variable})
                               for v in spec.variables[:1]]
    return spec.model_copy(update=update)


def _placed(geo: Geolocated, granule: Granule, what: str) -> Geolocated:
    """A granule with a ``time`` axis: its own, else the pattern's time."""
    if TIME_DIM in geo.data.dims:
        return geo
    if granule.time is None:
        raise SourceError(f"{what}: {granule.url} has no time axis and no pattern time; use a "
                          "`pattern` with a {time:...} field for files without time.")
    data = geo.data.expand_dims({TIME_DIM: [np.datetime64(granule.time, "ns")]})
    return dataclasses.replace(geo, data=data)


def _same_grid(first: Geolocated, other: Geolocated, url: str, what: str) -> None:
    for dim in (first.ydim, first.xdim):
        a, b = first.data.get(dim), other.data.get(dim)
        if a is None or b is None:
            same = first.data.sizes.get(dim) == other.data.sizes.get(dim)
        else:
            same = a.shape == b.shape and np.allclose(a.values, b.values, rtol=0, atol=1e-9)
        if not same or (first.lons is not None and not np.array_equal(
                first.lons, other.lons, equal_nan=True)):
            raise SourceError(f"{what}: {url} lies on another grid than {first.path} (its "
                              f"{dim} differs); granules of one source share one grid.")


def open_granules(spec: SourceSpec, granules: Sequence[Granule],
                  paths: Sequence[str | Path | None]) -> list[Geolocated]:
    """Open fetched granules and combine them along time.

    Parameters
    ----------
    spec : SourceSpec
        The source (with ``files``).
    granules : sequence of Granule
        From :func:`list_granules`.
    paths : sequence of str, pathlib.Path or None
        The local file (or, for a store opened in place, the URL) of each granule;
        ``None`` for a granule skipped (``files.missing: skip``).

    Returns
    -------
    list of Geolocated
        One, whose variables are ``(time, ..., y, x)`` concatenated over every granule in
        time order (value fields give one variable per value combination), for sources
        located by a grid or a swath; one per granule for solar images located by their
        own WCS (each is reprojected at its own time).

    Raises
    ------
    SourceNotFoundError
        If every granule was skipped.
    SourceError
        If a granule cannot be read, lacks a time, or lies on another grid.
    """
    service = _service(spec)
    if service is not None:
        return service.open_tiles(spec, granules, paths)
    what = f"sources.{spec.name}"
    groups: dict[str | None, list[tuple[Granule, str | Path]]] = {}
    for granule, path in zip(granules, paths, strict=True):
        if path is not None:
            groups.setdefault(granule.key, []).append((granule, path))
    if not groups:
        raise SourceNotFoundError(f"{what}: every granule is missing upstream; nothing to "
                                  "build from.")
    opened = {key: _open_group(spec, items, what) for key, items in groups.items()}
    first = next(iter(opened.values()))[0]
    if first.location == "wcs":
        return [g for geos in opened.values() for g in geos]
    parts = []
    for geos in opened.values():
        for g in geos[1:]:
            _same_grid(geos[0], g, str(g.path), what)
        # the grid is checked above: override keeps the first granule's coordinates
        parts.append(geos[0].data if len(geos) == 1 else xr.concat(
            [g.data for g in geos], TIME_DIM, data_vars="minimal", coords="minimal",
            compat="override", join="override", combine_attrs="override"))
    data = xr.merge(parts, compat="override", join="outer", combine_attrs="override") \
        if len(parts) > 1 else parts[0]
    data = data.sortby(TIME_DIM) if not data.indexes[TIME_DIM].is_monotonic_increasing \
        else data
    return [dataclasses.replace(first, data=data)]


def _open_group(spec: SourceSpec, items: list[tuple[Granule, str | Path]],
                what: str) -> list[Geolocated]:
    """The granules of one value combination, opened.

    Stacked at once where the format can (:data:`esdc.sources.registry.SERIES_READERS`),
    else opened one by one.
    """
    key = items[0][0].key
    series = load_entry(SERIES_READERS, spec.format)
    if series is not None and len(items) > 1 and all(is_local(str(p)) for _, p in items):
        geo = series(_granule_spec(spec, items[0][1]), [Path(p) for _, p in items])
        if geo is not None:
            return [_renamed(geo, spec, key)]
    out = []
    for granule, path in items:
        one = _granule_spec(spec, path)
        # a remote store (format zarr) is opened where it is, by its reader
        geo = open_source(one, None) if is_local(str(path)) else reader(spec.format)(one, path)
        out.append(_renamed(_placed(geo, granule, what), spec, key))
    return out


def _renamed(geo: Geolocated, spec: SourceSpec, key: str | None) -> Geolocated:
    """A granule of a value combination: its variable named by the combination."""
    if key is None:
        return geo
    name = str(spec.files.variable if spec.files else "")
    return dataclasses.replace(geo, data=geo.data[[name]].rename({name: key}))
