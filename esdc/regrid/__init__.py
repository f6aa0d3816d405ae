"""Resampling onto a :class:`~esdc.grid.Grid`, lazily (Dask arrays in, Dask arrays out).

The method names are defined once (:mod:`esdc.regrid.methods`: ``nearest``,
``bilinear``, ``bucket_average``, ``bucket_mode``, ``conservative``) and the recipe schema
takes them from there. How a source is located (``Geolocated.location``: ``regular``,
``swath``, ``wcs``, after xcube's ``GridMapping``) chooses its resampler through the
registry (:mod:`esdc.regrid.registry`), which imports a resampler's module when it is first
used:

``regular`` (:mod:`esdc.regrid.regular`)
    a grid of a PROJ CRS (1-D coordinates, evenly spaced or not): exact block reductions
    when the grid's cells are whole blocks of source pixels, a separable bucket average
    for non-integer factors in one geographic CRS (:mod:`esdc.regrid.blocks`), area
    weights from cell bounds (:mod:`esdc.regrid.conservative`), else pyresample.
``swath`` (:mod:`esdc.regrid.swath`)
    per-pixel lon/lat: KD-tree nearest neighbour, pyresample buckets.
``wcs`` (:mod:`esdc.regrid.wcs`)
    solar images located by a FITS header, reprojected one image at a time with
    sunpy/reproject (``per_observation``: placed on the time axis after resampling).

:func:`regrid` refuses the bucket methods onto cells smaller than the source's pixels
and warns when a source is more than twice as coarse as the grid; :func:`coverage` says
where a source lands (recorded per layer, read by ``esdc verify`` to find holes).

Order inside the package: ``methods``, ``base``, ``separable`` <- ``extent``, ``blocks``,
``conservative``, ``nearest``, ``bucket`` <- ``regular``, ``swath``, ``wcs`` (imported by
name only) <- ``registry`` <- ``resample`` (:func:`regrid`, :func:`overlaps`,
:func:`coverage`).
"""

from esdc.regrid.blocks import aligned_blocks
from esdc.regrid.methods import METHODS
from esdc.regrid.registry import resampler_for
from esdc.regrid.resample import coverage, overlaps, regrid

__all__ = ["METHODS", "aligned_blocks", "coverage", "overlaps", "regrid", "resampler_for"]
