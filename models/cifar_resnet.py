"""CIFAR ResNets (He et al. 2016, section 4.2): three stages of BasicBlocks on 32x32 inputs.

Depth 6n+2 (ResNet-20: n=3, ResNet-56: n=9), stage widths ``width``, 2·width, 4·width. Where a
block changes shape the shortcut is option B, a strided 1x1 conv followed by BatchNorm, so every
producer of a residual stream is a Conv→BN pair that the pruning helpers can zero. Blocks expose
``conv1/bn1/conv2/bn2/shortcut``; stages are ``layer1..layer3``.
"""
from __future__ import annotations

import torch
from torch import nn

from ._common import init_weights, scaled, seeded


class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, plus identity or 1x1 conv-BN shortcut, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, inner: int | None = None):
        super().__init__()
        inner = inner or out_ch
        self.conv1 = nn.Conv2d(in_ch, inner, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem 3x3 conv-BN-ReLU, three stages of ``n`` BasicBlocks, global average pool, linear."""

    def __init__(self, n: int, num_classes: int = 10, width: int = 16, inner_width: float = 1.0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        widths = (width, 2 * width, 4 * width)
        in_ch = width
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_ch, w, stride if j == 0 else 1, scaled(w, inner_width)))
                in_ch = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet20(num_classes: int = 10, width: int = 16, inner_width: float = 1.0, seed: int | None = 0) -> CifarResNet:
    """ResNet-20 (3 blocks per stage); ``inner_width`` scales each block's conv1 output channels."""
    return seeded(seed, lambda: CifarResNet(3, num_classes, width, inner_width))


def resnet56(num_classes: int = 10, width: int = 16, inner_width: float = 1.0, seed: int | None = 0) -> CifarResNet:
    """ResNet-56 (9 blocks per stage); ``inner_width`` scales each block's conv1 output channels."""
    return seeded(seed, lambda: CifarResNet(9, num_classes, width, inner_width))
