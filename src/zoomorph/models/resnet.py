"""A small ResNet (He et al. 2016) sized for CPU training at 64-96 px."""

from __future__ import annotations

from torch import nn

from zoomorph.models.layers import resnet_features
from zoomorph.models.registry import MODERN_RECIPE, register_model

WIDTHS = [32, 64, 128, 256]


@register_model("resnet", default_image_size=64, recipe=MODERN_RECIPE, head_dropout=0.3,
                description="ResNet-18-style basic blocks (2-2-2-2, 32-256 channels), stride-2 stem, "
                            "global average pool")
def resnet(image_size: int) -> tuple[nn.Module, int]:
    return resnet_features(WIDTHS, depths=[2, 2, 2, 2]), WIDTHS[-1]
