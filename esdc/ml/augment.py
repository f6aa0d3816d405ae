"""Augmentations for gridded geodata: random views of a batch of tiles for self-supervision.

A self-supervised encoder learns what two *views* of a tile share. For physical layers
(elevation in metres, reflectance, a land fraction) a view must not change what a value
means, so the augmentations here only move, turn or hide cells and channels:

- **random crops**: a window of ``crop`` cells at a random place of the patch, drawn
  anew for every tile and view, so that two views of one patch are overlapping,
  neighbouring tiles (neighbouring places share climate or geology: Tobler's first law;
  Jean et al. 2019, "Tile2Vec", AAAI, arXiv:1805.02855, use spatial neighbours as
  positives);
- **coarse views** (multi-scale): the second view of a pair a window of ``coarse``
  cells, larger than the crop, averaged down to the crop's size (each cell the mean of
  the block it covers), so that a tile is asked to look like its wider surroundings seen
  at a coarser resolution, while it is still embedded alone;
- **flips** and **90° rotations** per tile (a map tile has no preferred orientation for
  texture);
- **channel dropout**: a channel set to 0, its normalised mean, per tile with
  probability ``channel_drop`` (at least one channel is kept), so that the encoder
  does not lean on one layer;
- optional Gaussian **noise** of standard deviation ``noise`` in normalised units (off
  by default).

No colour jitter (brightness, contrast, saturation): scaling a physical value changes
its meaning (a mare's elevation is not a highland's).

PyTorch is an optional extra: ``pip install 'esdc[ml]'``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Views", "channel_dropout", "coarse_window", "flip_rotate", "random_crop"]


def random_crop(x: torch.Tensor, size: tuple[int, int],
                generator: torch.Generator) -> torch.Tensor:
    """A ``size`` window of every tile, at a random place per tile.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, C, H, W)`` tiles.
    size : (int, int)
        ``(h, w)`` of the window in cells, ``h <= H`` and ``w <= W``.
    generator : torch.Generator
        Random source (CPU) of the window's places.

    Returns
    -------
    torch.Tensor
        ``(B, C, h, w)``, values unchanged (same units).

    Raises
    ------
    ValueError
        If the window is larger than the tiles.
    """
    b, _, hh, ww = x.shape
    h, w = size
    if not (0 < h <= hh and 0 < w <= ww):
        raise ValueError(f"crop {size} does not fit tiles of {(hh, ww)} cells.")
    if (h, w) == (hh, ww):
        return x
    oy = torch.randint(0, hh - h + 1, (b,), generator=generator).to(x.device)
    ox = torch.randint(0, ww - w + 1, (b,), generator=generator).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, h, 1)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, w)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def coarse_window(x: torch.Tensor, window: tuple[int, int], size: tuple[int, int],
                  generator: torch.Generator) -> torch.Tensor:
    """A random ``window`` of every tile, averaged down to ``size`` cells.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, C, H, W)`` tiles.
    window : (int, int)
        Cells of the window (:func:`random_crop`), ``<= (H, W)``.
    size : (int, int)
        Cells of the result, ``<= window``; each is the mean of the block of the window
        it covers (``torch.nn.functional.adaptive_avg_pool2d``: the block mean when the
        window is a multiple of the size).
    generator : torch.Generator
        Random source (CPU) of the window's places.

    Returns
    -------
    torch.Tensor
        ``(B, C, size[0], size[1])`` in the same units.

    Raises
    ------
    ValueError
        If the window is larger than the tiles or smaller than ``size``.
    """
    if window[0] < size[0] or window[1] < size[1]:
        raise ValueError(f"coarse window {window} is smaller than the view {size}.")
    return torch.nn.functional.adaptive_avg_pool2d(random_crop(x, window, generator), size)


def flip_rotate(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each tile flipped left-right with probability 1/2 and turned by k x 90°.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, C, H, W)`` tiles; quarter turns need square tiles (``H == W``), otherwise
        tiles are turned by 0° or 180° only.
    generator : torch.Generator
        Random source (CPU).

    Returns
    -------
    torch.Tensor
        ``(B, C, H, W)``: the same values, moved.
    """
    b = x.shape[0]
    turns = 4 if x.shape[2] == x.shape[3] else 2
    k = torch.randint(0, turns, (b,), generator=generator) * (4 // turns)
    flip = torch.rand(b, generator=generator) < 0.5
    out = x.clone()
    for kk in k.unique().tolist():
        for f in (False, True):
            sel = ((k == kk) & (flip == f)).nonzero().flatten().to(x.device)
            if len(sel):
                v = torch.flip(x[sel], dims=(3,)) if f else x[sel]
                out[sel] = torch.rot90(v, kk, dims=(2, 3))
    return out


def channel_dropout(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Set each channel of each tile to 0 (the normalised mean) with probability ``p``.

    At least one channel of every tile is kept.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, C, H, W)`` normalised tiles.
    p : float
        Probability of dropping a channel, in ``[0, 1)``.
    generator : torch.Generator
        Random source (CPU).

    Returns
    -------
    torch.Tensor
        ``(B, C, H, W)``; dropped channels are 0.
    """
    if p <= 0:
        return x
    b, c = x.shape[:2]
    keep = torch.rand((b, c), generator=generator) >= p
    none = ~keep.any(dim=1)
    if none.any():  # keep one random channel of tiles that lost them all
        pick = torch.randint(0, c, (int(none.sum()),), generator=generator)
        keep[none.nonzero().flatten(), pick] = True
    return x * keep.to(x.device, x.dtype)[:, :, None, None]


@dataclass(frozen=True)
class Views:
    """A recipe of random views (:mod:`esdc.ml.augment`), applied to a batch by calling it.

    Attributes
    ----------
    crop : (int, int), optional
        Window of each view in cells; None keeps the whole patch.
    flip_rotate : bool
        Random flips and quarter turns per tile.
    channel_drop : float
        Probability of dropping a channel (set to 0, the normalised mean).
    noise : float
        Standard deviation of added Gaussian noise, in normalised units (0: none).
    coarse : (int, int), optional
        The second view of a pair (:meth:`pair`) is a window of this many cells
        averaged down to ``crop`` (:func:`coarse_window`); None: both views alike.
    """

    crop: tuple[int, int] | None = None
    flip_rotate: bool = True
    channel_drop: float = 0.2
    noise: float = 0.0
    coarse: tuple[int, int] | None = None

    def pair(self, x: torch.Tensor,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Two random views ``(B, C, h, w)`` of tiles ``(B, C, H, W)``.

        The first a crop, the second a crop too or (with ``coarse``) a coarse window
        (:func:`coarse_window`), each then flipped, noised and dropped as configured.
        """
        first = self(x, generator)
        if self.coarse is None:
            return first, self(x, generator)
        size = self.crop or (x.shape[2], x.shape[3])
        return first, self(coarse_window(x, self.coarse, size, generator), generator,
                           cropped=True)

    def __call__(self, x: torch.Tensor, generator: torch.Generator,
                 cropped: bool = False) -> torch.Tensor:
        """A random view ``(B, C, h, w)`` of tiles ``(B, C, H, W)`` (``h, w`` = ``crop``).

        With ``cropped`` the tiles are already the view's window: they are only flipped,
        noised and dropped.
        """
        if self.crop is not None and not cropped:
            x = random_crop(x, self.crop, generator)
        if self.flip_rotate:
            x = flip_rotate(x, generator)
        if self.noise > 0:
            x = x + self.noise * torch.randn(x.shape, generator=generator).to(x.device)
        return channel_dropout(x, self.channel_drop, generator)
