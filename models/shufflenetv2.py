"""ShuffleNetV2 (Ma et al. 2018): channel split, two branches, concat and channel shuffle.

A stride-1 unit splits its input in halves, passes one through and runs the other through 1x1
conv-BN-ReLU, depthwise 3x3 conv-BN, 1x1 conv-BN-ReLU; a stride-2 unit runs both halves of the
input through a branch each (``branch1``: depthwise 3x3/2 then 1x1). The halves are concatenated
and shuffled with view → transpose → view exactly as the reference implementation, which exports
as Reshape → Transpose → Reshape. ``width`` selects the stage widths of the paper (0.5, 1.0, 1.5,
2.0) or any other multiplier of the 1.0x widths (rounded to even numbers).
"""
from __future__ import annotations

import torch
from torch import nn

from ._common import init_weights, seeded

STAGE_REPEATS = (4, 8, 4)
PAPER_WIDTHS = {0.5: (24, 48, 96, 192, 1024), 1.0: (24, 116, 232, 464, 1024),
                1.5: (24, 176, 352, 704, 1024), 2.0: (24, 244, 488, 976, 2048)}


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The reference shuffle: (N, g·k, H, W) → view (N, g, k, H, W) → transpose(1, 2) → view back."""
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batch, -1, height, width)


def _dw(ch: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(ch, ch, 3, stride, 1, groups=ch, bias=False), nn.BatchNorm2d(ch)]


def _pw(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class ShuffleUnit(nn.Module):
    """Stride 1: split, right half through ``branch2``; stride 2: both branches on the whole input."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.stride = stride
        half = out_ch // 2
        branch2_in = in_ch if stride > 1 else half
        self.branch1 = nn.Sequential(*_dw(in_ch, stride), *_pw(in_ch, half)) if stride > 1 else nn.Sequential()
        self.branch2 = nn.Sequential(*_pw(branch2_in, half), *_dw(half, stride), *_pw(half, half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """Stem conv 3x3/2 + max pool, stages 2–4 of shuffle units, 1x1 conv5, global pool, linear."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0):
        super().__init__()
        widths = stage_widths(width)
        self.conv1 = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                   nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = widths[0]
        for i, (repeats, out_ch) in enumerate(zip(STAGE_REPEATS, widths[1:4])):
            units = [ShuffleUnit(in_ch, out_ch, 2)] + [ShuffleUnit(out_ch, out_ch, 1) for _ in range(repeats - 1)]
            setattr(self, f"stage{i + 2}", nn.Sequential(*units))
            in_ch = out_ch
        self.conv5 = nn.Sequential(*_pw(in_ch, widths[4]))
        self.fc = nn.Linear(widths[4], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean([2, 3]))


def stage_widths(width: float) -> tuple[int, ...]:
    """The paper's widths for its four multipliers, otherwise 1.0x widths scaled to even numbers."""
    if width in PAPER_WIDTHS:
        return PAPER_WIDTHS[width]
    base = PAPER_WIDTHS[1.0]
    return (base[0],) + tuple(max(2, int(round(c * width / 2)) * 2) for c in base[1:4]) + (base[4],)


def shufflenetv2(num_classes: int = 1000, width: float = 1.0, seed: int | None = 0) -> ShuffleNetV2:
    """ShuffleNetV2 at multiplier ``width`` (0.5 and a 32x32 input make a fast test net)."""
    return seeded(seed, lambda: ShuffleNetV2(num_classes, width))
