"""Self-supervised encoder fitter (``task: embedding``): SimSiam, VICReg or MAE, from scratch.

The networks and losses are :mod:`esdc.ml.ssl` (``model.kind``: ``simsiam``, Chen and
He 2021; ``vicreg``, Bardes, Ponce and LeCun 2022; ``mae``, a masked autoencoder), the
random views :mod:`esdc.ml.augment` (the config's ``augment``: overlapping training
patches, random crops, coarse views, flips and quarter turns, channel dropout). The
learning rate decays along a half cosine to zero over the run (Loshchilov and Hutter
2017, "SGDR", ICLR). The encoder is saved as ``encoder.pt`` (``state_dict`` of
:class:`esdc.ml.ssl.Encoder`, loads with ``torch.load(weights_only=True)``) with
``encoder.json`` (architecture, inputs, tile size, context);
:func:`esdc.embed.load_encoder` reads both back to embed a cube.

PyTorch is an optional extra: ``pip install 'esdc[ml]'``.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import torch

from esdc.errors import TrainConfigError
from esdc.ml.augment import Views
from esdc.ml.config import AugmentSpec, TrainConfig
from esdc.ml.fit import FitContext, FitResult, Fitter
from esdc.ml.patches import PatchStream
from esdc.ml.ssl import ENCODER_PARAMS, OBJECTIVES
from esdc.ml.torch import PatchDataset, device_for, patch_loader

__all__ = ["DEFAULT_PARAMS", "FITTER", "fit", "training_stream"]

#: Encoder parameters unless the config's ``model`` gives them: embedding size and width.
DEFAULT_PARAMS = {"dim": 64, "width": 32}


def training_stream(cfg: TrainConfig, stream: PatchStream) -> PatchStream:
    """The train split's patches as the encoder reads them: every ``augment.stride`` cells.

    Parameters
    ----------
    cfg : TrainConfig
        ``patch`` and ``augment.stride`` (default: the patch, no overlap).
    stream : PatchStream
        The train split (:attr:`FitContext.streams` ``["train"]``).

    Returns
    -------
    PatchStream
        ``stream`` itself without a stride, else a copy whose patches overlap by
        ``patch - stride`` cells (still wholly inside train blocks).
    """
    stride = cfg.augment.stride if cfg.augment is not None else None
    if stride is None:
        return stream
    return replace(stream, overlap=(cfg.patch[0] - stride[0], cfg.patch[1] - stride[1]))


def fit(cfg: TrainConfig, ctx: FitContext) -> FitResult:
    """Train a self-supervised encoder on the train split; save the encoder.

    Parameters
    ----------
    cfg : TrainConfig
        ``task: embedding``; ``model.kind`` ``simsiam``, ``vicreg`` or ``mae`` with the
        encoder's ``dim``, ``width``, ``pooled`` and the head's ``projector``
        (SimSiam) or ``expander`` (VICReg) width, or the MAE's ``mask``, ``decoder`` and
        ``grid``; patches of ``patch`` cells, views as
        ``augment`` says; ``epochs``, ``batch_size``, ``learning_rate`` (the start of
        the cosine decay); ``context``, recorded in ``encoder.json`` for ``esdc embed``.
    ctx : FitContext
        Splits, output folder, device and epoch logger (``train_loss``, ``val_loss``).

    Returns
    -------
    FitResult
        ``{kind}_loss`` of the validation split after training (``simsiam_loss``:
        negative cosine similarity, -1 is perfect; ``vicreg_loss``, ``mae_loss``: >= 0,
        0 is perfect); as baseline the same loss before training, so ``test < baseline``
        shows that the encoder learned; ``encoder.pt``.

    Raises
    ------
    TrainConfigError
        If ``model`` holds a parameter that neither the encoder nor the objective's
        head takes.
    """
    device = ctx.device
    kind = cfg.model_kind
    objective = OBJECTIVES[kind]
    params = DEFAULT_PARAMS | cfg.model_params
    unknown = sorted(set(params) - set(ENCODER_PARAMS) - set(objective.head))
    if unknown:
        raise TrainConfigError(f"model parameters {unknown} are not known to {kind}; it takes "
                               f"{sorted([*ENCODER_PARAMS, *objective.head])}.")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = objective.network(len(cfg.inputs), **params).to(device)
    aug = cfg.augment or AugmentSpec()
    views = Views(aug.crop, aug.flip_rotate, aug.channel_drop, aug.noise, aug.coarse)
    train = training_stream(cfg, ctx.streams["train"])

    def loss_of(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        v1, v2 = views.pair(x, g)
        return objective.loss(*model(v1.to(device), v2.to(device)))

    def val_loss() -> float:
        model.eval()
        vgen = torch.Generator().manual_seed(123)
        total, n = 0.0, 0
        with torch.no_grad():
            for b in ctx.streams["validation"].batches(cfg.batch_size):
                if len(b.x) < 2:  # batch statistics need two tiles
                    continue
                total, n = total + loss_of(torch.from_numpy(b.x), vgen).item() * len(b.x), \
                    n + len(b.x)
        model.train()
        return total / max(n, 1)

    before = val_loss()
    loader = patch_loader(PatchDataset(train, cfg.batch_size, drop_last=True))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    for epoch in range(cfg.epochs):
        lr = cfg.learning_rate * (1 + math.cos(math.pi * epoch / cfg.epochs)) / 2
        for group in opt.param_groups:
            group["lr"] = lr
        loader.dataset.set_epoch(epoch)
        total, n = 0.0, 0
        for x, *_ in loader:
            loss = loss_of(x, gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(x), n + len(x)
        ctx.log(epoch, {"train_loss": total / max(n, 1), "val_loss": val_loss()})
    after = val_loss()
    path = ctx.out / "encoder.pt"
    torch.save(model.encoder.state_dict(), path)
    (ctx.out / "encoder.json").write_text(json.dumps({
        "class": "esdc.ml.ssl.Encoder", "in_channels": len(cfg.inputs),
        "params": {k: v for k, v in params.items() if k in ENCODER_PARAMS},
        "objective": kind, "inputs": list(cfg.inputs), "tile": list(cfg.patch),
        "context": cfg.context}))
    return FitResult(f"{kind}_loss", after, before, model_file=path)


FITTER = Fitter("simsiam", fit, device_for)
