"""The seed project's two Keras models, translated layer for layer.

Keras -> torch: Conv2D 'valid' = Conv2d(padding=0); BatchNormalization(momentum=0.99,
epsilon=1e-3) = BatchNorm2d(momentum=0.01, eps=1e-3) (torch's momentum weighs the
new batch, Keras' the old average); weights start glorot-uniform with zero biases,
as Keras does. Flatten reads (C, H, W) here and (H, W, C) in Keras: the same
layer, its dense weights only permuted (matters only when porting weights).
"""

from __future__ import annotations

from torch import nn

from zoomorph.errors import ZoomorphError
from zoomorph.models.recipe import Recipe
from zoomorph.models.registry import register_model

# The seed project's recipe: Keras' Adam defaults, batch 64, its rotate/flip augmentation, and its
# callbacks: stop once validation loss < 0.25, early stopping (patience 5), best checkpoint by val accuracy.
KERAS_RECIPE = Recipe(optimizer="adam", lr=1e-3, betas=(0.9, 0.999), eps=1e-7, weight_decay=0.0,
                      scheduler=None, label_smoothing=0.0, batch_size=64, augment="seed",
                      val_loss_stop=0.25, patience=5, epochs=30)
SEED_SIZE = 150  # its 150 x 150 crops of the central 150 px: no resampling


def _valid_conv_pool_side(image_size: int, blocks: int) -> int:
    """Side of the feature map after `blocks` x (3x3 valid conv, 2x2 max-pool)."""
    side = image_size
    for _ in range(blocks):
        side = (side - 2) // 2
    if side < 1:
        raise ZoomorphError(f"{image_size} px is too small for {blocks} valid conv + pool blocks (94 px at least)")
    return side


def _keras_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


def _conv_stack(widths: list[int], batch_norm: list[bool]) -> list[nn.Module]:
    layers, in_channels = [], 3
    for width, bn in zip(widths, batch_norm):
        layers += [nn.Conv2d(in_channels, width, 3), nn.ReLU()]
        if bn:  # the original's order: Conv -> ReLU -> BatchNorm -> MaxPool
            layers.append(nn.BatchNorm2d(width, eps=1e-3, momentum=0.01))
        layers.append(nn.MaxPool2d(2))
        in_channels = width
    return layers


@register_model("seed-model1", default_image_size=SEED_SIZE, default_fov=SEED_SIZE, recipe=KERAS_RECIPE,
                description="seed project model 1: 5 valid 3x3 convs (32-128) with BN, dense 512-128")
def seed_model1(image_size: int) -> tuple[nn.Module, int]:
    widths = [32, 32, 64, 64, 128]
    side = _valid_conv_pool_side(image_size, len(widths))
    backbone = nn.Sequential(
        *_conv_stack(widths, batch_norm=[True] * 4 + [False]),
        nn.Flatten(),
        nn.Linear(widths[-1] * side * side, 512), nn.ReLU(),
        nn.Linear(512, 128), nn.ReLU(),
    )
    backbone.apply(_keras_init)
    return backbone, 128


@register_model("seed-model2", default_image_size=SEED_SIZE, default_fov=SEED_SIZE, recipe=KERAS_RECIPE,
                description="seed project model 2: 5 valid 3x3 convs (64-128), dropout 0.5, dense 512")
def seed_model2(image_size: int) -> tuple[nn.Module, int]:
    widths = [64, 64, 128, 128, 128]
    side = _valid_conv_pool_side(image_size, len(widths))
    backbone = nn.Sequential(
        *_conv_stack(widths, batch_norm=[False] * 5),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(widths[-1] * side * side, 512), nn.ReLU(),
    )
    backbone.apply(_keras_init)
    return backbone, 512
