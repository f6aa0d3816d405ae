"""Small models trained from scratch on cube patches (no pretrained weights here)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["PixelCNN"]


class PixelCNN(nn.Module):
    """A fully convolutional per-pixel model.

    ``depth`` 3x3 convolutions (padding 1, ReLU, batch norm) of ``hidden`` channels,
    then a 1x1 convolution to ``out_channels`` (class logits or one regression value).

    Parameters
    ----------
    in_channels : int
        Input channels C.
    out_channels : int
        Classes K (or 1 for regression).
    hidden : int
        Width of the hidden layers.
    depth : int
        Number of 3x3 convolution layers.

    Notes
    -----
    Input ``(B, C, H, W)`` float32, output ``(B, K, H, W)``; H and W are preserved.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 32,
                 depth: int = 3) -> None:
        super().__init__()
        layers: list[Any] = []
        c = in_channels
        for _ in range(depth):
            layers += [nn.Conv2d(c, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU()]
            c = hidden
        layers.append(nn.Conv2d(c, out_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits or values ``(B, K, H, W)`` for input ``(B, C, H, W)``."""
        return self.net(x)
