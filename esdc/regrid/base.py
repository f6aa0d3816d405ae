"""The resampler interface: one implementation per way a source is located.

After xcube's ``GridMapping``/``resampling`` split: how a source's pixels are located
(:attr:`esdc.sources.base.Geolocated.location`: ``regular``, ``swath``, ``wcs``) chooses
the :class:`Resampler` (:mod:`esdc.regrid.registry`); the resampler says whether the pair
fits (:meth:`Resampler.check`), whether the source reaches the grid
(:meth:`Resampler.overlaps`) and how a variable lands on it (:meth:`Resampler.resample`).
:func:`on_grid` gives every result the grid's dims and coordinates.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import dask.array as da
import xarray as xr

from esdc.grid import Grid
from esdc.sources.base import Geolocated

__all__ = ["Resampler", "on_grid"]


class Resampler(abc.ABC):
    """Puts the variables of sources of one :attr:`location` onto a :class:`~esdc.grid.Grid`.

    Attributes
    ----------
    location : str
        The :data:`esdc.sources.base.LOCATIONS` entry it serves.
    per_observation : bool
        ``True`` when each time step is one observation resampled on its own, at its own
        time (a solar image is reprojected to the observer of its own ``DATE-OBS``): its
        time steps are then placed on the grid's time axis *after* resampling. ``False``:
        a time series is binned onto the grid's time axis first, then resampled.
    """

    location: ClassVar[str]
    per_observation: ClassVar[bool] = False

    @abc.abstractmethod
    def check(self, source: Geolocated, grid: Grid, method: str) -> None:
        """Refuse a source/grid pair (or a method) this resampler cannot handle.

        Parameters
        ----------
        source : Geolocated
            The opened source.
        grid : Grid
            The target.
        method : str
            A name of :data:`esdc.regrid.methods.METHODS`.

        Raises
        ------
        RegridError
            Naming the file, what grid it can go onto and the methods that work.
        """

    def scale(self, source: Geolocated, grid: Grid) -> tuple[float, float] | None:
        """Size of a source pixel in grid cells ``(x, y)``, where the source meets the grid.

        Returns
        -------
        tuple of 2 float or None
            Above 1: the grid is finer than the source (upsampling). ``None`` (the
            default) when this resampler cannot tell.
        """
        return None

    def coverage(self, source: Geolocated,
                 grid: Grid) -> tuple[float, float, float, float] | None:
        """The part of the grid's bbox the source covers, ``(west, south, east, north)``.

        Returns
        -------
        tuple of 4 float or None
            In the grid's CRS units; ``None`` (the default) when this resampler cannot
            tell, or the source misses the grid.
        """
        return None

    @abc.abstractmethod
    def overlaps(self, source: Geolocated, grid: Grid) -> bool:
        """Whether some of the source falls on the grid (computes no pixel)."""

    @abc.abstractmethod
    def resample(self, data: xr.DataArray, source: Geolocated, grid: Grid, method: str, *,
                 flag_values: Sequence[int] | None, fast_path: bool,
                 min_valid_fraction: float) -> Any:
        """Resample one variable, lazily.

        Parameters
        ----------
        data : xarray.DataArray
            Dims ``(..., source.ydim, source.xdim)``, Dask-backed.
        source : Geolocated
            Where its pixels are.
        grid : Grid
            The target.
        method : str
            A checked name of :data:`esdc.regrid.methods.METHODS`.
        flag_values : sequence of int or None
            The classes (``bucket_mode``).
        fast_path : bool
            Whether exact shortcuts may replace the general algorithm.
        min_valid_fraction : float
            ``conservative``: share of a cell's area valid source data must cover.

        Returns
        -------
        xarray.DataArray or dask.array.Array
            Shape ``(..., ny, nx)`` (leading dims of ``data``, then ``grid.shape``);
            float32, or the class codes' dtype for ``bucket_mode``.
        """


def on_grid(out: xr.DataArray | da.Array, data: xr.DataArray, source: Geolocated,
            grid: Grid) -> xr.DataArray:
    """A resampled array with the grid's dims and coordinates.

    Parameters
    ----------
    out : xarray.DataArray or dask.array.Array
        Shape ``(..., ny, nx)``, as :meth:`Resampler.resample` returns it.
    data : xarray.DataArray
        The variable that was resampled: its leading dims, their coordinates (those not
        on the source's spatial dims) and its attributes are kept.
    source : Geolocated
        Its geolocation.
    grid : Grid
        The target.

    Returns
    -------
    xarray.DataArray
        Dims ``(..., *grid.dims)`` with the grid's ``y``/``x`` (or ``lat``/``lon``)
        coordinates; lazy.
    """
    arr = out.data if isinstance(out, xr.DataArray) else out
    ydim, xdim = grid.dims
    coords: dict[str, Any] = {k: v for k, v in data.coords.items()
                              if not set(v.dims) & {source.ydim, source.xdim}}
    gc = grid.coords()
    coords.update({ydim: gc[ydim], xdim: gc[xdim]})
    return xr.DataArray(arr, dims=(*data.dims[:-2], ydim, xdim), coords=coords,
                        attrs=dict(data.attrs))
