"""Local copies of public archives' layouts, made from the real samples (tests, benchmarks).

``recipes/oisst.yaml`` reads NOAA OISST v2.1 daily files from NCEI's HTTPS archive. The
tests and ``benchmarks/bench_ingest.py`` build the same recipe without network: they
serve a folder laid out like that archive from :class:`esdc.loopback.LoopbackServer`
and point the recipe at it with ``esdc build --mirror`` (``mirrors=`` in Python). The
files are made by :func:`write_oisst_granules` from the OSTIA monthly sample (real SST,
UK Met Office): one file per day in OISST's format (``sst(time, zlev, lat, lon)``,
int16 packed by 0.01 degree_Celsius, ``_FillValue`` -999, one ``zlev`` level of 0 m,
NCEI's folder and file names), each day holding its month's field.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from esdc.samples import sample_path

__all__ = ["OISST_PREFIX", "oisst_name", "write_oisst_granules"]

#: Where recipes/oisst.yaml's granules are (NCEI, public HTTPS, no login).
OISST_PREFIX = ("https://www.ncei.noaa.gov/data/sea-surface-temperature-optimum-"
                "interpolation/v2.1/access/avhrr")


def oisst_name(day: pd.Timestamp) -> str:
    """The path of one day's granule under :data:`OISST_PREFIX` (``YYYYMM/oisst-...nc``)."""
    return f"{day:%Y%m}/oisst-avhrr-v02r01.{day:%Y%m%d}.nc"


def write_oisst_granules(folder: str | Path, start: str, end: str) -> list[Path]:
    """Write OISST-format daily granules from ``start`` to ``end`` into ``folder``.

    Parameters
    ----------
    folder : str or pathlib.Path
        Root of the mirror (the folder served in place of :data:`OISST_PREFIX`).
    start, end : str
        First and last day (ISO 8601), within the OSTIA sample's 2006-04..2010-09.

    Returns
    -------
    list of pathlib.Path
        The files written, one per day, in time order.

    Raises
    ------
    ValueError
        If a day falls outside the sample's months.
    """
    root = Path(folder)
    days = pd.date_range(start, end, freq="D")
    with xr.open_dataset(sample_path("ostia-monthly")) as ostia:
        months = pd.DatetimeIndex(ostia["time"].values).to_period("M")
        sst = ostia["surface_temperature"]
        lat = ostia["latitude"].values.astype("float32")
        lon = ostia["longitude"].values.astype("float32")
        out = []
        for day in days:
            hit = np.flatnonzero(months == day.to_period("M"))
            if not hit.size:
                raise ValueError(f"{day:%Y-%m-%d} is outside the OSTIA sample (2006-04..2010-09)")
            field = sst.isel(time=int(hit[0])).values - 273.15  # K -> degree_Celsius
            packed = np.where(np.isfinite(field), np.round(field / 0.01), -999).astype("int16")
            ds = xr.Dataset(
                {"sst": (("time", "zlev", "lat", "lon"), packed[None, None],
                         {"long_name": "Daily sea surface temperature",
                          "units": "Celsius", "scale_factor": 0.01, "add_offset": 0.0,
                          "_FillValue": np.int16(-999), "valid_min": np.int16(-300),
                          "valid_max": np.int16(4500)})},
                coords={"time": ("time", [day + pd.Timedelta(hours=12)],
                                 {"long_name": "Center time of the day"}),
                        "zlev": ("zlev", np.zeros(1, "float32"),
                                 {"long_name": "Sea surface height", "units": "meters",
                                  "axis": "Z", "positive": "down"}),
                        "lat": ("lat", lat, {"units": "degrees_north", "axis": "Y"}),
                        "lon": ("lon", lon, {"units": "degrees_east", "axis": "X"})},
                attrs={"Conventions": "CF-1.6, ACDD-1.3",
                       "title": "OISST-format granule made from the OSTIA monthly sample",
                       "source": "OSTIA monthly sample (UK Met Office), esdc.mirror"})
            path = root / oisst_name(day)
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.to_netcdf(path, encoding={"sst": {"dtype": "int16", "zlib": True, "complevel": 4},
                                         "time": {"units": "days since 1978-01-01 12:00:00",
                                                  "dtype": "float32"}})
            out.append(path)
    return out
