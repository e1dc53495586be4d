"""Finetuning: a run that starts from another run's backbone (`train --init RUN`) with a fresh head.

What the new run may change, and how fast (models.recipe.Finetune, recorded in its config.json):

* freeze_epochs: the backbone stays as it is for the first N epochs, while the fresh head learns to use it.
  Its gradients are still computed, then dropped before the optimiser step: the same in one process and
  in DDP (DDP expects every parameter it was built with to get a gradient at every step).
* freeze_blocks: the first N blocks (models.registry.backbone_blocks) never train; their parameters stop
  requiring gradients before anything (DDP included) sees the module.
* backbone_lr_mult: the backbone's learning rate is the head's times this, as a second parameter group, so
  one-cycle (a max_lr per group) and cosine schedule both groups alike.

Frozen BatchNorm layers are kept in eval mode while frozen: in training mode a BatchNorm normalises by
each batch's statistics and moves its running averages, so a "frozen" backbone would still change, and
on a small new data set its statistics would be those of a few noisy batches.

Everything depends on the epoch alone, so a resumed finetuning run ends as an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from zoomorph.errors import InputNotFound, ZoomorphError
from zoomorph.models.recipe import Finetune
from zoomorph.models.registry import backbone_blocks
from zoomorph.runs import Run

__all__ = ["Finetune", "batchnorms_to_freeze", "drop_frozen_gradients", "freeze_blocks", "load_backbone",
           "open_parent", "param_groups", "parent_record"]


def open_parent(init: Run | str | Path, model: str | None) -> Run:
    """The run to start from; refused (before anything is written) when it holds another model than `model`
    (None: any)."""
    parent = Run.of(init)  # InputNotFound: not a run folder
    if model is not None and parent.config.model != model:
        raise ZoomorphError(f"--init {parent.dir} holds a {parent.config.model!r} run, and this run trains "
                            f"{model!r}: a backbone loads only into the model it was trained as (give --model "
                            f"{parent.config.model}, or the run of a {model!r})")
    if not parent.weights_file.exists():
        raise InputNotFound(f"--init {parent.dir}: no {parent.weights_file.name} (the run has no trained weights: "
                            "train it first, or give a trained run)")
    return parent


def parent_record(parent: Run) -> dict:
    """What config.json keeps of the parent: where it was, the digest of the weights taken, what it was."""
    cfg = parent.config
    return {"run": str(parent.dir.resolve()), "weights_sha256": parent.weights_digest, "model": cfg.model,
            "head": cfg.head, "classes": cfg.classes, "image_size": cfg.image_size, "fov": cfg.fov}


def load_backbone(net: nn.Module, parent: Run, image_size: int) -> None:
    """Copy the parent's trained backbone into `net` (its head stays fresh); RunFileError for a damaged
    model.pt, ZoomorphError for a backbone that cannot take this image size (a dense layer after a flatten)."""
    trained = parent.load_model().backbone.state_dict()
    try:
        net.backbone.load_state_dict(trained)
    except RuntimeError as err:
        first = (str(err).strip().splitlines()[1:2] or [str(err)])[0].strip()
        raise ZoomorphError(f"the backbone of {parent.dir} was trained at {parent.config.image_size} px and cannot "
                            f"take {image_size} px images ({first}): prepare the data at "
                            f"{parent.config.image_size} px (prepare --size)") from None


def freeze_blocks(net: nn.Module, n: int) -> None:
    """The first n backbone blocks never train."""
    blocks = backbone_blocks(net.backbone)
    if n > len(blocks):
        raise ZoomorphError(f"--freeze-blocks {n}: this model's backbone has {len(blocks)} blocks")
    for block in blocks[:n]:
        for module in block:
            module.requires_grad_(False)


def _frozen_modules(net: nn.Module, ft: Finetune, epoch: int) -> list[nn.Module]:
    if epoch < ft.freeze_epochs:
        return [net.backbone]
    return [module for block in backbone_blocks(net.backbone)[:ft.freeze_blocks] for module in block]


def batchnorms_to_freeze(net: nn.Module, ft: Finetune, epoch: int) -> list[nn.Module]:
    """The BatchNorm layers of what is frozen in this epoch: to be kept in eval mode."""
    return [m for frozen in _frozen_modules(net, ft, epoch) for m in frozen.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def drop_frozen_gradients(net: nn.Module, ft: Finetune, epoch: int) -> None:
    """Before an optimiser step: no gradient for the backbone while it is frozen, so the optimiser (weight
    decay included) leaves it exactly as it is."""
    if epoch < ft.freeze_epochs:
        for p in net.backbone.parameters():
            p.grad = None


def param_groups(module: nn.Module, backbone: nn.Module, lr: float, ft: Finetune) -> list[dict]:
    """The backbone at lr * backbone_lr_mult, then everything else (the head) at lr."""
    inside = {id(p) for p in backbone.parameters()}
    params = list(module.parameters())
    return [{"params": [p for p in params if id(p) in inside], "lr": lr * ft.backbone_lr_mult, "name": "backbone"},
            {"params": [p for p in params if id(p) not in inside], "lr": lr, "name": "head"}]

