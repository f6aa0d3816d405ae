"""SimSiam fitter: a self-supervised tile encoder (``task: embedding``) trained from scratch.

The network and loss are :mod:`esdc.ml.ssl` (Chen and He 2021). The encoder is saved as
``encoder.pt`` (``state_dict`` of :class:`esdc.ml.ssl.Encoder`, loads with
``torch.load(weights_only=True)``) with ``encoder.json`` (architecture, inputs, tile
size); :func:`esdc.embed.load_encoder` reads both back to embed a cube.

PyTorch is an optional extra: ``pip install 'esdc[ml]'``.
"""

from __future__ import annotations

import json

import torch

from esdc.ml.config import TrainConfig
from esdc.ml.fit import FitContext, FitResult, Fitter
from esdc.ml.ssl import SimSiam, augment, simsiam_loss
from esdc.ml.torch import PatchDataset, device_for

__all__ = ["DEFAULT_PARAMS", "FITTER", "fit"]

#: Encoder parameters unless the config's ``model`` gives them: embedding size and width.
DEFAULT_PARAMS = {"dim": 64, "width": 32}


def fit(cfg: TrainConfig, ctx: FitContext) -> FitResult:
    """Train a SimSiam encoder on the train split; save the encoder.

    Parameters
    ----------
    cfg : TrainConfig
        ``task: embedding``, ``model.kind: simsiam`` with ``dim`` and ``width``; tiles of
        ``patch`` cells; ``epochs``, ``batch_size``, ``learning_rate``.
    ctx : FitContext
        Splits, output folder, device and epoch logger (``train_loss``, ``val_loss``).

    Returns
    -------
    FitResult
        ``simsiam_loss`` (negative cosine similarity, -1 is perfect) of the validation
        split after training; as baseline the same loss before training, so
        ``test < baseline`` shows that the encoder learned; ``encoder.pt``.
    """
    device = ctx.device
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    params = DEFAULT_PARAMS | cfg.model_params
    model = SimSiam(len(cfg.inputs), **params).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)

    def val_loss() -> float:
        model.eval()
        vgen = torch.Generator().manual_seed(123)
        total, n = 0.0, 0
        with torch.no_grad():
            for b in ctx.streams["validation"].batches(cfg.batch_size):
                x = torch.from_numpy(b.x)
                loss = simsiam_loss(*model(augment(x, vgen).to(device),
                                           augment(x, vgen).to(device)))
                total, n = total + loss.item() * len(x), n + len(x)
        model.train()
        return total / max(n, 1)

    before = val_loss()
    loader = torch.utils.data.DataLoader(PatchDataset(ctx.streams["train"], cfg.batch_size,
                                                      drop_last=True), batch_size=None)
    for epoch in range(cfg.epochs):
        loader.dataset.set_epoch(epoch)
        total, n = 0.0, 0
        for x, *_ in loader:
            loss = simsiam_loss(*model(augment(x, gen).to(device), augment(x, gen).to(device)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(x), n + len(x)
        ctx.log(epoch, {"train_loss": total / max(n, 1), "val_loss": val_loss()})
    after = val_loss()
    path = ctx.out / "encoder.pt"
    torch.save(model.encoder.state_dict(), path)
    (ctx.out / "encoder.json").write_text(json.dumps({
        "class": "esdc.ml.ssl.Encoder", "in_channels": len(cfg.inputs), "params": params,
        "inputs": list(cfg.inputs), "tile": list(cfg.patch)}))
    return FitResult("simsiam_loss", after, before, model_file=path)


FITTER = Fitter("simsiam", fit, device_for)
