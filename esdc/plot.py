"""Pictures of cubes: maps of a variable with the grid's coordinates and units.

Categorical variables (CF ``flag_values``/``flag_meanings``) get a discrete colour
map with a legend of the class names; continuous ones a colour bar in their units.
Needs matplotlib (``pip install 'esdc[plot]'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from esdc.errors import EsdcError, SelectionError, did_you_mean

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


def _channels(ds: xr.Dataset, rgb: Sequence[str] | None) -> xr.DataArray:
    """The three channels of a true-colour map, ``(band=3, y, x)``, stretched to 0..1."""
    names = list(rgb or _RGB)
    if len(names) != 3:
        raise SelectionError(f"rgb={','.join(names)}: give three variables R,G,B.")
    missing = [n for n in names if n not in ds.data_vars]
    if missing and rgb is None:
        raise SelectionError(f"the cube has no Blue Marble channels ({', '.join(_RGB)}) for "
                             "an RGB map; name its red, green and blue variables with "
                             "rgb=R,G,B.")
    if missing:
        others = sorted(map(str, ds.data_vars))
        raise SelectionError(f"rgb={','.join(names)}: {missing[0]!r} is not in the cube"
                             f"{did_you_mean(missing[0], others)}; it has "
                             f"{', '.join(others)}.")
    da = xr.concat([ds[v] for v in names], dim="band")
    return da.assign_attrs(long_name=("Blue Marble NG true colour" if rgb is None else
                                      f"true colour ({', '.join(names)})"))


def quicklook(ds: xr.Dataset, variable: str | None, path: str | Path | None = None,
              time: str | int | None = None, max_pixels: int = 1_000_000,
              rgb: Sequence[str] | None = None) -> Path | Any:
    """Draw a map of ``variable`` (one time step) and save it as PNG.

    Parameters
    ----------
    ds : xarray.Dataset
        The cube.
    variable : str or None
        A variable with dims ``([time,] y, x)``, or ``"rgb"`` (or None with ``rgb``) for a
        true-colour composite.
    path : str or path-like, optional
        Where to write the PNG; the matplotlib figure is returned when omitted.
    time : str or int, optional
        Time label (nearest) or index; the first step by default.
    max_pixels : int
        Larger maps are subsampled (every n-th cell) for drawing.
    rgb : sequence of 3 str, optional
        The red, green and blue variables of a true-colour map (default, with ``"rgb"``:
        the Blue Marble channels ``bmng_red``, ``bmng_green``, ``bmng_blue``). Channels
        outside 0..1 are stretched between their 2nd and 98th percentiles.

    Returns
    -------
    pathlib.Path or matplotlib.figure.Figure

    Raises
    ------
    SelectionError
        If the variable (or an RGB channel) is missing or not a map.
    EsdcError
        If matplotlib is not installed.
    """
    plt = _plt()
    if rgb is not None or variable in ("rgb", None):
        da, variable = _channels(ds, rgb), "rgb"
    elif variable not in ds.data_vars:
        names = sorted(map(str, ds.data_vars))
        raise SelectionError(f"variable {variable!r} is not in the cube"
                             f"{did_you_mean(variable, names)}; it has {', '.join(names)}.")
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
        raise SelectionError(f"variable {variable!r} is not a map (dims {da.dims}).")
    step = max(1, int(np.ceil(np.sqrt(da.shape[-1] * da.shape[-2] / max_pixels))))
    da = da.isel({ydim: slice(None, None, step), xdim: slice(None, None, step)})
    y, x = ds[ydim].values[::step], ds[xdim].values[::step]
    extent = (float(x[0]), float(x[-1]), float(y[-1]), float(y[0]))
    fig, ax = plt.subplots(figsize=(10, 5.4))
    yunits = ds[ydim].attrs.get("units", "")
    xunits = ds[xdim].attrs.get("units", "")
    title = ds.attrs.get("title", "")
    if variable == "rgb":
        img = np.moveaxis(np.asarray(da.values, dtype="float64"), 0, -1)
        if np.nanmin(img, initial=0) < 0 or np.nanmax(img, initial=0) > 1:
            lo, hi = np.nanpercentile(img, [2, 98])
            img = (img - lo) / (hi - lo if hi > lo else 1.0)
        img = np.clip(img, 0, 1)
        ax.imshow(img, extent=extent, origin="upper", aspect="auto")
        label = da.attrs["long_name"]
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
