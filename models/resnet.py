"""ImageNet ResNet-18 and ResNet-50 (He et al. 2016), written from scratch in torchvision's layout.

Stem 7x7/2 conv-BN-ReLU and 3x3/2 max pool, four stages ``layer1..layer4``, global average pool,
linear. Blocks expose ``conv1/bn1/conv2/bn2`` (and ``conv3/bn3`` in a Bottleneck) and a
``downsample`` Conv→BN pair where the shape changes (stride on the 3x3 conv, as torchvision v1.5).
``inner_width`` scales the channels inside each block (a Bottleneck's conv1/conv2 outputs, a
BasicBlock's conv1 output) without touching the residual streams, so a narrow-built network can be
compared with a full-width one whose inner channels were zeroed.
"""
from __future__ import annotations

import torch
from torch import nn

from ._common import init_weights, scaled, seeded


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; ``inner`` is the first conv's output width."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, inner: int | None = None):
        super().__init__()
        inner = inner or planes
        self.conv1 = nn.Conv2d(in_ch, inner, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4); ``inner`` is the conv1/conv2 output width."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, inner: int | None = None):
        super().__init__()
        inner = inner or planes
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


def _downsample(in_ch: int, out_ch: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class ResNet(nn.Module):
    """Generic ImageNet ResNet over a block type and per-stage block counts."""

    def __init__(self, block: type, layers: tuple[int, ...], num_classes: int = 1000, width: int = 64,
                 inner_width: float = 1.0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = width
        for i, count in enumerate(layers):
            planes = width * 2 ** i
            stage, in_ch = _stage(block, in_ch, planes, count, 1 if i == 0 else 2, scaled(planes, inner_width))
            setattr(self, f"layer{i + 1}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _stage(block: type, in_ch: int, planes: int, count: int, stride: int, inner: int) -> tuple[nn.Sequential, int]:
    blocks = []
    for j in range(count):
        blocks.append(block(in_ch, planes, stride if j == 0 else 1, inner))
        in_ch = planes * block.expansion
    return nn.Sequential(*blocks), in_ch


def resnet18(num_classes: int = 1000, width: int = 64, inner_width: float = 1.0, seed: int | None = 0) -> ResNet:
    """ResNet-18; ``width`` is the stem width, ``inner_width`` scales each block's first conv output."""
    return seeded(seed, lambda: ResNet(BasicBlock, (2, 2, 2, 2), num_classes, width, inner_width))


def resnet50(num_classes: int = 1000, width: int = 64, inner_width: float = 1.0, seed: int | None = 0) -> ResNet:
    """ResNet-50; ``width`` is the stem width, ``inner_width`` scales each bottleneck's conv1/conv2 outputs."""
    return seeded(seed, lambda: ResNet(Bottleneck, (3, 4, 6, 3), num_classes, width, inner_width))
