"""Pictures of cubes: maps of a variable with the grid's coordinates and units.

Categorical variables (CF ``flag_values``/``flag_meanings``) get a discrete colour
map with a legend of the class names; continuous ones a colour bar in their units.
Needs matplotlib (``pip install 'esdc[plot]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from esdc.errors import EsdcError

__all__ = ["quicklook"]

_RGB = ("bmng_red", "bmng_green", "bmng_blue")


def _plt() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise EsdcError("matplotlib is not installed: pip install 'esdc[plot]'.") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def quicklook(ds: xr.Dataset, variable: str, path: str | Path | None = None,
              time: str | int | None = None, max_pixels: int = 1_000_000) -> Path | Any:
    """Draw a map of ``variable`` (one time step) and save it as PNG.

    Parameters
    ----------
    ds : xarray.Dataset
        The cube.
    variable : str
        A variable with dims ``([time,] y, x)``, or ``"rgb"`` for the Blue Marble
        true-colour composite when the cube has it.
    path : str or path-like, optional
        Where to write the PNG; the matplotlib figure is returned when omitted.
    time : str or int, optional
        Time label (nearest) or index; the first step by default.
    max_pixels : int
        Larger maps are subsampled (every n-th cell) for drawing.

    Returns
    -------
    pathlib.Path or matplotlib.figure.Figure

    Raises
    ------
    EsdcError
        If the variable is missing or not a map.
    """
    plt = _plt()
    if variable == "rgb":
        if not all(v in ds for v in _RGB):
            raise EsdcError("the cube has no Blue Marble channels for an RGB quicklook.")
        da = xr.concat([ds[v] for v in _RGB], dim="band")
    elif variable not in ds.data_vars:
        raise EsdcError(f"variable {variable!r} is not in the cube; it has "
                        f"{sorted(map(str, ds.data_vars))}.")
    else:
        da = ds[variable]
    if "time" in da.dims:
        if time is None:
            da = da.isel(time=0)
        elif isinstance(time, int):
            da = da.isel(time=time)
        else:
            da = da.sel(time=np.datetime64(str(time)), method="nearest")
    ydim, xdim = da.dims[-2:]
    if ydim not in ds.coords or xdim not in ds.coords:
        raise EsdcError(f"variable {variable!r} is not a map (dims {da.dims}).")
    step = max(1, int(np.ceil(np.sqrt(da.shape[-1] * da.shape[-2] / max_pixels))))
    da = da.isel({ydim: slice(None, None, step), xdim: slice(None, None, step)})
    y, x = ds[ydim].values[::step], ds[xdim].values[::step]
    extent = (float(x[0]), float(x[-1]), float(y[-1]), float(y[0]))
    fig, ax = plt.subplots(figsize=(10, 5.4))
    yunits = ds[ydim].attrs.get("units", "")
    xunits = ds[xdim].attrs.get("units", "")
    title = ds.attrs.get("title", "")
    if variable == "rgb":
        img = np.clip(np.moveaxis(da.values, 0, -1), 0, 1)
        ax.imshow(img, extent=extent, origin="upper", aspect="auto")
        label = "Blue Marble NG true colour"
    else:
        values = da.values
        flags = da.attrs.get("flag_values")
        if flags is not None:
            from matplotlib.colors import BoundaryNorm, ListedColormap
            from matplotlib.patches import Patch

            flags = [int(f) for f in np.atleast_1d(flags)]
            names = str(da.attrs.get("flag_meanings", "")).split()
            colours = plt.get_cmap("tab10").colors
            cmap = ListedColormap([colours[i % 10] for i in range(len(flags))])
            index = np.full(values.shape, np.nan)
            for i, f in enumerate(flags):
                index[values == f] = i
            ax.imshow(index, extent=extent, origin="upper", aspect="auto", cmap=cmap,
                      norm=BoundaryNorm(np.arange(len(flags) + 1) - 0.5, len(flags)),
                      interpolation="nearest")
            ax.legend(handles=[Patch(color=cmap(i), label=f"{f} {n}") for i, (f, n) in
                               enumerate(zip(flags, names, strict=False))],
                      loc="lower left", fontsize=7, framealpha=0.8)
        else:
            im = ax.imshow(values, extent=extent, origin="upper", aspect="auto",
                           cmap="viridis", interpolation="nearest")
            fig.colorbar(im, ax=ax, label=f"{da.attrs.get('units', '')}", shrink=0.85)
        label = da.attrs.get("long_name", variable)
    when = ""
    if "time" in da.coords and da["time"].ndim == 0:
        when = f", {str(da['time'].values)[:10]}"
    ax.set_title(f"{label}{when}\n{title}", fontsize=9)
    ax.set_xlabel(f"{xdim} ({xunits})")
    ax.set_ylabel(f"{ydim} ({yunits})")
    fig.tight_layout()
    if path is None:
        return fig
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
