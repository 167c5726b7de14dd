"""ShiftNet-style CIFAR net (Wu et al. 2018): residual blocks of 1x1 conv → shift → 1x1 conv.

The shift is what exporters see: a frozen depthwise 3x3 conv (groups=C, padding 1) whose kernels
are one-hot. Channels are split into nine near-equal groups (remainder to the centre, i.e. no
move), group g moving by the g-th (dy, dx) of the 3x3 neighbourhood; reads outside the image give
zero. ``shift_scale=True`` gives every one-hot kernel a random per-channel value in [0.5, 1.5]
(and ``shift_bias=True`` a per-channel bias): still a shift, followed by a per-channel affine.
``with_shift=False`` builds the same net with the shift replaced by identity, for benchmarks.
Blocks expose ``conv1/bn1/shift/conv2/bn2/shortcut``; stages are ``layer1..layer3``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ._common import init_weights, seeded


class Shift(nn.Conv2d):
    """Depthwise 3x3 conv with frozen one-hot kernels: channel c reads its input at offset ``offsets[c]``."""

    def __init__(self, channels: int, scale: bool = False, bias: bool = False):
        super().__init__(channels, channels, 3, padding=1, groups=channels, bias=bias)
        self.offsets = shift_offsets(channels)
        with torch.no_grad():
            self.weight.copy_(one_hot_kernels(self.offsets))
            if scale:
                self.weight.mul_(torch.empty(channels, 1, 1, 1).uniform_(0.5, 1.5))
            if bias:
                self.bias.uniform_(-0.1, 0.1)
        self.weight.requires_grad_(False)
        if bias:
            self.bias.requires_grad_(False)


def shift_offsets(channels: int) -> list[tuple[int, int]]:
    """Per channel, the kernel tap (ky, kx) in 0..2 it reads: nine equal groups, remainder at the centre."""
    size = channels // 9
    taps = [divmod(g, 3) for g in range(9) for _ in range(size)]
    return taps + [(1, 1)] * (channels - len(taps))


def one_hot_kernels(offsets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """A (C, 1, 3, 3) weight with a single 1 per channel at that channel's tap."""
    w = torch.zeros(len(offsets), 1, 3, 3)
    for c, (ky, kx) in enumerate(offsets):
        w[c, 0, ky, kx] = 1.0
    return w


class ShiftBlock(nn.Module):
    """1x1 conv-BN-ReLU (expand), shift, 1x1 conv-BN (strided), plus shortcut, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int, with_shift: bool = True,
                 shift_scale: bool = False, shift_bias: bool = False):
        super().__init__()
        mid = in_ch * expansion
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shift = Shift(mid, shift_scale, shift_bias) if with_shift else nn.Identity()
        self.conv2 = nn.Conv2d(mid, out_ch, 1, stride, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(self.shift(out)))
        return self.relu(out + self.shortcut(x))


class ShiftNet(nn.Module):
    """Stem 3x3 conv-BN-ReLU, three stages of shift blocks (widths w, 2w, 4w), pool, linear."""

    def __init__(self, num_classes: int = 10, width: int = 16, blocks: Sequence[int] = (3, 3, 3),
                 expansion: int = 3, with_shift: bool = True, shift_scale: bool = False, shift_bias: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        in_ch = width
        for i, count in enumerate(blocks):
            out_ch = width * 2 ** i
            units = [ShiftBlock(in_ch if j == 0 else out_ch, out_ch, 2 if (i > 0 and j == 0) else 1, expansion,
                                with_shift, shift_scale, shift_bias) for j in range(count)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*units))
            in_ch = out_ch
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        self._init()

    def _init(self) -> None:
        """Initialise everything as the other nets do, then put the frozen shift kernels back."""
        shifts = {id(m): m.weight.detach().clone() for m in self.modules() if isinstance(m, Shift)}
        init_weights(self)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, Shift):
                    m.weight.copy_(shifts[id(m)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def shiftnet(num_classes: int = 10, width: int = 16, blocks: Sequence[int] = (3, 3, 3), expansion: int = 3,
             with_shift: bool = True, shift_scale: bool = False, shift_bias: bool = False,
             seed: int | None = 0) -> ShiftNet:
    """ShiftNet for 32x32 inputs; see the module docstring for the shift options."""
    return seeded(seed, lambda: ShiftNet(num_classes, width, blocks, expansion, with_shift, shift_scale, shift_bias))
