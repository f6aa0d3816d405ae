"""Self-supervised encoder trained from scratch on cube tiles (SimSiam).

SimSiam (Chen and He 2021, "Exploring Simple Siamese Representation Learning",
CVPR, arXiv:2011.10566): two augmented views of a tile go through the same encoder
and projector; a predictor maps one to the other; the loss is the negative cosine
similarity with a stop-gradient on the target branch. No negatives, no momentum
encoder, no pretrained weights (none can be downloaded here).

Augmentations for gridded geoscience tiles: random 90° rotations and flips (the
grid has no preferred orientation for texture), Gaussian noise on the normalised
values, and random channel dropout (set to 0 = the mean).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["Encoder", "SimSiam", "augment", "simsiam_loss"]


class Encoder(nn.Module):
    """Convolutional tile encoder: ``(B, C, H, W)`` -> embedding ``(B, dim)``.

    Three stride-2 3x3 convolution blocks (batch norm, ReLU), global average pooling,
    then a linear layer to ``dim``. Fully convolutional before the pooling, so one
    encoder embeds tiles of any size (multi-resolution search).

    Parameters
    ----------
    in_channels : int
        Input channels C.
    dim : int
        Embedding size.
    width : int
        Channels of the first block (doubled at each block).
    """

    def __init__(self, in_channels: int, dim: int = 64, width: int = 32) -> None:
        super().__init__()
        c, layers = in_channels, []
        for i in range(3):
            w = width * 2**i
            layers += [nn.Conv2d(c, w, 3, stride=2 if i else 1, padding=1), nn.BatchNorm2d(w),
                       nn.ReLU()]
            c = w
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c, dim)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, dim)`` of tiles ``(B, C, H, W)``."""
        return self.head(self.features(x))


class SimSiam(nn.Module):
    """Encoder + projector + predictor of SimSiam (Chen and He 2021)."""

    def __init__(self, in_channels: int, dim: int = 64, width: int = 32) -> None:
        super().__init__()
        self.encoder = Encoder(in_channels, dim, width)
        self.projector = nn.Sequential(nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(),
                                       nn.Linear(dim, dim), nn.BatchNorm1d(dim))
        self.predictor = nn.Sequential(nn.Linear(dim, dim // 2), nn.BatchNorm1d(dim // 2),
                                       nn.ReLU(), nn.Linear(dim // 2, dim))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> Any:
        """Projections ``z1, z2`` and predictions ``p1, p2``, each ``(B, dim)``."""
        z1, z2 = self.projector(self.encoder(x1)), self.projector(self.encoder(x2))
        return z1, z2, self.predictor(z1), self.predictor(z2)


def simsiam_loss(z1: torch.Tensor, z2: torch.Tensor, p1: torch.Tensor,
                 p2: torch.Tensor) -> torch.Tensor:
    """Symmetric negative cosine similarity with stop-gradient (in [-1, 1]; -1 is perfect)."""
    cos = nn.functional.cosine_similarity
    return -(cos(p1, z2.detach()).mean() + cos(p2, z1.detach()).mean()) / 2


def augment(x: torch.Tensor, generator: torch.Generator, noise: float = 0.1,
            drop: float = 0.2) -> torch.Tensor:
    """A random view of a batch ``(B, C, H, W)``: rotation/flip, noise, channel dropout."""
    k = int(torch.randint(0, 4, (1,), generator=generator))
    x = torch.rot90(x, k, dims=(2, 3))
    if bool(torch.rand(1, generator=generator) < 0.5):
        x = torch.flip(x, dims=(3,))
    x = x + noise * torch.randn(x.shape, generator=generator)
    keep = (torch.rand(x.shape[:2], generator=generator) >= drop).float()[:, :, None, None]
    return x * keep
