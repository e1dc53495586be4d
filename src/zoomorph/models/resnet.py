"""A small ResNet (He et al. 2016) sized for CPU training at 64-96 px."""

from __future__ import annotations

from torch import nn

from zoomorph.models.layers import conv_bn, global_pool, init_conv_weights, resnet_stages
from zoomorph.models.registry import MODERN_RECIPE, register_model

WIDTHS = [32, 64, 128, 256]


@register_model("resnet", default_image_size=64, recipe=MODERN_RECIPE, head_dropout=0.3,
                description="ResNet-18-style basic blocks (2-2-2-2, 32-256 channels), stride-2 stem, "
                            "global average pool")
def resnet(image_size: int) -> tuple[nn.Module, int]:
    # A stride-2 stem and no max-pool: at 64 px the galaxy is small, so keep the detail of a 32 px map.
    backbone = nn.Sequential(conv_bn(3, WIDTHS[0], 3, stride=2),
                             *resnet_stages(WIDTHS[0], WIDTHS, depths=[2, 2, 2, 2]),
                             global_pool())
    backbone.apply(init_conv_weights)
    return backbone, WIDTHS[-1]
