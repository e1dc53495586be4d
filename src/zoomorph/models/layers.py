"""Building blocks shared by the modern models (resnet, convnet, rotinv)."""

from __future__ import annotations

from torch import Tensor, nn


def conv_bn(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, groups: int = 1,
            act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """Conv ('same' padding, no bias: BatchNorm has one) -> BatchNorm -> activation (None: linear)."""
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_channels)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class GlobalAvgPool(nn.Module):
    """(B, C, H, W) -> (B, C), the mean over H and W.

    A plain mean rather than AdaptiveAvgPool2d + Flatten: on a channels-last tensor
    the ONNX exporter turns that flatten into a strided Gather (1% of the int8 model's time).
    """

    def forward(self, x: Tensor) -> Tensor:
        return x.mean((2, 3))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs plus a shortcut (1x1 projection where the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_bn(in_channels, out_channels, 3, stride),
                                  conv_bn(out_channels, out_channels, 3, act=None))
        self.shortcut = (nn.Identity() if stride == 1 and in_channels == out_channels
                         else conv_bn(in_channels, out_channels, 1, stride, act=None))
        self.act = nn.ReLU()
        nn.init.zeros_(self.body[-1][1].weight)  # each block starts as the identity: trains faster and deeper

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def resnet_stages(in_channels: int, widths: list[int], depths: list[int]) -> list[nn.Module]:
    """Stages of basic blocks; every stage but the first halves the side."""
    blocks = []
    for stage, (width, depth) in enumerate(zip(widths, depths)):
        for i in range(depth):
            blocks.append(BasicBlock(in_channels, width, stride=2 if stage > 0 and i == 0 else 1))
            in_channels = width
    return blocks


def resnet_features(widths: list[int], depths: list[int]) -> nn.Sequential:
    """Stride-2 stem, basic-block stages, global average pool; He-initialised (resnet and rotinv).

    No max-pool after the stem: at 64 px the galaxy is small, so keep the detail of a 32 px map.
    """
    features = nn.Sequential(conv_bn(3, widths[0], 3, stride=2), *resnet_stages(widths[0], widths, depths),
                             GlobalAvgPool())
    features.apply(init_conv_weights)
    return features


def init_conv_weights(module: nn.Module) -> None:
    """He initialisation for convolutions (torch's default is tuned for linear layers)."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
