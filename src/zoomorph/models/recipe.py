"""A model's training recipe: optimiser, schedule, loss, batch, augmentation and stopping rules.

Each registered model carries its defaults (registry.ModelSpec.recipe); a run may
override any field (`train --lr ...`), and records the recipe it used in its
config, so a resumed run can check that it continues the same one. A run started
from another run's backbone (`train --init`) records its `Finetune` settings beside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from zoomorph.errors import ZoomorphError

OPTIMIZERS = ("adam", "adamw")
SCHEDULERS = ("onecycle", "cosine", None)


@dataclass(frozen=True)
class Recipe:
    optimizer: str = "adamw"
    lr: float = 2e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.05
    scheduler: str | None = "onecycle"  # per step; None keeps the learning rate constant
    label_smoothing: float = 0.1
    batch_size: int = 64
    augment: str = "kaggle"  # a data.augment recipe name
    epochs: int = 20  # at most
    patience: int | None = None  # early stopping: epochs without a better monitored metric
    val_loss_stop: float | None = None  # the seed project's stop: once validation loss is below this

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ZoomorphError(f"optimizer {self.optimizer!r}: choose {' or '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise ZoomorphError(f"scheduler {self.scheduler!r}: choose onecycle, cosine or none")
        for name in ("lr", "batch_size", "epochs"):
            if getattr(self, name) <= 0:
                raise ZoomorphError(f"{name}={getattr(self, name)}: it must be more than 0")
        object.__setattr__(self, "betas", tuple(self.betas))  # JSON gives a list back

    def but(self, **changes) -> "Recipe":
        """This recipe with the changes that are not None (command-line overrides)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return asdict(self) | {"betas": list(self.betas)}

    @classmethod
    def from_dict(cls, values: dict) -> "Recipe":
        """From a run's config; fields it lacks (runs made before they existed) take today's defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# The stronger (BatchNorm, residual) models: AdamW with a one-cycle schedule and label smoothing.
MODERN_RECIPE = Recipe()


@dataclass(frozen=True)
class Finetune:
    """How a run started from another run's backbone (`train --init RUN`) trains it; zoomorph.finetune does it.

    freeze_epochs: the backbone does not change in the first N epochs (only the fresh head learns);
    freeze_blocks: the first N blocks of the backbone (registry.backbone_blocks) never change;
    backbone_lr_mult: the backbone's learning rate is the head's times this (in every schedule). 1 by
        default: at 0.1 a backbone pretrained by the default recipe did worse than training from scratch
        (-4 and -9 points at 25 and 100 labels per class; at 1, +8 and +6: docs/other-surveys.md).
    """

    freeze_epochs: int = 0
    freeze_blocks: int = 0
    backbone_lr_mult: float = 1.0

    def __post_init__(self) -> None:
        for name in ("freeze_epochs", "freeze_blocks"):
            if getattr(self, name) < 0:
                raise ZoomorphError(f"{name}={getattr(self, name)}: it must be 0 or more")
        if not self.backbone_lr_mult > 0:
            raise ZoomorphError(f"backbone_lr_mult={self.backbone_lr_mult}: it must be more than 0 "
                                "(to keep the backbone as it is, freeze it: --freeze-epochs, --freeze-blocks)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Finetune":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
