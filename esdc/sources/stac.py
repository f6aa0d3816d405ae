"""STAC catalogs as granule lists (``files: {stac: {catalog, collection, asset, query}}``).

A static catalog (a ``catalog.json`` or ``collection.json``, on disk or at a URL) is read
with pystac and its items filtered here; a STAC API is searched with pystac-client
(``/search`` with ``bbox``, ``datetime``, ``collections`` and the ``query`` extension).
Either way the search covers the grid's bounding box and time span, and each item found
gives one granule: the href of its ``asset``, placed at the item's ``datetime`` (or
``start_datetime``). :func:`esdc.sources.granules.list_granules` turns them into
granules of the fetch layer.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd
import pystac

from esdc.errors import SourceError, SourceNotFoundError
from esdc.recipe.files import MAX_GRANULES, StacSpec

__all__ = ["is_api", "matches", "stac_assets"]

#: The STAC API ``query`` extension's operators, applied to a static catalog's items.
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq, "neq": operator.ne, "lt": operator.lt, "lte": operator.le,
    "gt": operator.gt, "gte": operator.ge, "in": lambda value, allowed: value in allowed,
}


def is_api(catalog: str) -> bool:
    """Whether ``catalog`` names a STAC API (its root URL) rather than a static catalog.

    A static catalog is named by its JSON document (``.../catalog.json``,
    ``collection.json``, any ``*.json``); anything else is an API's root.
    """
    return not catalog.split("?", 1)[0].rstrip("/").lower().endswith(".json")


def matches(properties: dict[str, Any], query: dict[str, Any]) -> bool:
    """Whether an item's properties satisfy a STAC ``query`` (every condition).

    Parameters
    ----------
    properties : dict
        The item's ``properties``.
    query : dict
        Property -> ``{operator: value}`` (operators ``eq``, ``neq``, ``lt``, ``lte``,
        ``gt``, ``gte``, ``in``) or a plain value (``eq``).

    Returns
    -------
    bool
        False when a property is absent or cannot be compared.
    """
    for prop, cond in query.items():
        if prop not in properties:
            return False
        for op, want in (cond.items() if isinstance(cond, dict) else [("eq", cond)]):
            try:
                if not _OPERATORS[op](properties[prop], want):
                    return False
            except TypeError:
                return False
    return True


def _naive_utc(value: Any) -> pd.Timestamp | None:
    if value is None:
        return None
    t = pd.Timestamp(value)
    return t.tz_convert("UTC").tz_localize(None) if t.tzinfo is not None else t


def _interval(item: pystac.Item) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """``(start, end)`` of an item: its datetime twice, or its start/end datetimes."""
    if item.datetime is not None:
        t = _naive_utc(item.datetime)
        return t, t
    meta = item.common_metadata
    return _naive_utc(meta.start_datetime), _naive_utc(meta.end_datetime)


def _intersects(item: pystac.Item, bbox: tuple[float, float, float, float] | None,
                span: tuple[pd.Timestamp, pd.Timestamp] | None) -> bool:
    if bbox is not None and item.bbox is not None:
        b = item.bbox
        w, s, e, n = (b[0], b[1], b[3], b[4]) if len(b) == 6 else b
        if e < bbox[0] or w > bbox[2] or n < bbox[1] or s > bbox[3]:
            return False
    if span is not None:
        start, end = _interval(item)
        if start is not None and start >= span[1]:
            return False
        if end is not None and end < span[0]:
            return False
    return True


def _describe(stac: StacSpec, catalog: str, bbox: Any, span: Any) -> str:
    parts = [f"catalog {catalog}"]
    if stac.collection:
        parts.append(f"collection {stac.collection!r}")
    if bbox is not None:
        parts.append(f"bbox {[round(v, 6) for v in bbox]}")
    if span is not None:
        parts.append(f"datetime {_datetime_range(span)}")
    if stac.query:
        parts.append(f"query {json.dumps(stac.query)}")
    return ", ".join(parts)


def _datetime_range(span: tuple[pd.Timestamp, pd.Timestamp]) -> str:
    """``START/END`` (RFC 3339, UTC) of ``[start, end)``: the end is one second before."""
    last = span[1] - pd.Timedelta(1, "s")
    return f"{span[0]:%Y-%m-%dT%H:%M:%SZ}/{max(last, span[0]):%Y-%m-%dT%H:%M:%SZ}"


def _static_items(stac: StacSpec, catalog: str, bbox: Any, span: Any,
                  what: str) -> Iterable[pystac.Item]:
    """The items of a static catalog over ``bbox`` and ``span`` that match the query."""
    try:
        root = pystac.read_file(catalog)
    except (OSError, ValueError, KeyError, pystac.STACError) as exc:
        raise SourceError(f"{what}: cannot read the STAC catalog {catalog}: {exc}") from None
    if not isinstance(root, pystac.Catalog):
        raise SourceError(f"{what}: {catalog} is a STAC {type(root).__name__}, not a catalog "
                          "or collection; give its catalog.json or collection.json.")
    node: pystac.Catalog | None = root
    if stac.collection is not None and root.id != stac.collection:
        node = next((c for c in root.get_all_collections() if c.id == stac.collection), None)
        if node is None:
            have = sorted(c.id for c in root.get_all_collections())
            raise SourceNotFoundError(f"{what}: {catalog} has no collection "
                                      f"{stac.collection!r}; it has {have or 'none'}.")
    assert node is not None
    return (item for item in node.get_items(recursive=True)
            if _intersects(item, bbox, span) and matches(item.properties, stac.query))


def _api_items(stac: StacSpec, catalog: str, bbox: Any, span: Any,
               what: str) -> Iterable[pystac.Item]:
    """The items a STAC API's ``/search`` returns for the grid (at most MAX_GRANULES + 1)."""
    try:
        from pystac_client import Client
        from pystac_client.exceptions import APIError, ParametersError
    except ImportError:
        raise SourceError(f"{what}: searching a STAC API needs pystac-client: pip install "
                          "'esdc[catalog]'.") from None

    try:
        client = Client.open(catalog)
        search = client.search(collections=[stac.collection] if stac.collection else None,
                               bbox=list(bbox) if bbox is not None else None,
                               datetime=_datetime_range(span) if span is not None else None,
                               query=stac.query or None, max_items=MAX_GRANULES + 1)
        return list(search.items())
    except (APIError, ParametersError, NotImplementedError, OSError, ValueError, KeyError,
            pystac.STACError) as exc:
        raise SourceError(f"{what}: the STAC API {catalog} cannot be searched: "
                          f"{str(exc).strip() or type(exc).__name__}") from None


def stac_assets(stac: StacSpec, catalog: str, *,
                bbox: tuple[float, float, float, float] | None,
                span: tuple[pd.Timestamp, pd.Timestamp] | None,
                what: str) -> list[tuple[str, pd.Timestamp]]:
    """The asset of every item of a catalog over the grid, in time order.

    Parameters
    ----------
    stac : StacSpec
        The recipe's ``files.stac``.
    catalog : str
        Its ``catalog`` as fetched (a local path made absolute, a mirror applied).
    bbox : tuple of float, optional
        ``(west, south, east, north)`` in degrees of longitude/latitude; items whose
        ``bbox`` does not intersect it are left out.
    span : tuple of pandas.Timestamp, optional
        ``[start, end)`` (UTC, naive); items whose datetime (or start/end datetimes)
        lies outside are left out.
    what : str
        Prefix of messages (``sources.NAME.files.stac``).

    Returns
    -------
    list of (str, pandas.Timestamp)
        The asset's absolute href and the item's time (``datetime``, else
        ``start_datetime``; naive UTC), sorted by time then href.

    Raises
    ------
    SourceNotFoundError
        If the search finds no item (the message gives the query), or the collection
        is not in a static catalog.
    SourceError
        If the catalog cannot be read or searched, an item lacks the asset (the message
        names the item and the assets it has) or has no time.
    """
    items = list((_api_items if is_api(catalog) else _static_items)(
        stac, catalog, bbox, span, what))
    if not items:
        raise SourceNotFoundError(f"{what}: the search found no STAC item ("
                                  f"{_describe(stac, catalog, bbox, span)}); widen the grid's "
                                  "bbox or time axis, or check the collection and query.")
    out = []
    for item in items:
        asset = item.assets.get(stac.asset)
        if asset is None:
            raise SourceError(f"{what}: item {item.id!r} has no asset {stac.asset!r}; it has "
                              f"{sorted(item.assets) or 'none'}. Set `asset` to one of them.")
        start = _interval(item)[0]
        if start is None:
            raise SourceError(f"{what}: item {item.id!r} has no datetime (nor "
                              "start_datetime); esdc places each item at its time.")
        out.append((asset.get_absolute_href() or asset.href, start))
    return sorted(out, key=lambda pair: (pair[1], pair[0]))
