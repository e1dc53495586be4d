"""Model registry: a model is one builder function plus one `@register_model` decorator.

Every model is `Network(backbone, head)`: the backbone maps a float32 (B, 3, H, W)
batch in [0, 1] to a flat feature vector, the head maps those features to the
output the task needs (class logits or the 37 Galaxy Zoo vote fractions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import Tensor, nn

from zoomorph.errors import ZoomorphError
from zoomorph.io.decode import DEFAULT_FOV, Fov
from zoomorph.models.heads import build_head
from zoomorph.models.recipe import MODERN_RECIPE, Recipe

# A builder takes the input side in pixels and returns (backbone, number of features it outputs).
Builder = Callable[[int], tuple[nn.Module, int]]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    default_image_size: int  # what `prepare --model NAME` caches at
    default_fov: Fov  # what it cuts that from: a central crop in Kaggle (424 px) pixels, or "auto"
    recipe: Recipe  # training defaults
    build: Builder = field(repr=False, compare=False)
    head_dropout: float = 0.0  # dropout right before the head's linear layer


__all__ = ["MODERN_RECIPE", "ModelSpec", "Network", "Recipe", "backbone_blocks", "create_model", "list_models",
           "model_spec", "register_model"]

_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, description: str, default_image_size: int, recipe: Recipe = MODERN_RECIPE,
                   default_fov: Fov = DEFAULT_FOV, head_dropout: float = 0.0) -> Callable[[Builder], Builder]:
    def decorator(build: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(name, description, default_image_size, default_fov, recipe, build,
                                    head_dropout)
        return build

    return decorator


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise ZoomorphError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _REGISTRY[name]  # frozen, recipe too: callers override with spec.recipe.but(...)


class Network(nn.Module):
    """backbone (images -> features) followed by head (features -> output)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def backbone_blocks(backbone: nn.Module) -> list[list[nn.Module]]:
    """A backbone's blocks, from the input on: what `train --freeze-blocks N` freezes the first N of.

    One rule for every model, so a new one needs nothing: a block is a top-level layer that holds weights
    (a conv, a conv-BN-activation, a residual block, a dense layer) with the layers after it that hold none
    or only normalise it (activation, BatchNorm, pool, flatten, dropout). A backbone that wraps a single stack
    (rotinv's RotationPooled) is looked into. convnet and convnet-lite: stem, 8 inverted residuals, the 1x1
    head conv (10); resnet: stem and 8 basic blocks (9); rotinv: stem and 4 (5); seed-model1: 5 convs and
    2 dense (7); seed-model2: 5 convs and 1 dense (6).
    """
    children = list(backbone.children())
    weighted = [c for c in children if _has_weights(c)]
    if len(weighted) == 1 and list(weighted[0].children()):
        return backbone_blocks(weighted[0])
    blocks: list[list[nn.Module]] = []
    pending: list[nn.Module] = []  # weightless layers before the first block belong to it
    for child in children:
        if _has_weights(child) and not isinstance(child, _NORMS):
            blocks.append([*pending, child])
            pending = []
        elif blocks:
            blocks[-1].append(child)
        else:
            pending.append(child)
    return blocks


def _has_weights(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def create_model(name: str, *, head: str = "classes", num_classes: int = 3,
                 image_size: int | None = None) -> nn.Module:
    """A freshly initialised model.

    head "classes": raw logits (B, num_classes); head "votes": (B, 37) cumulative
    Galaxy Zoo fractions that obey the decision tree (num_classes is ignored).
    """
    spec = model_spec(name)
    backbone, features = spec.build(image_size or spec.default_image_size)
    return Network(backbone, build_head(head, features, num_classes, dropout=spec.head_dropout))
