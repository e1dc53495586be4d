"""Rotation-invariant network in the spirit of Dieleman, Willett & Dambre (2015), the Kaggle winner.

The image is rotated by 0, 90, 180 and 270 degrees and the top-left part of
each rotation is cut out: these are the four overlapping corner parts of the
image, each turned so that the galaxy's centre sits in the same corner. One
conv stack sees all parts in ONE batched pass; the features are then mean- and
max-pooled over the parts. Rotating the input by 90 degrees only permutes the
parts, so the output is invariant to it exactly. (Flips would double the cost;
the augmentation supplies them instead.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zoomorph.data.augment import dihedral
from zoomorph.models.layers import resnet_features
from zoomorph.models.registry import MODERN_RECIPE, register_model

PART = 45 / 69  # Dieleman's part side over image side (45 px parts of a 69 px image)
WIDTHS = [32, 64, 128, 256]


class RotationPooled(nn.Module):
    """Apply `features` (parts -> (N, F)) to every rotated part; return (B, 2F) = [mean, max] over parts."""

    def __init__(self, features: nn.Module, image_size: int):
        super().__init__()
        self.features = features
        self.part = round(image_size * PART)

    def forward(self, x: Tensor) -> Tensor:
        parts = torch.cat([dihedral(x, k)[..., :self.part, :self.part] for k in range(4)])  # 4 quarter turns
        per_part = self.features(parts).unflatten(0, (4, x.shape[0]))  # (parts, B, F)
        return torch.cat([per_part.mean(0), per_part.amax(0)], dim=1)


@register_model("rotinv", default_image_size=64, recipe=MODERN_RECIPE, head_dropout=0.3,
                description="Dieleman-style: shared ResNet stack over the 4 rotated corner parts, "
                            "mean+max pooled (exactly invariant to 90-degree rotations)")
def rotinv(image_size: int) -> tuple[nn.Module, int]:
    return RotationPooled(resnet_features(WIDTHS, depths=[1, 1, 1, 1]), image_size), 2 * WIDTHS[-1]
