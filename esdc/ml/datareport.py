"""What a training run learns from: patches and pixels per split and class, with warnings.

:func:`data_report` counts, for the train / validation / test streams of a run
(:class:`~esdc.ml.patches.PatchStream`), the patches per epoch, the valid target pixels
inside them and, for a classification, the pixels of each class. It warns when the split
blocks waste more than half of the grid's patches (a patch counts only when it lies wholly
inside one block: ``split.block: [20, 20]`` with ``patch: [16, 16]`` keeps 1 patch in 4),
and when a split lacks the training majority class (its accuracy then says little).
:func:`esdc.ml.train.train` logs the counts to MLflow and returns them with its result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from esdc.ml.metrics import class_values
from esdc.ml.patches import PatchStream

__all__ = ["DataReport", "SplitCounts", "data_report", "report_lines"]

#: Waste above which a warning says that the split blocks do not fit the patch.
MAX_WASTED = 0.5


@dataclass(frozen=True)
class SplitCounts:
    """The data of one split.

    Attributes
    ----------
    patches : int
        Patches per epoch (patch positions x time steps).
    pixels : int
        Valid target pixels inside them (cells x time steps; without a target, every
        cell the patches cover).
    classes : dict of str to int
        Pixels per class of a classification (by ``flag_meanings`` name, else the value).
    """

    patches: int
    pixels: int
    classes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DataReport:
    """Patches and pixels per split and class, and what is wrong with them.

    Attributes
    ----------
    grid_patches : int
        Patches the grid holds per epoch before splitting (any block).
    splits : dict of str to SplitCounts
        ``train``, ``validation``, ``test``.
    warnings : list of str
        Blocks that waste more than half of the patches; a split without the training
        majority class.
    """

    grid_patches: int
    splits: dict[str, SplitCounts]
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``data`` of a training result, ``data.json`` of a run)."""
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """The counts as flat MLflow metrics.

        ``data_grid_patches``, ``data_{split}_patches``, ``data_{split}_pixels`` and
        ``data_{split}_class_{name}``.
        """
        out = {"data_grid_patches": float(self.grid_patches)}
        for split, c in self.splits.items():
            out[f"data_{split}_patches"] = float(c.patches)
            out[f"data_{split}_pixels"] = float(c.pixels)
            out.update({f"data_{split}_class_{k}": float(n) for k, n in c.classes.items()})
        return out


def report_lines(data: Mapping[str, Any]) -> list[str]:
    """One line per split of a :meth:`DataReport.as_dict` (``TrainResult.data``).

    Parameters
    ----------
    data : mapping
        The report as a dict (it crosses from a Dask worker as one).

    Returns
    -------
    list of str
        ``"train: 96 patches, 24576 pixels (ocean 10000, land 14000, lake 576)"``, ...
    """
    lines = []
    for split, c in (data.get("splits") or {}).items():
        per_class = ", ".join(f"{k} {n}" for k, n in c.get("classes", {}).items())
        lines.append(f"{split}: {c['patches']} patches, {c['pixels']} pixels"
                     + (f" ({per_class})" if per_class else ""))
    return lines


def _names(stream: PatchStream, target: str,
           classes: Sequence[int] | None) -> dict[int, str]:
    """Class value -> name (``flag_meanings``; the value as text when there is none)."""
    attrs = stream.dataset[target].attrs
    values = [int(v) for v in class_values(attrs, target, classes)]
    meanings = str(attrs.get("flag_meanings", "")).split()
    flags = [int(v) for v in np.atleast_1d(attrs.get("flag_values", []))]
    named = dict(zip(flags, meanings, strict=False))
    return {v: named.get(v, str(v)) for v in values}


def _target_counts(streams: Mapping[str, PatchStream], target: str,
                   names: dict[int, str] | None) -> dict[str, tuple[int, dict[str, int]]]:
    """Valid target pixels (and per class) inside each split's patches, time chunk by chunk."""
    first = next(iter(streams.values()))
    da = first.dataset[target]
    masks = {s: st.footprint() for s, st in streams.items()}
    pixels = dict.fromkeys(streams, 0)
    per_class = {s: dict.fromkeys((names or {}).values(), 0) for s in streams}
    t0, t1 = first.time_steps or (0, first.dataset.sizes.get("time", 1))
    timed = "time" in da.dims
    step = int(da.encoding.get("chunks", (t1 - t0,))[0]) if timed else 1
    repeat = 1 if timed else first.steps  # a static target repeats at every time step
    for a in range(t0, t1, max(step, 1)) if timed else [0]:
        block = np.asarray(da.isel(time=slice(a, min(a + step, t1))).values if timed
                           else da.values[None])
        for split, mask in masks.items():
            vals = block[:, mask]
            vals = vals[np.isfinite(vals)]
            pixels[split] += int(vals.size) * repeat
            if names:
                got, n = np.unique(vals.astype(np.int64), return_counts=True)
                for v, k in zip(got, n, strict=True):
                    name = names.get(int(v))
                    if name is not None:
                        per_class[split][name] += int(k) * repeat
    return {s: (pixels[s], per_class[s]) for s in streams}


def _block_advice(stream: PatchStream) -> str:
    """Blocks that hold whole patches: the block rounded up to a multiple of the patch."""
    ph, pw = stream.patch
    bh, bw = stream.split_block or (4 * ph, 4 * pw)
    return f"[{math.ceil(bh / ph) * ph}, {math.ceil(bw / pw) * pw}]"


def data_report(streams: Mapping[str, PatchStream], target: str | None = None,
                task: str = "classification",
                classes: Sequence[int] | None = None) -> DataReport:
    """Count a run's patches and pixels per split (and class) and say what is thin.

    Parameters
    ----------
    streams : mapping of str to PatchStream
        ``train``, ``validation``, ``test`` streams of one config (same grid, patch and
        blocks).
    target : str, optional
        The target variable (none for ``task: embedding``).
    task : {"classification", "regression", "embedding"}
        Per-class counts and the majority-class check for a classification only.
    classes : sequence of int, optional
        The config's ``classes`` (default: the target's ``flag_values``).

    Returns
    -------
    DataReport

    Raises
    ------
    TrainConfigError
        For a classification whose classes are neither given nor in ``flag_values``.
    """
    first = next(iter(streams.values()))
    grid_patches = len(first.grid_origins()) * first.steps
    used = sum(len(s) for s in streams.values())
    counts: dict[str, SplitCounts] = {}
    if target is not None:
        names = _names(first, target, classes) if task == "classification" else None
        for split, (pixels, per) in _target_counts(streams, target, names).items():
            counts[split] = SplitCounts(len(streams[split]), pixels, per)
    else:
        counts = {s: SplitCounts(len(st), int(st.footprint().sum()) * st.steps)
                  for s, st in streams.items()}
    warnings = []
    if grid_patches and used < (1 - MAX_WASTED) * grid_patches:
        ph, pw = first.patch
        block = first.split_block or (4 * ph, 4 * pw)
        warnings.append(
            f"split blocks {list(block)} with patches {[ph, pw]} keep {used} of the grid's "
            f"{grid_patches} patches ({1 - used / grid_patches:.0%} wasted: a patch counts "
            "only when it lies wholly inside one block); choose blocks that are multiples "
            f"of the patch, e.g. split.block: {_block_advice(first)}.")
    train = counts.get("train")
    if task == "classification" and train is not None and any(train.classes.values()):
        major = max(train.classes, key=lambda k: train.classes[k])
        for split, c in counts.items():
            if split != "train" and not c.classes.get(major):
                warnings.append(
                    f"the {split} split has no pixel of the training majority class "
                    f"{major!r} ({c.pixels} pixels, {c.patches} patches): its accuracy says "
                    "little; use larger or more blocks (split.block, split.fractions) or a "
                    "larger region.")
    return DataReport(grid_patches, counts, warnings)
