"""The resampler registry: how a source is located -> the module that resamples it.

Like :mod:`esdc.sources.registry`, the table holds module paths and a resampler's module
is imported when a source of its location is first resampled: the WCS resampler (sunpy,
reproject) is never imported for an Earth or Moon cube.
"""

from __future__ import annotations

from functools import cache

from esdc.errors import RegridError
from esdc.regrid.base import Resampler
from esdc.sources.base import Geolocated
from esdc.sources.registry import load_entry

__all__ = ["RESAMPLERS", "resampler", "resampler_for"]

#: :attr:`Geolocated.location <esdc.sources.base.Geolocated.location>` -> ``(module,
#: class)`` of its :class:`~esdc.regrid.base.Resampler`.
RESAMPLERS: dict[str, tuple[str, str]] = {
    "regular": ("esdc.regrid.regular", "RegularResampler"),
    "swath": ("esdc.regrid.swath", "SwathResampler"),
    "wcs": ("esdc.regrid.wcs", "WcsResampler"),
}


@cache
def resampler(location: str) -> Resampler:
    """The resampler of a location kind, its module imported now (once).

    Parameters
    ----------
    location : str
        A key of :data:`RESAMPLERS`.

    Returns
    -------
    Resampler

    Raises
    ------
    RegridError
        If no resampler is registered for ``location``.
    """
    cls = load_entry(RESAMPLERS, location)
    if cls is None:
        raise RegridError(f"no resampler for sources located by {location!r}; known: "
                          f"{', '.join(RESAMPLERS)}.")
    return cls()  # type: ignore[no-any-return]


def resampler_for(source: Geolocated) -> Resampler:
    """The resampler of a source, chosen by how its pixels are located.

    Parameters
    ----------
    source : Geolocated
        An opened source.

    Returns
    -------
    Resampler
        Its :attr:`~esdc.regrid.base.Resampler.per_observation` tells how a time series
        of it meets the grid's time axis.
    """
    return resampler(source.location)
