"""CIFAR ResNets whose convs normalise their weights per output filter in ``forward``, without BatchNorm.

:class:`NormalizedConv2d` recomputes its weight on every call, so exporters leave the
normalisation as a ReduceMean/Sub/Pow/Sqrt/Div chain on the weight initializer (the pattern the
fold pass evaluates once). Variants, with mean and variance over each filter's N = fan-in weights:
``"ws"`` (Weight Standardization, Qiao et al.: W' = (W − mean_o)/(std_o + eps), std unbiased as in
the reference code; paired with GroupNorm as in the paper), ``"scaled_ws"`` (NF-Nets, Brock et al.:
W' = gain_o·(W − mean_o)/sqrt(max(N·var_o, eps)), var biased) and ``"weightalign"`` (Shi et al.:
W' = alpha_o·(W − mean_o)/(sqrt(N)·std_o), std biased with eps inside the root). The last two are
normaliser-free.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import init_weights, seeded

VARIANTS = ("ws", "scaled_ws", "weightalign")


class NormalizedConv2d(nn.Conv2d):
    """A Conv2d whose weight is normalised per output filter on every forward (see the module docstring)."""

    def __init__(self, *args, variant: str = "ws", eps: float = 1e-5, **kwargs):
        super().__init__(*args, **kwargs)
        if variant not in VARIANTS:
            raise ValueError(f"unknown weight normalisation {variant!r}; expected one of {VARIANTS}")
        self.variant, self.eps = variant, eps
        if variant != "ws":
            self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))

    def normalized_weight(self) -> torch.Tensor:
        w = self.weight
        fan_in = w[0].numel()
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        centered = w - mean
        var = centered.pow(2).mean(dim=(1, 2, 3), keepdim=True)
        if self.variant == "ws":
            return centered / (torch.sqrt(var * (fan_in / (fan_in - 1))) + self.eps)
        if self.variant == "scaled_ws":
            return self.gain * centered / torch.sqrt(torch.clamp(var * fan_in, min=self.eps))
        return self.gain * centered / (fan_in ** 0.5 * torch.sqrt(var + self.eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.normalized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class NormalizedBlock(nn.Module):
    """3x3 conv-(GN)-ReLU, 3x3 conv-(GN), plus identity or 1x1 normalised-conv shortcut, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, variant: str, group_norm: bool):
        super().__init__()
        self.conv1 = NormalizedConv2d(in_ch, out_ch, 3, stride, 1, bias=not group_norm, variant=variant)
        self.norm1 = _norm(out_ch, group_norm)
        self.conv2 = NormalizedConv2d(out_ch, out_ch, 3, 1, 1, bias=not group_norm, variant=variant)
        self.norm2 = _norm(out_ch, group_norm)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(NormalizedConv2d(in_ch, out_ch, 1, stride, bias=False, variant=variant))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _norm(channels: int, group_norm: bool) -> nn.Module:
    return nn.GroupNorm(min(8, channels), channels) if group_norm else nn.Identity()


class WeightAlignResNet(nn.Module):
    """CIFAR ResNet (6n+2 layers, widths w, 2w, 4w) built from :class:`NormalizedConv2d`, no BatchNorm."""

    def __init__(self, n: int = 3, num_classes: int = 10, width: int = 16, variant: str = "weightalign",
                 group_norm: bool | None = None):
        super().__init__()
        group_norm = variant == "ws" if group_norm is None else group_norm
        self.conv1 = NormalizedConv2d(3, width, 3, 1, 1, bias=True, variant=variant)
        self.relu = nn.ReLU(inplace=True)
        in_ch = width
        for i in range(3):
            out_ch = width * 2 ** i
            blocks = [NormalizedBlock(in_ch if j == 0 else out_ch, out_ch, 2 if (i > 0 and j == 0) else 1,
                                      variant, group_norm) for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            in_ch = out_ch
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)
        _randomize_gains(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _randomize_gains(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, NormalizedConv2d) and hasattr(m, "gain"):
                m.gain.uniform_(0.5, 1.5)


def weightalign_resnet(num_classes: int = 10, width: int = 16, depth: int = 20, variant: str = "weightalign",
                       group_norm: bool | None = None, seed: int | None = 0) -> WeightAlignResNet:
    """A depth-``depth`` (6n+2) CIFAR ResNet with ``variant`` weight normalisation; GroupNorm defaults on for "ws"."""
    if (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2, got {depth}")
    return seeded(seed, lambda: WeightAlignResNet((depth - 2) // 6, num_classes, width, variant, group_norm))
