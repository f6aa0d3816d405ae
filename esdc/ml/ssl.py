"""Self-supervised tile encoders trained from scratch on cube tiles: SimSiam, VICReg, MAE.

Two augmented views of a tile (:mod:`esdc.ml.augment`) go through the same encoder and
a head; the loss asks the views to agree without letting every tile collapse onto one
vector (``simsiam``, ``vicreg``), or to rebuild each view's hidden cells (``mae``). No
pretrained weights (none can be downloaded here).

``simsiam``
    Chen and He 2021, "Exploring Simple Siamese Representation Learning", CVPR,
    arXiv:2011.10566: a projector, a predictor mapping one view to the other, negative
    cosine similarity with a stop-gradient on the target branch.
``vicreg``
    Bardes, Ponce and LeCun 2022, "VICReg: Variance-Invariance-Covariance
    Regularization for Self-Supervised Learning", ICLR, arXiv:2105.04906: an expander
    MLP; the loss is the views' mean squared distance (invariance) plus a hinge that
    keeps every dimension's standard deviation over the batch at 1 (variance) plus the
    squared off-diagonal covariances (decorrelation). Collapse is prevented by the
    loss itself, with no predictor or stop-gradient.
``mae``
    a masked autoencoder for convolutional encoders: a random share ``mask`` of each
    view's cells is hidden (set to 0, the normalised mean, in every channel), the
    encoder embeds what is left and a small MLP decoder rebuilds every cell of the view
    from the embedding alone; the loss is the squared error, mostly of the hidden cells
    (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners", CVPR,
    arXiv:2111.06377; for convolutional encoders, which cannot drop hidden cells, they
    are masked in place as in Xie et al. 2022, "SimMIM", CVPR, arXiv:2111.09886).

:data:`OBJECTIVES` maps ``model.kind`` to the network and loss.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from esdc.errors import TrainConfigError

__all__ = ["ENCODER_PARAMS", "OBJECTIVES", "Encoder", "MaskedAutoencoder", "Objective",
           "SimSiam", "VICReg", "mae_loss", "simsiam_loss", "vicreg_loss"]

#: Keyword parameters of :class:`Encoder` (what ``encoder.json`` records as ``params``).
ENCODER_PARAMS = ("dim", "width", "pooled")


class Encoder(nn.Module):
    """Convolutional tile encoder: ``(B, C, H, W)`` -> embedding ``(B, dim)``.

    Three 3x3 convolution blocks (batch norm, ReLU; the second and third with stride
    2), global average pooling, then a linear layer to ``dim``. Fully convolutional
    before the pooling, so one encoder embeds tiles of any size (multi-resolution
    search).

    Parameters
    ----------
    in_channels : int
        Input channels C.
    dim : int
        Embedding size.
    width : int
        Channels of the first block (doubled at each block).
    pooled : bool
        Also give the linear layer the tile's mean of every input channel (``C`` more
        features), so that absolute levels (an elevation, a reflectance) reach the
        embedding directly beside the texture the convolutions see.
    """

    def __init__(self, in_channels: int, dim: int = 64, width: int = 32,
                 pooled: bool = False) -> None:
        super().__init__()
        c, layers = in_channels, []
        for i in range(3):
            w = width * 2**i
            layers += [nn.Conv2d(c, w, 3, stride=2 if i else 1, padding=1), nn.BatchNorm2d(w),
                       nn.ReLU()]
            c = w
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.pooled = pooled
        self.head = nn.Linear(c + (in_channels if pooled else 0), dim)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, dim)`` of tiles ``(B, C, H, W)``."""
        f = self.features(x)
        if self.pooled:
            f = torch.cat([f, x.mean(dim=(2, 3))], dim=1)
        return self.head(f)


def _mlp(sizes: list[int], last_norm: bool) -> nn.Sequential:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]`` with batch norm and ReLU between."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.BatchNorm1d(b), nn.ReLU()]
    if last_norm:
        layers.append(nn.BatchNorm1d(sizes[-1]))
    return nn.Sequential(*layers)


class SimSiam(nn.Module):
    """Encoder + projector + predictor of SimSiam (Chen and He 2021).

    Parameters
    ----------
    in_channels : int
        Input channels.
    projector : int, optional
        Width of the projector and of the predictor's output (default ``dim``).
    **encoder
        :class:`Encoder` parameters (``dim``, ``width``, ``pooled``).
    """

    def __init__(self, in_channels: int, projector: int | None = None, **encoder: Any) -> None:
        super().__init__()
        self.encoder = Encoder(in_channels, **encoder)
        dim = self.encoder.dim
        p = projector or dim
        self.projector = _mlp([dim, p, p], last_norm=True)
        self.predictor = _mlp([p, max(p // 4, dim // 2), p], last_norm=False)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> Any:
        """Projections ``z1, z2`` and predictions ``p1, p2``, each ``(B, projector)``."""
        z1, z2 = self.projector(self.encoder(x1)), self.projector(self.encoder(x2))
        return z1, z2, self.predictor(z1), self.predictor(z2)


class VICReg(nn.Module):
    """Encoder + expander of VICReg (Bardes, Ponce and LeCun 2022).

    Parameters
    ----------
    in_channels : int
        Input channels.
    expander : int, optional
        Width of the three-layer expander (default ``4 * dim``; the paper's expander is
        wider than the representation, where the decorrelation acts).
    **encoder
        :class:`Encoder` parameters (``dim``, ``width``, ``pooled``).
    """

    def __init__(self, in_channels: int, expander: int | None = None, **encoder: Any) -> None:
        super().__init__()
        self.encoder = Encoder(in_channels, **encoder)
        e = expander or 4 * self.encoder.dim
        self.expander = _mlp([self.encoder.dim, e, e, e], last_norm=False)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> Any:
        """Expanded embeddings ``z1, z2`` ``(B, expander)`` of the two views."""
        return self.expander(self.encoder(x1)), self.expander(self.encoder(x2))


class MaskedAutoencoder(nn.Module):
    """Encoder + decoder of a masked autoencoder (``model.kind: mae``).

    Parameters
    ----------
    in_channels : int
        Input channels C.
    mask : float
        Share of each view's cells hidden, in ``(0, 1)`` (drawn anew per cell and view;
        all channels of a cell together).
    decoder : int
        Hidden width of the two-layer decoder.
    grid : int
        Cells per side the decoder rebuilds; views of another size are compared with
        its output resized to theirs (bilinear).
    **encoder
        :class:`Encoder` parameters (``dim``, ``width``, ``pooled``).

    Raises
    ------
    TrainConfigError
        If ``mask`` is not in ``(0, 1)``.
    """

    def __init__(self, in_channels: int, mask: float = 0.5, decoder: int = 256, grid: int = 8,
                 **encoder: Any) -> None:
        super().__init__()
        if not 0 < mask < 1:
            raise TrainConfigError(f"model.mask {mask} must be between 0 and 1 (the share of "
                                   "cells hidden).")
        self.encoder = Encoder(in_channels, **encoder)
        self.mask, self.grid, self.channels = float(mask), int(grid), in_channels
        self.decoder = nn.Sequential(nn.Linear(self.encoder.dim, decoder), nn.ReLU(),
                                     nn.Linear(decoder, in_channels * grid * grid))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> Any:
        """Rebuilt views ``(2B, C, H, W)``, the views and the hidden cells ``(2B, 1, H, W)``."""
        x = torch.cat([x1, x2])
        b, _, h, w = x.shape
        hidden = (torch.rand(b, 1, h, w, device=x.device) < self.mask).to(x.dtype)
        rebuilt = self.decoder(self.encoder(x * (1 - hidden)))
        rebuilt = rebuilt.view(b, self.channels, self.grid, self.grid)
        if (h, w) != (self.grid, self.grid):
            rebuilt = nn.functional.interpolate(rebuilt, size=(h, w), mode="bilinear",
                                                align_corners=False)
        return rebuilt, x, hidden


def mae_loss(rebuilt: torch.Tensor, x: torch.Tensor, hidden: torch.Tensor,
             visible: float = 0.1) -> torch.Tensor:
    r"""Squared error of a masked autoencoder, weighted towards the hidden cells.

    .. math::

        \frac{\sum_{b,c,i,j} w_{bij} (\hat x_{bcij} - x_{bcij})^2}{C \sum_{b,i,j} w_{bij}},
        \quad w = 1 \text{ (hidden)}, \; w = \text{visible} \text{ (shown)}

    Parameters
    ----------
    rebuilt, x : torch.Tensor
        ``(B, C, H, W)`` decoder output and the views (normalised units).
    hidden : torch.Tensor
        ``(B, 1, H, W)`` 1 where a cell was hidden, else 0.
    visible : float
        Weight of the cells the encoder saw.

    Returns
    -------
    torch.Tensor
        Scalar, >= 0 (0: every cell rebuilt exactly), in squared normalised units.
    """
    weight = visible + (1 - visible) * hidden
    return ((rebuilt - x) ** 2 * weight).sum() / (weight.sum() * x.shape[1])


def simsiam_loss(z1: torch.Tensor, z2: torch.Tensor, p1: torch.Tensor,
                 p2: torch.Tensor) -> torch.Tensor:
    """Symmetric negative cosine similarity with stop-gradient (in [-1, 1]; -1 is perfect).

    Parameters
    ----------
    z1, z2 : torch.Tensor
        ``(B, D)`` projections of the two views.
    p1, p2 : torch.Tensor
        ``(B, D)`` predictions from them.

    Returns
    -------
    torch.Tensor
        Scalar ``-(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2``, batch means.
    """
    cos = nn.functional.cosine_similarity
    return -(cos(p1, z2.detach()).mean() + cos(p2, z1.detach()).mean()) / 2


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, invariance: float = 25.0,
                variance: float = 25.0, covariance: float = 1.0,
                eps: float = 1e-4) -> torch.Tensor:
    r"""VICReg loss of two batches of expanded embeddings (Bardes et al. 2022, eq. 6).

    .. math::

        \lambda \frac{1}{B}\sum_b \lVert z_{1b} - z_{2b}\rVert^2 / D
        + \mu \sum_{v=1,2} \frac{1}{2D}\sum_d \max(0, 1 - \sqrt{\mathrm{Var}(z_{v,d}) +
        \epsilon})
        + \nu \sum_{v=1,2} \frac{1}{D}\sum_{d \ne d'} C(z_v)_{d d'}^2

    with :math:`C` the batch covariance matrix and the paper's weights
    :math:`\lambda = \mu = 25`, :math:`\nu = 1`.

    Parameters
    ----------
    z1, z2 : torch.Tensor
        ``(B, D)`` expanded embeddings of the two views, ``B >= 2``.
    invariance, variance, covariance : float
        Weights :math:`\lambda, \mu, \nu`.
    eps : float
        Added to the variance before the square root.

    Returns
    -------
    torch.Tensor
        Scalar loss, >= 0 (0: identical views, unit standard deviations, no correlation).
    """
    b, d = z1.shape
    inv = nn.functional.mse_loss(z1, z2)
    var = cov = z1.new_zeros(())
    for z in (z1, z2):
        z = z - z.mean(dim=0)
        var = var + torch.relu(1 - torch.sqrt(z.var(dim=0) + eps)).mean() / 2
        c = (z.T @ z) / (b - 1)
        cov = cov + (c.pow(2).sum() - c.diagonal().pow(2).sum()) / d
    return invariance * inv + variance * var + covariance * cov


class Objective(NamedTuple):
    """A self-supervised objective: its network and its loss.

    ``network(in_channels, **params)`` has an ``encoder`` (:class:`Encoder`) and maps two
    views to the loss's arguments: ``loss(*network(x1, x2))``. ``head`` names the
    network's own parameters besides the encoder's (:data:`ENCODER_PARAMS`).
    """

    network: type[nn.Module]
    loss: Any
    head: tuple[str, ...]


#: ``model.kind`` of ``task: embedding`` -> network and loss.
OBJECTIVES: dict[str, Objective] = {
    "simsiam": Objective(SimSiam, simsiam_loss, ("projector",)),
    "vicreg": Objective(VICReg, vicreg_loss, ("expander",)),
    "mae": Objective(MaskedAutoencoder, mae_loss, ("mask", "decoder", "grid")),
}
