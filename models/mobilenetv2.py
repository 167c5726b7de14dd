"""MobileNetV2 (Sandler et al. 2018): inverted residual blocks with ReLU6 and depthwise 3x3 convs.

Each block is an optional 1x1 expansion conv-BN-ReLU6 (``conv[0]``), a depthwise 3x3 conv-BN-ReLU6
(``conv[1]``) and a linear 1x1 projection conv-BN (``conv[2]``, ``conv[3]``), with a residual when
stride is 1 and widths match. ``width_mult`` scales every width (rounded to multiples of 8 as in
the reference); ``expand_ratio`` overrides the expansion factor of every block (a number) or per
block (a sequence of 17 numbers, or a dict block index → factor), so a narrow-expansion net can be
built to compare with a zeroed one. Blocks are ``features[1..17]``.
"""
from __future__ import annotations

from typing import Mapping, Sequence, Union

import torch
from torch import nn

from ._common import init_weights, seeded

#: (expansion t, output channels c, repeats n, first stride s) per stage, as in the paper's Table 2.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

ExpandOverride = Union[None, float, Sequence[float], Mapping[int, float]]


def make_divisible(v: float, divisor: int = 8) -> int:
    """The reference's rounding: nearest multiple of ``divisor``, never below 90% of ``v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def conv_bn_relu6(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """Expand (1x1) → depthwise (3x3) → project (1x1, linear), residual when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: float):
        super().__init__()
        hidden = int(round(in_ch * expand_ratio))
        self.use_res = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_relu6(in_ch, hidden, 1))
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """Stem conv 3x3/2, 17 inverted residual blocks, 1x1 conv to ``last_channel``, pool, dropout, linear."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, expand_ratio: ExpandOverride = None):
        super().__init__()
        in_ch = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [conv_bn_relu6(3, in_ch, 3, 2)]
        for t, c, n, s in SETTINGS:
            out_ch = make_divisible(c * width_mult)
            for i in range(n):
                t_block = _expand_for(expand_ratio, len(features) - 1, t)
                features.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t_block))
                in_ch = out_ch
        features.append(conv_bn_relu6(in_ch, last, 1))
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _expand_for(override: ExpandOverride, block: int, default: float) -> float:
    """Block ``block``'s (0-based) expansion: the override's entry if it has one, else the paper's."""
    if override is None:
        return default
    if isinstance(override, Mapping):
        return override.get(block, default)
    if isinstance(override, (int, float)):
        return override if default != 1 else default
    return override[block]


def mobilenetv2(num_classes: int = 1000, width_mult: float = 1.0, expand_ratio: ExpandOverride = None,
                seed: int | None = 0) -> MobileNetV2:
    """MobileNetV2; a scalar ``expand_ratio`` replaces t=6 in every expanding block (block 0 keeps t=1)."""
    return seeded(seed, lambda: MobileNetV2(num_classes, width_mult, expand_ratio))
