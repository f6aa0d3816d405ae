"""A STAC catalog of built cubes (pystac): one Item per cube, one Collection per body.

``esdc catalog [CUBES...] --out cubes/catalog.json`` writes, or updates, a
self-contained STAC catalog: ``catalog.json`` → a Collection per body
(``esdc-earth``, ``esdc-moon``, ``esdc-sun``) → an Item per cube, with

- ``bbox`` / ``geometry`` from the cube's grid (``esdc_grid``) in WGS 84; cubes of the
  Moon or the Sun are not on Earth, so their geometry is ``null`` (and no ``bbox``)
  and ``esdc:body`` says where they are;
- the time range (``start_datetime`` / ``end_datetime`` from the time bounds; a static
  cube gets its build time as ``datetime``);
- an asset ``zarr`` for the store (media type ``application/vnd+zarr``, hrefs relative
  to the Item) and an asset ``datacard`` (the Markdown card of :func:`esdc.cards.data_card`);
- the Datacube extension fields ``cube:dimensions`` and ``cube:variables``.
- ``esdc:sources``: each source's product, mission, instrument, licence, citation, DOI and
  URL (a registered sample's, or those a recipe declares in a source's ``provenance:``);
  sources with a DOI or a citation are also listed as Scientific extension
  ``sci:publications``.

Only the cubes' metadata are read. Needs pystac (``pip install 'esdc[catalog]'``).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from esdc.cards import data_card
from esdc.conventions import (
    ATTR_GRID,
    ATTR_RECIPE_SHA256,
    ATTR_ROLE,
    ATTR_SOURCES,
    SOURCE_PROVENANCE_KEYS,
    json_attr,
    license_of,
)
from esdc.errors import EsdcError, OutputPathError
from esdc.grid import Grid
from esdc.storage import open_cube, resolve

__all__ = ["ZARR_MEDIA_TYPE", "cube_item", "update_catalog", "validate_catalog"]

#: Media type of a Zarr store asset.
ZARR_MEDIA_TYPE = "application/vnd+zarr"
_ROOT_ID = "esdc-cubes"
_BODIES = {"earth": "Earth", "moon": "the Moon", "sun": "the Sun"}


def _pystac() -> Any:
    try:
        import pystac
    except ImportError:
        raise EsdcError("pystac is not installed: pip install 'esdc[catalog]'.") from None
    return pystac


def _iso(t: Any) -> str:
    """ISO 8601 UTC text of a numpy or pandas time."""
    return _utc(t).isoformat().replace("+00:00", "Z")


def _utc(t: Any) -> dt.datetime:
    import pandas as pd

    ts = pd.Timestamp(t)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime()


def _time_step(times: np.ndarray) -> str | None:
    """ISO 8601 duration of a regular time axis (``P1M``, ``PT1H``, ...); None if irregular."""
    import pandas as pd

    if len(times) < 2:
        return None
    t = pd.DatetimeIndex(times)
    months = (t.year * 12 + t.month).to_numpy()
    if (t.day == t[0].day).all() and (t.time == t[0].time()).all():
        dm = np.diff(months)
        if (dm == dm[0]).all() and dm[0] > 0:
            return f"P{dm[0] // 12}Y" if dm[0] % 12 == 0 else f"P{dm[0]}M"
    ds = np.diff(t.asi8) / 1e9
    if not (ds == ds[0]).all() or ds[0] <= 0:
        return None
    sec = int(ds[0])
    if sec % 86400 == 0:
        return f"P{sec // 86400}D"
    if sec % 3600 == 0:
        return f"PT{sec // 3600}H"
    return f"PT{sec}S"


def _reference_system(grid: Any) -> Any:
    """EPSG code (int) when there is one, else WKT2, else the CRS text (helioprojective)."""
    if grid.is_helioprojective:
        return grid.crs
    crs = grid.pyproj_crs
    code = crs.to_epsg()
    return int(code) if code is not None else crs.to_wkt()


def _wgs84_bbox(grid: Any) -> list[float]:
    """The grid's outer edges in WGS 84 longitude/latitude (``[W, S, E, N]``)."""
    from pyproj import CRS, Transformer

    west, south, east, north = grid.bbox
    crs = grid.pyproj_crs
    if crs.to_epsg() != 4326:
        tr = Transformer.from_crs(crs, CRS.from_epsg(4326), always_xy=True)
        west, south, east, north = tr.transform_bounds(west, south, east, north, densify_pts=21)
    return [max(-180.0, float(west)), max(-90.0, float(south)), min(180.0, float(east)),
            min(90.0, float(north))]


def _license(text: str | None) -> str:
    """STAC ``license``: an SPDX identifier when the cube gives one, else ``other``."""
    if text and re.fullmatch(r"[A-Za-z0-9.+-]+", text.strip()):
        return text.strip()
    return "other"


def _datacube(ds: Any, grid: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``cube:dimensions`` and ``cube:variables`` of the cube's grid variables."""
    ydim, xdim = grid.dims
    ref = _reference_system(grid)
    y, x = np.asarray(ds[ydim].values, float), np.asarray(ds[xdim].values, float)
    dx, dy = grid.resolution
    dims: dict[str, Any] = {
        xdim: {"type": "spatial", "axis": "x", "extent": [float(x.min()), float(x.max())],
               "step": float(dx), "reference_system": ref,
               "description": f"{ds[xdim].attrs.get('long_name', xdim)} of cell centres "
                              f"({ds[xdim].attrs.get('units', '')})"},
        ydim: {"type": "spatial", "axis": "y", "extent": [float(y.min()), float(y.max())],
               "step": float(y[1] - y[0]) if len(y) > 1 else float(-dy),
               "reference_system": ref,
               "description": f"{ds[ydim].attrs.get('long_name', ydim)} of cell centres "
                              f"({ds[ydim].attrs.get('units', '')}), north to south"},
    }
    if "time" in ds.dims:
        t = ds["time"].values
        dims["time"] = {"type": "temporal", "extent": [_iso(t[0]), _iso(t[-1])],
                        "step": _time_step(t), "description": "time step (cell start)"}
    variables: dict[str, Any] = {}
    for name, v in sorted(ds.data_vars.items(), key=lambda kv: str(kv[0])):
        if not set(v.dims) <= set(dims):
            continue  # e.g. embeddings on their own tile dims: listed in esdc:embeddings
        var: dict[str, Any] = {"dimensions": [str(d) for d in v.dims], "type": "data"}
        if v.attrs.get("long_name"):
            var["description"] = str(v.attrs["long_name"])
        if v.attrs.get("units"):
            var["unit"] = str(v.attrs["units"])
        variables[str(name)] = var
    return dims, variables


def cube_item(cube: str | Path, item_id: str | None = None) -> Any:
    """A STAC Item describing one cube (metadata only; nothing is computed).

    Parameters
    ----------
    cube : str or path-like
        The cube's Zarr store.
    item_id : str, optional
        Item id; the store's name without ``.zarr`` by default.

    Returns
    -------
    pystac.Item
        Geometry and ``bbox`` in WGS 84 for Earth cubes (``None`` for other bodies),
        ``start_datetime``/``end_datetime`` (or ``datetime`` for a static cube), an
        asset ``zarr`` with an absolute href, ``esdc:*`` provenance properties, the
        Datacube extension fields and, when a source has a DOI or citation, the Scientific
        extension's ``sci:publications``.

    Raises
    ------
    EsdcError
        If there is no cube at ``cube`` or it has no ``esdc_grid``, or pystac is missing.
    """
    pystac = _pystac()
    from pystac.extensions.datacube import DatacubeExtension, Dimension, Variable
    from pystac.extensions.scientific import Publication, ScientificExtension

    path = Path(cube).resolve()
    ds = open_cube(path)
    a = ds.attrs
    if ATTR_GRID not in a:
        raise EsdcError(f"{cube}: the cube has no {ATTR_GRID} attribute; was it built by esdc?")
    grid = Grid.from_dict(json_attr(a, ATTR_GRID))
    item_id = item_id or path.name.removesuffix(".zarr")
    sources = json_attr(a, ATTR_SOURCES, [])
    created = a.get("date_created")
    props: dict[str, Any] = {
        "title": a.get("title") or item_id,
        "license": _license(a.get("license")),
        "esdc:body": grid.body,
        "esdc:crs": grid.crs,
        "esdc:shape": [int(n) for n in grid.shape],
        "esdc:recipe_sha256": a.get(ATTR_RECIPE_SHA256, ""),
        "esdc:license": a.get("license", ""),
        "esdc:sources": [{"source": s.get("source"),
                          **{k: s.get(k) for k in SOURCE_PROVENANCE_KEYS},
                          "licence": license_of(s)} for s in sources],
    }
    if a.get("summary"):
        props["description"] = str(a["summary"])
    if created:
        props["created"] = _iso(created)
    embeddings = [str(n) for n, v in ds.data_vars.items()
                  if v.attrs.get(ATTR_ROLE) == "embedding"]
    if embeddings:
        props["esdc:embeddings"] = sorted(embeddings)
    geometry, bbox = None, None
    if grid.body == "earth":
        w, s, e, n = _wgs84_bbox(grid)
        bbox = [w, s, e, n]
        geometry = {"type": "Polygon",
                    "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    start = end = when = None
    if grid.time is not None and len(grid.time):
        if grid.time_bounds:
            start, end = _utc(grid.time_bounds[0][0]), _utc(grid.time_bounds[-1][1])
        else:
            start, end = _utc(grid.time[0]), _utc(grid.time[-1])
    else:
        when = _utc(created) if created else dt.datetime.now(dt.UTC)
        props["esdc:static"] = True
    item = pystac.Item(id=item_id, geometry=geometry, bbox=bbox, datetime=when,
                       properties=props, start_datetime=start, end_datetime=end)
    item.add_asset("zarr", pystac.Asset(
        href=str(path), media_type=ZARR_MEDIA_TYPE, roles=["data"],
        title=f"Zarr store (format 3, consolidated metadata) of {props['title']}"))
    publications = [Publication(s.get("doi"), s.get("citation") or s.get("product"))
                    for s in sources if s.get("doi") or s.get("citation")]
    if publications:  # the upstream products, with their DOIs (Scientific extension)
        ScientificExtension.ext(item, add_if_missing=True).apply(publications=publications)
        # pystac writes "doi": null for a citation without a DOI; the extension's schema
        # takes a DOI string or no key
        item.properties["sci:publications"] = [
            {k: v for k, v in p.items() if v is not None}
            for p in item.properties["sci:publications"]]
    dims, variables = _datacube(ds, grid)
    DatacubeExtension.ext(item, add_if_missing=True).apply(
        {k: Dimension.from_dict(v) for k, v in dims.items()},
        {k: Variable(v) for k, v in variables.items()})
    return item


def _collection(pystac: Any, body: str) -> Any:
    where = _BODIES.get(body, body)
    note = "" if body == "earth" else (
        f" Cubes of {where} are not on Earth: their Items have no geometry, and this "
        "Collection's spatial extent is the whole-globe placeholder the STAC spec requires.")
    return pystac.Collection(
        id=f"esdc-{body}", title=f"esdc cubes of {where}",
        description=f"Harmonized data cubes of {where} built by esdc from recipes; one Item "
                    f"per cube.{note}",
        extent=pystac.Extent(pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]),
                             pystac.TemporalExtent([[None, None]])),
        license="other", extra_fields={"esdc:body": body})


def _update_extent(pystac: Any, coll: Any) -> None:
    items = list(coll.get_items())
    boxes = [i.bbox for i in items if i.bbox]
    if boxes:
        b = np.asarray(boxes, float)
        bbox = [float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()),
                float(b[:, 3].max())]
    else:
        bbox = [-180.0, -90.0, 180.0, 90.0]
    starts = [i.common_metadata.start_datetime or i.datetime for i in items]
    ends = [i.common_metadata.end_datetime or i.datetime for i in items]
    starts, ends = [t for t in starts if t], [t for t in ends if t]
    coll.extent = pystac.Extent(
        pystac.SpatialExtent([bbox]),
        pystac.TemporalExtent([[min(starts) if starts else None,
                                max(ends) if ends else None]]))


def update_catalog(cubes: Iterable[str | Path], out: str | Path,
                   cards: bool = True) -> Any:
    """Add (or replace) cubes in the self-contained STAC catalog at ``out`` and save it.

    Parameters
    ----------
    cubes : iterable of path-like
        Cube stores; each becomes (or replaces) the Item with its name.
    out : str or path-like
        The catalog file (``cubes/catalog.json``); read first when it exists, so
        Items of cubes not named here are kept.
    cards : bool
        Write each cube's data card beside its Item and add it as asset ``datacard``.

    Returns
    -------
    pystac.Catalog
        The saved catalog (hrefs relative: the folder can be moved with the cubes).

    Raises
    ------
    EsdcError
        If a cube is missing or ``out`` is not a readable catalog or not writable.
    """
    pystac = _pystac()
    out = Path(out).resolve()
    if out.exists():
        try:
            catalog = pystac.Catalog.from_file(str(out))
        except Exception as exc:  # noqa: BLE001 - pystac raises several kinds
            raise EsdcError(f"out={out}: not a readable STAC catalog ({exc}); choose "
                            "another path or remove the file.") from None
        catalog.make_all_asset_hrefs_absolute()
    else:
        catalog = pystac.Catalog(id=_ROOT_ID, title="esdc cubes",
                                 description="Earth System Data Cubes built by esdc: one "
                                             "Collection per body, one Item per cube.")
    items = []
    for cube in cubes:
        p = Path(cube)
        resolve(p).require()
        items.append(cube_item(p))
    for item in items:
        body = item.properties["esdc:body"]
        coll = catalog.get_child(f"esdc-{body}")
        if coll is None:
            coll = _collection(pystac, body)
            catalog.add_child(coll)
        for c in catalog.get_children():
            if c.get_item(item.id) is not None:
                c.remove_item(item.id)
        coll.add_item(item)
    for coll in catalog.get_children():
        if isinstance(coll, pystac.Collection):
            _update_extent(pystac, coll)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        catalog.normalize_hrefs(str(out.parent))
        catalog.set_self_href(str(out))
        if cards:
            for item in items:
                card = Path(item.get_self_href()).with_name(f"{item.id}.datacard.md")
                card.parent.mkdir(parents=True, exist_ok=True)
                card.write_text(data_card(item.assets["zarr"].href), encoding="utf-8")
                item.add_asset("datacard", pystac.Asset(
                    href=str(card), media_type="text/markdown", roles=["metadata"],
                    title="Data card (sources, licences, grid, variables, provenance)"))
        catalog.make_all_asset_hrefs_relative()
        catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    except OSError as exc:
        raise OutputPathError(f"out={out}: cannot write the catalog ({exc.strerror or exc}).") \
            from None
    return catalog


def validate_catalog(catalog: Any) -> dict[str, Any]:
    """Validate every object of a catalog against the STAC JSON schemas.

    The core schemas ship with pystac and are always checked (offline). Extension
    schemas (Datacube) are fetched by pystac; when they cannot be fetched (no
    network), or refer to a schema that cannot be (with pystac 1.16, the Datacube
    schema refers to PROJJSON's on proj.org), they are reported under ``skipped``
    instead of failing.

    Parameters
    ----------
    catalog : pystac.Catalog
        The catalog (for example the one :func:`update_catalog` returns).

    Returns
    -------
    dict
        ``{"objects": int, "skipped": [extension schema URIs not checked]}``.

    Raises
    ------
    pystac.errors.STACValidationError
        If an object violates a schema that could be checked.
    """
    pystac = _pystac()
    from pystac.validation import JsonSchemaSTACValidator
    from pystac.validation.stac_validator import GetSchemaError
    from referencing.exceptions import Unresolvable

    skipped: set[str] = set()

    class _Validator(JsonSchemaSTACValidator):  # type: ignore[misc]
        def validate_extension(self, stac_dict: dict[str, Any], stac_object_type: Any,
                               stac_version: str, extension_id: str,
                               href: str | None = None) -> str | None:
            try:
                return super().validate_extension(stac_dict, stac_object_type, stac_version,
                                                  extension_id, href)
            except (GetSchemaError, Unresolvable):  # not fetched, or a $ref it names
                skipped.add(extension_id)
                return None

    validator = _Validator()
    objects = 0
    log = logging.getLogger("pystac.validation.stac_validator")
    level, log.level = log.level, logging.CRITICAL  # it logs a traceback per failed fetch
    try:
        for root, _children, items in catalog.walk():
            for obj in [root, *items]:
                pystac.validation.validate_dict(obj.to_dict(), href=obj.get_self_href(),
                                                validator=validator)
                objects += 1
    finally:
        log.level = level
    return {"objects": objects, "skipped": sorted(skipped)}
